"""SmoothQuant (Xiao et al. 2023): shift activation outliers into the weights before W8A8 / A4-A8.

Per foldable group (scale_groups.py) whose linears quantize their activations (`aq` in the plan),
s_j = max|X_j|^α / max|W_:,j|^(1-α) (`search.smoothquant.smooth_scales`, the seed-002 formula) is
folded into the previous op.  α = 0.5 is the paper's default for int8; larger α suits harder
activations (A4).  Groups with weight-only linears are left alone: smoothing only helps the activations.
"""

from __future__ import annotations

import torch

from ..search.smoothquant import smooth_scales
from .folding import fold_scales
from .scale_groups import ScaleGroup


def activation_quantized(group: ScaleGroup) -> bool:
    return any(linear_spec_activation(linear) for linear in group.linears)


def linear_spec_activation(linear) -> str | None:
    """The plan's activation format for a linear (set on the calibration copy by the sequential pass)."""
    return getattr(linear, "target_activation", None)


@torch.no_grad()
def smooth_group(group: ScaleGroup, x_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """Compute SmoothQuant scales for the group from its inputs' per-channel max |x|, fold them, return them."""
    weight = torch.cat([linear.weight for linear in group.linears], dim=0)
    scales = smooth_scales(x_absmax.to(weight.dtype), weight, alpha)
    fold_scales(group, scales)
    return scales
