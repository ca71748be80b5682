"""SmoothQuant scales (seed 002 smooths activations before measuring its A4 / A8 errors)."""

from __future__ import annotations

import torch


def smooth_scales(x_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's per-input-channel s = max|X_j|^α / max|W_:,j|^(1-α) (clamped at 1e-5, as the paper's code).

    (X / s) (W · s)ᵀ = X Wᵀ exactly, while activation outlier channels are shrunk and the weight
    columns grown: α moves quantization difficulty from activations (α → 1) to weights (α → 0).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"SmoothQuant alpha must be in [0, 1], got {alpha}")
    if x_absmax.shape != (weight.shape[1],):
        raise ValueError(f"SmoothQuant: {x_absmax.shape[0]} activation maxima for a weight with "
                         f"{weight.shape[1]} input channels")
    w_absmax = weight.abs().amax(0).clamp_min(1e-5)
    return (x_absmax.clamp_min(1e-5).pow(alpha) / w_absmax.pow(1.0 - alpha)).clamp_min(1e-5)
