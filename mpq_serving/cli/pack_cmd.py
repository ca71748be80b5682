"""`mpq pack`: write a packed mixed checkpoint from a plan."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..errors import MPQError
from .common import OVERWRITE, fail, resolve_model


def pack(
    plan: Path = typer.Argument(..., help="Plan file (.json or .yaml)."),
    output: Path = typer.Option(..., "-o", "--output", help="Output folder."),
    model: str | None = typer.Option(None, "--model", help="Base model (folder or demo name) to quantize from where a format has no source."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Resolve the plan, check every source, then stream each module into OUTPUT in its own format."""
    from ..loaders.pack import pack as pack_checkpoint
    from ..plan import load_plan

    try:
        folder = resolve_model(model) if model else None
        out = pack_checkpoint(load_plan(plan), output, folder, overwrite=overwrite)
    except MPQError as e:
        fail(str(e))
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    Console(highlight=False).print(f"wrote {out} ({size / 2**20:.1f} MiB of safetensors)")
