"""`mpq model` commands."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from ..models import TINY_ARCHS
from .common import OVERWRITE

app = typer.Typer(no_args_is_help=True)

TinyArch = Enum("TinyArch", {a.replace("-", "_"): a for a in TINY_ARCHS}, type=str)


class DemoModel(str, Enum):
    smollm2 = "smollm2"


@app.command()
def prepare(
    name: DemoModel = typer.Argument(..., help="Demo model to build."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Output folder (default: the cache, $MPQ_CACHE_DIR)."),
) -> None:
    """Build SmolLM2-135M-Instruct as a bf16 safetensors HF folder from the gguf shipped on PyPI."""
    from ..models.smollm2 import (
        prepare_smollm2,  # imports transformers: only when the command runs
    )

    typer.echo(prepare_smollm2(out))  # the only choice of `name` so far


@app.command("upcycle")
def upcycle_cmd(
    dense_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="Dense Llama-architecture HF folder."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder for the Mixtral MoE."),
    experts: int = typer.Option(8, "--experts", min=1, help="Experts per layer (all copies of the dense MLP)."),
    top_k: int = typer.Option(2, "--top-k", min=1, help="Experts used per token."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random router init."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Make a Mixtral MoE whose experts are copies of each dense MLP (same outputs as the dense model)."""
    from ..models.upcycle import upcycle

    typer.echo(upcycle(dense_dir, out, experts=experts, top_k=top_k, seed=seed, overwrite=overwrite))


@app.command()
def tiny(
    arch: TinyArch = typer.Argument(..., help="Architecture."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Build a tiny random model (2 layers, hidden 128) for structure tests."""
    from ..models.tiny import build_tiny

    typer.echo(build_tiny(arch.value, out, seed=seed, overwrite=overwrite))
