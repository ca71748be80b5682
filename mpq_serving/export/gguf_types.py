"""Our formats → GGML tensor types, and the bytes of each GGML block written from our packed tensors.

| our format | GGML type | how |
|---|---|---|
| bf16 / fp16 / fp32 | BF16 / F16 / F32 | the same numbers |
| int8 | Q8_0 | our int8 codes; the per-channel scale rounded to the block's fp16 `d` (≤ 2^-11 relative) |
| fp8, mxfp8, gptq_int8, ct_int8 | Q8_0 | requantized from our dequantized weight (int8 per 32, fp16 scale) |
| gptq_int4 / awq_int4 / ct_int4, symmetric | Q4_0 | exact: our codes, our group scale as the block's fp16 `d` |
| same, asymmetric | Q4_1 | our codes and `d`; `m` = -zero × scale rounded to fp16 |
| mxfp4 | MXFP4 | exact: the same E2M1 codes and E8M0 exponent, nibbles reordered |

A 32-wide GGML block holds one scale, so the int4 mapping is exact only when each block lies inside
one of our groups: contiguous groups of a multiple of 32 (or per-channel).  Otherwise (act-order
g_idx, group 16) the dequantized weight is requantized to Q4_1, reported as inexact.  Q4_K is not
used: it stores 6-bit scales relative to a 256-wide super-block, so it cannot hold GPTQ / AWQ fp16
group scales exactly, while Q4_0 / Q4_1 keep an fp16 scale per 32 and can.

Every quantized GGML type needs in_features divisible by its block (32); a weight that is not falls
back to BF16 / F16.  ggml dequantizes with `gguf.quants`' reference code, which the tests use to check
that every exact mapping is bit-exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants

from ..formats import QuantizedTensor, get_format
from ..formats.int4_packing import Int4Parts

T = GGMLQuantizationType
BLOCK = 32
_INT4 = {"gptq_int4", "awq_int4", "ct_int4"}
_TO_Q8 = {"fp8", "mxfp8", "gptq_int8", "ct_int8"}
_FLOAT = {"bf16": T.BF16, "fp16": T.F16, "fp32": T.F32}


def bits_per_weight(qtype: GGMLQuantizationType) -> float:
    block, size = GGML_QUANT_SIZES[qtype]
    return size * 8 / block


@dataclass(frozen=True)
class Choice:
    """The GGML type for one weight, and whether our codes go across unchanged."""

    qtype: GGMLQuantizationType
    exact: bool
    why: str


def choose(q: QuantizedTensor) -> Choice:
    """The closest GGML type for a weight in our format (see the module table)."""
    fmt, (_, in_f) = get_format(q.format).name, q.shape
    if fmt in _FLOAT:
        return Choice(_FLOAT[fmt], True, "same numbers")
    if in_f % BLOCK:
        return Choice(T.F16 if fmt == "fp16" else T.BF16, False,
                      f"in_features {in_f} is not a multiple of the GGML block {BLOCK}; stored as BF16")
    if fmt == "int8":
        return Choice(T.Q8_0, False, "same int8 codes; the channel scale rounded to fp16")
    if fmt in _TO_Q8:
        return Choice(T.Q8_0, False, f"{fmt} requantized to Q8_0 (int8 per 32, fp16 scale)")
    if fmt == "mxfp4":
        return Choice(T.MXFP4, True, "same E2M1 codes and E8M0 scales")
    if fmt in _INT4:
        parts = _int4_parts(q)
        if not _blocks_within_groups(parts):
            return Choice(T.Q4_1, False, "int4 groups are not whole 32-wide blocks (act-order or group < 32); "
                                         "requantized to Q4_1")
        if bool((parts.zeros == 8).all()):
            return Choice(T.Q4_0, True, "same int4 codes and group scales")
        return Choice(T.Q4_1, False, "same int4 codes and group scales; the offset -zero·scale rounded to fp16")
    return Choice(T.BF16, False, f"{fmt} has no GGML counterpart; stored as BF16")


def encode(q: QuantizedTensor, qtype: GGMLQuantizationType) -> np.ndarray:
    """The GGML data of one weight [out, in] as a numpy array [out, row bytes] (F32 / F16: [out, in] floats).

    The exact paths (Q4_0 / Q4_1 from int4, MXFP4 from mxfp4) are taken when the format allows them;
    otherwise the dequantized weight is quantized by `gguf.quants` (ggml's reference quantizers).
    """
    fmt = get_format(q.format).name
    if qtype == T.MXFP4 and fmt == "mxfp4":
        return _mxfp4_blocks(q)
    if qtype in (T.Q4_0, T.Q4_1) and fmt in _INT4:
        parts = _int4_parts(q)
        if _blocks_within_groups(parts) and (qtype == T.Q4_1 or bool((parts.zeros == 8).all())):
            return _q4_blocks(parts, qtype)
    if qtype == T.Q8_0 and fmt == "int8":
        return _q8_blocks(q)
    if qtype == T.BF16 and fmt == "bf16":
        return q.tensors["weight"].contiguous().view(torch.int16).numpy().view(np.uint8)
    return float_to_ggml(get_format(fmt).dequantize(q), qtype)


def float_to_ggml(weight: torch.Tensor, qtype: GGMLQuantizationType) -> np.ndarray:
    """A float tensor (any dims, last = in_features) in a GGML type, by ggml's reference quantizers."""
    if qtype == T.F32:
        return weight.to(torch.float32).numpy()
    if qtype == T.F16:
        return weight.to(torch.float16).numpy()
    if qtype == T.BF16:
        return weight.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint8)
    return gguf_quants.quantize(weight.to(torch.float32).numpy(), qtype)


