"""GPTQ int4: the GPTQ / AutoGPTQ / GPTQModel checkpoint layout.

Tensors for a weight [out, in] with G groups (G = in / group_size, 1 for per-channel):

* `qweight` int32 [in/8, out]: nibble j (bits 4j..4j+3) of row r holds input 8r + j;
* `qzeros`  int32 [G, out/8]: nibble j of column c holds the zero of output 8c + j;
* `scales`  float16 [G, out];
* `g_idx`   int32 [in]: the group of each input column.

w[o, i] = (q[i, o] - zero[g_idx[i], o]) * scales[g_idx[i], o].  This follows GPTQModel 7.7.0
`BaseQuantLinear.pack_block` / `dequantize_weight` (nn_modules/qlinear/__init__.py) and AutoGPTQ
0.7.1 `QuantLinear.pack` (qlinear_cuda_old.py).

Zero points: checkpoint_format "gptq" (v1) stores zero - 1, "gptq_v2" the zero itself.  The v1
offset is applied to whole words, as GPTQModel's `convert_gptq_v2_to_v1_format_module` (save) and
`convert_gptq_v1_to_v2_format_module` (load) do: qzeros -/+ 0x11111111 modulo 2**32.  That equals a
per-nibble zero - 1 whenever every zero is >= 1, which our quantizer guarantees for v1.  Zero 0
has no agreed v1 encoding: AutoGPTQ 0.7.1's pack ORs a uint32 -1 over the neighbouring nibbles,
GPTQModel's whole-word subtraction borrows from the next nibble, and AutoGPTQ's reader takes each
nibble alone as (nibble + 1) & 15.  So for v1 asymmetric, a group whose zero would round to 0 uses
zero 1 and scale max/14 instead (error still <= scale/2); v2 keeps the full 0..15.

Act-order (desc_act): GPTQ visits columns in a permuted order and sets g_idx[perm[k]] = k // group_size,
so g_idx is not monotonic.  Without a Hessian, round-to-nearest uses descending column L2 norm as
the order (a stand-in for GPTQ's descending Hessian diagonal); a caller with the real order passes
`perm` or `g_idx`.  Dequantize honours any g_idx.

GPTQ's 2- and 8-bit layouts are this one with 16 / 4 codes per int32 (element j at bits `bits*j`, v1
offset one in every field: 0x55555555 / 0x01010101), as GPTQModel's `dequantize_weight` reads them for
bits in (2, 4, 8); each is a subclass that only sets `bits` (`gptq_int2.py`, `gptq_int8.py`).  3-bit
(`gptq_int3.py`) packs 32 codes into 3 words as one little-endian bit stream, so codes 10 and 21 of
each 32 straddle two words.  Its v1 zeros are shifted field by field ((zero - 1) mod 8, unpacked and
repacked), as GPTQModel 7.6 does (`_shift_gptq_qzeros`, utils/model_dequant.py) and AutoGPTQ and
vLLM read them; a whole-word add would carry across the straddling fields.  (Older GPTQModel releases
added one constant per word by word index mod 3 — the stream's words 0 and 2 swapped — which does not
round-trip with any per-field reader; checked against GPTQModel 7.6's own writer and reader in
`benchmarks/tool_matrix.py`.)
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from ..errors import FormatError
from .base import Format, TensorLayout, check_divisible, check_finite
from .int4_packing import (
    Int4Parts,
    check_group_size,
    contiguous_g_idx,
    dense,
    n_groups,
    pack_int4,
    quantize_groups,
    to_int32,
    unpack_int4,
)
from .registry import register_format
from .spec import QuantizedTensor, QuantSpec

V1_ZERO_OFFSET = 0x11111111  # one in every nibble: GPTQ v1 stores zero - 1


def v1_zero_offset(bits: int) -> int:
    """One in every `bits`-wide field of a 32-bit word (0x11111111 for int4); widths dividing 32 only."""
    return sum(1 << (bits * j) for j in range(32 // bits))


def shift_v1_zeros(qzeros: torch.Tensor, bits: int, sign: int) -> torch.Tensor:
    """qzeros (packed along dim 1) with every zero shifted by `sign`: whole words modulo 2**32 where fields
    tile the word (GPTQModel's int32 path), field by field modulo 2**bits for 3 bits (see the module docstring)."""
    if 32 % bits == 0:
        return to_int32(qzeros.to(torch.int64) + sign * v1_zero_offset(bits))
    length = qzeros.shape[1] * 32 // bits
    fields = (unpack_int4(qzeros, dim=1, length=length, bits=bits) + sign) & ((1 << bits) - 1)
    return pack_int4(fields, dim=1, bits=bits)


@register_format
class GPTQInt4(Format):
    """Int4 weights, 8 per int32 along the input dim, fp16 scales, packed zeros and g_idx."""

    name = "gptq_int4"
    aliases = ("gptq", "gptq-int4")
    tensor_names = ("qweight", "qzeros", "scales", "g_idx")
    bits: ClassVar[int] = 4

    @property
    def per_block(self) -> int:
        """Codes per packed block: 8 for int4 (one word), 32 for int3 (three words)."""
        return 32 // math.gcd(32, self.bits)

    def packed_length(self, n: int) -> int:
        """int32 words that hold n codes."""
        return n * self.bits // 32

    def normalize(self, spec: QuantSpec) -> QuantSpec:
        spec = spec.with_defaults(group_size=128, symmetric=True)
        check_group_size(spec, self.name)
        return spec

    def check_shape(self, spec: QuantSpec, shape: tuple[int, int], name: str = "weight") -> None:
        super().check_shape(spec, shape, name)
        spec = self.normalize(spec)
        out_f, in_f = shape
        n = self.per_block
        if in_f % n or out_f % n:
            raise FormatError(
                f"{name}: {self.name} packs {n} values per block of int32 along both dims; shape {tuple(shape)} "
                f"needs in_features and out_features divisible by {n}"
            )
        check_divisible(in_f, spec.group_size, name, self.name)

    def layout(self, spec: QuantSpec, shape: tuple[int, int]) -> TensorLayout:
        spec = self.normalize(spec)
        out_f, in_f = shape
        groups = n_groups(spec.group_size, in_f)
        return {
            "qweight": ((self.packed_length(in_f), out_f), torch.int32),
            "qzeros": ((groups, self.packed_length(out_f)), torch.int32),
            "scales": ((groups, out_f), torch.float16),
            "g_idx": ((in_f,), torch.int32),
        }

    def quantize(
        self,
        weight: torch.Tensor,
        spec: QuantSpec,
        name: str = "weight",
        *,
        g_idx: torch.Tensor | None = None,
        perm: torch.Tensor | None = None,
    ) -> QuantizedTensor:
        """Round-to-nearest; `g_idx` or `perm` (a GPTQ column order) fix the grouping, else see act_order."""
        spec = self.normalize(spec)
        shape = tuple(weight.shape)
        self.check_shape(spec, shape, name)
        check_finite(weight, name)
        groups = n_groups(spec.group_size, shape[1])
        g_idx = self._resolve_g_idx(weight, spec, groups, g_idx, perm, name)
        v1_asym = not spec.symmetric and spec.checkpoint_format == "gptq"
        parts = quantize_groups(
            weight, groups, g_idx=g_idx, symmetric=spec.symmetric, scale_dtype=torch.float16, name=name,
            min_zero=1 if v1_asym else 0, bits=self.bits,
        )
        return self.pack(parts, spec)

    def _resolve_g_idx(
        self,
        weight: torch.Tensor,
        spec: QuantSpec,
        groups: int,
        g_idx: torch.Tensor | None,
        perm: torch.Tensor | None,
        name: str,
    ) -> torch.Tensor | None:
        """The explicit g_idx, else one from perm or the act-order column order, else None (contiguous)."""
        in_f = weight.shape[1]
        if g_idx is not None:
            g_idx = g_idx.to(device=weight.device, dtype=torch.int64)
            if g_idx.shape != (in_f,) or (in_f and (g_idx.min() < 0 or g_idx.max() >= groups)):
                raise FormatError(f"{name}: g_idx must have shape ({in_f},) with groups in [0, {groups})")
            return g_idx
        if perm is None and spec.act_order and groups > 1:
            norms = weight.to(torch.float64).norm(dim=0)  # float64: no underflow for tiny weights
            perm = torch.argsort(norms, descending=True, stable=True)
        if perm is None:
            return None
        base = contiguous_g_idx(in_f, spec.group_size, weight.device)
        perm = perm.to(device=weight.device, dtype=torch.int64)
        if perm.shape != (in_f,) or not torch.equal(perm.sort().values, torch.arange(in_f, device=weight.device)):
            raise FormatError(f"{name}: perm must be a permutation of the {in_f} input columns")
        return torch.empty_like(base).scatter_(0, perm, base)

    def pack(self, parts: Int4Parts, spec: QuantSpec) -> QuantizedTensor:
        """Write logical int4 parts in the GPTQ layout (see the module docstring)."""
        spec = self.normalize(spec)
        qzeros = pack_int4(parts.zeros.t(), dim=1, bits=self.bits)
        if spec.checkpoint_format == "gptq":
            qzeros = shift_v1_zeros(qzeros, self.bits, -1)
        tensors = {
            "qweight": pack_int4(parts.codes.t(), dim=0, bits=self.bits),
            "qzeros": qzeros,
            "scales": dense(parts.scales.t().to(torch.float16)),
            "g_idx": parts.full_g_idx().to(torch.int32),
        }
        return QuantizedTensor(spec, tuple(parts.codes.shape), tensors)

    def unpack(self, q: QuantizedTensor) -> Int4Parts:
        """Read the logical int4 parts back from the GPTQ tensors."""
        out_f, in_f = q.shape
        t = q.tensors
        qzeros = t["qzeros"]
        if q.spec.checkpoint_format == "gptq":
            qzeros = shift_v1_zeros(qzeros, self.bits, +1)
        scales = t["scales"].t()
        g_idx = t["g_idx"].to(torch.int64)
        groups = scales.shape[1]
        if in_f and (g_idx.min() < 0 or g_idx.max() >= groups):
            raise FormatError(f"{self.name}: g_idx values must lie in [0, {groups}), the groups of scales")
        if in_f % groups == 0 and torch.equal(g_idx, contiguous_g_idx(in_f, in_f // groups, g_idx.device)):
            g_idx = None  # the usual case: a reshape instead of a gather
        return Int4Parts(
            codes=unpack_int4(t["qweight"], dim=0, length=in_f, bits=self.bits).t(),
            scales=scales,
            zeros=unpack_int4(qzeros, dim=1, length=out_f, bits=self.bits).t(),
            g_idx=g_idx,
        )

    def dequantize(self, q: QuantizedTensor) -> torch.Tensor:
        return self.unpack(q).dequantize()
