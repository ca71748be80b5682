"""Triton device functions: decode a [BLOCK_K, BLOCK_N] tile of W^T straight from a format's stored bytes.

Shared by the linear kernels (`gemm.py`) and the grouped MoE kernel (`moe.py`), so each format's byte
layout is written once.  Every decoder returns float32 values that equal the format's float32
`dequantize` exactly (per-column scales excepted: fp8 / int8 apply those after the dot, see
`operands.py`).  The format id `FMT` is a constexpr, so each launch compiles only its own decoder.

Element decoding with integer ops (no lookup tables, no native fp8 type, so it runs on any GPU and in
the interpreter):
* int4: code = (word >> 4 * nibble) & 15; GPTQ packs 8 k per word (nibble k % 8), AWQ 8 n per word in
  the order (0, 2, 4, 6, 1, 3, 5, 7), so output n sits in nibble (n % 2) * 4 + (n % 8) // 2;
* E4M3 (fp8, mxfp8): the sign-extended byte shifted left by 7 and masked to sign | bits 13..7 is the
  float16 holding value * 2^-8, subnormals included (`fast_dequant.py` has the derivation);
* E2M1 (mxfp4): magnitude index m = 2e + f is f / 2 for e = 0, else (1 + f / 2) * 2^(e - 1); low nibble first;
* E8M0: the byte shifted into float32's exponent field; byte 0 is 2^-127 (a subnormal), 255 is NaN.
"""

from __future__ import annotations

import triton
import triton.language as tl

GPTQ: tl.constexpr = tl.constexpr(0)
AWQ: tl.constexpr = tl.constexpr(1)
FP8: tl.constexpr = tl.constexpr(2)
INT8: tl.constexpr = tl.constexpr(3)
MXFP4: tl.constexpr = tl.constexpr(4)
MXFP8: tl.constexpr = tl.constexpr(5)
FLOAT: tl.constexpr = tl.constexpr(6)


@triton.jit
def e4m3_as_fp16(byte):
    """int8 E4M3 bit patterns → float16 holding value * 2^-8 (exact).

    In int32, then truncated to 16 bits: 0xBF80 keeps a copy of the sign on bit 15 and the exponent and
    mantissa on bits 13..7, and integer literals would promote an int16 expression to int32 anyway.
    """
    bits = (byte.to(tl.int32) << 7) & 0xBF80
    return bits.to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def e4m3_to_float(byte):
    """int8 E4M3 bit patterns → float32 values."""
    return e4m3_as_fp16(byte).to(tl.float32) * 256.0


@triton.jit
def e8m0_to_float(byte):
    """uint8 biased E8M0 scales → float32 2^(byte - 127)."""
    e = byte.to(tl.int32)
    bits = tl.where(e == 0, 0x00400000, e << 23)
    bits = tl.where(e == 255, 0x7FC00000, bits)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def e2m1_to_float(code):
    """int32 E2M1 codes 0..15 (sign << 3 | magnitude index) → float32."""
    m = code & 7
    e = m >> 1
    f = (m & 1).to(tl.float32)
    mag = tl.where(e == 0, f * 0.5, tl.where(e == 1, 1.0 + f * 0.5, tl.where(e == 2, 2.0 + f, 4.0 + 2.0 * f)))
    return tl.where(code >= 8, -mag, mag)


