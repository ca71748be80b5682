"""An MoE layer's experts, each in its own format, grouped by format (reuses layers/moe.py)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ...errors import MPQError
from ...formats import QuantizedTensor
from ...layers.linear import MixedPrecisionLinear
from ...layers.moe import MixedPrecisionExpert, MixedPrecisionExperts

ROLES = ("gate", "up", "down")

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"silu": F.silu, "gelu": F.gelu}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise MPQError(f"MoE activation {name!r} is not supported by mpq experts (supported: {sorted(_ACTIVATIONS)})") from None


def grouped_experts(by_expert: dict[int, dict[str, QuantizedTensor]], act: str = "silu") -> MixedPrecisionExperts:
    """Experts 0..n-1 (local ids) from `{expert: {"gate"|"up"|"down": QuantizedTensor}}`.

    Call as `experts(hidden [T, H], topk_ids [T, k], topk_weights [T, k])`; ids outside 0..n-1 (-1 for
    experts on another rank under expert parallelism) contribute nothing.
    """
    n = len(by_expert)
    if sorted(by_expert) != list(range(n)):
        raise MPQError(f"experts must be numbered 0..{n - 1}, got {sorted(by_expert)[:8]}")
    built = [MixedPrecisionExpert(*(MixedPrecisionLinear(by_expert[e][r]) for r in ROLES)) for e in range(n)]
    return MixedPrecisionExperts(built, activation(act))