def dequantize(data: np.ndarray, qtype: GGMLQuantizationType) -> torch.Tensor:
    """ggml's reference dequantization of `encode`'s output, float32 [out, in]."""
    return torch.from_numpy(np.ascontiguousarray(gguf_quants.dequantize(data, qtype), dtype=np.float32))


def _int4_parts(q: QuantizedTensor) -> Int4Parts:
    return get_format(q.format).unpack(q)  # type: ignore[attr-defined]


def _blocks_within_groups(parts: Int4Parts) -> bool:
    """True when every 32-wide block of a row lies in one group (contiguous groups of a multiple of 32)."""
    in_f = parts.codes.shape[1]
    groups = parts.scales.shape[1]
    return parts.g_idx is None and in_f % BLOCK == 0 and (in_f // groups) % BLOCK == 0


def _q4_blocks(parts: Int4Parts, qtype: GGMLQuantizationType) -> np.ndarray:
    """ggml block_q4_0 {half d; u8 qs[16]} / block_q4_1 {half d; half m; u8 qs[16]}, row by row.

    x[j] = qs[j] & 15 and x[j + 16] = qs[j] >> 4; Q4_0 value (x - 8)·d, Q4_1 value x·d + m.  With
    d = our group scale and m = -zero·d, both equal ours, (code - zero)·scale.
    """
    out_f, in_f = parts.codes.shape
    n_blocks = in_f // BLOCK
    per_group = n_blocks // parts.scales.shape[1]
    scales = parts.scales.to(torch.float32).repeat_interleave(per_group, dim=1)  # [out, n_blocks]
    zeros = parts.zeros.to(torch.float32).repeat_interleave(per_group, dim=1)
    codes = parts.codes.to(torch.uint8).reshape(out_f, n_blocks, BLOCK)
    qs = codes[..., :16] | (codes[..., 16:] << 4)
    fields = [_half_bytes(scales)]
    if qtype == T.Q4_1:
        fields.append(_half_bytes(-zeros * scales))
    fields.append(qs)
    return torch.cat(fields, dim=-1).reshape(out_f, -1).numpy()


def _q8_blocks(q: QuantizedTensor) -> np.ndarray:
    """ggml block_q8_0 {half d; i8 qs[32]}: our int8 codes, d = the row's scale in fp16."""
    out_f, in_f = q.shape
    n_blocks = in_f // BLOCK
    d = _half_bytes(q.tensors["weight_scale"].to(torch.float32).reshape(out_f, 1).expand(out_f, n_blocks))
    qs = q.tensors["weight"].view(torch.uint8).reshape(out_f, n_blocks, BLOCK)
    return torch.cat((d, qs), dim=-1).reshape(out_f, -1).numpy()


def _half_bytes(values: torch.Tensor) -> torch.Tensor:
    """float [out, n] → the little-endian bytes of its fp16 values, [out, n, 2] uint8."""
    halves = values.to(torch.float16).numpy().view(np.uint8)
    return torch.from_numpy(halves).reshape(*values.shape, 2)


def _mxfp4_blocks(q: QuantizedTensor) -> np.ndarray:
    """ggml block_mxfp4 {u8 e; u8 qs[16]}: our E8M0 byte, and codes j / j + 16 in the low / high nibble.

    ggml's kvalues_mxfp4 are the E2M1 values doubled, in our code order, and its scale is
    2^(e - 127) / 2: the same value as ours, code for code.
    """
    out_f, in_f = q.shape
    packed = q.tensors["weight_packed"]
    codes = torch.stack((packed & 0x0F, packed >> 4), dim=-1).reshape(out_f, in_f // BLOCK, BLOCK)
    qs = codes[..., :16] | (codes[..., 16:] << 4)
    e = q.tensors["weight_scale"].reshape(out_f, in_f // BLOCK, 1)
    return torch.cat((e, qs), dim=-1).reshape(out_f, -1).numpy()