@triton.jit
def int4_group_scale_zero(w1, w2, g, offs_n, mask, s1g, s1n, s2g, s2n, AWQ_ORDER: tl.constexpr):
    """Scale and zero point for group index g (a scalar, or [BK, 1]) and outputs offs_n [1, BN]."""
    scale = tl.load(w1 + g * s1g + offs_n * s1n, mask=mask, other=0.0).to(tl.float32)
    zword = tl.load(w2 + g * s2g + (offs_n // 8) * s2n, mask=mask, other=0)
    if AWQ_ORDER:
        zshift = ((offs_n % 2) * 4 + (offs_n % 8) // 2) * 4
    else:
        zshift = (offs_n % 8) * 4
    zero = ((zword >> zshift) & 0xF).to(tl.float32)
    return scale, zero


@triton.jit
def int4_scale_zero(
    w1, w2, w3, k0, offs_k, offs_n, kmask, nmask, s1g, s1n, s2g, s2n,
    GROUP: tl.constexpr, HAS_GIDX: tl.constexpr, BLOCK_K: tl.constexpr, AWQ_ORDER: tl.constexpr,
):
    """Per-element scale and zero of an int4 tile: g_idx (act-order), one group per tile, or k // GROUP."""
    if HAS_GIDX:
        g = tl.load(w3 + offs_k, mask=kmask, other=0)
        return int4_group_scale_zero(w1, w2, g, offs_n, kmask & nmask, s1g, s1n, s2g, s2n, AWQ_ORDER)
    elif GROUP % BLOCK_K == 0:
        return int4_group_scale_zero(w1, w2, k0 // GROUP, offs_n, nmask, s1g, s1n, s2g, s2n, AWQ_ORDER)
    else:
        return int4_group_scale_zero(w1, w2, offs_k // GROUP, offs_n, kmask & nmask, s1g, s1n, s2g, s2n, AWQ_ORDER)


@triton.jit
def weight_tile(
    w0, w1, w2, w3, k0, offs_k, offs_n, kmask, nmask,
    s0k, s0n, s1g, s1n, s2g, s2n,
    FMT: tl.constexpr, GROUP: tl.constexpr, HAS_GIDX: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """float32 W^T[offs_k, offs_n] (offs_k [BK, 1], offs_n [1, BN], with their bounds masks); 0 outside.

    fp8 (channel / tensor) and int8 come back unscaled: their per-column scale is applied after the dot.
    `k0` is the tile's first k: when int4 groups hold whole tiles (no g_idx), one scale row serves the tile.
    """
    mask = kmask & nmask
    if FMT == GPTQ:
        word = tl.load(w0 + (offs_k // 8) * s0k + offs_n * s0n, mask=mask, other=0)
        code = ((word >> ((offs_k % 8) * 4)) & 0xF).to(tl.float32)
        scale, zero = int4_scale_zero(w1, w2, w3, k0, offs_k, offs_n, kmask, nmask, s1g, s1n, s2g, s2n,
                                      GROUP, HAS_GIDX, BLOCK_K, False)
        w = (code - zero) * scale
    elif FMT == AWQ:
        word = tl.load(w0 + offs_k * s0k + (offs_n // 8) * s0n, mask=mask, other=0)
        shift = ((offs_n % 2) * 4 + (offs_n % 8) // 2) * 4
        code = ((word >> shift) & 0xF).to(tl.float32)
        scale, zero = int4_scale_zero(w1, w2, w3, k0, offs_k, offs_n, kmask, nmask, s1g, s1n, s2g, s2n,
                                      GROUP, False, BLOCK_K, True)
        w = (code - zero) * scale
    elif FMT == FP8:
        w = e4m3_to_float(tl.load(w0 + offs_k * s0k + offs_n * s0n, mask=mask, other=0))
        if GROUP > 1:  # block scales [N / B, K / B]
            w = w * tl.load(w1 + (offs_k // GROUP) * s1g + (offs_n // GROUP) * s1n, mask=mask, other=0.0)
    elif FMT == INT8:
        w = tl.load(w0 + offs_k * s0k + offs_n * s0n, mask=mask, other=0).to(tl.float32)
    elif FMT == MXFP4:
        byte = tl.load(w0 + (offs_k // 2) * s0k + offs_n * s0n, mask=mask, other=0).to(tl.int32)
        w = e2m1_to_float((byte >> ((offs_k % 2) * 4)) & 0xF)
        w = w * e8m0_to_float(tl.load(w1 + (offs_k // 32) * s1g + offs_n * s1n, mask=mask, other=127))
    elif FMT == MXFP8:
        w = e4m3_to_float(tl.load(w0 + offs_k * s0k + offs_n * s0n, mask=mask, other=0))
        w = w * e8m0_to_float(tl.load(w1 + (offs_k // 32) * s1g + offs_n * s1n, mask=mask, other=127))
    else:
        w = tl.load(w0 + offs_k * s0k + offs_n * s0n, mask=mask, other=0.0).to(tl.float32)
    return tl.where(mask, w, 0.0)


@triton.jit
def raw_tile(w0, offs_k, offs_n, mask, s0k, s0n, FMT: tl.constexpr, NATIVE_FP8: tl.constexpr):
    """The stored 8-bit weight codes for W8A8: int8 as is; fp8 natively (fp8 tensor cores) or as float16 × 2^-8."""
    raw = tl.load(w0 + offs_k * s0k + offs_n * s0n, mask=mask, other=0.0)
    if FMT == INT8:
        return raw
    elif NATIVE_FP8:
        return raw
    else:
        return e4m3_as_fp16(raw)
