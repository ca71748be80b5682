"""Seed 003: mutual-information grouping, then one format per group to meet a target average bit-width.

The seed clusters the *channels* of each layer by mutual information and quantizes each channel group
at its own bit-width inside the layer. A plan names formats per linear weight (or expert), so here the
groups are groups of layers, built from channel-level statistics:

- channels: each layer's output Y = X Wᵀ on calibration tokens, reduced to its k principal output
  channels (whitened top-k principal components, mutually uncorrelated, so all the dependence that
  remains is *between* layers); with `dense_experts` every expert sees every token of its layer, so
  all layers share their tokens.
- estimator: Gaussian mutual information. For one pair of channels it is −½ log(1 − ρ²) (ρ the Pearson
  correlation); for two layers' channel sets it is −½ Σ log(1 − σ_i²) over their canonical
  correlations σ_i, the sum of the per-channel formula over the canonically paired channels (ρ² clipped
  at 1 − 1e-6). Its bias on independent layers is about k² / (2T) nats for T tokens.
- affinity: 1 − exp(−2 I / k) in [0, 1], the mean squared canonical correlation when the σ are equal
  (Linfoot's informational coefficient of correlation, squared).
- spectral clustering (Ng–Jordan–Weiss: top eigenvectors of D^-½ A D^-½) into `n_groups`, labels by
  column-pivoted QR (Damle, Minden & Ying 2019), which is deterministic, unlike k-means.
- allocation: each layer's sensitivity to each candidate format is its relative output error
  ‖X(W − Ŵ)ᵀ‖² / ‖XWᵀ‖² on calibration tokens; a group's cost is the sum over its layers. One format
  per group, minimizing the total cost with the average bits (protected bf16 weights included) at or
  under the target: an exact multiple-choice knapsack, solved by a Pareto-front dynamic programme
  (every non-dominated (bits, cost) partial assignment is kept, so the optimum is never pruned).

int4 candidates are round-to-nearest here: GPTQ error compensation and SparseGPT sparsity (the rest of
seed 003) belong to the quantizers issue; this module owns the grouping and the allocation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..formats import QuantSpec, get_format
from ..plan import Plan, resolve
from ..plan.bits import average_bits
from ..plan.model_weights import LinearWeight, linear_weights
from .common import (
    CalibrationTaps,
    SearchRecord,
    candidate_spec,
    fits,
    plan_from_assignment,
    searched_weights,
)

DEFAULT_FORMATS = ("bf16", "fp8", "int8", "gptq_int4", "mxfp4")
_RHO2_MAX = 1.0 - 1e-6
SENSITIVITY_TOKENS = 2048  # rows of X the format errors are measured on (the MI uses every token)


# ---------------------------------------------------------------------------------------------- estimator

def principal_channels(y: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """The top-k whitened principal components of y [T, d] as [T, k] orthonormal columns (zero-padded).

    Components below 1e-6 of the largest singular value are dropped (a rank-deficient output). Wide
    outputs use a seeded randomized SVD (k + 8 columns, 3 power iterations), small ones the exact one.
    """
    y = y.to(torch.float32) - y.mean(0, dtype=torch.float32)
    q = min(k, *y.shape)
    if q + 8 >= min(y.shape):
        u, s, _ = torch.linalg.svd(y, full_matrices=False)
    else:
        with torch.random.fork_rng(devices=[y.device] if y.is_cuda else []):
            torch.manual_seed(seed)
            u, s, _ = torch.svd_lowrank(y, q=q + 8, niter=3)
    keep = int((s[:q] > s[0] * 1e-6).sum()) if len(s) and s[0] > 0 else 0
    out = torch.zeros(y.shape[0], k, dtype=torch.float32, device=y.device)
    out[:, :keep] = u[:, :keep]
    return out


def gaussian_mi(a: torch.Tensor, b: torch.Tensor) -> float:
    """Gaussian mutual information (nats) between two sets of channels a [T, p] and b [T, q], all components kept."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"mutual information needs [tokens, channels] for both sets over the same tokens, "
                         f"got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    k = max(a.shape[1], b.shape[1])
    return float(mi_matrix(torch.stack([principal_channels(a, k), principal_channels(b, k)]))[0, 1])


