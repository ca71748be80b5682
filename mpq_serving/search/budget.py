"""The budgeted optimum: the format of every weight (every expert) minimizing predicted KL under a bit budget.

Given each weight's cost in each candidate format (see sensitivity.py) and the costs add up over
weights (the usual separability assumption of mixed-precision search; `benchmarks/search_compare.py`
compares the predicted sum with the measured KL of whole plans), the choice is a multiple-choice
knapsack:

    minimize Σ_w Σ_f cost[w, f] · x[w, f]   s.t.  Σ_f x[w, f] = 1 for every w,
                                                Σ_w Σ_f bits[w, f] · x[w, f] ≤ B · params − fixed bits,
                                                x binary,

solved to optimality (zero MIP gap) by scipy's `milp` (HiGHS branch and bound): a few hundred to a few
thousand binaries with one coupling row take well under a second. Bits are counted as
`mpq plan avg-bits` counts them: every linear weight of the checkpoint with its scales, zeros and
g_idx, the protected ones (lm_head, routers) fixed at bf16.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from ..errors import MPQError
from ..formats import QuantSpec, canonical_name, get_format
from ..outputs import check_output_folder, output_folder
from ..plan import Plan, check_plan_output, resolve
from ..plan.bits import average_bits
from ..plan.model_weights import LinearWeight, linear_weights
from .common import SearchRecord, plan_from_assignment, write_plan

PARETO_KIND = "pareto-front"  # the output kind (see outputs.py) of `mpq plan budget --pareto`
from .sensitivity import (
    OBJECTIVES,
    CalibrationSettings,
    SensitivityTable,
    cache_path,
    candidates,
    load_or_compute,
    scored_weights,
)

_TIGHTEN = 1e-9  # avg bits kept below the target so the solver's feasibility tolerance cannot overshoot it


def parse_formats(text: str) -> list[str]:
    """`bf16,fp8,gptq_int4` -> canonical names, in order, once each; unknown names are an error naming them."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise MPQError("--formats is empty; give candidate formats, e.g. bf16,fp8,gptq_int4,mxfp4")
    out: list[str] = []
    for name in names:
        fmt = canonical_name(name)
        if fmt not in out:
            out.append(fmt)
    return out


@dataclass(frozen=True)
class Option:
    """One candidate format for one weight: its spec, its stored bits (all of them) and its predicted KL."""

    format: str
    spec: QuantSpec
    bits: float
    cost: float


@dataclass(frozen=True)
class BudgetProblem:
    """The knapsack: options per decided weight, the bits of the fixed (protected) weights, and the size."""

    names: list[str]
    options: list[list[Option]]
    fixed_bits: float
    params: int

    def avg_bits(self, choice: list[int]) -> float:
        chosen = sum(opts[k].bits for opts, k in zip(self.options, choice, strict=True))
        return (self.fixed_bits + chosen) / self.params

    def cost(self, choice: list[int]) -> float:
        return sum(opts[k].cost for opts, k in zip(self.options, choice, strict=True))

    def bits_range(self) -> tuple[float, float]:
        """Fewest and most average bits any assignment reaches."""
        low = self.fixed_bits + sum(min(o.bits for o in opts) for opts in self.options)
        high = self.fixed_bits + sum(max(o.bits for o in opts) for opts in self.options)
        return low / self.params, high / self.params

    def unconstrained_bits(self) -> float:
        """Average bits of the least-cost assignment (fewest bits among ties): past it a larger budget buys
        nothing."""
        total = self.fixed_bits
        for opts in self.options:
            best = min(o.cost for o in opts)
            total += min(o.bits for o in opts if o.cost == best)
        return total / self.params


