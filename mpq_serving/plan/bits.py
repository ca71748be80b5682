"""Average bits per weight of a plan on a model, computed from the real shapes (never from the file)."""

from __future__ import annotations

from dataclasses import dataclass

from ..formats import get_format
from .model_weights import LinearWeight
from .resolve import Resolution


@dataclass(frozen=True)
class BitsReport:
    avg_bits: float
    total_bits: float
    n_weights: int
    n_params: int


def weight_bits(weight: LinearWeight, resolution: Resolution) -> float:
    """Stored bits of one weight in its resolved format, scales / zeros / g_idx included."""
    spec = resolution.spec
    return get_format(spec.format).bits_per_weight(spec, weight.shape) * weight.numel


def average_bits(weights: list[LinearWeight], resolved: dict[str, Resolution]) -> BitsReport:
    total = sum(weight_bits(w, resolved[w.name]) for w in weights)
    params = sum(w.numel for w in weights)
    return BitsReport(total / params, total, len(weights), params)
