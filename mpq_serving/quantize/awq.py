"""AWQ (Lin et al. 2024): activation-aware per-input-channel scales, searched then folded, then clipping.

Follows AutoAWQ 0.2.9 `AwqQuantizer` (awq/quantize/quantizer.py):

* `search_scales`: s = x̄^r / (w̄^(1-r) + 1e-4), normalized by √(max s · min s), for r on a grid of
  20 in [0, 1) (`duo_scaling`), where x̄ is the mean |x| per input channel of the calibration inputs
  and w̄ the mean per input channel of |w| / max|w| of its quantization group; the winner minimizes
  the MSE between the float output of the inspected module (self_attn for q/k/v, the MLP for
  gate/up, the linear itself otherwise) and its output with every weight quantized as W·s → Q(W·s)/s.
* the scales are then folded into the previous op (folding.py), exactly, in float.
* `search_clip`: per int4 group, the max |w| is shrunk by up to 50% (10 steps of 5%) to minimize the
  group's output error on 512 sampled tokens; q_proj / k_proj are not clipped (their error is
  amplified by the softmax), as AutoAWQ skips them.

Quantizing every candidate uses the plan's own format for each linear (`Format.quantize` then
`dequantize`), so mixed plans get AWQ scales suited to each layer's format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..formats import QuantSpec, get_format
from .column_quantizers import INT4_FORMATS
from .scale_groups import ScaleGroup

N_GRID = 20
CLIP_TOKENS = 512
CLIP_STEPS = 10  # max_shrink 0.5 with a 20-point grid
NO_CLIP = ("q_proj", "k_proj", "query", "key", "qkv")

QuantizeFn = Callable[[torch.Tensor], torch.Tensor]


def fake_quantizer(spec: QuantSpec, name: str) -> QuantizeFn | None:
    """Round-to-nearest quantize–dequantize in the spec's format; None for float formats (nothing to search).

    int4 formats use `pseudo_quantize_int4` (the search calls it hundreds of times per layer).
    """
    fmt = get_format(spec.format)
    if fmt.name in ("bf16", "fp16", "fp32"):
        return None
    spec = fmt.normalize(spec)
    if fmt.name in INT4_FORMATS:
        return lambda w: pseudo_quantize_int4(w, spec.group_size, spec.symmetric)
    return lambda w: fmt.dequantize(fmt.quantize(w, spec, name=name)).to(w.dtype)


def pseudo_quantize_int4(w: torch.Tensor, group_size: int, symmetric: bool) -> torch.Tensor:
    """AutoAWQ's `pseudo_quantize_tensor` on our int4 grid (range includes 0; symmetric amax / 7, zero 8):
    the formats' round-to-nearest without packing and without rounding the scale to its stored dtype."""
    out_f, in_f = w.shape
    g = w.reshape(out_f, -1, in_f if group_size == -1 else group_size)
    hi, lo = g.amax(-1, keepdim=True).clamp(min=0), g.amin(-1, keepdim=True).clamp(max=0)
    if symmetric:
        scale = (torch.maximum(hi, -lo) / 7).clamp(min=1e-10)
        q = torch.clamp(torch.round(g / scale), -8, 7) * scale
    else:
        scale = ((hi - lo) / 15).clamp(min=1e-10)
        zero = torch.round(-lo / scale)
        q = (torch.clamp(torch.round(g / scale) + zero, 0, 15) - zero) * scale
    return q.reshape(out_f, in_f)


@dataclass
class ScaleSearch:
    scales: torch.Tensor
    ratio: float
    loss: float
    loss_at_ratio_0: float  # no scaling (plain round-to-nearest): what AWQ improves on


def _weight_importance(weights: list[torch.Tensor], specs: list[QuantSpec]) -> torch.Tensor:
    """Mean over output rows of |w| / max|w| within each weight's quantization group (AutoAWQ's w_mean)."""
    parts = []
    for w, spec in zip(weights, specs, strict=True):
        group = spec.group_size if spec.group_size and spec.group_size > 0 else w.shape[1]
        g = w.abs().reshape(-1, group)
        parts.append((g / (g.amax(dim=1, keepdim=True) + 1e-6)).reshape(w.shape))
    return torch.cat(parts, dim=0).mean(0)


