"""SparseGPT: prune a weight to a target sparsity (unstructured, or n:m such as 2:4) while compensating the
pruned weights' error on the remaining ones, optionally quantizing them in the same pass.

Frantar & Alistarh 2023 (github.com/IST-DASLab/sparsegpt, `SparseGPT.fasterprune`): the saliency of
weight w_ij is w_ij² / [H⁻¹]_jj²; per block of 128 columns the lowest-saliency fraction is masked
(unstructured), or per row the n lowest of every m consecutive columns (n:m, e.g. 2:4 — the pattern
sparse tensor cores run).  Masked weights become exactly 0, and 0 is a point of every grid the
formats use (int4 ranges always contain 0), so quantizing afterwards keeps the sparsity exact.
The column loop is GPTQ's (gptq.py), so `--sparsity` with a quantized format is SparseGPT + GPTQ.
"""

from __future__ import annotations

import torch

from ..errors import MPQError
from ..formats import QuantSpec
from .gptq import GPTQResult, gptq_quantize


def parse_pattern(pattern: str | None) -> tuple[int, int] | None:
    """`"2:4"` → (2, 4): prune 2 of every 4 consecutive input weights; None → unstructured."""
    if pattern in (None, "", "unstructured"):
        return None
    try:
        n, m = (int(v) for v in pattern.split(":"))
    except ValueError:
        raise MPQError(f"sparsity pattern {pattern!r}: expected N:M such as 2:4, or 'unstructured'") from None
    if not 0 < n < m:
        raise MPQError(f"sparsity pattern {pattern!r}: need 0 < N < M")
    return n, m


def unstructured_mask(sparsity: float):
    """Per block: mask exactly ⌊sparsity · numel⌋ weights of lowest saliency (ties broken by position)."""
    def fn(w1: torch.Tensor, hinv_diag: torch.Tensor) -> torch.Tensor:
        saliency = (w1**2 / hinv_diag.reshape(1, -1) ** 2).flatten()
        k = int(saliency.numel() * sparsity)
        mask = torch.zeros(saliency.numel(), dtype=torch.bool, device=w1.device)
        if k:
            mask[torch.topk(saliency, k, largest=False, sorted=False).indices] = True
        return mask.view_as(w1)
    return fn


def nm_mask(n: int, m: int):
    """For each row, mask the n lowest-saliency weights among the m columns starting here."""
    def fn(w_cols: torch.Tensor, hinv_diag: torch.Tensor, _offset: int) -> torch.Tensor:
        saliency = w_cols**2 / hinv_diag.reshape(1, -1) ** 2
        mask = torch.zeros_like(w_cols, dtype=torch.bool)
        mask.scatter_(1, torch.topk(saliency, n, dim=1, largest=False).indices, True)
        return mask
    return fn


def sparsegpt_quantize(weight: torch.Tensor, hessian: torch.Tensor, spec: QuantSpec, *, sparsity: float = 0.5,
                       pattern: str | None = None, damp: float = 0.01, name: str = "weight") -> GPTQResult:
    """Prune `weight` with SparseGPT and quantize it to `spec` (GPTQ rounding; bf16 specs just prune)."""
    nm = parse_pattern(pattern)
    if nm is not None:
        n, m = nm
        if weight.shape[1] % m:
            raise MPQError(f"{name}: in_features {weight.shape[1]} is not a multiple of {m} for {pattern} sparsity")
        return gptq_quantize(weight, hessian, spec, damp=damp, name=name, column_mask=nm_mask(n, m), mask_every=m)
    if not 0.0 <= sparsity < 1.0:
        raise MPQError(f"sparsity must be in [0, 1), got {sparsity}")
    return gptq_quantize(weight, hessian, spec, damp=damp, name=name, block_mask=unstructured_mask(sparsity))
