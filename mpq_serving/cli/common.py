"""Helpers shared by CLI commands: demo model names, error printing."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True, highlight=False)

DEMO_MODELS = ("smollm2", "smollm2-moe")

# Every command that writes takes this flag (see outputs.py: it never replaces anything but our own output).
OVERWRITE = typer.Option(False, "--overwrite", help="Replace the output if it is a previous output of the same "
                         "kind (never anything else); without it an existing non-empty output is refused.")


def fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(1)


def resolve_model(arg: str | Path) -> Path:
    """A model folder, or a demo name (`smollm2`, `smollm2-moe`) prepared into the cache on first use."""
    text = str(arg)
    if text == "smollm2":
        from ..models.smollm2 import prepare_smollm2

        return prepare_smollm2()
    if text == "smollm2-moe":
        from ..models.smollm2 import prepare_smollm2
        from ..models.upcycle import upcycle
        from ..outputs import OutputExistsError

        dense = prepare_smollm2()
        out = dense.parent / "smollm2-135m-moe-e8-top2"
        if not (out / "config.json").is_file():
            try:
                upcycle(dense, out, experts=8, top_k=2, seed=0)
            except OutputExistsError:
                pass  # another process built it meanwhile; its folder is complete (written atomically)
        return out
    path = Path(text)
    if not path.exists():
        fail(f"{path}: model folder not found (or use a demo name: {', '.join(DEMO_MODELS)})")
    return path
