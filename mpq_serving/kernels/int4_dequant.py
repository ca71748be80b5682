"""Exact, cheap unpacking and dequantization of GPTQ / AWQ / compressed-tensors int4.

`dequantize_int4` returns bit for bit `get_format(q.format).dequantize(q)[rows].to(dtype)`: (code - zero)
* scale is exact in float32 (a 5-bit integer times a 16-bit float), so computing it as
`addcmul(-zero * scale, code, scale)` in float32 and rounding once into `dtype` gives the
reference's value.  The formats' own unpackers (int32 shifts per nibble, gathers, transposes: ~10 ms
per 1536x576 weight) are replaced by byte ops that write contiguously: the int32 words are viewed
as bytes (little-endian: byte i holds nibbles 2i and 2i+1), and each byte's two nibbles are split
either into two rows (GPTQ, packed along the input dim of an [in/8, out] tensor) or, with one int16
op, into two adjacent bytes (AWQ and compressed-tensors, packed along the last dim).  AWQ's nibble
interleave (0, 2, 4, 6, 1, 3, 5, 7) is undone inside each word first, by two swaps (bytes 1 and 2,
then nibbles 1 and 2 of each half).  GPTQ and AWQ come out input-major, W^T [in, out], and are handed
to F.linear transposed (no copy).  `unpack_codes` also feeds the int4pack kernel's preparation.

Act-order GPTQ: the codes are dequantized with their input rows sorted by group (so each group's
scale broadcasts), and the caller permutes x's columns the same way; `act_order_perm` computes that
permutation and declines g_idx whose groups are not uniform (the plain dequantize kernel then runs
them).  Zeros and scales are re-read per call (1/group of the weight); the codes and the weight are
written into per-thread scratch buffers (`workspace`), valid until the next call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..formats import QuantizedTensor
from ..formats.gptq_int4 import V1_ZERO_OFFSET
from ..formats.int4_packing import AWQ_ORDER, to_int32, unpack_int4
from .dispatch import Unsupported
from .workspace import scratch

DequantizedWeight = tuple[torch.Tensor, torch.Tensor | None]  # W [out, in] (maybe a view), x's column order


@dataclass(frozen=True)
class Int4Codes:
    """One int4 weight unpacked in its layout's natural orientation (codes are scratch)."""

    codes: torch.Tensor  # uint8 0..15: [in, out] if input_major else [out, in]
    scales: torch.Tensor  # stored dtype: [G, out] if input_major else [out, G]
    zeros: torch.Tensor  # int32 0..15, shaped as scales
    input_major: bool


def _split_rows(words: torch.Tensor) -> torch.Tensor:
    """int32 [R, C] packed along R (nibble j of word r = row 8r + j) → uint8 codes [8R, C]."""
    rows, cols = words.shape
    by_byte = scratch("bytes", (rows, 4, cols), torch.uint8, words.device)
    by_byte.copy_(words.view(torch.uint8).view(rows, cols, 4).transpose(1, 2))
    codes = scratch("codes", (rows, 4, 2, cols), torch.uint8, words.device)
    torch.bitwise_and(by_byte, 0xF, out=codes[:, :, 0])
    torch.bitwise_right_shift(by_byte, 4, out=codes[:, :, 1])
    return codes.view(8 * rows, cols)


def _split_last(words: torch.Tensor) -> torch.Tensor:
    """int32 [R, C] packed along C (nibble j of word c = column 8c + j) → uint8 codes [R, 8C]."""
    rows, cols = words.shape
    b = scratch("bytes", (rows, 4 * cols), torch.int16, words.device)
    b.copy_(words.view(torch.uint8))  # 0..255
    pairs = scratch("codes", (rows, 4 * cols), torch.int16, words.device)
    torch.bitwise_left_shift(b, 4, out=pairs)
    pairs |= b
    pairs &= 0x0F0F  # low byte: low nibble, high byte: high nibble
    return pairs.view(torch.uint8).view(rows, 8 * cols)


def _swap(x: torch.Tensor, t: torch.Tensor, shift: int, mask: int) -> None:
    """In place: exchange the bits under `mask` with those `shift` bits above them (t is scratch)."""
    torch.bitwise_right_shift(x, shift, out=t)
    t ^= x
    t &= mask
    x ^= t
    t <<= shift
    x ^= t


