"""Seed 001: a two-stage Alpha-Hill threshold search (mxfp4 threshold, then mxfp8 threshold) under a PPL bound.

Direction.  A layer's Alpha-Hill α (see `alpha_hill.py`) is small when its spectrum is heavy-tailed,
i.e. when training has packed much correlated structure into it; AlphaPruning (Lu et al., NeurIPS
2024) shows such layers are the ones to spare and prunes high-α layers hardest.  Here high α =
less important = quantized harder: layers are taken in descending α.

Stage 1 starts the mxfp4 threshold at the largest α and lowers it by `step_size`; each step gives
mxfp4 to every candidate with α ≥ threshold and measures the perplexity of that plan with the other
candidates at mxfp8.  It stops at the first step whose PPL exceeds the bf16 baseline by more than
`ppl_threshold` (relative; that step is rejected and the previous threshold kept), at the first step
whose plan (the rest at mxfp8) reaches `target_avg_bits` (kept), or when the threshold has passed the
smallest α (every candidate mxfp4).  Stage 2 then does the same with mxfp8 on the layers below the
mxfp4 threshold, starting at their largest α, with the layers below the mxfp8 threshold in bf16, and
stops on the same PPL bound or when the plan's average bits reach the target.

Why stage 1 counts the rest at mxfp8 (the seed leaves open what the other layers are meanwhile): that
is the plan stage 1 hands over when stage 2 runs to its end, as it does at any target below
all-mxfp8's 8.25 bits.  With the rest in bf16 instead, stage 1 spends the whole PPL budget on mxfp4
and stage 2 can give mxfp8 to only a few layers: on SmolLM2 (target 6, --ppl-threshold 0.1,
--step-size 0.1) that reading ended at 31 mxfp4 + 35 mxfp8 layers, 12.6 avg bits, worse than the 8.2
bits its own coarser 0.5 step found; and its bit count (the rest at 16) would keep adding mxfp4 long
after the target is in reach.  A target above 8.25 bits skips stage 1: stage 2 alone picks which
layers get mxfp8 and keeps the lowest-α ones in bf16.

Protected layers (lm_head, embeddings, MoE routers such as `mlp.gate`; not `mlp.gate_proj`) and
weights whose shape no MX format takes stay bf16.  Quantization is weight-only (RTN, no `aq`), so
plans compare with the other strategies at equal weight bits.

Every step is recorded (stage, threshold, layers added, what the rest was, avg bits and ppl of the
measured plan, rise, accepted); a step that adds no layer reuses the previous measurement.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import MPQError
from ..formats import BF16, QuantSpec, get_format
from ..layers.linear import MixedPrecisionLinear
from ..layers.moe import MixedPrecisionExperts
from ..plan import Plan, is_protected, plan_to_json_dict
from ..plan.model_weights import LinearWeight, linear_weights
from .alpha_hill import AlphaHill, model_alphas
from .common import SearchRecord, candidate_spec, fits, plan_from_assignment

STAGE_FORMATS = ("mxfp4", "mxfp8")  # seed 001's order: the mxfp4 threshold first, then the mxfp8 one

# The model under an assignment (weight name -> spec, bf16 for names absent) -> perplexity.
Evaluator = Callable[[Mapping[str, QuantSpec]], float]


@dataclass(frozen=True)
class SearchParams:
    """The user's knobs (seed 001's flags), checked on construction."""

    ppl_threshold: float = 0.1
    target_avg_bits: float = 8.0
    step_size: float = 0.5

    def __post_init__(self) -> None:
        for name in ("ppl_threshold", "target_avg_bits", "step_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise MPQError(f"--{name.replace('_', '-')} must be a finite number, got {value!r}")
        if self.ppl_threshold < 0:
            raise MPQError(f"--ppl-threshold must be >= 0 (a relative PPL rise, 0.1 = 10%), got {self.ppl_threshold}")
        if self.step_size <= 0:
            raise MPQError(f"--step-size must be > 0 (how far the alpha threshold moves per step), "
                           f"got {self.step_size}")
        if self.target_avg_bits <= 0:
            raise MPQError(f"--target-avg-bits must be > 0, got {self.target_avg_bits}")


@dataclass
class StageResult:
    format: str
    threshold: float | None  # layers with alpha >= threshold got `format`; None: no step was accepted
    stop_reason: str
    layers: list[str] = field(default_factory=list)


@dataclass
class SearchResult:
    assignment: dict[str, QuantSpec]  # quantized weights only; every other weight stays bf16
    baseline_ppl: float
    ppl: float
    avg_bits: float
    stages: list[StageResult]
    history: list[dict[str, Any]]

    def summary(self) -> dict[str, Any]:
        """The seed's search_summary fields (thresholds, per-stage stop reasons, final numbers)."""
        out: dict[str, Any] = {f"{s.format}_threshold": s.threshold for s in self.stages}
        out["stop_reasons"] = {s.format: s.stop_reason for s in self.stages}
        out["layers_per_format"] = {s.format: len(s.layers) for s in self.stages}
        out.update(baseline_ppl=self.baseline_ppl, final_ppl=self.ppl,
                   ppl_rise=self.ppl / self.baseline_ppl - 1, avg_bits=self.avg_bits)
        return out


