"""`mpq plan mutual-info`: seed 003's mutual-information grouping and per-group bit allocation."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..errors import MPQError
from .common import OVERWRITE, fail, resolve_model

console = Console(highlight=False)


def register(app: typer.Typer) -> None:
    """Add `mutual-info` to the `mpq plan` app."""

    @app.command("mutual-info")
    def mutual_info(
        model: str = typer.Argument(..., help="Model folder or demo name (smollm2, smollm2-moe)."),
        output: Path = typer.Option(..., "-o", "--output", help="Plan to write (.json or .yaml)."),
        target_avg_bits: float = typer.Option(4.0, "--target-avg-bits", "--target_avg_bits",
                                              help="Average stored bits per linear weight to stay at or under."),
        n_groups: int = typer.Option(10, "--n-groups", "--n_groups", help="Spectral clusters of layers; one format each."),
        formats: str = typer.Option("bf16,fp8,int8,gptq_int4,mxfp4", "--formats",
                                    help="Comma-separated candidate formats."),
        channels: int = typer.Option(8, "--channels", help="Principal output channels per layer for the MI."),
        nsamples: int = typer.Option(128, "--nsamples", min=1, help="Calibration windows from the shipped Wikipedia slice."),
        seq_len: int = typer.Option(64, "--seq-len", min=2, help="Tokens per calibration window."),
        seed: int = typer.Option(0, "--seed", help="Seeds the calibration windows and the randomized SVD."),
        overwrite: bool = OVERWRITE,
    ) -> None:
        """Group layers by the mutual information of their calibration outputs; give each group a format."""
        from transformers import AutoTokenizer

        from ..plan import check_plan_output
        from ..search.common import calibration_tokens, write_plan
        from ..search.mutual_info import MIConfig, mutual_info_search

        folder = resolve_model(model)
        names = tuple(f.strip() for f in formats.split(",") if f.strip())
        parameters = {"model": str(model), "target_avg_bits": target_avg_bits, "n_groups": n_groups,
                      "formats": list(names), "channels": channels, "nsamples": nsamples, "seq_len": seq_len}
        try:
            check_plan_output(output, overwrite=overwrite)  # before the calibration passes
            config = MIConfig(target_avg_bits, n_groups, names, channels, seed)
            tokens = calibration_tokens(AutoTokenizer.from_pretrained(folder), nsamples, seq_len, seed=seed)
            plan = mutual_info_search(folder, tokens, config, parameters)
            written = write_plan(plan, output, overwrite=overwrite)
        except (MPQError, ValueError, OSError) as e:
            fail(str(e))
        for g in plan.summary["groups"]:
            console.print(f"group {g['group']}: {len(g['layers'])} layers -> {g['format']}  "
                          f"(affinity within {g['affinity_within']:.3f}, to others {g['affinity_between']:.3f})")
        console.print(f"avg_bits: {plan.summary['avg_bits']:.4f}  search: {plan.summary['search_seconds']} s")
        console.print(f"wrote {written}")
