"""Alpha-Hill: the power-law tail exponent of a weight matrix's eigenvalue spectrum, per linear / expert.

Heavy-Tailed Self-Regularization (Martin & Mahoney, JMLR 2021) reads a layer's training quality from
the empirical spectral density (ESD) of its correlation matrix WᵀW, whose non-zero eigenvalues are the
squared singular values of W: the better a layer has learned correlations, the heavier the ESD's
tail p(λ) ∝ λ^(-α), i.e. the smaller α.  AlphaPruning (Lu et al., NeurIPS 2024) prunes layers with a
large α harder; the Alpha-Hill search (seed 001) quantizes them harder.

Tail start (the choice the estimate depends on).  We follow AlphaPruning and TempBalance (Zhou et
al., NeurIPS 2023), whose `net_esd_estimator(fix_fingers="xmin_mid")` fixes xmin at the median
eigenvalue: with the N eigenvalues sorted ascending, i = N // 2, the tail is λ_i..λ_{N-1}
(k = N - i values) and

    α = 1 + k / Σ_{j ≥ i} ln(λ_j / λ_i)      (the continuous power-law MLE of Clauset et al. 2009).

Why the median and not WeightWatcher's default (the xmin minimising the Kolmogorov-Smirnov distance):
the KS fit costs O(N²) per layer and its xmin can land on a few outlying top eigenvalues (the
"fingers" WeightWatcher's fix_fingers option guards against), which makes α's of neighbouring layers
incomparable; ranking layers against each other needs one consistent tail, and the upper half of the
spectrum is a stable one.  The KS distance at that xmin is still reported, as a fit diagnostic.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from ..errors import MPQError
from ..loaders.checkpoint import Checkpoint
from ..plan.model_weights import LinearWeight, linear_weights

Method = Literal["gram", "svd"]
_FLOAT_DTYPES = {torch.float32, torch.float16, torch.bfloat16, torch.float64}


@dataclass(frozen=True)
class AlphaHill:
    """One weight's estimate: α, the tail start xmin, the tail size k, the spectrum size, the KS distance."""

    alpha: float
    xmin: float
    k: int
    n_eigs: int
    ks_distance: float


def esd(weight: torch.Tensor, method: Method = "gram") -> torch.Tensor:
    """Eigenvalues of WᵀW, ascending: the squared singular values of W (min(out, in) of them).

    `gram` (default): eigvalsh of the float64 Gram matrix of W's smaller side (WWᵀ and WᵀW share their
    non-zero eigenvalues); ~1.5x faster than svdvals here (benchmarks/alpha_hill_speed.py), and float64
    keeps the small eigenvalues accurate to ~1e-16 of the largest, far below the median (the tail start).
    `svd`: float32 svdvals squared, the textbook route (AlphaPruning's), kept to cross-check `gram`.
    """
    if weight.ndim != 2:
        raise MPQError(f"Alpha-Hill needs a 2-D weight, got shape {tuple(weight.shape)}")
    if method == "svd":
        return torch.linalg.svdvals(weight.float()).double().square().sort().values
    if method != "gram":
        raise MPQError(f"unknown eigenvalue method {method!r}; use 'gram' or 'svd'")
    w = weight.double()
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return torch.linalg.eigvalsh(gram).clamp_min(0.0)  # ascending; rounding can leave -1e-17's


def hill_alpha(eigs: torch.Tensor, name: str = "weight") -> AlphaHill:
    """Hill estimate of the tail exponent of `eigs` (any order) with xmin at the median (see module doc)."""
    values = eigs.double().flatten().sort().values
    if values.numel() == 0 or not torch.isfinite(values).all() or values[0] < 0:
        raise MPQError(f"{name}: eigenvalues must be finite and non-negative to estimate Alpha-Hill")
    # Eigenvalues at or below max(λ)·N·eps are numerically zero (rank deficiency, as numpy's matrix_rank
    # judges it): left in, they would put log(0) into the tail sum when over half the spectrum is zero.
    cutoff = values[-1] * values.numel() * torch.finfo(torch.float64).eps
    values = values[values > cutoff]
    n = values.numel()
    if n < 4:
        raise MPQError(f"{name}: only {n} non-zero eigenvalue(s); Alpha-Hill needs at least 4 "
                       "(is the weight all zeros?)")
    i = n // 2
    tail = values[i:]
    k = tail.numel()
    log_ratio_sum = torch.log(tail / tail[0]).sum().item()
    if log_ratio_sum <= 0:
        raise MPQError(f"{name}: the upper half of the spectrum is flat (all eigenvalues equal); "
                       "no power-law tail to fit")
    alpha = 1.0 + k / log_ratio_sum
    # KS distance between the tail's empirical CDF and the fitted power law's CDF 1 - (λ/xmin)^(1-α).
    fitted = 1.0 - (tail / tail[0]) ** (1.0 - alpha)
    empirical = torch.arange(k, dtype=torch.float64) / k
    ks = (fitted - empirical).abs().max().item()
    return AlphaHill(alpha=alpha, xmin=tail[0].item(), k=k, n_eigs=n, ks_distance=ks)


def alpha_hill(weight: torch.Tensor, name: str = "weight", method: Method = "gram") -> AlphaHill:
    """Alpha-Hill of one weight [out, in] (`method`: how the eigenvalues are computed, see `esd`)."""
    if not weight.is_floating_point():
        raise MPQError(f"{name}: Alpha-Hill needs a float weight, got {weight.dtype}")
    if not torch.isfinite(weight).all():
        raise MPQError(f"{name}: weight contains NaN or Inf; Alpha-Hill is undefined")
    return hill_alpha(esd(weight, method), name)


def model_alphas(model_dir: str | Path, weights: Iterable[LinearWeight] | None = None, *,
                 method: Method = "gram", workers: int | None = None, progress: bool = True) -> dict[str, AlphaHill]:
    """Alpha-Hill of every linear weight (each MoE expert's separately) of a float checkpoint, in order.

    Reads one tensor at a time, so the model is never loaded whole.  Quantized checkpoints are refused:
    their rounding noise flattens the spectrum, so their α would not rank the original layers.
    Layers run on `workers` threads (default: torch's thread count), each LAPACK call single-threaded:
    on a small shared CPU, multi-threaded LAPACK on 576-wide matrices spends most of its time in
    OpenMP spin-waits (measured 5x slower than one thread per layer here).
    """
    ckpt = Checkpoint(model_dir)
    todo = list(weights) if weights is not None else linear_weights(ckpt)
    for w in todo:
        tensor_name = f"{w.name}.weight"
        if tensor_name not in ckpt or ckpt.info(tensor_name).dtype not in _FLOAT_DTYPES:
            raise MPQError(f"{ckpt.path}: {w.name} has no float `.weight` tensor (a quantized checkpoint?); "
                           "Alpha-Hill needs the unquantized model")
    threads = torch.get_num_threads()
    workers = workers or threads
    lock = threading.Lock()  # safetensors handles are opened lazily, once per file

    def one(w: LinearWeight) -> AlphaHill:
        with lock:
            weight = ckpt.read(f"{w.name}.weight")
        return alpha_hill(weight, w.name, method)

    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(tqdm(pool.map(one, todo), total=len(todo), desc="alpha-hill", unit="layer",
                                disable=not progress))
    finally:
        torch.set_num_threads(threads)
    return {w.name: r for w, r in zip(todo, results, strict=True)}
