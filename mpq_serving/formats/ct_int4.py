"""compressed-tensors W4A16 `pack-quantized`: the int4 layout llm-compressor writes.

Tensors for a weight [out, in] with G = in / group_size groups (1 for the `channel` strategy):

* `weight_packed`     int32 [out, ceil(in/8)]: nibble j of word c in row o holds input 8c + j as
  the unsigned code q + 8 (q signed in -8..7); a ragged tail is zero-padded;
* `weight_scale`      [out, G] float (the model dtype upstream; we write bfloat16);
* `weight_zero_point` int32 [ceil(out/8), G], asymmetric only: zero points z + 8 packed along the
  output dim (nibble j of row r = output 8r + j);
* `weight_shape`      int64 [2] = (out, in).

w = (q - z) * scale.  Follows compressed-tensors 0.20 `PackedQuantizationCompressor.compress` /
`decompress` (compressors/pack_quantized/base.py) and `pack_to_int32` / `unpack_from_int32`
(compressors/pack_quantized/helpers.py).  Internally codes and zeros are kept unsigned (+8), the
same numbers GPTQ and AWQ store.

The same compressor writes 8-bit weights (llm-compressor's W8A16 preset) with 4 codes per int32 and
offset 128 (`pack_to_int32(num_bits=8)`); `ct_int8.py` is this class at that width.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import FormatError
from .base import Format, TensorLayout, check_divisible, check_finite
from .int4_packing import (
    Int4Parts,
    check_group_size,
    dense,
    n_groups,
    pack_int4,
    quantize_groups,
    unpack_int4,
)
from .registry import register_format
from .spec import QuantizedTensor, QuantSpec

SCALE_DTYPE = torch.bfloat16  # llm-compressor keeps the model's dtype; bf16 for today's models


@register_format
class CTInt4(Format):
    """Int4 weights packed 8 per int32 along the input dim, compressed-tensors naming."""

    name = "ct_int4"
    aliases = ("w4a16", "pack_quantized")
    tensor_names = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx")
    bits: ClassVar[int] = 4

    def _words(self, n: int) -> int:
        """int32 words holding n codes (a ragged tail is zero-padded)."""
        per_word = 32 // self.bits
        return -(-n // per_word)

    def normalize(self, spec: QuantSpec) -> QuantSpec:
        spec = spec.with_defaults(group_size=128, symmetric=True)
        check_group_size(spec, self.name)
        return spec

    def check_shape(self, spec: QuantSpec, shape: tuple[int, int], name: str = "weight") -> None:
        super().check_shape(spec, shape, name)
        check_divisible(shape[1], self.normalize(spec).group_size, name, self.name)

    def layout(self, spec: QuantSpec, shape: tuple[int, int]) -> TensorLayout:
        spec = self.normalize(spec)
        out_f, in_f = shape
        groups = n_groups(spec.group_size, in_f)
        layout: TensorLayout = {
            "weight_packed": ((out_f, self._words(in_f)), torch.int32),
            "weight_scale": ((out_f, groups), SCALE_DTYPE),
        }
        if not spec.symmetric:
            layout["weight_zero_point"] = ((self._words(out_f), groups), torch.int32)
        layout["weight_shape"] = ((2,), torch.int64)
        return layout

    def quantize(self, weight: torch.Tensor, spec: QuantSpec, name: str = "weight") -> QuantizedTensor:
        spec = self.normalize(spec)
        self.check_shape(spec, tuple(weight.shape), name)
        check_finite(weight, name)
        groups = n_groups(spec.group_size, weight.shape[1])
        parts = quantize_groups(weight, groups, symmetric=spec.symmetric, scale_dtype=SCALE_DTYPE, name=name,
                                bits=self.bits)
        return self.pack(parts, spec)

    def pack(self, parts: Int4Parts, spec: QuantSpec) -> QuantizedTensor:
        """Write logical int4 parts as compressed-tensors tensors (contiguous groups)."""
        spec = self.normalize(spec)
        tensors = {
            "weight_packed": pack_int4(parts.codes, dim=1, bits=self.bits),
            "weight_scale": dense(parts.scales.to(SCALE_DTYPE)),
        }
        if not spec.symmetric:
            tensors["weight_zero_point"] = pack_int4(parts.zeros, dim=0, bits=self.bits)
        tensors["weight_shape"] = torch.tensor(parts.codes.shape, dtype=torch.int64)
        return QuantizedTensor(spec, tuple(parts.codes.shape), tensors)

    def unpack(self, q: QuantizedTensor) -> Int4Parts:
        """Read the logical parts back; without weight_zero_point (symmetric) every zero is the signed 0 (8 for int4)."""
        out_f, in_f = q.shape
        t = q.tensors
        stored = tuple(int(v) for v in t["weight_shape"].tolist())
        if stored != (out_f, in_f):
            raise FormatError(f"{self.name}: weight_shape says {stored}, but the weight is {(out_f, in_f)}")
        scales = t["weight_scale"]
        if "weight_zero_point" in t:
            zeros = unpack_int4(t["weight_zero_point"], dim=0, length=out_f, bits=self.bits)
        else:
            zeros = torch.full(scales.shape, 1 << (self.bits - 1), dtype=torch.int32, device=scales.device)
        return Int4Parts(
            codes=unpack_int4(t["weight_packed"], dim=1, length=in_f, bits=self.bits),
            scales=scales,
            zeros=zeros,
        )

    def dequantize(self, q: QuantizedTensor) -> torch.Tensor:
        return self.unpack(q).dequantize()