class _Bits:
    """Average stored bits of the model's linear weights under an assignment (as `mpq plan avg-bits` counts)."""

    def __init__(self, weights: list[LinearWeight]):
        self.weights = {w.name: w for w in weights}
        self.total_params = sum(w.numel for w in weights)
        self.bf16_bits = sum(_bits(BF16, w) for w in weights)

    def average(self, assignment: Mapping[str, QuantSpec]) -> float:
        delta = sum(_bits(spec, self.weights[n]) - _bits(BF16, self.weights[n]) for n, spec in assignment.items())
        return (self.bf16_bits + delta) / self.total_params


def _bits(spec: QuantSpec, w: LinearWeight) -> float:
    return get_format(spec.format).bits_per_weight(spec, w.shape) * w.numel


def quantizable(weights: list[LinearWeight]) -> list[LinearWeight]:
    """Weights the search may quantize: not protected, and shaped for at least one stage format."""
    return [w for w in weights if not is_protected(w.name)
            and any(fits(candidate_spec(f, w.shape[1]), w.shape) for f in STAGE_FORMATS)]


def two_stage_search(weights: list[LinearWeight], alphas: Mapping[str, float], evaluate: Evaluator,
                     params: SearchParams, on_step: Callable[[dict[str, Any]], None] | None = None) -> SearchResult:
    """Seed 001's search over `weights` (all linear weights, for the bit count) ranked by `alphas`.

    Only weights in `alphas` that are not protected and fit a stage's format are candidates.
    `evaluate` is called once for the bf16 baseline and once per step that changes the assignment.
    """
    bits = _Bits(weights)
    by_name = {w.name: w for w in weights}
    unknown = sorted(set(alphas) - set(by_name))
    if unknown:
        raise MPQError(f"alpha given for {len(unknown)} weight(s) the model does not have, e.g. {unknown[0]}")
    candidates = {w.name for w in quantizable(weights) if w.name in alphas}
    if not candidates:
        raise MPQError("no layer to quantize: every linear weight is protected, unfit for MX, or has no alpha")
    check_target(weights, params, candidates)

    cache: dict[frozenset, float] = {}

    def measure(assignment: Mapping[str, QuantSpec]) -> tuple[float, bool]:
        key = frozenset(assignment.items())
        if key in cache:
            return cache[key], False
        ppl = float(evaluate(assignment))
        if not math.isfinite(ppl) or ppl <= 0:
            raise MPQError(f"the evaluator returned perplexity {ppl} for an assignment of {len(assignment)} layer(s)")
        cache[key] = ppl
        return ppl, True

    history: list[dict[str, Any]] = []

    def record(entry: dict[str, Any]) -> None:
        history.append(entry)
        if on_step:
            on_step(entry)

    baseline, _ = measure({})
    base_bits = bits.average({})
    record({"stage": "baseline", "step": 0, "threshold": None, "layers": 0, "added": [], "rest": "bf16",
            "avg_bits": base_bits, "ppl": baseline, "ppl_rise": 0.0, "accepted": True, "evaluated": True})

    def spec(fmt: str, name: str) -> QuantSpec:
        return candidate_spec(fmt, by_name[name].shape[1])

    def fitting(fmt: str, name: str) -> bool:
        return fits(spec(fmt, name), by_name[name].shape)

    def completed(assignment: Mapping[str, QuantSpec], stage_index: int) -> dict[str, QuantSpec]:
        """The plan once the later stages give every candidate left bf16 their format (the measured plan)."""
        later = STAGE_FORMATS[stage_index + 1:]
        rest = {n: spec(next(f for f in later if fitting(f, n)), n) for n in candidates
                if n not in assignment and any(fitting(f, n) for f in later)}
        return {**assignment, **rest}

    assignment: dict[str, QuantSpec] = {}
    stages: list[StageResult] = []
    for index, fmt in enumerate(STAGE_FORMATS):
        last = index == len(STAGE_FORMATS) - 1
        rest_format = "bf16" if last else STAGE_FORMATS[index + 1]
        pool = sorted((n for n in candidates if n not in assignment and fitting(fmt, n)), key=lambda n: (-alphas[n], n))
        if bits.average(completed(assignment, index)) <= params.target_avg_bits:
            why = "target reached" if last else f"the target is met with the rest at {rest_format}"
            stages.append(StageResult(fmt, None, f"skipped: {why} before this stage"))
            continue
        if not pool:
            stages.append(StageResult(fmt, None, "skipped: no layer left for this format"))
            continue
        stage = StageResult(fmt, None, "")
        start = alphas[pool[0]]
        step = 0
        while not stage.stop_reason:
            step += 1
            threshold = start - (step - 1) * params.step_size  # by multiplication: no drift over many steps
            chosen = [n for n in pool if alphas[n] >= threshold]
            trial = {**assignment, **{n: spec(fmt, n) for n in chosen}}
            measured = completed(trial, index)
            trial_ppl, evaluated = measure(measured)
            trial_bits = bits.average(measured)
            rise = trial_ppl / baseline - 1
            accepted = rise <= params.ppl_threshold
            record({"stage": fmt, "step": step, "threshold": round(threshold, 6), "layers": len(chosen),
                    "added": [n for n in chosen if n not in stage.layers], "rest": rest_format,
                    "avg_bits": trial_bits, "ppl": trial_ppl, "ppl_rise": rise, "accepted": accepted,
                    "evaluated": evaluated})
            if not accepted:
                stage.stop_reason = (f"ppl rise {rise:.4f} > {params.ppl_threshold} at threshold {threshold:.4g}; "
                                     "kept the previous threshold")
                break
            assignment = trial
            stage.threshold, stage.layers = round(threshold, 6), chosen
            if trial_bits <= params.target_avg_bits:
                stage.stop_reason = (f"target reached: {trial_bits:.4f} avg bits"
                                     + ("" if last else f" with the rest at {rest_format}")
                                     + f" <= {params.target_avg_bits}")
            elif len(chosen) == len(pool):
                stage.stop_reason = "threshold passed the smallest alpha: every candidate layer assigned"
        stages.append(stage)
    # The plan written is `assignment` (below the last threshold: bf16); it was measured unless a stage ended
    # on a rejected first step, after which its own PPL is measured now.
    ppl, evaluated = measure(assignment)
    avg = bits.average(assignment)
    record({"stage": "final", "step": 0, "threshold": None, "layers": len(assignment), "added": [], "rest": "bf16",
            "avg_bits": avg, "ppl": ppl, "ppl_rise": ppl / baseline - 1, "accepted": ppl / baseline - 1
            <= params.ppl_threshold, "evaluated": evaluated})
    return SearchResult(assignment, baseline, ppl, avg, stages, history)


