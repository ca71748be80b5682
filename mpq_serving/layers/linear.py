"""MixedPrecisionLinear: one linear layer holding its weight in its own format's packed tensors."""

from __future__ import annotations

import torch
from torch import nn

from ..formats import QuantizedTensor, QuantSpec
from ..kernels import KernelCache, linear


class MixedPrecisionLinear(nn.Module):
    """Drop-in for nn.Linear; the packed tensors are buffers named as the format's tool names them
    (`qweight`, `weight_scale`...), so the state dict matches the packed checkpoint.

    `kernel_cache` holds what the chosen kernel prepared from the buffers on the first call (e.g.
    torch's int4pack layout), outside the state dict; it is rebuilt by itself when a buffer is
    replaced, moved, cast or modified in place (see kernels/dispatch.py).
    """

    def __init__(self, q: QuantizedTensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.spec: QuantSpec = q.spec
        self.out_features, self.in_features = q.shape
        self._suffixes = tuple(q.tensors)
        for suffix, tensor in q.tensors.items():
            self.register_buffer(suffix, tensor)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.kernel_cache = KernelCache()
        self._qtensor: QuantizedTensor | None = None

    @property
    def qtensor(self) -> QuantizedTensor:
        """The buffers as a QuantizedTensor, rebuilt only when a buffer is replaced (`.to()`, assignment)."""
        cached, buffers = self._qtensor, self._buffers
        if cached is not None:  # a plain loop: this runs on every call, a generator costs more than the check
            tensors = cached.tensors
            for s in self._suffixes:
                if tensors[s] is not buffers[s]:
                    break
            else:
                return cached
        cached = self._qtensor = QuantizedTensor(self.spec, (self.out_features, self.in_features),
                                                 {s: buffers[s] for s in self._suffixes})
        return cached

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.qtensor, self.bias, self.kernel_cache)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.spec.describe()}"
