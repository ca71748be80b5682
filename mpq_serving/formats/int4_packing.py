"""Shared int4 machinery for the GPTQ, AWQ and compressed-tensors layouts (and GPTQ's 2 / 8 bits).

All three store 4-bit codes 0..15 eight to an int32 word (nibble j at bits 4j..4j+3) and differ only
in the packed axis, the nibble order and how zero points are written; so packing lives here once,
as does the round-to-nearest group quantizer they share.  GPTQ's 2- and 8-bit layouts are the same
with 16 / 4 codes per word at bits `bits*j`, so every function takes `bits` (default 4) and the
numbers below scale with it (15 → 2**bits - 1, 7 → 2**(bits-1) - 1, 8 → 2**(bits-1)).  A width that does
not divide 32 (GPTQ's 3 bits) is a little-endian bit stream: 32 codes fill `bits` words, code k at stream
bit `bits*k`, so some codes straddle two words (GPTQModel's and AutoGPTQ's 3-bit `pack`).

Quantizer (per output row and group, over the group's columns):

* the range always includes 0: lo = min(w, 0), hi = max(w, 0), as GPTQ's `Quantizer.find_params`
  and compressed-tensors' `calculate_qparams` do (AutoAWQ's `pseudo_quantize_tensor` does not, and
  then clips a group that does not straddle 0 far beyond scale/2);
* symmetric: scale = amax / 7, zero 8 (AutoAWQ's no-zero-point rule).  GPTQ and compressed-tensors
  use amax / 7.5, which clips one extreme by scale/2 and is not a fixed point: dequantizing and
  quantizing again changes the scale.  With amax / 7 nothing clips, and quantize(dequantize(q)) == q
  whenever the scales are normal floats (a subnormal scale can overshoot amax / 7 so far that amax
  rounds to code 6);
* asymmetric: scale = (hi - lo) / 15, zero = round(-lo / scale) in [0, 15].  Not a fixed point in
  general: the rounded-up scale can leave the top value on code 14, and then the dequantized range
  is 14 steps wide (requantizing with the same scales and zeros does reproduce the bytes);
* the scale is rounded *up* to the stored dtype (never to 0, error if it overflows), so the range
  still fits after rounding and every element lands within scale/2 of its value;
* codes = round(clamp(w / scale + (zero - 8), -8, 7)) + 8 in float32, ties to even: the signed
  clamp-then-round of compressed-tensors' `_quantize` / `round_to_quantized_type_args`, so handing
  our scales to their compressor gives our bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import FormatError
from .spec import QuantSpec

NIBBLES = 8  # int4 codes per int32 word

# AutoAWQ 0.2.9 `awq/utils/packing_utils.py` AWQ_ORDER: nibble i of a word holds column 8c + AWQ_ORDER[i]
# (so column k sits in nibble AWQ_REVERSE_ORDER[k] = (0, 4, 1, 5, 2, 6, 3, 7)[k]).
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


@dataclass
class Int4Parts:
    """The logical content of any int4 layout, in [out, in] orientation.

    codes int32 [out, in] in 0..15; scales [out, groups] in the stored float dtype; zeros int32
    [out, groups] in 0..15 (8 for symmetric); g_idx int64 [in], the group of each input column, or
    None for contiguous groups (column i in group i // (in / groups)), which takes a reshape, not a gather.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor | None = None

    def dequantize(self) -> torch.Tensor:
        """(code - zero) * scale per element, float32 [out, in]; exact (small ints times a 16-bit float)."""
        scales, zeros = self.scales.to(torch.float32), self.zeros.to(torch.float32)
        if self.g_idx is not None:
            return (self.codes.to(torch.float32) - zeros[:, self.g_idx]) * scales[:, self.g_idx]
        out_f, in_f = self.codes.shape
        codes = self.codes.reshape(out_f, scales.shape[1], -1).to(torch.float32)
        return ((codes - zeros.unsqueeze(-1)) * scales.unsqueeze(-1)).view(out_f, in_f)

    def full_g_idx(self) -> torch.Tensor:
        """g_idx as a tensor even for contiguous groups (what GPTQ writes)."""
        if self.g_idx is not None:
            return self.g_idx
        in_f = self.codes.shape[1]
        return contiguous_g_idx(in_f, in_f // self.scales.shape[1], self.codes.device)


def pack_int4(codes: torch.Tensor, dim: int, order: tuple[int, ...] | None = None, bits: int = 4) -> torch.Tensor:
    """Pack codes 0..2**bits-1 along `dim`, 32/bits per int32: element j of word c (bits*j and up) holds
    element (32/bits)c + order[j].

    A length that is not a multiple of 32/bits is zero-padded, as compressed-tensors' `pack_to_int32` does.
    """
    if 32 % bits:
        return _pack_stream(codes, dim, bits)
    per_word = 32 // bits
    x = codes.movedim(dim, -1).to(torch.int32)
    pad = -x.shape[-1] % per_word
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    words = x.reshape(*x.shape[:-1], -1, per_word)
    order = order or tuple(range(per_word))
    packed = words[..., order[0]].clone()
    for j in range(1, per_word):  # whole-tensor ops; the last shift wraps into the sign bit
        packed |= words[..., order[j]] << (bits * j)
    return dense(packed.movedim(-1, dim))


def unpack_int4(packed: torch.Tensor, dim: int, length: int, order: tuple[int, ...] | None = None,
                bits: int = 4) -> torch.Tensor:
    """Inverse of `pack_int4`: int32 codes 0..2**bits-1 with `length` elements along `dim`."""
    if 32 % bits:
        return _unpack_stream(packed, dim, length, bits)
    p = packed.movedim(dim, -1)
    per_word = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=p.dtype, device=p.device)
    fields = (p.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)  # arithmetic shift: the sign bits are masked off
    if order is not None:
        inverse = sorted(range(per_word), key=lambda k: order[k])
        fields = fields[..., inverse]
    codes = fields.reshape(*p.shape[:-1], -1)[..., :length]
    return codes.to(torch.int32).movedim(-1, dim).contiguous()


def _pack_stream(codes: torch.Tensor, dim: int, bits: int) -> torch.Tensor:
    """Codes as a little-endian bit stream along `dim`: every 32 codes fill `bits` int32 words."""
    x = codes.movedim(dim, -1).to(torch.int64)
    if x.shape[-1] % 32:
        raise FormatError(f"{bits}-bit packing needs a multiple of 32 values along the packed dim, got {x.shape[-1]}")
    blocks = x.reshape(*x.shape[:-1], -1, 32)
    words = torch.zeros(*blocks.shape[:-1], bits, dtype=torch.int64, device=x.device)
    for k in range(32):  # whole-tensor ops; code k covers stream bits bits*k .. bits*k + bits - 1
        start = bits * k
        word, shift = divmod(start, 32)
        words[..., word] |= blocks[..., k] << shift
        if shift + bits > 32:  # the high bits spill into the next word
            words[..., word + 1] |= blocks[..., k] >> (32 - shift)
    packed = to_int32(words & 0xFFFFFFFF).reshape(*x.shape[:-1], -1)
    return dense(packed.movedim(-1, dim))


def _unpack_stream(packed: torch.Tensor, dim: int, length: int, bits: int) -> torch.Tensor:
    """Inverse of `_pack_stream`."""
    p = packed.movedim(dim, -1).to(torch.int64) & 0xFFFFFFFF
    words = p.reshape(*p.shape[:-1], -1, bits)
    mask = (1 << bits) - 1
    fields = []
    for k in range(32):
        word, shift = divmod(bits * k, 32)
        value = words[..., word] >> shift
        if shift + bits > 32:
            value = value | (words[..., word + 1] << (32 - shift))
        fields.append(value & mask)
    codes = torch.stack(fields, dim=-1).reshape(*p.shape[:-1], -1)[..., :length]
    return codes.to(torch.int32).movedim(-1, dim).contiguous()


def dense(t: torch.Tensor) -> torch.Tensor:
    """A copy with row-major strides even on size-1 dims, which `.contiguous()` leaves as they are;
    compressed-tensors' `unpack_from_int32` views words as bytes and needs stride(-1) == 1."""
    return t.clone(memory_format=torch.contiguous_format)


def to_int32(x: torch.Tensor) -> torch.Tensor:
    """Wrap int64 values modulo 2**32 into int32 (two's complement), as the tools' uint32 words read."""
    return ((x + 2**31) % 2**32 - 2**31).to(torch.int32)


def check_group_size(spec: QuantSpec, fmt: str) -> None:
    """Group sizes are positive, or -1 for one group per output row."""
    if spec.group_size is None or (spec.group_size <= 0 and spec.group_size != -1):
        raise FormatError(f"{fmt}: group_size must be positive or -1 (per-channel), got {spec.group_size}")


def n_groups(group_size: int, in_features: int) -> int:
    return 1 if group_size == -1 else in_features // group_size


def contiguous_g_idx(in_features: int, group_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Column i belongs to group i // group_size (one group for per-channel, group_size -1)."""
    size = in_features if group_size <= 0 else group_size
    return torch.arange(in_features, device=device) // size


def quantize_groups(
    weight: torch.Tensor,
    groups: int,
    *,
    g_idx: torch.Tensor | None = None,
    symmetric: bool,
    scale_dtype: torch.dtype,
    name: str,
    min_zero: int = 0,
    bits: int = 4,
) -> Int4Parts:
    """Round-to-nearest int4 (or `bits`-bit) of a finite [out, in] weight in `groups` groups (see the module
    docstring).

    Groups are contiguous unless `g_idx` (int [in]) assigns each column its group.

    `min_zero` 1 keeps asymmetric zeros in 1..15 for GPTQ v1, whose stored zero - 1 must not be -1.
    """
    w = weight.to(torch.float32)
    out_f, in_f = w.shape
    if g_idx is None:
        grouped = w.reshape(out_f, groups, in_f // groups)
        hi = grouped.amax(dim=-1).clamp(min=0).double()  # the range always contains 0
        lo = grouped.amin(dim=-1).clamp(max=0).double()
    else:
        g_idx = g_idx.to(device=w.device, dtype=torch.int64)
        index = g_idx.expand(out_f, -1)
        zero = torch.zeros(out_f, groups, dtype=torch.float32, device=w.device)
        # include_self folds the initial 0 into each group: the range always contains 0.
        hi = zero.scatter_reduce(1, index, w, "amax").double()
        lo = zero.scatter_reduce(1, index, w, "amin").double()
    top, mid = (1 << bits) - 1, 1 << (bits - 1)  # 15 and 8 for int4
    if symmetric:
        scales = ceil_to_dtype(torch.maximum(hi, -lo) / (mid - 1), scale_dtype, name)
        zeros = torch.full_like(scales, mid, dtype=torch.int32)
    else:
        scales = ceil_to_dtype((hi - lo) / top, scale_dtype, name)
        zeros = torch.round(-lo / scales.double()).clamp(0, top).to(torch.int32)
        if min_zero:
            # zero 0 only when -lo < scale/2: shift the grid to [-scale, (top-1) scale] so hi still fits.
            low = zeros < min_zero
            shifted = ceil_to_dtype(torch.where(low, hi / (top - min_zero), 0.0), scale_dtype, name)
            scales = torch.where(low, shifted, scales)
            zeros = torch.where(low, min_zero, zeros)
    s = scales.to(torch.float32)
    z = (zeros - mid).to(torch.float32)
    steps = (mid - 1) if symmetric else torch.maximum(zeros, top - zeros)
    if torch.isinf(s * steps).any():  # only bfloat16 scales reach this, for |w| near float32's max
        raise FormatError(
            f"{name}: weights up to {float(torch.maximum(hi, -lo).max()):.4g} are too close to float32's limit: "
            "their int4 dequantization would overflow float32"
        )
    if g_idx is None:
        signed = grouped / s.unsqueeze(-1) + z.unsqueeze(-1)
    else:
        signed = w / s[:, g_idx] + z[:, g_idx]
    codes = torch.round(torch.clamp(signed, -mid, mid - 1)).to(torch.int32).reshape(out_f, in_f) + mid
    return Int4Parts(codes, scales, zeros, g_idx)


def ceil_to_dtype(raw: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
    """The smallest positive `dtype` value >= raw (a float64 tensor), so rounding the scale never clips."""
    smallest = torch.ones((), dtype=torch.int16).view(dtype)  # the smallest positive subnormal
    raw = raw.clamp(min=float(smallest))
    s = raw.to(dtype)
    s = torch.where(s.double() < raw, _step(s, 1), s)
    down = _step(s, -1)
    s = torch.where((down > 0) & (down.double() >= raw), down, s)
    if torch.isinf(s).any():
        worst = float(raw.max())
        raise FormatError(
            f"{name}: an int4 group needs scale {worst:.4g}, beyond {dtype} (max {torch.finfo(dtype).max:.4g}); "
            f"weights this large cannot be stored with {dtype} scales"
        )
    return s


def _step(x: torch.Tensor, n: int) -> torch.Tensor:
    """The n-th neighbouring value of a positive 16-bit float (bit patterns of positive floats are ordered)."""
    return (x.view(torch.int16) + n).view(x.dtype)
