"""bf16 / fp16 / fp32: the weight is stored as is, in that dtype."""

from __future__ import annotations

import torch

from .base import Format, TensorLayout, check_finite
from .registry import register_format
from .spec import QuantizedTensor, QuantSpec


class _PassThrough(Format):
    dtype: torch.dtype

    def quantize(self, weight: torch.Tensor, spec: QuantSpec, name: str = "weight") -> QuantizedTensor:
        self.check_shape(spec, tuple(weight.shape), name)
        check_finite(weight, name)
        return QuantizedTensor(spec, tuple(weight.shape), {"weight": weight.to(self.dtype).contiguous()})

    def dequantize(self, q: QuantizedTensor) -> torch.Tensor:
        return q.tensors["weight"].to(torch.float32)

    def layout(self, spec: QuantSpec, shape: tuple[int, int]) -> TensorLayout:
        return {"weight": (tuple(shape), self.dtype)}

    def from_tensors(self, tensors, spec, shape, name="weight"):
        # A bf16 slot accepts any float weight (an fp16 release feeding a bf16 plan entry): cast, don't refuse.
        q = super().from_tensors(tensors, spec, shape, name)
        q.tensors["weight"] = q.tensors["weight"].to(self.dtype)
        return q


@register_format
class BF16(_PassThrough):
    name = "bf16"
    aliases = ("bfloat16",)
    dtype = torch.bfloat16


@register_format
class FP16(_PassThrough):
    name = "fp16"
    aliases = ("float16", "half")
    dtype = torch.float16


@register_format
class FP32(_PassThrough):
    name = "fp32"
    aliases = ("float32",)
    dtype = torch.float32
