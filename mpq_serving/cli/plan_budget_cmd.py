"""`mpq plan budget`: registered on the `mpq plan` app."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..errors import MPQError
from .common import OVERWRITE, fail, resolve_model

console = Console(highlight=False, soft_wrap=True)


def budget_cmd(
    model: str = typer.Argument(..., help="Model folder or demo name (smollm2, smollm2-moe)."),
    target_avg_bits: float = typer.Option(..., "--target-avg-bits", help="Budget: average stored bits per "
                                          "linear weight, counted as `mpq plan avg-bits` counts them."),
    output: Path = typer.Option(..., "-o", "--output", "--output-config", help="Plan file to write (.json / .yaml)."),
    formats: str = typer.Option("bf16,fp8,gptq_int4,mxfp4", "--formats", help="Candidate formats, comma-separated."),
    nsamples: int = typer.Option(64, "--nsamples", help="Calibration sequences (the nll "
                                  "objective's first-order term is noisy with fewer)."),
    seq_len: int = typer.Option(256, "--seq-len", help="Tokens per calibration sequence."),
    seed: int = typer.Option(0, "--seed", help="Seed of the calibration windows and of the sampled labels."),
    group_size: int = typer.Option(128, "--group-size", help="Preferred group of grouped int4 formats "
                                   "(the largest of it, 128, 64, 32 dividing in_features is used)."),
    objective: str = typer.Option("nll", "--objective", help="nll: increase of the calibration text's loss "
                                  "(what perplexity measures); kl: KL divergence from the bf16 model."),
    sensitivity: str = typer.Option("fisher", "--sensitivity", help="fisher: estimate from one forward and two "
                                    "backward passes; measured: one pass per weight and format (exact, slow)."),
    batch_size: int = typer.Option(2, "--batch-size", min=1, help="Calibration sequences per pass."),
    device: str = typer.Option("cpu", "--device", help="cpu / cuda: where the calibration passes run."),
    stats_gib: float | None = typer.Option(None, "--stats-gib", min=0.01, help="Memory for the Fisher statistics "
                                           "(default: half of what is available now); more weights than fit get "
                                           "more sets of calibration passes (same result)."),
    pareto: bool = typer.Option(False, "--pareto", help="Also write the Pareto front: plans in <OUT stem>.pareto/ "
                                "with front.json and front.csv (bits, predicted loss)."),
    pareto_points: int = typer.Option(16, "--pareto-points", min=2, help="Budgets sampled along the front."),
    cache: Path | None = typer.Option(None, "--sensitivity-cache", help="Sensitivity cache file (default: next "
                                      "to OUT, named after the model and the calibration settings)."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Ours: per-weight (per-expert) sensitivity to each format, then the exact optimum under the bit budget."""
    from ..search.budget import budget_search, parse_formats
    from ..search.sensitivity import CalibrationSettings

    settings = CalibrationSettings(sensitivity, nsamples, seq_len, seed, "wiki_calib", group_size, batch_size, device,
                                   stats_gib)
    try:
        settings.check()
        candidates = parse_formats(formats)
        folder = resolve_model(model)
        result = budget_search(folder, target_avg_bits, candidates, settings, output, objective,
                               pareto_points if pareto else 0, cache, overwrite=overwrite)
    except MPQError as e:
        fail(str(e))
    s = result.plan.summary
    source = "cached" if result.from_cache else f"computed in {s['sensitivity_seconds']:.1f} s"
    console.print(f"sensitivities: {source} ({result.cache})")
    counts = ", ".join(f"{n} {fmt}" for fmt, n in sorted(s["format_counts"].items()))
    console.print(f"formats: {counts}; achievable {s['achievable_avg_bits'][0]:.4f} to "
                  f"{s['achievable_avg_bits'][1]:.4f} avg bits")
    if result.front:
        console.print(f"pareto: {len(result.front)} plans in {Path(result.front[0]['plan']).parent}")
    console.print(f"predicted_{objective}: {result.solution.predicted_loss:.6f} nats/token")
    console.print(f"avg_bits: {s['avg_bits']:.4f}")
    console.print(f"wrote {output}")


def register(app: typer.Typer) -> None:
    """Add `budget` to `mpq plan`."""
    app.command("budget")(budget_cmd)
