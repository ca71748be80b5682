"""GPTQ: round a weight one input column at a time, pushing each column's error onto the columns not yet
rounded through the inverse Hessian of the layer's calibration inputs (Frantar et al. 2022).

Follows GPTQModel's `GPTQ.quantize` (gptqmodel/quantization/gptq.py, itself AutoGPTQ's): dead columns
zeroed, damping `damp · mean(diag H)`, blocks of 128 columns with lazy batch updates, act-order
(`desc_act`) visiting columns by descending Hessian diagonal with group grids fixed as each group of
the *permuted* order starts (so g_idx[perm[k]] = k // group_size, what GPTQ checkpoints store).
SparseGPT (sparsegpt.py) runs the same loop with a pruning mask, so pruning and quantization combine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from ..formats import QuantizedTensor, QuantSpec
from .column_quantizers import column_quantizer
from .hessian import prepare_hessian, upper_cholesky_inverse

BLOCK_SIZE = 128

# (block weights W1 [out, count], diag of Hinv for the block [count], column offset in block) → new mask
# columns [out, k] is what SparseGPT plugs in; None means no pruning.
MaskFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass
class GPTQResult:
    qtensor: QuantizedTensor
    loss: float  # Σ (w − q)² / Hinv_ii² / 2, GPTQ's own error estimate (relative output error proxy)
    perm: torch.Tensor | None


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    spec: QuantSpec,
    *,
    damp: float = 0.01,
    static_groups: bool = False,
    name: str = "weight",
    block_size: int = BLOCK_SIZE,
    block_mask: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    column_mask: MaskFn | None = None,
    mask_every: int = 0,
) -> GPTQResult:
    """GPTQ-quantize `weight` [out, in] given its input Hessian [in, in]; returns the packed tensor.

    Act-order (descending Hessian diagonal) is taken from `spec.act_order`: groups follow the visiting
    order and g_idx records them (`desc_act`).  With `static_groups` every group's grid is fixed up
    front from the whole weight (GPTQModel `static_groups=True`); then act-order changes only the
    visiting order, groups stay contiguous, and the result is stored without act-order (vLLM 0.32
    refuses desc_act checkpoints but loads these).

    `block_mask(W1, hinv_diag) -> bool mask` (unstructured pruning per block) and `column_mask(W1,
    hinv_diag, i) -> bool mask [out, mask_every]` (n:m pruning every `mask_every` columns) are
    SparseGPT's hooks: masked weights are set to 0 before rounding, their error compensated like any
    other.
    """
    w = weight.detach().to(torch.float32)
    out_f, in_f = w.shape
    h, w = prepare_hessian(hessian.to(torch.float32), w, damp)
    stored = replace(spec, act_order=False) if static_groups else spec
    quantizer = column_quantizer(stored, (out_f, in_f), name)
    perm = None
    if static_groups:
        quantizer.begin_static(w, torch.argsort(torch.diag(h), descending=True) if spec.act_order else None)
    if spec.act_order:
        perm = torch.argsort(torch.diag(h), descending=True)
        w, h = w[:, perm], h[perm][:, perm]
    hinv = upper_cholesky_inverse(h, damp, name)
    quantizer.begin(w)
    group = -1 if static_groups else quantizer.group_size
    losses = torch.zeros(out_f, dtype=torch.float32, device=w.device)

    for i1 in range(0, in_f, block_size):
        i2 = min(i1 + block_size, in_f)
        count = i2 - i1
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        diag1 = torch.diag(hinv1)
        mask1 = block_mask(w1, diag1) if block_mask is not None else None
        for i in range(count):
            col = i1 + i
            if column_mask is not None and i % mask_every == 0:
                new = column_mask(w1[:, i:i + mask_every], diag1[i:i + mask_every], i)
                mask1 = torch.zeros_like(w1, dtype=torch.bool) if mask1 is None else mask1
                mask1[:, i:i + mask_every] = new
            if group > 0 and col % group == 0:
                # The group's grid from the weights as updated so far (in-block columns from w1).
                ahead = w1[:, i:i + group]
                if ahead.shape[1] < group:
                    ahead = torch.cat([ahead, w[:, i2:i2 + group - ahead.shape[1]]], dim=1)
                quantizer.begin_group(ahead)
            wcol = w1[:, i]
            target = wcol if mask1 is None else wcol.masked_fill(mask1[:, i], 0.0)
            e = (wcol - quantizer.round(target, col)).div_(hinv1[i, i])
            w1[:, i:].addr_(e, hinv1[i, i:], alpha=-1)  # this column's error onto the block's later columns
            err1[:, i] = e
        losses += err1.pow(2).sum(dim=1) / 2  # Σ (w − q)² / Hinv_ii² / 2, summed once per block
        w[:, i2:].addmm_(err1, hinv[i1:i2, i2:], alpha=-1)

    return GPTQResult(quantizer.finish(perm), float(losses.sum()), perm)
