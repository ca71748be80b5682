"""`mpq plan ...`: validate, show, avg-bits and convert plans (the searches add their own commands)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import MPQError
from ..formats import get_format
from ..plan import load_plan, resolve, save_plan
from ..plan.bits import average_bits
from ..plan.model_weights import linear_weights
from ..plan.validate import validate_plan
from .common import OVERWRITE, err, fail, resolve_model

app = typer.Typer(no_args_is_help=True)
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)

PlanArg = typer.Argument(..., help="Plan file (.json or .yaml).", show_default=False)
ModelOpt = typer.Option(..., "--model", help="Model folder (safetensors) the plan applies to, or a demo name (smollm2, smollm2-moe).")


@app.command("validate")
def validate(plan: Path = PlanArg, model: str = ModelOpt) -> None:
    """Check every rule matches, every shape suits its format, every source holds its tensors."""
    try:
        problems = validate_plan(load_plan(plan), resolve_model(model))
    except MPQError as e:
        fail(str(e))
    for p in problems:
        err.print(f"[red]problem:[/] {escape(p)}", soft_wrap=True)
    if problems:
        fail(f"{plan}: {len(problems)} problem(s)")
    console.print(f"{plan}: valid for {model}")


@app.command("show")
def show(plan: Path = PlanArg, model: str = ModelOpt) -> None:
    """A table per layer / expert: format, group size, bits, and which rule decided it."""
    try:
        p = load_plan(plan)
        weights = linear_weights(resolve_model(model))
        resolved = resolve(p, [w.name for w in weights])
    except MPQError as e:
        fail(str(e))
    table = Table("weight", "shape", "format", "group", "bits", "decided by", title=str(plan))
    for w in weights:
        r = resolved[w.name]
        spec = get_format(r.spec.format).normalize(r.spec)
        group = "" if spec.group_size is None else ("channel" if spec.group_size == -1 else str(spec.group_size))
        bits = get_format(spec.format).bits_per_weight(spec, w.shape)
        table.add_row(w.name, f"{w.shape[0]}x{w.shape[1]}", spec.describe(), group, f"{bits:.3f}", r.reason)
    console.print(table)
    report = average_bits(weights, resolved)
    console.print(f"avg_bits: {report.avg_bits:.4f}")


@app.command("avg-bits")
def avg_bits(plan: Path = PlanArg, model: str = ModelOpt) -> None:
    """Average stored bits per weight over the model's linear weights, from the real shapes."""
    try:
        p = load_plan(plan)
        weights = linear_weights(resolve_model(model))
        report = average_bits(weights, resolve(p, [w.name for w in weights]))
    except MPQError as e:
        fail(str(e))
    console.print(
        f"counted: {report.n_weights} linear weights, {report.n_params:,} parameters "
        "(every 2-D linear weight stored in the checkpoint, lm_head included unless tied; "
        "embeddings and norms excluded); scales, zeros and g_idx included"
    )
    console.print(f"total: {report.total_bits / 8 / 2**20:.2f} MiB")
    console.print(f"avg_bits: {report.avg_bits:.4f}")


@app.command("convert")
def convert(
    plan: Path = PlanArg,
    output: Path = typer.Option(..., "-o", "--output", help="Output file; .json or .yaml picks the form."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Rewrite a plan in the other form (JSON <-> YAML), losslessly."""
    try:
        save_plan(load_plan(plan), output, overwrite=overwrite)
    except MPQError as e:
        fail(str(e))
    console.print(f"wrote {output}")


def _register_strategies() -> None:
    from . import plan_alpha_hill_cmd, plan_budget_cmd, plan_genetic_cmd, plan_mutual_info_cmd, plan_random_cmd

    for module in (plan_random_cmd, plan_alpha_hill_cmd, plan_genetic_cmd, plan_mutual_info_cmd, plan_budget_cmd):
        module.register(app)


_register_strategies()
