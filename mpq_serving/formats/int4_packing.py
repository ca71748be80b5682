"""Shared int4 machinery for the GPTQ, AWQ and compressed-tensors layouts.

All three store 4-bit codes 0..15 eight to an int32 word (nibble j at bits 4j..4j+3) and differ only
in the packed axis, the nibble order and how zero points are written; so packing lives here once,
as does the round-to-nearest group quantizer they share.

Quantizer (per output row and group, over the group's columns):

* the range always includes 0: lo = min(w, 0), hi = max(w, 0), as GPTQ's `Quantizer.find_params`
  and compressed-tensors' `calculate_qparams` do (AutoAWQ's `pseudo_quantize_tensor` does not, and
  then clips a group that does not straddle 0 far beyond scale/2);
* symmetric: scale = amax / 7, zero 8 (AutoAWQ's no-zero-point rule).  GPTQ and compressed-tensors
  use amax / 7.5, which clips one extreme by scale/2 and is not a fixed point: dequantizing and
  quantizing again changes the scale.  With amax / 7 nothing clips, and quantize(dequantize(q)) == q;
* asymmetric: scale = (hi - lo) / 15, zero = round(-lo / scale) in [0, 15];
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

NIBBLES = 8  # int4 codes per int32 word
SHIFTS = torch.arange(0, 32, 4, dtype=torch.int64)

# AutoAWQ `awq/utils/packing_utils.py` (0.2.9): nibble i of a word holds column 8c + AWQ_ORDER[i];
# column k sits in nibble AWQ_REVERSE_ORDER[k].
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)


@dataclass
class Int4Parts:
    """The logical content of any int4 layout, in [out, in] orientation.

    codes int32 [out, in] in 0..15; scales [out, groups] in the stored float dtype; zeros int32
    [out, groups] in 0..15 (8 for symmetric); g_idx int64 [in], the group of each input column.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor

    def dequantize(self) -> torch.Tensor:
        """(code - zero) * scale per element, float32 [out, in]; exact (small ints times a 16-bit float)."""
        zeros = self.zeros[:, self.g_idx].to(torch.float32)
        scales = self.scales[:, self.g_idx].to(torch.float32)
        return (self.codes.to(torch.float32) - zeros) * scales


def pack_int4(codes: torch.Tensor, dim: int, order: tuple[int, ...] | None = None) -> torch.Tensor:
    """Pack codes 0..15 along `dim`, 8 per int32: nibble j of word c holds element 8c + order[j].

    A length that is not a multiple of 8 is zero-padded, as compressed-tensors' `pack_to_int32` does.
    """
    x = codes.movedim(dim, -1).to(torch.int64)
    pad = -x.shape[-1] % NIBBLES
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    words = x.reshape(*x.shape[:-1], -1, NIBBLES)
    if order is not None:
        words = words[..., list(order)]
    packed = (words << SHIFTS.to(x.device)).sum(dim=-1)
    return to_int32(packed).movedim(-1, dim).contiguous()


def unpack_int4(packed: torch.Tensor, dim: int, length: int, order: tuple[int, ...] | None = None) -> torch.Tensor:
    """Inverse of `pack_int4`: int32 codes 0..15 with `length` elements along `dim`."""
    p = packed.movedim(dim, -1)
    nibbles = (p.unsqueeze(-1) >> SHIFTS.to(device=p.device, dtype=p.dtype)) & 0xF
    if order is not None:
        inverse = sorted(range(NIBBLES), key=lambda k: order[k])
        nibbles = nibbles[..., inverse]
    codes = nibbles.reshape(*p.shape[:-1], -1)[..., :length]
    return codes.to(torch.int32).movedim(-1, dim).contiguous()


def to_int32(x: torch.Tensor) -> torch.Tensor:
    """Wrap int64 values modulo 2**32 into int32 (two's complement), as the tools' uint32 words read."""
    return ((x + 2**31) % 2**32 - 2**31).to(torch.int32)


def contiguous_g_idx(in_features: int, group_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Column i belongs to group i // group_size (one group for per-channel, group_size -1)."""
    size = in_features if group_size <= 0 else group_size
    return torch.arange(in_features, device=device) // size


def quantize_groups(
    weight: torch.Tensor,
    g_idx: torch.Tensor,
    n_groups: int,
    *,
    symmetric: bool,
    scale_dtype: torch.dtype,
    name: str,
    min_zero: int = 0,
) -> Int4Parts:
    """Round-to-nearest int4 of a finite [out, in] weight, grouped by `g_idx` (see the module docstring).

    `min_zero` 1 keeps asymmetric zeros in 1..15 for GPTQ v1, whose stored zero - 1 must not be -1.
    """
    w = weight.to(torch.float32)
    out_f, _ = w.shape
    index = g_idx.to(device=w.device, dtype=torch.int64).expand(out_f, -1)
    zero = torch.zeros(out_f, n_groups, dtype=torch.float32, device=w.device)
    # include_self folds the initial 0 into each group: the range always contains 0.
    hi = zero.scatter_reduce(1, index, w, "amax").double()
    lo = zero.scatter_reduce(1, index, w, "amin").double()
    if symmetric:
        scales = ceil_to_dtype(torch.maximum(hi, -lo) / 7, scale_dtype, name)
        zeros = torch.full_like(scales, 8, dtype=torch.int32)
    else:
        scales = ceil_to_dtype((hi - lo) / 15, scale_dtype, name)
        zeros = torch.round(-lo / scales.double()).clamp(0, 15).to(torch.int32)
        if min_zero:
            # zero 0 only when -lo < scale/2: shift the grid to [-scale, 14 scale] so hi still fits.
            low = zeros < min_zero
            shifted = ceil_to_dtype(torch.where(low, hi / (15 - min_zero), 0.0), scale_dtype, name)
            scales = torch.where(low, shifted, scales)
            zeros = torch.where(low, min_zero, zeros)
    s = scales.to(torch.float32)[:, g_idx]
    z = (zeros - 8).to(torch.float32)[:, g_idx]
    codes = torch.round(torch.clamp(w / s + z, -8, 7)).to(torch.int32) + 8
    return Int4Parts(codes, scales, zeros, g_idx.to(torch.int64))


def ceil_to_dtype(raw: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
    """The smallest positive `dtype` value >= raw (float64), so rounding the scale never clips a value."""
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
