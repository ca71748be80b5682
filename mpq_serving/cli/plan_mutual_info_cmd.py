"""`mpq plan mutual-info`: registered on the `mpq plan` app."""

import typer


def register(app: typer.Typer) -> None:
    """Add this strategy's command to `app` (placeholder until the strategy lands)."""
