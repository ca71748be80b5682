"""Fold a per-input-channel scale s into a group: linears' input columns × s, the previous op ÷ s.

Exact in real arithmetic, so the float model's output is unchanged (up to float32 rounding); what
changes is how hard each channel is to quantize.  The previous op is a norm (its weight and bias ÷ s)
or a linear (rows ÷ s, and its bias).  A norm that scales by (1 + weight), as Gemma's do, gets
1 + w' = (1 + w) / s; which kind a norm is, is asked of the norm itself (`scales_by_one_plus_weight`),
not read off a list of class names.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import MPQError
from ..layers.linear import MixedPrecisionLinear
from .scale_groups import ScaleGroup


@torch.no_grad()
def fold_scales(group: ScaleGroup, scales: torch.Tensor) -> None:
    s = scales.to(torch.float32)
    prev = group.prev
    if isinstance(prev, MixedPrecisionLinear):
        _float_weight(prev).div_(s.unsqueeze(1))
        if prev.bias is not None:
            prev.bias.div_(s.to(prev.bias.dtype))
    elif isinstance(getattr(prev, "weight", None), nn.Parameter) and prev.weight.ndim == 1:
        if scales_by_one_plus_weight(prev):
            prev.weight.copy_((1 + prev.weight.float()) / s - 1)
        else:
            prev.weight.div_(s.to(prev.weight.dtype))
        if getattr(prev, "bias", None) is not None:
            prev.bias.div_(s.to(prev.bias.dtype))
    else:
        raise MPQError(f"cannot fold a scale into {type(prev).__name__} (group {group.key})")
    for linear in group.linears:
        _float_weight(linear).mul_(s.unsqueeze(0))


@torch.no_grad()
def scales_by_one_plus_weight(norm: nn.Module) -> bool:
    """True when the norm's output with a zero weight (and zero bias) is not zero: it multiplies by 1 + w."""
    weight, bias = norm.weight, getattr(norm, "bias", None)
    saved = weight.detach().clone(), None if bias is None else bias.detach().clone()
    try:
        weight.zero_()
        if bias is not None:
            bias.zero_()
        probe = torch.linspace(-2, 3, 2 * weight.shape[0], dtype=weight.dtype).reshape(2, -1)
        return bool(norm(probe).abs().amax() > 0)
    finally:
        weight.copy_(saved[0])
        if bias is not None:
            bias.copy_(saved[1])


def _float_weight(linear: MixedPrecisionLinear) -> torch.Tensor:
    weight = getattr(linear, "weight", None)
    if linear.spec.format != "fp32" or weight is None:
        raise MPQError(f"folding needs the float32 calibration copy of a linear, found {linear.spec.describe()}")
    return weight
