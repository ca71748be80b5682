"""`mpq report`: registered on the top-level app."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..errors import MPQError
from .common import OVERWRITE, fail, resolve_model

console = Console(highlight=False)


def report(
    plans: list[Path] = typer.Argument(..., help="Plan files (.json / .yaml), from any strategy.", show_default=False),
    model: str = typer.Option(..., "--model", help="Model folder or demo name (smollm2, smollm2-moe)."),
    output: Path = typer.Option(Path("report"), "-o", "--output", help="Folder for report.md, report.json, PNGs."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", min=2, help="Score only the first N tokens."),
    seq_len: int = typer.Option(512, "--seq-len", min=8, help="Perplexity window (as `mpq eval ppl`)."),
    text: str = typer.Option("wiki_eval", "--text", help="Text file, or a shipped text name."),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Also score the bf16 model itself."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Avg bits, weight memory and perplexity of each plan; PPL-vs-bits chart and per-layer format maps."""
    from transformers import AutoTokenizer

    from ..search.report import PlanResult, run_report

    folder = resolve_model(model)

    def show(r: PlanResult) -> None:
        console.print(f"{r.label} ({r.strategy}): avg_bits {r.avg_bits:.4f}  memory {r.weight_memory_mib:.1f} MiB  "
                      f"ppl {r.ppl:.4f}")

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        written = run_report(plans, folder, output, tokenizer, text, seq_len, max_tokens, baseline, on_result=show,
                             overwrite=overwrite)
    except (MPQError, OSError) as e:
        fail(str(e))
    console.print(f"wrote {', '.join(p.name for p in written)} in {output}")


def register(app: typer.Typer) -> None:
    """Add `report` to `mpq`."""
    app.command("report")(report)
