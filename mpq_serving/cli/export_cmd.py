"""`mpq export gguf|compressed-tensors`: a mixed model for llama.cpp, or for stock vLLM / SGLang."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ..errors import MPQError
from .common import OVERWRITE, fail, resolve_model

app = typer.Typer(no_args_is_help=True)
console = Console(highlight=False)


@app.command("gguf")
def gguf(
    model: str = typer.Argument(..., help="Packed folder (`mpq pack`), or a model folder / demo name with --plan."),
    output: Path = typer.Option(..., "-o", "--output", help="The .gguf file to write."),
    plan: Path | None = typer.Option(None, "--plan", help="Plan to apply to MODEL (quantizing where it has no source)."),
    show: bool = typer.Option(False, "--show", help="Print every tensor's GGML type and error, not just a summary."),
    overwrite: bool = OVERWRITE,
) -> None:
    """One GGUF file for llama.cpp: each weight in the closest GGML type (README: "Export")."""
    from ..export.gguf import export_gguf

    folder = resolve_model(model)
    try:
        result = export_gguf(folder, output, plan, overwrite=overwrite)
    except MPQError as e:
        fail(str(e))
    table = Table("GGUF tensor" if show else "GGML type", "from", "exact", "max |Δ| vs ours", "note")
    if show:
        for row in result.rows:
            table.add_row(row.name, row.source_format, "yes" if row.exact else "no", f"{row.max_abs_err:.3g}", row.note)
    else:
        by_type: dict[tuple[str, str], list] = {}
        for row in result.rows:
            by_type.setdefault((row.ggml_type, row.source_format), []).append(row)
        for (qtype, source), rows in sorted(by_type.items()):
            table.add_row(f"{qtype} ×{len(rows)}", source, "yes" if all(r.exact for r in rows) else "no",
                          f"{max(r.max_abs_err for r in rows):.3g}", rows[0].note)
    console.print(table)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
    console.print(f"wrote {result.path} ({result.size_bytes / 2**20:.1f} MiB)")


@app.command("compressed-tensors")
def compressed_tensors(
    packed: Path = typer.Argument(..., help="Packed folder written by `mpq pack`."),
    output: Path = typer.Option(..., "-o", "--output", help="Output folder."),
    overwrite: bool = OVERWRITE,
) -> None:
    """An HF folder with a compressed-tensors `mixed-precision` config that stock vLLM / SGLang load."""
    from ..export.compressed_tensors import export_compressed_tensors

    try:
        result = export_compressed_tensors(packed, output, overwrite=overwrite)
    except MPQError as e:
        fail(str(e))
    table = Table("config group", "format", "scheme", "modules")
    for group in result.groups:
        table.add_row(group.name, group.format, group.scheme, str(group.n_modules))
    table.add_row("ignore", "-", "bf16 / fp16", str(result.n_ignored))
    console.print(table)
    console.print(f"wrote {result.path}")
