"""Exact, cheap dequantization of fp8, mxfp8, mxfp4, int8 and float weights into the activation dtype.

Each function returns bit for bit `get_format(q.format).dequantize(q)[rows].to(dtype)` (the float32
reference, then one rounding), in a few whole-tensor passes instead of the reference's ~10 ms
per 1536x576 weight: torch's fp8 → float conversion on CPU is a scalar loop, so the codes are decoded
with integer ops or a lookup table, the scale is applied in float32 (as the reference does), and
the result is rounded once into the activation dtype.

* E4M3 (fp8, mxfp8): byte `s eeee mmm` shifted into float16 bits `s 0eeee mmm0000000` is the same
  value times 2^-8, subnormals included (float16's 5 exponent bits hold e4m3's 4); the 2^8 goes
  into the float32 scale, where power-of-two scaling is exact.  Not exact for the NaN codes
  (0x7f / 0xff, never written by our quantizer) or a scale that overflows float32 when multiplied by
  2^8 (scales >= 2^120): `prepare` declines those weights and the plain dequantize kernel runs them.
* E2M1 (mxfp4): a 256-entry table maps each packed byte to its two elements as float32, read as
  one int64 per byte; the table is the format's own dequantize of all 256 bytes.
* int8: int8 × float32 per-channel scale.  Float weights: a cast.

Prepared state: the float32 scales shaped to broadcast (tiny for fp8 / int8, 1 bit per weight for
MX), so nothing the size of the weight is kept; the weight and the intermediates are written into
per-thread scratch buffers (`workspace`), valid until the next call.  Exactness assumes the default
floating-point environment (torch.set_flush_denormal(False)): subnormal products are part of the
reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..formats import QuantizedTensor, QuantSpec, get_format
from ..formats.mx_common import BLOCK_SIZE, e8m0_to_float
from .dispatch import Unsupported
from .workspace import scratch

E4M3_TO_FP16_FACTOR = 256.0  # e4m3 byte as float16 bits = value * 2^-8
_FP16_SIGN_EXP_MANT = -16512  # 0xBF80 as int16: float16 sign bit and bits 13..7
_E4M3_NAN_BITS = 0x7F


@dataclass(frozen=True)
class ScaleState:
    """float32 scales [1 or out, column blocks] and the columns each block spans."""

    scale: torch.Tensor
    block: int

    def for_rows(self, rows: slice) -> torch.Tensor:
        return self.scale if self.scale.shape[0] == 1 else self.scale[rows]


def e4m3_as_fp16(weight: torch.Tensor) -> torch.Tensor:
    """float8_e4m3fn → float16 holding value * 2^-8 exactly (NaN codes excepted)."""
    bits = scratch("codes", tuple(weight.shape), torch.int16, weight.device)
    bits.copy_(weight.view(torch.int8))  # sign-extended: bit 15 is the sign
    bits <<= 7
    bits &= _FP16_SIGN_EXP_MANT  # drop the sign copy that landed on bit 14
    return bits.view(torch.float16)


def apply_scale(values: torch.Tensor, scale: torch.Tensor, block: int, dtype: torch.dtype) -> torch.Tensor:
    """values [rows, in] (exact in float32) × scales [1 or rows, in / block] in float32, rounded once into dtype.

    Each step is a same-dtype op on scratch buffers: a mixed-dtype `torch.mul(..., out=)` would make
    TensorIterator allocate float32 copies of its inputs and output on every call.  float32 values
    must be the "float" scratch: they are scaled in place.
    """
    out_f, in_f = values.shape
    w = values
    if values.dtype != torch.float32:
        w = scratch("float", (out_f, in_f), torch.float32, values.device).copy_(values)
    blocks = in_f // block
    if scale.shape[1] == 1:
        w.mul_(scale)
    else:
        full = blocks * block
        if blocks:
            w[:, :full].view(out_f, blocks, block).mul_(scale[:, :blocks, None])
        if full < in_f:  # ragged last block (fp8 block scales)
            w[:, full:].mul_(scale[:, blocks:])
    return w if dtype == torch.float32 else scratch("weight", (out_f, in_f), dtype, values.device).copy_(w)


def _has_e4m3_nan(weight: torch.Tensor) -> bool:
    return bool(((weight.view(torch.uint8) & 0x7F) == _E4M3_NAN_BITS).any())


def _e4m3_state(q: QuantizedTensor, scale: torch.Tensor, block: int) -> ScaleState:
    """Scale × 2^8 for the float16 shortcut, declining the weights where it is not exact."""
    if _has_e4m3_nan(q.tensors["weight"]):
        raise Unsupported("weight holds E4M3 NaN codes")
    factored = scale.to(torch.float32) * E4M3_TO_FP16_FACTOR
    if (torch.isinf(factored) & torch.isfinite(scale)).any():
        raise Unsupported("a scale overflows float32 when multiplied by 2^8")
    return ScaleState(factored, block)


def prepare_fp8(q: QuantizedTensor) -> ScaleState:
    out_f, in_f = q.shape
    spec = get_format(q.format).normalize(q.spec)
    if spec.granularity == "block":
        b = spec.group_size
        rows = q.tensors["weight_scale_inv"].repeat_interleave(b, dim=0)[:out_f]  # [out, ceil(in / b)]
        return _e4m3_state(q, rows, b)
    return _e4m3_state(q, q.tensors["weight_scale"].reshape(-1, 1), in_f)  # [1 or out, 1]


def dequantize_fp8(q: QuantizedTensor, state: ScaleState, dtype: torch.dtype, rows: slice) -> torch.Tensor:
    return apply_scale(e4m3_as_fp16(q.tensors["weight"][rows]), state.for_rows(rows), state.block, dtype)


def prepare_mxfp8(q: QuantizedTensor) -> ScaleState:
    return _e4m3_state(q, e8m0_to_float(q.tensors["weight_scale"]), BLOCK_SIZE)


def prepare_mxfp4(q: QuantizedTensor) -> ScaleState:
    return ScaleState(e8m0_to_float(q.tensors["weight_scale"]), BLOCK_SIZE)


def _e2m1_pair_table() -> torch.Tensor:
    """int64 [256]: byte → its (low nibble, high nibble) elements as two float32, from the format itself."""
    codes = torch.arange(256, dtype=torch.uint8).reshape(1, 256)
    ones = torch.full((1, 512 // BLOCK_SIZE), 127, dtype=torch.uint8)  # E8M0 127 = 2^0
    q = QuantizedTensor(QuantSpec("mxfp4"), (1, 512), {"weight_packed": codes, "weight_scale": ones})
    return get_format("mxfp4").dequantize(q).reshape(256, 2).view(torch.int64).reshape(256)


_E2M1_PAIRS = _e2m1_pair_table()


def dequantize_mxfp4(q: QuantizedTensor, state: ScaleState, dtype: torch.dtype, rows: slice) -> torch.Tensor:
    packed = q.tensors["weight_packed"][rows]
    index = scratch("bytes", tuple(packed.shape), torch.int32, packed.device).copy_(packed)
    pairs = scratch("float", (packed.numel(),), torch.int64, packed.device)
    torch.index_select(_E2M1_PAIRS.to(packed.device), 0, index.view(-1), out=pairs)
    values = pairs.view(torch.float32).view(packed.shape[0], -1)
    return apply_scale(values, state.for_rows(rows), state.block, dtype)


def prepare_int8(q: QuantizedTensor) -> ScaleState:
    return ScaleState(q.tensors["weight_scale"].to(torch.float32).reshape(-1, 1), q.shape[1])


def dequantize_int8(q: QuantizedTensor, state: ScaleState, dtype: torch.dtype, rows: slice) -> torch.Tensor:
    return apply_scale(q.tensors["weight"][rows], state.for_rows(rows), state.block, dtype)


def dequantize_float(q: QuantizedTensor, state: None, dtype: torch.dtype, rows: slice) -> torch.Tensor:
    """bf16 / fp16 / fp32 weights: every cast between them via float32 is one rounding, so cast directly."""
    w = q.tensors["weight"][rows]
    return w if w.dtype == dtype else scratch("weight", tuple(w.shape), dtype, w.device).copy_(w)
