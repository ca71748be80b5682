"""MXFP8 (OCP MX v1.0): E4M3 elements, one E8M0 scale per 32 inputs; compressed-tensors `mxfp8-quantized`.

Stored as `weight` float8_e4m3fn [out, in] and `weight_scale` uint8 [out, in/32] (biased E8M0),
the layout compressed-tensors' MXFP8QuantizationCompressor writes.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .mx_common import MXFormat
from .registry import register_format

E4M3_MAX = 448.0


@register_format
class MXFP8(MXFormat):
    name = "mxfp8"
    tensor_names = ("weight", "weight_scale")
    aliases = ("mxfp8_e4m3",)
    emax_elem: ClassVar[int] = 8  # floor(log2(448))
    elements_key: ClassVar[str] = "weight"

    def _encode(self, scaled: torch.Tensor) -> torch.Tensor:
        """Element units → E4M3: torch's cast is RNE but turns overflow into NaN, so saturate first."""
        return scaled.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)

    def _decode(self, elements: torch.Tensor) -> torch.Tensor:
        return elements.to(torch.float32)

    def _elements_layout(self, shape: tuple[int, int]) -> tuple[tuple[int, ...], torch.dtype]:
        return tuple(shape), torch.float8_e4m3fn