def mi_matrix(channels: torch.Tensor) -> torch.Tensor:
    """Pairwise Gaussian MI [L, L] (float64) between L layers' orthonormal channel sets [L, T, k]."""
    n_layers, _, k = channels.shape
    flat = channels.permute(1, 0, 2).reshape(channels.shape[1], n_layers * k).to(torch.float64)
    cross = (flat.t() @ flat).reshape(n_layers, k, n_layers, k).permute(0, 2, 1, 3)
    rho2 = torch.linalg.svdvals(cross).square().clamp(max=_RHO2_MAX)
    return -0.5 * torch.log1p(-rho2).sum(-1)


def affinity_from_mi(mi: torch.Tensor, k: int) -> torch.Tensor:
    """1 − exp(−2 I / k): the mean squared canonical correlation, in [0, 1]; 1 on the diagonal."""
    a = 1.0 - torch.exp(-2.0 * mi / k)
    a.fill_diagonal_(1.0)
    return a


# ---------------------------------------------------------------------------------------------- clustering

def spectral_clusters(affinity: torch.Tensor, n_groups: int) -> np.ndarray:
    """Labels 0..n_groups-1 per row of a symmetric non-negative affinity, numbered by first appearance."""
    n = affinity.shape[0]
    if affinity.shape != (n, n) or not torch.allclose(affinity, affinity.t()) or (affinity < 0).any():
        raise ValueError(f"spectral clustering needs a symmetric non-negative square affinity, got shape {tuple(affinity.shape)}")
    if not 1 <= n_groups <= n:
        raise ValueError(f"--n-groups must be between 1 and the number of layers ({n}), got {n_groups}")
    a = affinity.to(torch.float64)
    d = a.sum(1).clamp_min(1e-12).rsqrt()
    _, vectors = torch.linalg.eigh(d[:, None] * a * d[None, :])
    v = vectors[:, -n_groups:].flip(1)
    return _renumber(_cluster_qr(v))


def _cluster_qr(v: torch.Tensor) -> np.ndarray:
    """Damle–Minden–Ying: pick k well-separated rows by pivoted QR, rotate onto them, take the argmax."""
    k = v.shape[1]
    residual, pivots = v.clone(), []
    for _ in range(k):
        j = int(residual.norm(dim=1).argmax())
        pivots.append(j)
        q = residual[j] / residual[j].norm()
        residual -= (residual @ q)[:, None] * q[None, :]
    u, _, vt = torch.linalg.svd(v[pivots].t())
    return (v @ (u @ vt)).abs().argmax(1).numpy()


def _renumber(labels: np.ndarray) -> np.ndarray:
    order = {label: i for i, label in enumerate(dict.fromkeys(labels.tolist()))}
    return np.array([order[label] for label in labels.tolist()])


# ---------------------------------------------------------------------------------------------- allocation

@dataclass(frozen=True)
class Allocation:
    choice: list[int]  # format index per group
    bits: float  # total stored bits of the searched weights
    cost: float
    front: list[tuple[float, float, tuple[int, ...]]]  # every non-dominated (bits, cost, choice) within budget


def allocate(bits: np.ndarray, cost: np.ndarray, budget: float) -> Allocation:
    """Exact minimum-cost choice of one option per group ([G, F] bits and costs, inf = not allowed), Σ bits ≤ budget."""
    front: list[tuple[float, float, tuple[int, ...]]] = [(0.0, 0.0, ())]
    for g in range(bits.shape[0]):
        grown = sorted((b + bits[g, f], c + cost[g, f], ch + (f,)) for b, c, ch in front
                       for f in range(bits.shape[1]) if math.isfinite(bits[g, f]) and b + bits[g, f] <= budget)
        front = []
        for state in grown:  # by bits ascending: keep a state only if it is cheaper than every smaller one
            if not front or state[1] < front[-1][1]:
                front.append(state)
        if not front:
            least = float(np.where(np.isfinite(bits), bits, np.inf).min(1).sum())
            raise ValueError(f"budget infeasible: the cheapest formats need {least:.6g} bits, the budget is {budget:.6g}")
    best = front[-1]  # the front's costs fall as bits rise: the last state is the cheapest
    return Allocation(list(best[2]), best[0], best[1], front)


