"""`mpq report`: registered on the top-level app."""

import typer


def register(app: typer.Typer) -> None:
    """Add the report command to `app` (placeholder until it lands)."""
