"""AWQ int4: the AutoAWQ GEMM checkpoint layout (`version: gemm`).

Tensors for a weight [out, in] with G = in / group_size groups (1 for per-channel):

* `qweight` int32 [in, out/8]: row i holds input i; nibble j of column c holds output
  8c + AWQ_ORDER[j], AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7);
* `qzeros`  int32 [G, out/8]: the zeros, same interleave, stored as is (no GPTQ-style - 1);
* `scales`  float16 [G, out].

w[o, i] = (q[i, o] - zero[i // group_size, o]) * scales[i // group_size, o]; no g_idx (AWQ has no
act-order).  Follows AutoAWQ 0.2.9 `WQLinear_GEMM.from_linear` (awq/modules/linear/gemm.py) for
packing and `dequantize_gemm` / `unpack_awq` / `reverse_awq_order` (awq/utils/packing_utils.py)
for reading.

AutoAWQ's GEMV layout (`version: gemv`, AutoAWQ 0.2.9 `WQLinear_GEMV.from_linear`,
awq/modules/linear/gemv.py) is read as a source and repacked to GEMM at load, bit for bit (the same
codes, zeros and scales; only the packing differs).  A spec with checkpoint_format "awq_gemv" names it:

* `qweight` int32 [out, in/8]: nibble j of word c holds input 8c + j (no interleave);
* `qzeros`  int32 [out, W]: nibble j of word c holds the zero of group 8c + j, W =
  `calculate_zeros_width` (ceil(G / 8) rounded up to a multiple of 1, 2 or 4 for group sizes >= 128,
  64, 32), the words past G / 8 zero;
* `scales`  float16 [out, 8W]: the first G columns are the scales, the rest zero padding.

AutoAWQ quantizes with a zero point by default (`zero_point: true`), so the default here is
asymmetric: `normalize` fills symmetric=False when the spec leaves it unset (None).  Symmetric
(`zero_point: false`) stores zero 8 in qzeros, which the GEMM kernels read like any other zero.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..errors import FormatError
from .base import Format, TensorLayout, check_divisible, check_finite
from .int4_packing import (
    AWQ_ORDER,
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


@register_format
class AWQInt4(Format):
    """Int4 weights, 8 per int32 along the output dim in AWQ's interleaved order, fp16 scales."""

    name = "awq_int4"
    tensor_names = ("qweight", "qzeros", "scales")
    aliases = ("awq", "awq-int4")

    def normalize(self, spec: QuantSpec) -> QuantSpec:
        spec = spec.with_defaults(group_size=128, symmetric=False)
        check_group_size(spec, self.name)
        return spec

    def check_shape(self, spec: QuantSpec, shape: tuple[int, int], name: str = "weight") -> None:
        super().check_shape(spec, shape, name)
        spec = self.normalize(spec)
        if spec.checkpoint_format == "awq_gemv" and spec.group_size not in (-1, 32, 64) and spec.group_size < 128:
            raise FormatError(f"{name}: AutoAWQ's GEMV layout has group sizes 32, 64 or >= 128, not {spec.group_size}")
        if shape[0] % 8:
            raise FormatError(
                f"{name}: {self.name} packs 8 values per int32 along the output dim; "
                f"out_features {shape[0]} is not divisible by 8"
            )
        check_divisible(shape[1], spec.group_size, name, self.name)

    def layout(self, spec: QuantSpec, shape: tuple[int, int]) -> TensorLayout:
        spec = self.normalize(spec)
        out_f, in_f = shape
        groups = n_groups(spec.group_size, in_f)
        if spec.checkpoint_format == "awq_gemv":
            width = gemv_zeros_width(groups, spec.group_size)
            return {
                "qweight": ((out_f, in_f // 8), torch.int32),
                "qzeros": ((out_f, width), torch.int32),
                "scales": ((out_f, width * 8), torch.float16),
            }
        return {
            "qweight": ((in_f, out_f // 8), torch.int32),
            "qzeros": ((groups, out_f // 8), torch.int32),
            "scales": ((groups, out_f), torch.float16),
        }

    def quantize(self, weight: torch.Tensor, spec: QuantSpec, name: str = "weight") -> QuantizedTensor:
        spec = self.normalize(spec)
        self.check_shape(spec, tuple(weight.shape), name)
        check_finite(weight, name)
        groups = n_groups(spec.group_size, weight.shape[1])
        parts = quantize_groups(weight, groups, symmetric=spec.symmetric, scale_dtype=torch.float16, name=name)
        return self.pack(parts, spec)

    def pack(self, parts: Int4Parts, spec: QuantSpec) -> QuantizedTensor:
        """Write logical int4 parts in the AWQ GEMM layout (contiguous groups)."""
        spec = self.normalize(spec)
        tensors = {
            "qweight": pack_int4(parts.codes.t(), dim=1, order=AWQ_ORDER),
            "qzeros": pack_int4(parts.zeros.t(), dim=1, order=AWQ_ORDER),
            "scales": dense(parts.scales.t().to(torch.float16)),
        }
        return QuantizedTensor(spec, tuple(parts.codes.shape), tensors)

    def from_tensors(
        self, tensors: dict[str, torch.Tensor], spec: QuantSpec, shape: tuple[int, int], name: str = "weight"
    ) -> QuantizedTensor:
        """Wrap stored tensors; a GEMV source comes back repacked to GEMM (a GEMM spec)."""
        q = super().from_tensors(tensors, spec, shape, name)
        if q.spec.checkpoint_format != "awq_gemv":
            return q
        out_f, in_f = shape
        groups = n_groups(q.spec.group_size, in_f)
        t = q.tensors
        parts = Int4Parts(
            codes=unpack_int4(t["qweight"], dim=1, length=in_f),
            scales=t["scales"][:, :groups],
            zeros=unpack_int4(t["qzeros"], dim=1, length=groups),
        )
        return self.pack(parts, replace(q.spec, checkpoint_format="gptq"))

    def unpack(self, q: QuantizedTensor) -> Int4Parts:
        """Read the logical int4 parts back from the AWQ tensors."""
        out_f = q.shape[0]
        t = q.tensors
        return Int4Parts(
            codes=unpack_int4(t["qweight"], dim=1, length=out_f, order=AWQ_ORDER).t(),
            scales=t["scales"].t(),
            zeros=unpack_int4(t["qzeros"], dim=1, length=out_f, order=AWQ_ORDER).t(),
        )

    def dequantize(self, q: QuantizedTensor) -> torch.Tensor:
        return self.unpack(q).dequantize()


def gemv_zeros_width(groups: int, group_size: int) -> int:
    """AutoAWQ's `calculate_zeros_width`: int32 words of GEMV zeros per output row."""
    multiplier = 1 if group_size >= 128 or group_size == -1 else {64: 2, 32: 4}[group_size]
    words = -(-groups // 8)  # ceil(groups / 8): eight zeros per int32
    return -(-words // multiplier) * multiplier  # rounded up to a multiple of the multiplier
