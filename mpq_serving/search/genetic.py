"""Seed 002: genetic search of per-layer activation bits (A4 / A8) with 4-bit weights.

Mapping onto our formats. W4 is `mxfp4` (OCP MX E2M1, 32-element blocks, E8M0 scales; 4.25 bits per
weight): of our 4-bit weight formats it is the only one whose spec carries an activation format, so
W4A4 and W4A8 are both expressible in a plan. A4 = `aq: mxfp4` and A8 = `aq: mxfp8`: activations
quantize-dequantized per 32 along the input dim (E2M1 resp. E4M3, shared power-of-two scale). The
seed's A4 / A8 are asymmetric per-tensor integers, which no format here offers; MX is the closest
expressible pair and what W4A4 hardware (MXFP4 tensor cores) runs.

Simulated vs real, as the seed distinguishes them: the weights are real — the plan loads packed E2M1
codes and `mpq plan avg-bits` counts their stored bits — while the activation quantization is
simulated (quantize-dequantize before a float matmul), as in the seed's search and in our reference
path; only an MX kernel would turn A4 into speed. So every plan this search writes has the same
stored size (all weights mxfp4); what it chooses is the activation precision per layer.

Search, as in the seed: per layer, relative output errors MSE_A4 and MSE_A8 of W4A4 / W4A8 against
the unquantized layer on calibration inputs; sensitivity = MSE_A4 / MSE_A8; a layer above the
threshold (2.5, or 1.5 in the first and last transformer blocks) is forced to A8. The GA then picks
A4 / A8 for the free layers: fitness −Σ MSE_i · weight_i (weight = the layer's share of parameters)
under the compression target, tournament selection with elitism, two-point or uniform crossover,
and mutation that sets a gene to A8 with a probability growing with the layer's sensitivity. A child
over the target is repaired (free A8 layers with the smallest MSE gap go to A4 first), so every plan
meets it; the fitness still ranks any genome over the target below every genome within it.

Compression (the seed's `--target-compression`, where a higher target keeps more layers A8): the
parameter-weighted mean activation bits relative to all-A8, Σ bits_i·n_i / (8 Σ n_i) — 1.0 is all A8,
0.5 all A4; a plan must stay at or below the target. Each layer's MACs per token equal its parameter
count, so this is the share of matmul work done at 8 bits.

SmoothQuant (α) is available for the measurement: per-input-channel s = max|X|^α / max|W|^(1-α),
errors measured for quantize(X/s) · quantize(W·s)ᵀ. The plan cannot carry s (no format stores a
per-input-channel scale): serving the smoothed model needs 1/s folded into the preceding norm, a
checkpoint rewrite outside this search, so the summary records α and the plan is unsmoothed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..formats import QuantSpec, get_format
from ..plan import Plan
from ..plan.model_weights import LinearWeight
from .common import (
    CalibrationTaps,
    SearchRecord,
    fits,
    plan_from_assignment,
    searched_weights,
)
from .smoothquant import smooth_scales

W4 = "mxfp4"
A4, A8 = "mxfp4", "mxfp8"
_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")

FitnessFn = Callable[[np.ndarray], np.ndarray]
RepairFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class GAConfig:
    """The GA's knobs; the first four are the seed's command-line flags."""

    population: int = 30
    generations: int = 25
    target_compression: float = 0.75
    seed: int = 0
    elite: int = 2
    tournament: int = 3
    crossover_rate: float = 0.8

    def __post_init__(self) -> None:
        if self.population < 2:
            raise ValueError(f"--ga-pop must be at least 2, got {self.population}")
        if self.generations < 1:
            raise ValueError(f"--ga-gen must be at least 1, got {self.generations}")
        if not 0.5 <= self.target_compression <= 1.0:
            raise ValueError(f"--target-compression must be in [0.5, 1] (activation bits relative to all-A8: "
                             f"0.5 = every layer A4, 1 = every layer A8), got {self.target_compression}")
        if not 0 <= self.elite < self.population:
            raise ValueError(f"elite must be in [0, population), got {self.elite}")
        if self.tournament < 1:
            raise ValueError(f"tournament size must be at least 1, got {self.tournament}")


@dataclass(frozen=True)
class GAResult:
    best: np.ndarray  # bool per gene: True = A8
    fitness: float
    history: list[dict[str, float]]


# ---------------------------------------------------------------------------------------------- operators

def tournament_select(fitness: np.ndarray, k: int, rng: np.random.Generator) -> int:
    """Index of the fittest of k individuals drawn at random (with replacement)."""
    contenders = rng.integers(0, len(fitness), size=k)
    return int(contenders[np.argmax(fitness[contenders])])


def two_point_crossover(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Swap the segment between two cut points: keeps runs of neighbouring layers together."""
    i, j = np.sort(rng.choice(len(a) + 1, size=2, replace=False))
    c, d = a.copy(), b.copy()
    c[i:j], d[i:j] = b[i:j], a[i:j]
    return c, d