# ---------------------------------------------------------------------------------------------- the search

@dataclass(frozen=True)
class MIConfig:
    target_avg_bits: float
    n_groups: int = 10
    formats: tuple[str, ...] = DEFAULT_FORMATS
    channels: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.target_avg_bits <= 0:
            raise ValueError(f"--target-avg-bits must be positive, got {self.target_avg_bits}")
        if self.n_groups < 1:
            raise ValueError(f"--n-groups must be at least 1, got {self.n_groups}")
        if self.channels < 1:
            raise ValueError(f"--channels must be at least 1, got {self.channels}")
        if not self.formats:
            raise ValueError("--formats is empty; name at least one format")
        # canonical names; an unknown one raises UnknownFormatError naming it and the known formats
        object.__setattr__(self, "formats", tuple(dict.fromkeys(get_format(f).name for f in self.formats)))


@dataclass
class _LayerStats:
    channels: torch.Tensor  # [T, k]
    error: dict[str, float]  # format -> relative output error


def measure(taps: CalibrationTaps, tokens: torch.Tensor, weights: list[LinearWeight], config: MIConfig,
            progress: bool = True) -> dict[str, _LayerStats]:
    """Principal channels and per-format relative output errors of every layer, from one forward pass."""
    shapes = {w.name: w.shape for w in weights}
    stats: dict[str, _LayerStats] = {}

    def observe(name: str, x: torch.Tensor) -> None:
        if name in stats:
            raise ValueError(f"{name} ran twice in one forward pass; the MI search needs one call per layer")
        weight = taps.weight(name)
        y = x @ weight.t()
        sub, ref = x[:SENSITIVITY_TOKENS], y[:SENSITIVITY_TOKENS]
        energy = ref.square().sum().clamp_min(1e-30)
        error = {}
        for f in config.formats:
            spec = candidate_spec(f, shapes[name][1])
            if f == "bf16" or not fits(spec, shapes[name]):
                continue  # the reference itself (error 0), or a format this shape cannot take
            fmt = get_format(f)
            wq = fmt.dequantize(fmt.quantize(weight, spec, name=name)).to(x.device)
            error[f] = float((sub @ wq.t() - ref).square().sum() / energy)
        stats[name] = _LayerStats(principal_channels(y, config.channels, config.seed).cpu(), error)

    taps.run(tokens, observe, desc="channels and format errors", progress=progress)
    return stats


def _check_reachable(model_dir: str | Path, all_weights: list[LinearWeight], weights: list[LinearWeight],
                     config: MIConfig) -> None:
    """Refuse a target below every weight's smallest fitting format before any calibration pass."""
    searched = {w.name for w in weights}
    total = sum(16.0 * w.numel for w in all_weights if w.name not in searched)
    for w in weights:
        sizes = [get_format(f).bits_per_weight(spec, w.shape) * w.numel
                 for f in config.formats if fits(spec := candidate_spec(f, w.shape[1]), w.shape)]
        total += min(sizes) if sizes else 16.0 * w.numel
    least = total / sum(w.numel for w in all_weights)
    if config.target_avg_bits < least:
        raise ValueError(f"--target-avg-bits {config.target_avg_bits} is impossible for {model_dir} with formats "
                         f"{', '.join(config.formats)}: the least reachable is {least:.4f} average bits")