# --- the real evaluator: perplexity of the model with the assignment swapped in -------------------------------

class PerplexityEvaluator:
    """Perplexity of the model under an assignment; the model is loaded once, layers are swapped per call.

    The model is `load_model`'s (every linear and expert a MixedPrecisionLinear, bf16 at first); a call
    replaces only the layers whose spec changed by the very module `load_model(plan)` would build
    (RTN-quantized from the same checkpoint tensor, same kernels), so the PPL measured here is the
    PPL of the written plan on the same text, bit for bit — without reloading and requantizing all
    layers at each of the ~20-40 steps.  Quantized modules are cached (packed: ~1 byte per weight).
    """

    def __init__(self, model_dir: str | Path, *, text: str = "wiki_calib", seq_len: int = 512,
                 max_tokens: int | None = 2048, batch_size: int = 1, device: str = "cpu",
                 dtype: torch.dtype = torch.bfloat16, progress: bool = True):
        from transformers import AutoTokenizer

        from ..eval.text import load_text
        from ..loaders.hf_model import load_model

        self.model = load_model(Plan(), model_dir, dtype=dtype, progress=progress).to(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.text = load_text(text)
        self.seq_len, self.max_tokens, self.batch_size, self.progress = seq_len, max_tokens, batch_size, progress
        self._slots = _linear_slots(self.model, model_dir)
        self._bf16 = {name: getattr(slot.parent, slot.leaf) for name, slot in self._slots.items()}
        self._quantized: dict[tuple[str, QuantSpec], MixedPrecisionLinear] = {}
        self._current: dict[str, QuantSpec] = {}
        self.evaluations = 0

    def __call__(self, assignment: Mapping[str, QuantSpec]) -> float:
        from ..eval.perplexity import perplexity

        unknown = [n for n in assignment if n not in self._slots]
        if unknown:
            raise MPQError(f"{unknown[0]}: not a linear layer or expert of the loaded model")
        regroup: set[str] = set()
        for name in set(self._current) | set(assignment):
            spec = assignment.get(name, BF16)
            if spec == self._current.get(name, BF16):
                continue
            slot = self._slots[name]
            setattr(slot.parent, slot.leaf, self._module(name, spec))
            self._current[name] = spec
            if slot.experts is not None:
                regroup.add(slot.experts)
        for path in regroup:
            # MixedPrecisionExperts groups its experts by format once, at construction: rebuild it.
            old = self.model.get_submodule(path)
            owner, _, leaf = path.rpartition(".")
            setattr(self.model.get_submodule(owner), leaf, MixedPrecisionExperts(list(old.experts), old.act_fn))
        self.evaluations += 1
        return perplexity(self.model, self.tokenizer, self.text, seq_len=self.seq_len, max_tokens=self.max_tokens,
                          batch_size=self.batch_size, progress=self.progress).ppl

    def _module(self, name: str, spec: QuantSpec) -> MixedPrecisionLinear:
        if spec == BF16:
            return self._bf16[name]
        key = (name, spec)
        if key not in self._quantized:
            original = self._bf16[name]
            q = get_format(spec.format).quantize(original.weight, spec, name=name)
            self._quantized[key] = MixedPrecisionLinear(q, bias=original.bias)
        return self._quantized[key]


_IN_EXPERTS = re.compile(r"^(.+)\.experts\.\d+$")


@dataclass(frozen=True)
class _Slot:
    parent: nn.Module  # the module holding the MixedPrecisionLinear as attribute `leaf`
    leaf: str
    experts: str | None  # model path of the MixedPrecisionExperts it belongs to, for experts


def _linear_slots(model: nn.Module, model_dir: str | Path) -> dict[str, _Slot]:
    """Checkpoint weight name -> where its MixedPrecisionLinear sits in `load_model`'s model (experts too)."""
    from ..layers.moe import MixedPrecisionExperts
    from ..loaders.hf_model import module_path

    slots: dict[str, _Slot] = {}
    for w in linear_weights(model_dir):
        owner, _, leaf = module_path(model, w.name).rpartition(".")
        m = _IN_EXPERTS.match(owner)  # <experts>.experts.<e>: an expert inside MixedPrecisionExperts
        experts = m[1] if m and isinstance(model.get_submodule(m[1]), MixedPrecisionExperts) else None
        slot = _Slot(model.get_submodule(owner) if owner else model, leaf, experts)
        if isinstance(getattr(slot.parent, slot.leaf, None), MixedPrecisionLinear):
            slots[w.name] = slot
    return slots


# --- the whole strategy: alphas, search, plan + config + chart -----------------------------------------------

TAIL_START = ("Hill estimator on the eigenvalues of W^T W (squared singular values of W) with xmin at the median "
              "eigenvalue (k = N - N//2 largest), as AlphaPruning / TempBalance's fix_fingers='xmin_mid'")
DIRECTION = "higher alpha = lighter tail = less important = quantized first (mxfp4, then mxfp8)"


@dataclass
class AlphaHillOutcome:
    plan: Plan  # the plan: bf16 default, one exact rule per quantized weight, summary with the history
    config: dict[str, Any]  # seed 001's config: the plan plus alpha_hill per rule and search_summary
    result: SearchResult
    alphas: dict[str, AlphaHill]
    weights: list[LinearWeight]


def check_target(weights: list[LinearWeight], params: SearchParams, candidates: set[str] | None = None) -> None:
    """Refuse a target below what giving every candidate mxfp4 reaches (cheap: shapes only, nothing loaded)."""
    names = candidates if candidates is not None else {w.name for w in quantizable(weights)}
    floor_assignment = {w.name: candidate_spec(STAGE_FORMATS[0], w.shape[1]) for w in weights if w.name in names
                        and fits(candidate_spec(STAGE_FORMATS[0], w.shape[1]), w.shape)}
    if not floor_assignment:
        raise MPQError("no layer to quantize: every linear weight is protected or unfit for MX formats")
    floor = _Bits(weights).average(floor_assignment)
    if params.target_avg_bits < floor:
        raise MPQError(f"--target-avg-bits {params.target_avg_bits} is below the lowest average this search can "
                       f"reach, {floor:.4f} (every quantizable layer {STAGE_FORMATS[0]}; "
                       f"{len(weights) - len(floor_assignment)} protected or unfit layer(s) stay bf16)")


def run_alpha_hill(model_dir: str | Path, params: SearchParams, make_evaluator: Callable[[], Evaluator],
                   record: SearchRecord, *, on_step: Callable[[dict[str, Any]], None] | None = None,
                   progress: bool = True) -> AlphaHillOutcome:
    """Seed 001 end to end; `make_evaluator` is called once the cheap checks and the alphas are done."""
    weights = linear_weights(model_dir)
    check_target(weights, params)
    alpha_stats = model_alphas(model_dir, quantizable(weights), progress=progress)
    result = two_stage_search(weights, {n: a.alpha for n, a in alpha_stats.items()}, make_evaluator(), params, on_step)
    record.history = result.history
    categories = {w.name: w.category for w in weights}
    plan = plan_from_assignment(result.assignment, BF16, record, categories,
                                tail_start=TAIL_START, direction=DIRECTION, **result.summary())
    config = plan_to_json_dict(plan)
    for rule in config["overrides"]:
        rule["alpha_hill"] = round(alpha_stats[rule["pattern"]].alpha, 4)
    config["search_summary"] = {**config.pop("summary"), "alphas": {
        n: {"alpha": round(a.alpha, 4), "xmin": a.xmin, "k": a.k, "n_eigs": a.n_eigs,
            "ks_distance": round(a.ks_distance, 4)}
        for n, a in alpha_stats.items()}}
    return AlphaHillOutcome(plan, config, result, alpha_stats, weights)


def plot_alphas(outcome: AlphaHillOutcome, path: str | Path, title: str = "") -> Path:
    """Bar chart of alpha per analysed layer (in block order), coloured by the format it got, with thresholds.

    `title` prefixes the chart's title (the model name, say); the final bits and PPL follow it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colors = {"mxfp4": "tab:red", "mxfp8": "tab:orange", "bf16": "tab:blue"}
    names = sorted(outcome.alphas, key=_natural)  # layers.2 before layers.10 (safetensors sorts as text)
    formats = [outcome.result.assignment.get(n, BF16).format for n in names]
    fig, ax = plt.subplots(figsize=(max(8.0, min(40.0, len(names) * 0.06)), 4.5))
    ax.bar(range(len(names)), [outcome.alphas[n].alpha for n in names], width=1.0,
           color=[colors.get(f, "tab:gray") for f in formats])
    handles: list[Any] = [Patch(color=c, label=f"{f} ({formats.count(f)} layers)") for f, c in colors.items()]
    for stage in outcome.result.stages:
        if stage.threshold is not None:
            handles.append(ax.axhline(stage.threshold, color=colors[stage.format], linestyle="--", linewidth=1,
                                      label=f"{stage.format} threshold {stage.threshold:.3g}"))
    blocks = _block_starts(names)
    every = max(1, len(blocks) // 15)
    ax.set_xticks([i for i, _ in blocks[::every]], [b for _, b in blocks[::every]])
    ax.set_xlabel("linear weight, by block (ticks: transformer block)")
    ax.set_ylabel("Alpha-Hill (xmin = median eigenvalue)")
    ax.set_xlim(-0.5, len(names) - 0.5)
    r = outcome.result
    ax.set_title(f"{title or 'Alpha-Hill per layer'}: avg {r.avg_bits:.2f} bits, "
                 f"calibration ppl {r.baseline_ppl:.3f} (bf16) -> {r.ppl:.3f}")
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _natural(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _block_starts(names: list[str]) -> list[tuple[int, str]]:
    """(index, block number) of the first weight of each `layers.N` block, for x ticks."""
    out: list[tuple[int, str]] = []
    for i, name in enumerate(names):
        m = re.search(r"layers\.(\d+)\.", name)
        if m and (not out or out[-1][1] != m[1]):
            out.append((i, m[1]))
    return out