def build_problem(weights: list[LinearWeight], table: SensitivityTable | None, formats: list[str],
                  group_size: int, objective: str = "nll") -> BudgetProblem:
    """Options for every scored weight from the table; protected weights fixed at bf16. Without a table
    every cost is 0: the bits alone, to check a budget before calibrating."""
    if objective not in OBJECTIVES:
        raise MPQError(f"--objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    decided = {w.name for w in scored_weights(weights)}
    names, options, fixed = [], [], 0.0
    for w in weights:
        if w.name not in decided:
            fixed += get_format("bf16").bits_per_weight(QuantSpec("bf16"), w.shape) * w.numel
            continue
        if table is not None and w.name not in table.kl:
            raise MPQError(f"{w.name}: not in the sensitivity table; delete the cache file to recompute it")
        opts = [Option(fmt, spec, get_format(fmt).bits_per_weight(spec, w.shape) * w.numel,
                       0.0 if table is None else table.cost(w.name, fmt, objective))
                for fmt, spec in candidates(w, formats, group_size).items() if table is None or fmt in table.kl[w.name]]
        if not opts:
            raise MPQError(f"{w.name} (shape {w.shape[0]}x{w.shape[1]}) fits none of the formats "
                           f"{', '.join(formats)}; add one that fits it, e.g. bf16")
        names.append(w.name)
        options.append(opts)
    if not names:
        raise MPQError("every linear weight of the model is protected (lm_head, routers): nothing to decide")
    return BudgetProblem(names, options, fixed, sum(w.numel for w in weights))


def solve_choices(costs: list[list[float]], bits: list[list[float]], budget: float) -> list[int] | None:
    """Exact multiple-choice knapsack: one option per item, Σ bits ≤ budget, least Σ cost; None if infeasible."""
    sizes = [len(c) for c in costs]
    n = sum(sizes)
    c = np.concatenate([np.asarray(x, dtype=float) for x in costs])
    scale = float(np.abs(c).max()) or 1.0
    b = np.concatenate([np.asarray(x, dtype=float) for x in bits])
    one_hot = np.zeros((len(sizes), n))
    start = 0
    for i, k in enumerate(sizes):
        one_hot[i, start:start + k] = 1.0
        start += k
    with _quiet_stdout():
        result = milp(c / scale, integrality=np.ones(n), bounds=Bounds(0, 1),
                      constraints=[LinearConstraint(one_hot, 1, 1), LinearConstraint(b[None, :], -np.inf, budget)],
                      options={"mip_rel_gap": 0.0})
    if result.x is None:
        return None
    x = np.round(result.x).astype(int)
    choice, start = [], 0
    for k in sizes:
        choice.append(int(np.argmax(x[start:start + k])))
        start += k
    return choice


@contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence file descriptor 1: scipy's HiGHS build prints branch-and-bound debug lines from C++."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


@dataclass(frozen=True)
class Solution:
    """A chosen option per weight, with what it costs and weighs."""

    target: float
    choice: dict[str, Option]
    avg_bits: float
    predicted_loss: float


def check_target(problem: BudgetProblem, target_avg_bits: float) -> None:
    """An error giving the achievable range when no assignment can be as small as the target."""
    low, high = problem.bits_range()
    if target_avg_bits < low:
        raise MPQError(f"--target-avg-bits {target_avg_bits:g} is below the {low:.4f} average bits that the "
                       f"smallest candidate formats reach (protected layers in bf16 included); achievable: "
                       f"{low:.4f} to {high:.4f}")


def solve(problem: BudgetProblem, target_avg_bits: float) -> Solution:
    """The least-predicted-loss assignment with average bits ≤ target; an error giving the achievable range."""
    check_target(problem, target_avg_bits)
    low, high = problem.bits_range()
    costs = [[o.cost for o in opts] for opts in problem.options]
    bits = [[o.bits / problem.params for o in opts] for opts in problem.options]
    room = target_avg_bits - problem.fixed_bits / problem.params
    choice = solve_choices(costs, bits, room - _TIGHTEN)
    if choice is None:
        choice = solve_choices(costs, bits, room)
    if choice is None:
        raise MPQError(f"no assignment reaches --target-avg-bits {target_avg_bits:g} (achievable: {low:.4f} "
                       f"to {high:.4f})")
    picked = {n: opts[k] for n, opts, k in zip(problem.names, problem.options, choice, strict=True)}
    return Solution(target_avg_bits, picked, problem.avg_bits(choice), problem.cost(choice))


def pareto_front(problem: BudgetProblem, points: int) -> list[Solution]:
    """Optimal solutions at `points` budgets from the least achievable bits to the unconstrained optimum's;
    budgets whose optimum repeats the previous one are dropped."""
    low, _ = problem.bits_range()
    high = problem.unconstrained_bits()
    targets = [low] if points < 2 or high <= low else list(np.linspace(low, high, points))
    front: list[Solution] = []
    for target in targets:
        sol = solve(problem, float(target))
        if not front or sol.choice != front[-1].choice:
            front.append(sol)
    return front


def solution_plan(solution: Solution, weights: list[LinearWeight], record: SearchRecord, **summary: Any) -> Plan:
    """The plan naming each weight whose format differs from the most common one (the default)."""
    assignment = {name: option.spec for name, option in solution.choice.items()}
    default = Counter(assignment.values()).most_common(1)[0][0]
    categories = {w.name: w.category for w in weights}
    counts = Counter(option.format for option in solution.choice.values())
    plan = plan_from_assignment(assignment, default, record, {n: categories[n] for n in assignment})
    bits = average_bits(weights, resolve(plan, [w.name for w in weights])).avg_bits
    if bits > solution.target + 1e-6:
        raise MPQError(f"internal: the written plan has {bits:.6f} average bits, over the target {solution.target}")
    plan.summary = record.summary(target_avg_bits=solution.target, avg_bits=round(bits, 4),
                                  predicted_loss=solution.predicted_loss, format_counts=dict(counts), **summary)
    return plan


def front_rows(front: list[Solution], paths: list[Path]) -> list[dict[str, Any]]:
    """(target, avg bits, predicted loss, plan file) per point of a Pareto front, for JSON / CSV."""
    return [{"target_avg_bits": round(s.target, 6), "avg_bits": round(s.avg_bits, 6),
             "predicted_loss": s.predicted_loss, "plan": str(p)} for s, p in zip(front, paths, strict=True)]


@dataclass(frozen=True)
class BudgetResult:
    plan: Plan
    solution: Solution
    cache: Path
    from_cache: bool
    front: list[dict[str, Any]]


def budget_search(model_dir: Path, target_avg_bits: float, formats: list[str], settings: CalibrationSettings,
                  output: Path, objective: str = "nll", pareto_points: int = 0, cache: Path | None = None,
                  progress: bool = True, overwrite: bool = False) -> BudgetResult:
    """Sensitivities (cached next to `output`), the optimum at the target written to `output`, and with
    `pareto_points` the front's plans in `<output stem>.pareto/` with front.json and front.csv.

    Outputs are checked before the calibration passes: an existing plan (or front) is replaced only with
    `overwrite`, and only if it is one."""
    settings.check()
    output = Path(output)
    front_folder = output.parent / f"{output.stem}.pareto"
    check_plan_output(output, overwrite=overwrite)
    if pareto_points:
        check_output_folder(front_folder, PARETO_KIND, overwrite=overwrite)
    if objective not in OBJECTIVES:
        raise MPQError(f"--objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    record = SearchRecord("budget", parameters={
        "model": str(model_dir), "target_avg_bits": target_avg_bits, "formats": formats,
        "objective": objective, "sensitivity": settings.method, "nsamples": settings.nsamples,
        "seq_len": settings.seq_len, "text": settings.text, "group_size": settings.group_size, "device": settings.device}, seed=settings.seed)
    weights = linear_weights(model_dir)
    check_target(build_problem(weights, None, formats, settings.group_size, objective), target_avg_bits)
    cache = cache or cache_path(output.parent, model_dir, settings)
    table, from_cache = load_or_compute(model_dir, formats, settings, cache, progress=progress)
    problem = build_problem(weights, table, formats, settings.group_size, objective)
    low, high = problem.bits_range()
    solution = solve(problem, target_avg_bits)
    about = {"achievable_avg_bits": [round(low, 4), round(high, 4)],
             "sensitivity_cache": str(cache), "sensitivity_from_cache": from_cache,
             "sensitivity_seconds": round(table.seconds, 2)}
    if table.usage:
        about["expert_usage"] = {"min": min(table.usage.values()), "max": max(table.usage.values())}
    rows: list[dict[str, Any]] = []
    if pareto_points:
        front = pareto_front(problem, pareto_points)
        paths = [front_folder / f"bits_{s.avg_bits:.3f}{output.suffix}" for s in front]
        rows = front_rows(front, paths)
        with output_folder(front_folder, PARETO_KIND, overwrite=overwrite) as tmp:
            for s, path in zip(front, paths, strict=True):
                write_plan(solution_plan(s, weights, record, **about), tmp / path.name)
            _write_front(tmp, rows)
        record.history = rows
    else:
        record.history = front_rows([solution], [output])
    plan = solution_plan(solution, weights, record, **about)
    write_plan(plan, output, overwrite=overwrite)
    return BudgetResult(plan, solution, cache, from_cache, rows)


def _write_front(folder: Path, rows: list[dict[str, Any]]) -> None:
    (folder / "front.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    with (folder / "front.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
