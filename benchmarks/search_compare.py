"""Plan search strategies side by side, and a check of the sensitivity the budget search optimizes.

    nice python benchmarks/search_compare.py table [--model smollm2] [--budgets 4.5,6] [--max-tokens 8192] \\
        [--objective kl] [--strategies uniform,random,alpha-hill,genetic,mutual-info,budget] [--out bench_search/]
    nice python benchmarks/search_compare.py proxy [--model smollm2] [--weights 30] [--formats mxfp4,fp8] \\
        [--plans P.json ...] [--cache FILE]

`table`: every strategy run through its own `mpq plan ...` command at each budget (wall-clock time of
the command = the search run-time, model loading and calibration included), then every plan scored
as `mpq report` scores it (perplexity on wiki_eval, first --max-tokens tokens, windows of 512; avg bits
over every linear weight, scales included) and the report's charts (PPL vs bits, per-layer format
maps) written with its code. Prints a markdown table and writes `table.json`, `table.md` and `report/`.
Results are cached per plan file (a plan already in --out is not searched again, a plan already
scored is not scored again), so an interrupted run picks up where it stopped; `--fresh` redoes all.

Per strategy, how it is pointed at a budget B:
- uniform: the nearest uniform RTN formats below or near the budgets (mxfp4 4.25, awq_int4 / gptq_int4
  with 128-groups where in_features allows, else 64: ~4.3); the 8-bit formats (~8.06) when asked for.
- random (seed 000): `--weight-only --bf16-ratio 0` and the smallest `--mxfp4-ratio` whose plan is at
  or under B (its other knob, bf16, only adds bits); seed 42.
- alpha-hill (seed 001): `--target-avg-bits B --ppl-threshold 100`: the seed's 10% PPL bound stops it
  near 8.2 bits, so the bound is lifted and the bit target decides where it stops.
- genetic (seed 002): W4 (mxfp4) weights by design, with A4/A8 activations; one run (4.25 bits), shown
  in the lowest budget's group; no ≈6-bit point exists for it.
- mutual-info (seed 003) and budget (ours): `--target-avg-bits B` with the same candidate formats; the
  budget search also at exactly each uniform plan's bits (rows in the `uniform` group), so it is
  compared with each uniform format at equal bits.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table
from scipy.stats import spearmanr

from mpq_serving.cli.common import resolve_model
from mpq_serving.plan import load_plan, resolve
from mpq_serving.plan.model_weights import linear_weights
from mpq_serving.search.common import calibration_tokens, candidate_spec
from mpq_serving.search.random_plan import RandomPlanConfig, random_plan
from mpq_serving.search.sensitivity import (
    CalibrationModel,
    CalibrationSettings,
    cache_path,
    load_or_compute,
    measured_change,
    reference_logprobs,
    scored_weights,
)

ALL_FORMATS = ["bf16", "fp8", "int8", "mxfp8", "gptq_int4", "awq_int4", "mxfp4"]
STRATEGIES = ("uniform", "random", "alpha-hill", "genetic", "mutual-info", "budget")
STRATEGY_LABELS = ("uniform RTN", "random (000)", "alpha-hill (001)", "genetic (002, W4 + A4/A8)", "mutual-info (003)",
                   "budget")  # table order
console = Console(highlight=False, width=200)


def proxy(args: argparse.Namespace) -> None:
    """Fisher estimates of (weight, format) KL and loss change against the measured ones, held-out windows."""
    from transformers import AutoTokenizer

    folder = resolve_model(args.model)
    settings = CalibrationSettings()
    cache = args.cache or cache_path(Path(args.out), folder, settings)
    table, _ = load_or_compute(folder, ALL_FORMATS, settings, cache)
    calib = CalibrationModel(folder, progress=False)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokens = calibration_tokens(tokenizer, args.nsamples, args.seq_len, seed=1)
    reference = reference_logprobs(calib, tokens, 2)
    weights = scored_weights(calib.weights)
    sample = random.Random(0).sample(weights, min(args.weights, len(weights)))
    formats = args.formats.split(",")
    rows = []
    start = time.perf_counter()
    for i, w in enumerate(sample):
        for fmt in formats:
            spec = candidate_spec(fmt, w.shape[1])
            kl, loss = measured_change(calib, tokens, reference, 2, {w.name: spec})
            rows.append({"weight": w.name, "format": fmt, "predicted_kl": table.kl[w.name][fmt], "kl": kl,
                         "predicted_nll": table.cost(w.name, fmt, "nll"), "nll": loss})
        console.print(f"{i + 1}/{len(sample)} weights measured ({time.perf_counter() - start:.0f} s)")
    out = Table("formats", "pairs", "spearman KL", "median pred/meas KL", "spearman NLL",
                title=f"Fisher estimates vs measured, {folder.name}, {tokens.numel()} held-out tokens")
    for label, subset in [("all", rows), *[(f, [r for r in rows if r["format"] == f]) for f in formats]]:
        ratios = sorted(r["predicted_kl"] / r["kl"] for r in subset if r["kl"] > 0)
        rho_kl = spearmanr([r["predicted_kl"] for r in subset], [r["kl"] for r in subset]).statistic
        rho_nll = spearmanr([r["predicted_nll"] for r in subset], [r["nll"] for r in subset]).statistic
        out.add_row(label, str(len(subset)), f"{rho_kl:.3f}", f"{ratios[len(ratios) // 2]:.3f}", f"{rho_nll:.3f}")
    console.print(out)
    plans = Table("plan", "predicted KL (sum)", "measured KL", "predicted NLL", "measured NLL",
                  title="Whole plans: are the costs additive?")
    names = [w.name for w in calib.weights]
    for path in args.plans:
        changes = {n: r.spec for n, r in resolve(load_plan(path), names).items() if r.spec.format != "bf16"}
        kl_sum = sum(table.kl[n][spec.format] for n, spec in changes.items())
        nll_sum = sum(table.cost(n, spec.format, "nll") for n, spec in changes.items())
        kl, loss = measured_change(calib, tokens, reference, 2, changes)
        plans.add_row(Path(path).stem, f"{kl_sum:.4f}", f"{kl:.4f}", f"{nll_sum:.4f}", f"{loss:.4f}")
        rows.append({"plan": str(path), "predicted_kl": kl_sum, "kl": kl, "predicted_nll": nll_sum, "nll": loss})
    if args.plans:
        console.print(plans)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "proxy.json").write_text(json.dumps(rows, indent=1) + "\n")


def _mpq(*argv: str, log: Path) -> tuple[float, float]:
    """Run one `mpq` command (this interpreter's), its output to `log`: (wall-clock, CPU) seconds. The CPU
    seconds (user + system of that process) do not depend on how busy the machine is."""
    started = time.perf_counter()
    with log.open("w") as out:
        child = subprocess.Popen([sys.executable, "-m", "mpq_serving.cli.main", *argv], stdout=out,
                                 stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"mpq {' '.join(argv)} failed (exit {child.returncode}); see {log}")
    return time.perf_counter() - started, usage.ru_utime + usage.ru_stime


def _random_ratio(folder: Path, budget: float, seed: int) -> float:
    """The smallest mxfp4 ratio (bf16 ratio 0, weight-only) whose seed-000 plan is at or under `budget` bits
    (bisection: every extra mxfp4 layer replaces an mxfp8 one, so bits fall as the ratio grows)."""
    n = len(scored_weights(linear_weights(folder)))

    def bits(k: int) -> float:
        config = RandomPlanConfig(mxfp4_ratio=k / n, bf16_ratio=0.0, seed=seed, weight_only=True)
        return random_plan(folder, config).summary["avg_bits"]

    if bits(n) > budget:
        raise SystemExit(f"no random plan reaches {budget} bits")
    low, high = 0, n  # bits(high) <= budget
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if bits(mid) <= budget else (mid + 1, high)
    return high / n


def _uniform(fmt: str, folder: Path, out: Path) -> Path:
    """One format for every weight; grouped int4 with 128-groups where in_features allows, else 64
    (SmolLM2's 576-wide inputs), as `candidate_spec` picks them."""
    weights = scored_weights(linear_weights(folder))
    specs = {w.name: candidate_spec(fmt, w.shape[1]) for w in weights}
    default = specs[weights[0].name]

    def rule(spec) -> dict:
        return {"wq": spec.format, **({"group_size": spec.group_size} if spec.group_size else {})}

    overrides = [{"pattern": n, **rule(s)} for n, s in specs.items() if s != default]
    path = out / f"uniform_{fmt}.json"
    path.write_text(json.dumps({"default": rule(default), "overrides": overrides}, indent=1) + "\n")
    return path


def _avg_bits(plan: Path, folder: Path) -> float:
    from mpq_serving.plan.bits import average_bits

    weights = linear_weights(folder)
    return average_bits(weights, resolve(load_plan(plan), [w.name for w in weights])).avg_bits


def _budget_argv(args: argparse.Namespace, bits: str, formats: str, out: Path) -> list[str]:
    return ["plan", "budget", args.model, "--target-avg-bits", bits, "--formats", formats, "--objective",
            args.objective, "--nsamples", str(args.nsamples), "--sensitivity-cache", str(out.parent / "sensitivity.json"),
            "-o", str(out), *(["--stats-gib", str(args.stats_gib)] if args.stats_gib else [])]


class Runs:
    """Searches, each run once (the plan file and its times are kept in --out; a plan found there without
    times keeps the `search_seconds` its summary records). Searches are queued by
    `add` and started by `run_all`, up to --jobs at once; the searches of one chain (the budget runs,
    which share one sensitivity table) run one after another."""

    def __init__(self, out: Path, fresh: bool, jobs: int):
        self.out, self.fresh, self.jobs = out, fresh, jobs
        self.times_file = out / "search_times.json"
        self.times: dict[str, dict[str, float | None]] = {} if fresh or not self.times_file.is_file() else {
            k: v if isinstance(v, dict) else {"wall": v, "cpu": None}
            for k, v in json.loads(self.times_file.read_text()).items()}
        self.chains: dict[str, list[tuple[str, list[str]]]] = {}
        self.lock = threading.Lock()

    def add(self, name: str, *argv: str, plan: Path | None = None, chain: str | None = None) -> Path:
        plan = plan or self.out / f"{name}.json"
        if plan.is_file() and name not in self.times and not self.fresh:  # searched outside this script
            self.times[name] = {"wall": load_plan(plan).summary.get("search_seconds"), "cpu": None}
        if not (plan.is_file() and not self.fresh):
            self.chains.setdefault(chain or name, []).append((name, list(argv)))
        return plan

    def _run_chain(self, chain: list[tuple[str, list[str]]]) -> None:
        for name, argv in chain:
            console.print(f"searching {name} ...")
            wall, cpu = _mpq(*argv, log=self.out / f"{name}.log")
            with self.lock:
                if self.times_file.is_file():  # another run on the same --out may have added its own
                    self.times = {**json.loads(self.times_file.read_text()), **self.times}
                self.times[name] = {"wall": round(wall, 1), "cpu": round(cpu, 1)}
                self.times_file.write_text(json.dumps(self.times, indent=1) + "\n")
            console.print(f"  {name}: {wall:.0f} s wall, {cpu:.0f} s CPU")

    def run_all(self) -> None:
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            for future in [pool.submit(self._run_chain, c) for c in self.chains.values()]:
                future.result()
        self.chains = {}


def _evaluate_cached(plan: Path | None, folder: Path, max_tokens: int, cache_dir: Path, fresh: bool,
                     cached_only: bool = False):
    """`mpq report`'s evaluation of one plan (None: the bf16 model), cached by the plan's content; None
    with `cached_only` when it has not been scored yet."""
    import hashlib

    from transformers import AutoTokenizer

    from mpq_serving.eval.text import load_text
    from mpq_serving.search.report import PlanResult, evaluate

    digest = hashlib.sha256((plan.read_bytes() if plan else b"bf16") + str(max_tokens).encode()).hexdigest()[:12]
    cached = cache_dir / f"{plan.stem if plan else 'bf16'}.{digest}.eval.json"
    if cached.is_file() and not fresh:
        return PlanResult(**json.loads(cached.read_text()))
    if cached_only:
        return None
    console.print(f"scoring {plan.name if plan else 'bf16'} ...")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    result = evaluate(plan, folder, tokenizer, load_text("wiki_eval"), 512, max_tokens, progress=False)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(asdict(result)) + "\n")
    console.print(f"  {plan.name if plan else 'bf16'}: PPL {result.ppl:.3f} at {result.avg_bits:.3f} bits")
    return result


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # --jobs processes share the cores


def table(args: argparse.Namespace) -> None:
    from mpq_serving.search.report import write_report

    folder = resolve_model(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budgets = [float(b) for b in args.budgets.split(",")]
    wanted = args.strategies.split(",")
    unknown = set(wanted) - set(STRATEGIES)
    if unknown:
        raise SystemExit(f"--strategies: unknown {', '.join(sorted(unknown))}; choose from {', '.join(STRATEGIES)}")
    formats = ",".join(ALL_FORMATS)
    runs = Runs(out, args.fresh, args.jobs)
    rows: list[tuple[str, str, Path]] = []  # (budget group, strategy, plan)
    if "uniform" in wanted:
        for fmt in args.uniform.split(","):
            plan = _uniform(fmt, folder, out)
            rows.append(("uniform", "uniform RTN", plan))
            if "budget" in wanted:  # the budget search at exactly the uniform plan's bits: equal-bits comparison
                bits = f"{_avg_bits(plan, folder):.6f}"
                rows.append(("uniform", f"budget ({args.objective})", runs.add(
                    f"budget_at_{fmt}", *_budget_argv(args, bits, formats, out / f"budget_at_{fmt}.json"),
                    chain="budget")))
    for b in budgets:
        group = f"{b:g}"
        if "random" in wanted:
            ratio = _random_ratio(folder, b, args.seed)
            rows.append((group, "random (000)", runs.add(
                f"random_{group}", "plan", "random", args.model, "--mxfp4-ratio", f"{ratio:.6f}", "--bf16-ratio", "0",
                "--weight-only", "--seed", str(args.seed), "-o", str(out / f"random_{group}.json"))))
        if "mutual-info" in wanted:
            rows.append((group, "mutual-info (003)", runs.add(
                f"mutual_info_{group}", "plan", "mutual-info", args.model, "--target-avg-bits", group,
                "--formats", formats, "-o", str(out / f"mutual_info_{group}.json"))))
        if "budget" in wanted:
            rows.append((group, f"budget ({args.objective})", runs.add(
                f"budget_{group}", *_budget_argv(args, group, formats, out / f"budget_{group}.json"), chain="budget")))
        if "alpha-hill" in wanted:
            rows.append((group, "alpha-hill (001)", runs.add(
                f"alpha_hill_{group}", "plan", "alpha-hill", args.model, "--target-avg-bits", group,
                "--ppl-threshold", "100", "--step-size", str(args.alpha_step), "--no-progress",
                "-o", str(out / f"alpha_hill_{group}.config.json"),
                "--output-plan", str(out / f"alpha_hill_{group}.json"), plan=out / f"alpha_hill_{group}.json")))
        if "genetic" in wanted and b == min(budgets):
            rows.append((group, "genetic (002, W4 + A4/A8)", runs.add(
                "genetic", "plan", "genetic", args.model, "-o", str(out / "genetic.json"))))
    runs.run_all()
    cache_dir = out / "eval_cache"
    order = ["uniform", *(f"{b:g}" for b in budgets)]
    rows.sort(key=lambda r: (order.index(r[0]), [s.split()[0] for s in STRATEGY_LABELS].index(r[1].split()[0])))
    plans = [None] + [p for *_, p in rows]
    with ProcessPoolExecutor(max_workers=args.jobs, initializer=_one_thread) as pool:
        scored = list(pool.map(_evaluate_cached, plans, *zip(*[(folder, args.max_tokens, cache_dir, args.fresh,
                                                                 args.cached_only)] * len(plans), strict=True)))
    baseline = scored[0]
    if baseline is None:
        raise SystemExit("the bf16 model has not been scored yet: run without --cached-only")
    results = [(g, s, p, r) for (g, s, p), r in zip(rows, scored[1:], strict=True) if r is not None]
    write_report([baseline] + [r for *_, r in results], folder, out / "report",
                 {"text": "wiki_eval", "seq_len": 512, "max_tokens": args.max_tokens})
    sensitivity = out / "sensitivity.json"
    sens_seconds = json.loads(sensitivity.read_text()).get("seconds") if sensitivity.is_file() else None
    lines = [(f"### {folder.name}: PPL on wiki_eval (first {args.max_tokens} tokens, windows of 512), "
             f"bf16 PPL {baseline.ppl:.3f}"), "",
             "| budget | strategy | plan | avg bits | PPL | search wall (s) | search CPU (s) |",
             "|---|---|---|---:|---:|---:|---:|"]
    data = {"model": str(folder), "max_tokens": args.max_tokens, "bf16_ppl": baseline.ppl,
            "sensitivity_seconds": sens_seconds, "rows": []}
    for group, strategy, plan, r in results:
        times = runs.times.get(plan.stem.removesuffix(".config"), {})
        lines.append(f"| {group} | {strategy} | {plan.stem} | {r.avg_bits:.3f} | {r.ppl:.3f} | "
                     f"{times.get('wall') or ''} | {times.get('cpu') or ''} |")
        data["rows"].append({"budget": group, "strategy": strategy, **asdict(r), "search_times": times})
    if sens_seconds is not None:
        lines += ["", (f"budget: the first budget run computes the sensitivity table ({sens_seconds:.0f} s wall "
                       f"of it), the later ones read it from the cache and only solve.")]
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    (out / "table.json").write_text(json.dumps(data, indent=1) + "\n")
    console.print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("proxy", help="Fisher estimates vs measured KL and loss change")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--weights", type=int, default=30, help="weights sampled (seeded) for the comparison")
    p.add_argument("--formats", default="mxfp4,fp8")
    p.add_argument("--nsamples", type=int, default=2, help="held-out windows for the measured changes")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--plans", nargs="*", default=[], help="plans whose summed estimate is checked too")
    p.add_argument("--cache", type=Path, default=None, help="sensitivity cache (default: computed into --out)")
    p.add_argument("--out", default="bench_search")
    t = sub.add_parser("table", help="every strategy at each budget, scored side by side")
    t.add_argument("--model", default="smollm2")
    t.add_argument("--budgets", default="4.5,6")
    t.add_argument("--strategies", default=",".join(STRATEGIES))
    t.add_argument("--uniform", default="mxfp4,awq_int4,gptq_int4", help="uniform RTN formats to score")
    t.add_argument("--objective", default="nll", help="budget search objective (nll / kl)")
    t.add_argument("--nsamples", type=int, default=64, help="budget search calibration windows")
    t.add_argument("--stats-gib", type=float, default=None, help="budget search --stats-gib (memory bound; default: "
                   "its own, half the available memory)")
    t.add_argument("--alpha-step", type=float, default=0.25, help="alpha-hill --step-size")
    t.add_argument("--seed", type=int, default=42, help="random plan seed")
    t.add_argument("--max-tokens", type=int, default=8192)
    t.add_argument("--jobs", type=int, default=3, help="searches / evaluations run at once")
    t.add_argument("--cached-only", action="store_true", help="table of the plans already scored; score none")
    t.add_argument("--fresh", action="store_true", help="search and score again even what --out holds")
    t.add_argument("--out", default="bench_search")
    args = parser.parse_args()
    proxy(args) if args.command == "proxy" else table(args)


if __name__ == "__main__":
    main()
