"""`mpq plan genetic`: seed 002's genetic search of per-layer activation bits (W4 + A4/A8)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..errors import MPQError
from .common import OVERWRITE, fail, resolve_model

console = Console(highlight=False)


def register(app: typer.Typer) -> None:
    """Add `genetic` to the `mpq plan` app."""

    @app.command("genetic")
    def genetic(
        model: str = typer.Argument(..., help="Model folder or demo name (smollm2, smollm2-moe)."),
        output: Path = typer.Option(..., "-o", "--output", help="Plan to write (.json or .yaml)."),
        ga_pop: int = typer.Option(30, "--ga-pop", "--ga_pop", help="Population size."),
        ga_gen: int = typer.Option(25, "--ga-gen", "--ga_gen", help="Generations."),
        target_compression: float = typer.Option(
            0.75, "--target-compression", "--target_compression",
            help="Max parameter-weighted activation bits relative to all-A8 (0.5 = all A4, 1 = all A8)."),
        smooth_alpha: float | None = typer.Option(
            None, "--smooth-alpha", "--smooth_alpha",
            help="SmoothQuant alpha for the error measurement (e.g. 0.5); off when not given."),
        threshold: float = typer.Option(2.5, "--threshold", help="Sensitivity MSE(A4)/MSE(A8) above which a layer is forced to A8."),
        edge_threshold: float = typer.Option(1.5, "--edge-threshold", help="The same for the first and last transformer blocks."),
        nsamples: int = typer.Option(16, "--nsamples", min=1, help="Calibration windows from the shipped Wikipedia slice."),
        seq_len: int = typer.Option(128, "--seq-len", min=2, help="Tokens per calibration window."),
        seed: int = typer.Option(0, "--seed", help="Seeds the calibration windows and the GA."),
        overwrite: bool = OVERWRITE,
    ) -> None:
        """W4 (mxfp4) weights everywhere; A4 (aq mxfp4) or A8 (aq mxfp8) activations per layer, by a GA."""
        from transformers import AutoTokenizer

        from ..plan import check_plan_output
        from ..search.common import calibration_tokens, write_plan
        from ..search.genetic import GAConfig, genetic_search, plot_convergence

        folder = resolve_model(model)
        parameters = {"model": str(model), "ga_pop": ga_pop, "ga_gen": ga_gen, "target_compression": target_compression,
                      "smooth_alpha": smooth_alpha, "threshold": threshold, "edge_threshold": edge_threshold,
                      "nsamples": nsamples, "seq_len": seq_len}
        try:
            check_plan_output(output, overwrite=overwrite)  # before the calibration passes
            config = GAConfig(population=ga_pop, generations=ga_gen, target_compression=target_compression, seed=seed)
            tokens = calibration_tokens(AutoTokenizer.from_pretrained(folder), nsamples, seq_len, seed=seed)
            plan = genetic_search(folder, tokens, config, smooth_alpha, threshold, edge_threshold, parameters)
            written = write_plan(plan, output, overwrite=overwrite)
            curve = plot_convergence(plan.summary["history"], output.with_name(output.stem + "_convergence.png"))
        except (MPQError, ValueError, OSError) as e:
            fail(str(e))
        s = plan.summary
        console.print(f"A4 layers: {s['a4_layers']}  A8 layers: {s['a8_layers']} ({s['forced_a8_layers']} forced)  "
                      f"compression: {s['compression']:.4f}  fitness: {s['fitness']:.6g}  search: {s['search_seconds']} s")
        console.print(f"wrote {written} and {curve}")
