"""`mpq plan random`: registered on the `mpq plan` app."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..errors import MPQError
from .common import OVERWRITE, fail, resolve_model

console = Console(highlight=False)


def random_cmd(
    model: str = typer.Argument(..., help="Model folder or demo name (smollm2, smollm2-moe)."),
    mxfp4_ratio: float = typer.Option(0.3, "--mxfp4-ratio", help="Share of drawn layers in mxfp4 (experts first)."),
    bf16_ratio: float = typer.Option(0.2, "--bf16-ratio", help="Share of drawn layers in bf16 (attention first)."),
    output: Path = typer.Option(..., "-o", "--output-config", "--output", help="Plan file to write (.json / .yaml)."),
    seed: int = typer.Option(42, "--seed", help="Random seed: the same seed gives the same plan."),
    group_size: int = typer.Option(32, "--group-size", help="Quantization group (the MX block: 32)."),
    device: str = typer.Option("cpu", "--device", help="cpu / cuda (recorded; layers are read from the "
                               "safetensors headers, nothing is loaded)."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32 / fp16 / bf16 (recorded, as --device)."),
    weight_only: bool = typer.Option(False, "--weight-only", help="Leave out the seed's `aq` (activations stay "
                                     "bf16) to compare with weight-only plans."),
    verbose: bool = typer.Option(False, "--verbose", help="Print each layer moved off the mxfp8 default, and why."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Seed 000: random mxfp4 / bf16 layers by ratio, the rest mxfp8; lm_head and routers bf16."""
    from ..search.common import write_plan
    from ..search.random_plan import RandomPlanConfig, random_plan

    config = RandomPlanConfig(mxfp4_ratio, bf16_ratio, seed, group_size, device, dtype, weight_only)
    try:
        config.check()
        plan = random_plan(resolve_model(model), config)
        write_plan(plan, output, overwrite=overwrite)
    except MPQError as e:
        fail(str(e))
    if verbose:
        for rule in plan.overrides:
            console.print(f"{rule.pattern}: {rule.model_extra.get('precision')} ({rule.category})")
    s = plan.summary
    console.print(f"layers: {s['total_layers']} drawn ({s['mxfp4_layers']} mxfp4, {s['bf16_layers']} bf16, "
                  f"{s['mxfp8_layers']} mxfp8) + {s['special_bf16_layers']} kept bf16; seed {seed}")
    console.print(f"avg_bits: {s['avg_bits']:.4f}")
    console.print(f"wrote {output}")


def register(app: typer.Typer) -> None:
    """Add `random` to `mpq plan`."""
    app.command("random")(random_cmd)
