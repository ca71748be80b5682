"""`mpq plan alpha-hill`: seed 001's two-stage Alpha-Hill threshold search, registered on the `mpq plan` app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from .common import OVERWRITE, err, fail, resolve_model

_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
           "fp32": "float32", "float32": "float32"}


def register(app: typer.Typer) -> None:
    """Add `alpha-hill` to `app`."""
    app.command("alpha-hill")(alpha_hill)


def alpha_hill(
    model: str = typer.Argument(..., help="Model folder (float safetensors) or demo name (smollm2, smollm2-moe)."),
    ppl_threshold: float = typer.Option(0.1, "--ppl-threshold",
                                        help="Largest accepted PPL rise over bf16, relative (0.1 = 10%)."),
    target_avg_bits: float = typer.Option(8.0, "--target-avg-bits", help="Stop once the plan's avg bits reach this."),
    step_size: float = typer.Option(0.5, "--step-size", help="How far the alpha threshold is lowered per step."),
    output_config: Path = typer.Option(..., "-o", "--output-config",
                                       help="Config JSON: the plan + alphas + search_summary."),
    output_plan: Path = typer.Option(..., "--output-plan", help="Plan file (.json or .yaml) for `mpq pack` / `eval`."),
    batch_size: int = typer.Option(1, "--batch-size", help="Windows per forward pass in the PPL evaluation."),
    max_tokens: int = typer.Option(2048, "--max-tokens", help="Calibration tokens scored per PPL evaluation."),
    seq_len: int = typer.Option(512, "--seq-len", help="PPL window length."),
    text: str = typer.Option("wiki_calib", "--text", help="Calibration text (shipped name or file); not wiki_eval."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N."),
    dtype: str = typer.Option("bf16", "--dtype", help="Activation / unquantized weight dtype: bf16, fp16, fp32."),
    chart: Path | None = typer.Option(None, "--chart", help="Alpha-per-layer PNG [default: CONFIG with .png]."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Per-layer Alpha-Hill, then an mxfp4 and an mxfp8 alpha threshold lowered step by step under a PPL bound.

    Writes the config (search_summary with both thresholds and every step), the plan, and a chart.
    """
    import torch

    from ..errors import MPQError
    from ..outputs import check_output_file, write_text_output
    from ..plan import check_plan_output, save_plan
    from ..search.alpha_hill_search import (
        PerplexityEvaluator,
        SearchParams,
        plot_alphas,
        run_alpha_hill,
    )
    from ..search.common import SearchRecord

    if dtype.lower() not in _DTYPES:
        fail(f"--dtype {dtype!r}: choose one of bf16, fp16, fp32")
    for flag, value, low in (("--batch-size", batch_size, 1), ("--max-tokens", max_tokens, 2),
                             ("--seq-len", seq_len, 2)):
        if value < low:
            fail(f"{flag} must be >= {low}, got {value}")
    if output_config.suffix.lower() != ".json":
        fail(f"{output_config}: the config is JSON; give it a .json name")
    parameters: dict[str, Any] = {
        "model": model, "ppl_threshold": ppl_threshold, "target_avg_bits": target_avg_bits, "step_size": step_size,
        "batch_size": batch_size, "max_tokens": max_tokens, "seq_len": seq_len, "text": text, "device": device,
        "dtype": dtype,
    }
    record = SearchRecord("alpha-hill", parameters)  # the clock starts here: search_seconds covers everything
    try:
        check_plan_output(output_plan, overwrite=overwrite)  # before the perplexity passes
        check_output_file(output_config, "alpha-hill config", overwrite=overwrite, recognise=_is_alpha_hill_config)
        params = SearchParams(ppl_threshold, target_avg_bits, step_size)
        folder = resolve_model(model)

        def make_evaluator() -> PerplexityEvaluator:
            return PerplexityEvaluator(folder, text=text, seq_len=seq_len, max_tokens=max_tokens,
                                       batch_size=batch_size, device=device,
                                       dtype=getattr(torch, _DTYPES[dtype.lower()]), progress=progress)

        outcome = run_alpha_hill(folder, params, make_evaluator, record, on_step=_print_step, progress=progress)
        save_plan(outcome.plan, output_plan, overwrite=overwrite)
        write_text_output(output_config, json.dumps(outcome.config, indent=2) + "\n", "alpha-hill config",
                          overwrite=overwrite, recognise=_is_alpha_hill_config)
    except (MPQError, OSError) as e:
        fail(str(e))
    chart_path = plot_alphas(outcome, chart or output_config.with_suffix(".png"), title=f"{model}: Alpha-Hill")
    r = outcome.result
    for stage in r.stages:
        err.print(f"{stage.format}: threshold {stage.threshold}, {len(stage.layers)} layers; {stage.stop_reason}",
                  soft_wrap=True)
    err.print(f"wrote {output_config}, {output_plan}, {chart_path}")
    typer.echo(f"baseline_ppl: {r.baseline_ppl:.4f}")
    typer.echo(f"ppl: {r.ppl:.4f}  (calibration text {text}, {max_tokens} tokens)")
    typer.echo(f"search_seconds: {outcome.plan.summary['search_seconds']}")
    typer.echo(f"avg_bits: {r.avg_bits:.4f}")


def _print_step(entry: dict[str, Any]) -> None:
    mark = "ok" if entry["accepted"] else "REJECTED"
    if entry["stage"] in ("baseline", "final"):
        where = "baseline (all bf16)" if entry["stage"] == "baseline" else "final plan"
    else:
        where = f"{entry['stage']} alpha >= {entry['threshold']:.3f}, rest {entry['rest']}"
    err.print(f"{where}: {entry['layers']} layers (+{len(entry['added'])}), avg_bits {entry['avg_bits']:.3f}, "
              f"ppl {entry['ppl']:.4f} ({entry['ppl_rise']:+.2%}) {mark}"
              + ("" if entry["evaluated"] else " (no new layer: previous measurement)"), soft_wrap=True)


def _is_alpha_hill_config(path: Path) -> bool:
    """A config this command wrote (it carries `search_summary`): the only file --overwrite may replace."""
    try:
        return "search_summary" in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False