def mutual_info_search(model_dir: str | Path, tokens: torch.Tensor, config: MIConfig, parameters: dict | None = None,
                       progress: bool = True) -> Plan:
    """The seed-003 plan for the model in `model_dir`, calibrated on `tokens` [nsamples, seq_len]."""
    record = SearchRecord("mutual-info", parameters or {}, seed=config.seed)
    all_weights = linear_weights(model_dir)
    weights = searched_weights(model_dir)
    if config.n_groups > len(weights):
        raise ValueError(f"--n-groups {config.n_groups} exceeds the {len(weights)} searchable linear weights of {model_dir}")
    _check_reachable(model_dir, all_weights, weights, config)
    taps = CalibrationTaps(model_dir, weights, dense_experts=True)
    stats = measure(taps, tokens, weights, config, progress)
    missing = [w.name for w in weights if w.name not in stats]
    if missing:
        raise ValueError(f"{missing[0]} saw no calibration token ({len(missing)} layers unobserved)")
    names = [w.name for w in weights]
    mi = mi_matrix(torch.stack([stats[n].channels for n in names]))
    affinity = affinity_from_mi(mi, config.channels)
    labels = spectral_clusters(affinity, config.n_groups)
    n_groups = int(labels.max()) + 1

    # Group bits and costs per candidate; a format a member cannot take rules the group out of it.
    formats = list(config.formats)
    bits = np.zeros((n_groups, len(formats)))
    cost = np.zeros((n_groups, len(formats)))
    for w, g in zip(weights, labels):
        for j, f in enumerate(formats):
            spec = candidate_spec(f, w.shape[1])
            if f == "bf16":
                e = 0.0
            elif f in stats[w.name].error:
                e = stats[w.name].error[f]
            else:
                bits[g, j] = np.inf
                continue
            bits[g, j] += get_format(f).bits_per_weight(spec, w.shape) * w.numel
            cost[g, j] += e
    searched = {w.name for w in weights}
    fixed = [w for w in all_weights if w.name not in searched]  # protected: bf16
    total_params = sum(w.numel for w in all_weights)
    fixed_bits = sum(16.0 * w.numel for w in fixed)
    budget = config.target_avg_bits * total_params - fixed_bits
    try:
        alloc = allocate(bits, cost, budget)
    except ValueError:
        least = (fixed_bits + np.where(np.isfinite(bits), bits, np.inf).min(1).sum()) / total_params
        raise ValueError(f"--target-avg-bits {config.target_avg_bits} is impossible for {model_dir} with formats "
                         f"{', '.join(formats)}: the least reachable is {least:.4f} average bits") from None

    chosen = [formats[j] for j in alloc.choice]
    assignment = {w.name: candidate_spec(chosen[g], w.shape[1]) for w, g in zip(weights, labels)}
    by_params: dict[QuantSpec, int] = {}
    for w in weights:
        by_params[assignment[w.name]] = by_params.get(assignment[w.name], 0) + w.numel
    default = max(by_params, key=by_params.__getitem__)
    record.history = [{"avg_bits": (fixed_bits + b) / total_params, "cost": c, "formats": [formats[j] for j in ch]}
                      for b, c, ch in alloc.front]
    groups = []
    a = affinity.numpy()
    for g in range(n_groups):
        members = labels == g
        inside = a[np.ix_(members, members)]
        within = float((inside.sum() - members.sum()) / max(members.sum() * (members.sum() - 1), 1))
        between = float(a[np.ix_(members, ~members)].mean()) if (~members).any() else 0.0
        groups.append({"group": g, "format": chosen[g], "layers": [n for n, m in zip(names, members) if m],
                       "params": int(sum(w.numel for w, m in zip(weights, members) if m)),
                       "cost": float(cost[g, alloc.choice[g]]), "affinity_within": within, "affinity_between": between})
    plan = plan_from_assignment(
        assignment, default, record, {w.name: w.category for w in weights},
        estimator="Gaussian MI between layers' top-k whitened principal output channels: -1/2 sum log(1 - sigma_i^2)",
        tokens=int(tokens.numel()), groups=groups, cost=alloc.cost,
        note="int4 candidates are RTN; GPTQ error compensation and sparsity belong to the quantizers issue")
    report = average_bits(all_weights, resolve(plan, [w.name for w in all_weights]))
    plan.summary["avg_bits"] = report.avg_bits
    return plan
