"""Weight memory and average bits of a loaded model, measured from the tensors it actually holds."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..layers.linear import MixedPrecisionLinear


@dataclass(frozen=True)
class WeightMemory:
    linear_bits: float   # stored bits of all linear weights (packed tensors included)
    linear_params: int   # logical out*in summed over linear weights
    total_bytes: int     # every parameter and buffer, counted once

    @property
    def avg_bits(self) -> float:
        return self.linear_bits / max(self.linear_params, 1)


def weight_memory(model: nn.Module) -> WeightMemory:
    """Bits over linear layers (ours and plain nn.Linear; a head tied to the embeddings is not counted,
    as in `mpq plan avg-bits`); bytes over everything, tied tensors once."""
    bits, params = 0.0, 0
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = embeddings.weight.data_ptr() if embeddings is not None else None
    for module in model.modules():
        if isinstance(module, MixedPrecisionLinear):
            bits += module.qtensor.nbytes() * 8
            params += module.in_features * module.out_features
        elif isinstance(module, nn.Linear) and module.weight.data_ptr() != tied:
            bits += module.weight.numel() * module.weight.element_size() * 8
            params += module.weight.numel()
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return WeightMemory(bits, params, total)
