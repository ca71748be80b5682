"""The layer-input Hessian H = 2/n Σ x xᵀ that GPTQ and SparseGPT use, and its damped inverse.

A linear layer's squared output error ‖X (W − Ŵ)ᵀ‖² is a quadratic form in each weight row with the
matrix XᵀX; GPTQ (Frantar et al. 2022) and SparseGPT (Frantar & Alistarh 2023) both walk the input
columns in order, rounding or pruning one column and spreading its error over the columns not yet
visited through the upper Cholesky factor of H⁻¹.  This file follows GPTQModel's `GPTQ.add_batch`
(running mean, so H does not depend on how the tokens were batched) and `hessian_inverse`.
"""

from __future__ import annotations

import torch

from ..errors import MPQError


class HessianAccumulator:
    """Running H = 2/n Σ x xᵀ over every input row a layer has seen, in float32 as GPTQModel keeps it: one
    GEMM per batch of rows (a float64 GEMM costs ~3× as much on CPU and GPTQ's damping dwarfs the difference)."""

    def __init__(self, in_features: int, device: torch.device | str = "cpu"):
        self.h = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.rows = 0

    def add(self, x: torch.Tensor) -> None:
        """Fold in input rows x [..., in_features]."""
        x = x.reshape(-1, x.shape[-1]).to(torch.float32)
        n = x.shape[0]
        if n == 0:
            return
        self.h *= self.rows / (self.rows + n)
        self.rows += n
        x = x * (2.0 / self.rows) ** 0.5
        self.h.addmm_(x.t(), x)

    def value(self) -> torch.Tensor:
        if self.rows == 0:
            raise MPQError("no calibration rows reached this layer; its Hessian is undefined")
        return self.h.clone()


def prepare_hessian(h: torch.Tensor, weight: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the columns no calibration input ever touched ("dead"), add damp·mean(diag H) to the diagonal.

    Returns (H, W) with dead columns of W zeroed, as GPTQ does: with a zero input they cannot change
    the output, and a 1 on H's diagonal keeps H invertible.
    """
    if not 0.0 < damp < 1.0:
        raise MPQError(f"damp must be in (0, 1) (a fraction of the Hessian's mean diagonal), got {damp}")
    h = h.clone()
    w = weight.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += torch.eye(h.shape[0], dtype=h.dtype, device=h.device) * (damp * torch.mean(torch.diag(h)))
    return h, w


def upper_cholesky_inverse(h: torch.Tensor, damp: float, name: str = "layer") -> torch.Tensor:
    """U with H⁻¹ = Uᵀ U (upper Cholesky factor of the inverse), retrying with 10× more damping if H is singular."""
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    extra = 0.0
    for _ in range(6):
        try:
            lower = torch.linalg.cholesky(h + eye * extra)
            inverse = torch.cholesky_inverse(lower)
            return torch.linalg.cholesky(inverse, upper=True)
        except torch.linalg.LinAlgError:
            extra = (extra * 10) if extra else damp * float(torch.mean(torch.diag(h)))
    raise MPQError(f"{name}: the calibration Hessian is not positive definite even with extra damping; "
                   "use more calibration samples or a larger --damp")