def uniform_crossover(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each gene from either parent with probability 1/2."""
    swap = rng.random(len(a)) < 0.5
    return np.where(swap, b, a), np.where(swap, a, b)


def mutate(genome: np.ndarray, rate: float, a8_probability: np.ndarray, forced: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    """Redraw each free gene with probability `rate`: A8 with its layer's `a8_probability`, else A4."""
    redraw = (rng.random(len(genome)) < rate) & ~forced
    drawn = rng.random(len(genome)) < a8_probability
    return np.where(redraw, drawn, genome) | forced


def a8_probability(sensitivity: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """s / (s + threshold): 1/2 at the threshold, towards 1 for sensitive layers, towards 0 for robust ones."""
    return sensitivity / (sensitivity + threshold)


def evolve(fitness_fn: FitnessFn, a8_prob: np.ndarray, forced: np.ndarray, config: GAConfig,
           repair: RepairFn | None = None, progress: bool = True) -> GAResult:
    """Run the GA over bool genomes (True = A8); `fitness_fn` scores a [population, genes] batch.

    `repair`, when given, is applied to every new genome (e.g. to bring it within the target).
    """
    rng = np.random.default_rng(config.seed)
    n = len(a8_prob)
    rate = 1.0 / max(n, 1)  # one redrawn gene per child on average
    fix = repair or (lambda genome: genome)
    population = np.stack([fix(g) for g in (rng.random((config.population, n)) < 0.5) | forced])
    history: list[dict[str, float]] = []
    for generation in tqdm(range(config.generations + 1), desc="genetic search", unit="gen", disable=not progress):
        fitness = fitness_fn(population)
        order = np.argsort(-fitness, kind="stable")
        history.append({"generation": generation, "best_fitness": float(fitness[order[0]]),
                        "mean_fitness": float(fitness.mean()), "a8_fraction": float(population[order[0]].mean())})
        if generation == config.generations:
            break
        children = [population[i].copy() for i in order[: config.elite]]
        while len(children) < config.population:
            a = population[tournament_select(fitness, config.tournament, rng)]
            b = population[tournament_select(fitness, config.tournament, rng)]
            if rng.random() < config.crossover_rate:
                cross = two_point_crossover if rng.random() < 0.5 else uniform_crossover
                a, b = cross(a, b, rng)
            children += [fix(mutate(a, rate, a8_prob, forced, rng)), fix(mutate(b, rate, a8_prob, forced, rng))]
        population = np.stack(children[: config.population])
    return GAResult(population[order[0]].copy(), float(fitness[order[0]]), history)


# ---------------------------------------------------------------------------------------------- the layers

@dataclass(frozen=True)
class LayerErrors:
    """Relative output errors of W4A4 and W4A8 on calibration inputs (‖Y − Ŷ‖² / ‖Y‖²)."""

    mse_a4: float
    mse_a8: float

    @property
    def sensitivity(self) -> float:
        return self.mse_a4 / self.mse_a8 if self.mse_a8 > 0 else 1.0


def measure_errors(taps: CalibrationTaps, tokens: torch.Tensor, smooth_alpha: float | None,
                   progress: bool = True) -> dict[str, LayerErrors]:
    """Per searched weight: W4A4 and W4A8 output errors, smoothed first when `smooth_alpha` is given."""
    w4, act4, act8 = get_format(W4), get_format(A4), get_format(A8)
    sums: dict[str, list[float]] = {}
    shared: list[torch.Tensor] = []  # [x, A4(x), A8(x)] of the last input: q/k/v and gate/up share theirs

    def quantized_inputs(x: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if smooth_alpha is None and shared and shared[0].data_ptr() == x.data_ptr() and shared[0].shape == x.shape:
            return shared[1], shared[2]  # shared[0] is held, so its storage cannot be another tensor's
        x4, x8 = act4.fake_quantize(x, name), act8.fake_quantize(x, name)
        shared[:] = [x, x4, x8]
        return x4, x8

    def observe(name: str, x: torch.Tensor) -> None:
        weight = taps.weight(name)
        y = x @ weight.t()
        if smooth_alpha is not None:
            s = smooth_scales(x.abs().amax(0), weight, smooth_alpha)
            x, weight = x / s, weight * s
        wq = w4.dequantize(w4.quantize(weight, QuantSpec(W4), name=name))
        x4, x8 = quantized_inputs(x, name)
        e4 = (x4 @ wq.t() - y).square().sum().item()
        e8 = (x8 @ wq.t() - y).square().sum().item()
        acc = sums.setdefault(name, [0.0, 0.0, 0.0])
        acc[0] += e4
        acc[1] += e8
        acc[2] += y.square().sum().item()

    taps.run(tokens, observe, desc="W4A4 / W4A8 errors", progress=progress)
    return {n: LayerErrors(e4 / max(ref, 1e-30), e8 / max(ref, 1e-30)) for n, (e4, e8, ref) in sums.items()}


def thresholds(names: list[str], threshold: float, edge_threshold: float) -> np.ndarray:
    """The sensitivity threshold per layer: `edge_threshold` in the first and last transformer blocks."""
    index = [int(m.group(1)) if (m := _LAYER_INDEX.search(n)) else None for n in names]
    known = [i for i in index if i is not None]
    edges = {min(known), max(known)} if known else set()
    return np.array([edge_threshold if i in edges else threshold for i in index], dtype=np.float64)


def compression(population: np.ndarray, numel: np.ndarray) -> np.ndarray:
    """Parameter-weighted activation bits relative to all-A8 for each genome of a [P, L] batch."""
    return (np.where(population, 8.0, 4.0) @ numel) / (8.0 * numel.sum())


def make_fitness(mse_a4: np.ndarray, mse_a8: np.ndarray, numel: np.ndarray, target: float) -> FitnessFn:
    """−Σ MSE_i · w_i (w = parameter share) if within the target; below every feasible genome otherwise."""
    weight = numel / numel.sum()
    worst = float(np.maximum(mse_a4, mse_a8) @ weight)

    def fitness(population: np.ndarray) -> np.ndarray:
        error = np.where(population, mse_a8, mse_a4) @ weight
        excess = compression(population, numel) - target
        return np.where(excess <= 1e-12, -error, -worst - excess)

    return fitness


def make_repair(mse_a4: np.ndarray, mse_a8: np.ndarray, numel: np.ndarray, forced: np.ndarray,
                target: float) -> RepairFn:
    """Bring a genome within the target by moving free A8 layers to A4, cheapest first.

    Moving layer i saves 4·n_i activation bits and costs (MSE_A4 − MSE_A8)·n_i / Σn fitness, so the
    cost per saved bit is proportional to MSE_A4 − MSE_A8 alone: the greedy order is by that gap.
    Without it the penalty alone leaves low targets (most layers A4) unreached within 25 generations.
    """
    order = [int(i) for i in np.argsort(mse_a4 - mse_a8, kind="stable") if not forced[i]]
    allowed = target * 8.0 * numel.sum() * (1 + 1e-12)

    def repair(genome: np.ndarray) -> np.ndarray:
        excess = float(np.where(genome, 8.0, 4.0) @ numel) - allowed
        if excess <= 0:
            return genome
        genome = genome.copy()
        for i in order:
            if genome[i]:
                genome[i] = False
                excess -= 4.0 * numel[i]
                if excess <= 0:
                    break
        return genome

    return repair


def genetic_search(model_dir: str | Path, tokens: torch.Tensor, config: GAConfig, smooth_alpha: float | None = None,
                   threshold: float = 2.5, edge_threshold: float = 1.5, parameters: dict | None = None,
                   progress: bool = True) -> Plan:
    """The seed-002 plan for the model in `model_dir`, calibrated on `tokens` [nsamples, seq_len]."""
    record = SearchRecord("genetic", parameters or {}, seed=config.seed)
    weights = searched_weights(model_dir)
    _check_w4(weights)
    taps = CalibrationTaps(model_dir, weights)
    errors = measure_errors(taps, tokens, smooth_alpha, progress)
    # An expert no calibration token was routed to has no measured error: both choices score 0.
    errs = [errors.get(w.name, LayerErrors(0.0, 0.0)) for w in weights]
    names = [w.name for w in weights]
    numel = np.array([w.numel for w in weights], dtype=np.float64)
    mse_a4 = np.array([e.mse_a4 for e in errs])
    mse_a8 = np.array([e.mse_a8 for e in errs])
    sensitivity = np.array([e.sensitivity for e in errs])
    limit = thresholds(names, threshold, edge_threshold)
    forced = sensitivity > limit
    least = float(compression(forced[None], numel)[0])
    if config.target_compression < least - 1e-12:
        raise ValueError(
            f"--target-compression {config.target_compression} is below {least:.4f}, the least reachable: "
            f"{int(forced.sum())} of {len(names)} layers are forced to A8 by their sensitivity "
            f"(threshold {threshold}, {edge_threshold} in the first and last blocks); raise the target or the thresholds")
    result = evolve(make_fitness(mse_a4, mse_a8, numel, config.target_compression), a8_probability(sensitivity, limit),
                    forced, config, make_repair(mse_a4, mse_a8, numel, forced, config.target_compression), progress)
    record.history = result.history
    choice = {n: QuantSpec(W4, activation=A8 if a8 else A4) for n, a8 in zip(names, result.best)}
    n_a8 = int(result.best.sum())
    default = QuantSpec(W4, activation=A8 if 2 * n_a8 > len(names) else A4)
    layers = {n: {"a_bits": 8 if a8 else 4, "mse_a4": e.mse_a4, "mse_a8": e.mse_a8, "sensitivity": e.sensitivity,
                  "threshold": float(t), "forced_a8": bool(f), "calibrated": n in errors}
              for n, a8, e, t, f in zip(names, result.best, errs, limit, forced)}
    return plan_from_assignment(
        choice, default, record, {w.name: w.category for w in weights},
        mapping={"W4": f"{W4} weights (real, packed)", "A4": f"aq {A4} (simulated)", "A8": f"aq {A8} (simulated)"},
        ga=asdict(config), smooth_alpha=smooth_alpha,
        smoothing_note=None if smooth_alpha is None else
        "errors measured with SmoothQuant scales; the plan itself is unsmoothed (no format stores them)",
        compression=float(compression(result.best[None], numel)[0]), fitness=result.fitness,
        a4_layers=len(names) - n_a8, a8_layers=n_a8, forced_a8_layers=int(forced.sum()), layers=layers)


def _check_w4(weights: list[LinearWeight]) -> None:
    bad = [w for w in weights if not fits(QuantSpec(W4), w.shape)]
    if bad:
        raise ValueError(f"the genetic search gives every linear {W4} weights (W4), which need in_features divisible "
                         f"by 32; {bad[0].name} has shape {bad[0].shape}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))


def plot_convergence(history: list[dict[str, float]], path: str | Path) -> Path:
    """Best and mean fitness per generation, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gens = [h["generation"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(gens, [h["best_fitness"] for h in history], label="best")
    ax.plot(gens, [h["mean_fitness"] for h in history], label="population mean", alpha=0.7)
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness  (−Σ MSE·weight)")
    ax.set_title("genetic search: convergence")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