def _call(module: torch.nn.Module, x: torch.Tensor, kwargs: dict[str, Any] | None) -> torch.Tensor:
    out = module(x, **kwargs) if kwargs is not None else module(x)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def search_scales(group: ScaleGroup, inputs: list[torch.Tensor], layer_kwargs: list[dict[str, Any]] | None,
                  quantizers: list[QuantizeFn | None], specs: list[QuantSpec]) -> ScaleSearch:
    """AutoAWQ's grid search for the group's input scales; weights are left as they were."""
    x_mean = torch.zeros(inputs[0].shape[-1], dtype=torch.float64)
    rows = 0
    for x in inputs:
        flat = x.reshape(-1, x.shape[-1])
        x_mean += flat.abs().sum(0, dtype=torch.float64)
        rows += flat.shape[0]
    x_mean = (x_mean / rows).to(torch.float32)
    originals = [linear.weight.clone() for linear in group.linears]
    w_mean = _weight_importance(originals, specs)
    kwargs = layer_kwargs or [None] * len(inputs)
    reference = [_call(group.inspect, x, kw) for x, kw in zip(inputs, kwargs, strict=True)]

    best: ScaleSearch | None = None
    first_loss = float("nan")
    try:
        for step in range(N_GRID):
            ratio = step / N_GRID
            s = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
            s = s / (s.max() * s.min()).sqrt()
            for linear, w, quant in zip(group.linears, originals, quantizers, strict=True):
                scaled = w * s.unsqueeze(0)
                linear.weight.copy_((quant(scaled) if quant else scaled) / s.unsqueeze(0))
            loss = sum(float((_call(group.inspect, x, kw) - ref).float().pow(2).sum())
                       for x, kw, ref in zip(inputs, kwargs, reference, strict=True))
            loss /= sum(r.numel() for r in reference)
            if step == 0:
                first_loss = loss
            if best is None or loss < best.loss:
                best = ScaleSearch(s.clone(), ratio, loss, first_loss)
    finally:
        for linear, w in zip(group.linears, originals, strict=True):
            linear.weight.copy_(w)
    best.loss_at_ratio_0 = first_loss
    return best


@torch.no_grad()
def search_clip(weight: torch.Tensor, inputs: list[torch.Tensor], spec: QuantSpec, name: str,
                oc_batch: int = 256) -> torch.Tensor | None:
    """Per-group max |w| (shape [out, groups, 1]) minimizing the group outputs' error, or None when the
    layer is not clipped (not a grouped int4 format, or q/k projection)."""
    fmt = get_format(spec.format)
    if fmt.name not in INT4_FORMATS or any(part in name.rsplit(".", 1)[-1] for part in NO_CLIP):
        return None
    spec = fmt.normalize(spec)
    fake = fake_quantizer(spec, name)
    out_f, in_f = weight.shape
    group = spec.group_size if spec.group_size > 0 else in_f
    x = torch.cat([t.reshape(-1, in_f) for t in inputs])
    x = x[:: max(1, x.shape[0] // CLIP_TOKENS)][:CLIP_TOKENS]
    xg = x.reshape(x.shape[0], -1, group)  # [tokens, groups, group]
    best_max = []
    for start in range(0, out_f, oc_batch):
        w = weight[start:start + oc_batch]
        wg = w.reshape(w.shape[0], -1, group)  # [oc, groups, group]
        ref = torch.einsum("tgk,ogk->otg", xg, wg)
        org_max = wg.abs().amax(dim=-1, keepdim=True)
        batch_best = org_max.clone()
        min_err = torch.full(org_max.shape[:2], float("inf"))
        for i in range(CLIP_STEPS):
            max_val = org_max * (1 - i / N_GRID)
            clipped = torch.clamp(wg, -max_val, max_val).reshape(w.shape)
            q = fake(clipped).reshape(wg.shape)
            err = (torch.einsum("tgk,ogk->otg", xg, q) - ref).pow(2).mean(dim=1)  # [oc, groups]
            better = err < min_err
            min_err = torch.where(better, err, min_err)
            batch_best = torch.where(better.unsqueeze(-1), max_val, batch_best)
        best_max.append(batch_best)
    return torch.cat(best_max)


@torch.no_grad()
def apply_clip(weight: torch.Tensor, max_val: torch.Tensor) -> None:
    """Clamp each group of `weight` [out, in] in place to ± its searched max."""
    wg = weight.view(weight.shape[0], max_val.shape[1], -1)
    wg.copy_(torch.clamp(wg, -max_val, max_val))
