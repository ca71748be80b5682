"""The interface every numeric format implements, and shared checks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from ..errors import FormatError
from .spec import QuantizedTensor, QuantSpec

TensorLayout = dict[str, tuple[tuple[int, ...], torch.dtype]]


class Format(ABC):
    """A numeric format: quantize, dequantize, reference matmul, size, and on-disk layout.

    Subclasses register themselves with `@register_format`.  `dequantize` returns float32 so that
    every format has one exact reference to compare kernels and tools against.
    """

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    # Every tensor suffix this format may store for a weight (all its layouts' keys, and the other
    # spellings `from_tensors` accepts): how a loader tells a linear's tensors from the rest of a checkpoint.
    tensor_names: ClassVar[tuple[str, ...]] = ("weight",)

    def normalize(self, spec: QuantSpec) -> QuantSpec:
        """Fill the format's defaults into a spec (group size, granularity...)."""
        return spec

    def check_shape(self, spec: QuantSpec, shape: tuple[int, int], name: str = "weight") -> None:
        """Raise FormatError if a weight of this (out, in) shape cannot take this format."""
        if len(shape) != 2:
            raise FormatError(f"{name}: {self.name} needs a 2-D weight, got shape {tuple(shape)}")

    @abstractmethod
    def quantize(self, weight: torch.Tensor, spec: QuantSpec, name: str = "weight") -> QuantizedTensor:
        """Round-to-nearest quantization of a float weight [out, in]."""

    @abstractmethod
    def dequantize(self, q: QuantizedTensor) -> torch.Tensor:
        """The float32 weight [out, in] the stored tensors represent."""

    def matmul(self, x: torch.Tensor, q: QuantizedTensor) -> torch.Tensor:
        """Reference `y = x @ W^T` in float32, returned in x's dtype."""
        w = self.dequantize(q)
        return (x.to(torch.float32) @ w.t()).to(x.dtype)

    @abstractmethod
    def layout(self, spec: QuantSpec, shape: tuple[int, int]) -> TensorLayout:
        """Suffix → (shape, dtype) of every tensor this format stores for one weight."""

    def bits_per_weight(self, spec: QuantSpec, shape: tuple[int, int]) -> float:
        """Stored bits divided by out*in, counting scales, zeros and g_idx."""
        spec = self.normalize(spec)
        total = 0
        for tshape, dtype in self.layout(spec, shape).values():
            numel = 1
            for d in tshape:
                numel *= d
            total += numel * _bits_of(dtype)
        return total / (shape[0] * shape[1])

    def from_tensors(
        self, tensors: dict[str, torch.Tensor], spec: QuantSpec, shape: tuple[int, int], name: str = "weight"
    ) -> QuantizedTensor:
        """Wrap tensors read from a checkpoint, checking each against the layout."""
        spec = self.normalize(spec)
        expected = self.layout(spec, shape)
        missing = sorted(set(expected) - set(tensors))
        if missing:
            raise FormatError(
                f"{name}: {self.name} needs tensors {', '.join(name + '.' + m for m in missing)}, which are absent"
            )
        for suffix, (tshape, dtype) in expected.items():
            t = tensors[suffix]
            if tuple(t.shape) != tuple(tshape):
                raise FormatError(
                    f"{name}.{suffix}: shape {tuple(t.shape)} does not match {self.name} "
                    f"({spec.describe()}) for a weight of shape {tuple(shape)}; expected {tuple(tshape)}"
                )
            if not _dtype_compatible(t.dtype, dtype):
                raise FormatError(f"{name}.{suffix}: dtype {t.dtype} where {self.name} stores {dtype}")
        return QuantizedTensor(spec, tuple(shape), {k: tensors[k] for k in expected})


def check_finite(weight: torch.Tensor, name: str) -> None:
    """Refuse NaN / Inf weights: they would silently poison every scale of their group."""
    if not torch.isfinite(weight).all():
        bad = (~torch.isfinite(weight)).nonzero()[0].tolist()
        raise FormatError(f"{name}: contains NaN or Inf (first at index {bad}); fix the source weight")


def check_divisible(in_features: int, group_size: int, name: str, fmt: str) -> None:
    if group_size > 0 and in_features % group_size:
        raise FormatError(
            f"{name}: in_features {in_features} is not divisible by the {fmt} group size {group_size}; "
            f"pick a group size that divides {in_features} (or -1 for per-channel)"
        )


def _bits_of(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size() * 8


_FLOAT_SCALES = {torch.float16, torch.bfloat16, torch.float32}


def _dtype_compatible(actual: torch.dtype, expected: torch.dtype) -> bool:
    """Scales may be stored in any float dtype by the real tools; integer and fp8 payloads may not vary."""
    if expected in _FLOAT_SCALES:
        return actual in _FLOAT_SCALES
    return actual == expected