def _awq_linear_order(words: torch.Tensor) -> torch.Tensor:
    """AWQ words (nibble j holds output 8c + AWQ_ORDER[j]) → words with nibble j holding output 8c + j."""
    x = scratch("words", tuple(words.shape), torch.int32, words.device).copy_(words)
    t = scratch("swap", tuple(words.shape), torch.int32, words.device)
    _swap(x, t, 8, 0x0000FF00)  # nibbles 0 1 2 3 4 5 6 7 → 0 1 4 5 2 3 6 7
    _swap(x, t, 4, 0x00F000F0)  # → 0 4 1 5 2 6 3 7: position o holds nibble AWQ_ORDER.index(o)
    return x


def _gptq_zeros(qzeros: torch.Tensor, checkpoint_format: str, length: int) -> torch.Tensor:
    if checkpoint_format == "gptq":  # v1 stores zero - 1 in every nibble (see formats/gptq_int4.py)
        qzeros = to_int32(qzeros.to(torch.int64) + V1_ZERO_OFFSET)
    return unpack_int4(qzeros, dim=1, length=length)  # [G, length]


def unpack_codes(q: QuantizedTensor, rows: slice) -> Int4Codes:
    """Output rows [rows.start, rows.stop) of q; rows.start is a multiple of 8 (zeros pack 8 outputs per word)."""
    in_f = q.shape[1]
    n = rows.stop - rows.start
    words = slice(rows.start // 8, -(-rows.stop // 8))
    t = q.tensors
    if q.format == "gptq_int4":
        zeros = _gptq_zeros(t["qzeros"][:, words], q.spec.checkpoint_format, n)
        return Int4Codes(_split_rows(t["qweight"][:, rows]), t["scales"][:, rows], zeros, True)
    if q.format == "awq_int4":
        zeros = unpack_int4(t["qzeros"][:, words], dim=1, length=n, order=AWQ_ORDER)
        return Int4Codes(_split_last(_awq_linear_order(t["qweight"][:, words])), t["scales"][:, rows], zeros, True)
    scales = t["weight_scale"][rows]  # ct_int4
    if "weight_zero_point" in t:
        zeros = unpack_int4(t["weight_zero_point"][words], dim=0, length=n)
    else:
        zeros = torch.full_like(scales, 8, dtype=torch.int32)
    return Int4Codes(_split_last(t["weight_packed"][rows])[:, :in_f], scales, zeros, False)  # ragged tail: padding


def act_order_perm(q: QuantizedTensor) -> torch.Tensor | None:
    """The input permutation that makes GPTQ act-order groups contiguous; None when they already are."""
    if q.format != "gptq_int4":
        return None
    in_f = q.shape[1]
    groups = q.tensors["scales"].shape[0]
    g_idx = q.tensors["g_idx"].to(torch.int64)
    contiguous = torch.arange(in_f, device=g_idx.device) // (in_f // groups)
    if torch.equal(g_idx, contiguous):
        return None
    perm = torch.argsort(g_idx, stable=True)
    if not torch.equal(g_idx[perm], contiguous):
        raise Unsupported("act-order g_idx groups are not all of in/groups columns")
    return perm


def _affine(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(codes - zeros) * scales in float32, rounded once into dtype; scales and zeros broadcast.

    Same-dtype steps on scratch buffers: mixed-dtype ops would allocate float32 copies every call.
    """
    scales = scales.to(torch.float32)
    w = scratch("float", tuple(codes.shape), torch.float32, codes.device).copy_(codes)
    torch.addcmul(-zeros.to(torch.float32) * scales, w, scales, out=w)
    return w if dtype == torch.float32 else scratch("weight", tuple(codes.shape), dtype, codes.device).copy_(w)


def dequantize_int4(
    q: QuantizedTensor, perm: torch.Tensor | None, dtype: torch.dtype, rows: slice
) -> DequantizedWeight:
    in_f = q.shape[1]
    out_f = rows.stop - rows.start
    u = unpack_codes(q, rows)
    if not u.input_major:  # [out, in]: groups along the last dim
        groups = u.scales.shape[1]
        w = _affine(u.codes.unflatten(1, (groups, -1)), u.scales.unsqueeze(-1), u.zeros.unsqueeze(-1), dtype)
        return w.view(out_f, in_f), None
    codes = u.codes
    if perm is not None:
        sorted_codes = scratch("sorted", tuple(codes.shape), torch.uint8, codes.device)
        codes = torch.index_select(codes, 0, perm, out=sorted_codes)
    groups = u.scales.shape[0]
    w_t = _affine(codes.view(groups, -1, out_f), u.scales.unsqueeze(1), u.zeros.unsqueeze(1), dtype)
    return w_t.view(in_f, out_f).t(), perm
