"""Fused dequantize-GEMM for one packed weight: `y = x @ W^T`, reading W in its stored format.

One kernel body, two launch shapes:
* decode (M <= 16): BLOCK_M 16 and split-K: N / BLOCK_N programs alone cannot keep every SM reading
  weights at batch 1, so K is split across programs that write float32 partials, and a second small
  kernel sums them (deterministic, unlike atomics, and every output element is written by a store);
* prefill: ordinary M x N tiles, each looping over all of K.

Weight-only formats decode a tile to float32 (`dequant.weight_tile`), round it to the activation dtype
and use the tensor cores in that dtype with float32 accumulation.  W8A8: activations are quantized per
token in torch by the format's own functions (bit-identical to the reference), then int8 x int8 -> int32,
or E4M3 x E4M3 -> float32 on GPUs with fp8 tensor cores (else both decoded exactly to float16).  MX
activation specs fake-quantize x first (exact in bf16), as the reference does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...errors import FormatError
from ...formats import get_format
from ...formats import fp8 as fp8_format
from ...formats import int8 as int8_format
from .configs import DECODE_MAX_M, decode_configs, prefill_configs
from .dequant import e4m3_as_fp16, raw_tile, weight_tile
from .operands import Fmt, WeightOperand
from .runtime import interpreting, multiprocessors, native_fp8

ACT_NONE, ACT_INT8, ACT_FP8 = 0, 1, 2
FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@triton.jit
def _dequant_gemm(
    x, xs, w0, w1, w2, w3, out,
    M, N, K, M_BUCKET,
    stride_xm, stride_xk, stride_os, stride_om, stride_on,
    s0k, s0n, s1g, s1n, s2g, s2n,
    FMT: tl.constexpr, GROUP: tl.constexpr, HAS_GIDX: tl.constexpr, COL_SCALE: tl.constexpr,
    ACT: tl.constexpr, NATIVE_FP8: tl.constexpr, DOT_FP32: tl.constexpr, SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mmask = offs_m[:, None] < M
    nmask = offs_n[None, :] < N
    if ACT == 1:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(pid_k * BLOCK_K, K, BLOCK_K * SPLIT_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        kmask = offs_k[:, None] < K
        a = tl.load(x + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=mmask & (offs_k[None, :] < K), other=0.0)
        if ACT == 0:
            b = weight_tile(w0, w1, w2, w3, k0, offs_k[:, None], offs_n[None, :], kmask, nmask,
                            s0k, s0n, s1g, s1n, s2g, s2n, FMT, GROUP, HAS_GIDX, BLOCK_K).to(a.dtype)
            if DOT_FP32:
                acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
            else:
                acc += tl.dot(a, b)
        else:
            b = raw_tile(w0, offs_k[:, None], offs_n[None, :], kmask & nmask, s0k, s0n, FMT, NATIVE_FP8)
            if ACT == 1:
                acc += tl.dot(a, b, out_dtype=tl.int32)
            elif NATIVE_FP8:
                acc += tl.dot(a, b)
            else:
                acc += tl.dot(e4m3_as_fp16(a), b)
    y = acc.to(tl.float32)
    if ACT == 2 and not NATIVE_FP8:
        y = y * 65536.0  # both operands were decoded as value * 2^-8
    if COL_SCALE:
        y = y * tl.load(w1 + offs_n[None, :] * s1n, mask=nmask, other=0.0)
    if ACT != 0:
        y = y * tl.load(xs + offs_m[:, None], mask=mmask, other=0.0)
    ptrs = out + pid_k * stride_os + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(ptrs, y.to(out.dtype.element_ty), mask=mmask & nmask)


_KEY = ["M_BUCKET", "N", "K", "FMT", "GROUP", "HAS_GIDX", "ACT", "SPLIT_K"]
_decode_kernel = triton.autotune(configs=decode_configs(), key=_KEY)(_dequant_gemm)
_prefill_kernel = triton.autotune(configs=prefill_configs(), key=_KEY)(_dequant_gemm)


@triton.jit
def _sum_splits(ws, out, M, N, stride_ws, stride_om, stride_on, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
    """out[m, n] = sum over s of ws[s, m, n] (ws contiguous float32 [SPLIT_K, M, N])."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M * N
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(SPLIT_K):
        total += tl.load(ws + s * stride_ws + offs, mask=mask, other=0.0)
    tl.store(out + (offs // N) * stride_om + (offs % N) * stride_on, total.to(out.dtype.element_ty), mask=mask)


def choose_split_k(m: int, n: int, k: int, device: torch.device) -> int:
    """Enough K-splits that decode launches about two programs per SM, each over at least 256 of K."""
    if m > DECODE_MAX_M:
        return 1
    min_k = 32 if interpreting() else 256
    n_tiles = triton.cdiv(n, 64)
    split = max(1, min(2 * multiprocessors(device) // n_tiles, k // min_k, 16))
    return 1 << (split.bit_length() - 1)  # a power of two: fewer autotune keys


def quantize_activations(x: torch.Tensor, op: WeightOperand) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """(kernel activations, per-token scales or None, ACT mode): the format's own per-token rules."""
    if op.act is None:
        return x, None, ACT_NONE
    if op.act in ("mxfp4", "mxfp8"):
        return get_format(op.act).fake_quantize(x).to(x.dtype), None, ACT_NONE
    rows = x.to(torch.float32)
    if op.act == "int8":
        scale = int8_format.scale_from_amax(rows.abs().amax(dim=1, keepdim=True))
        return int8_format.to_int8(rows / scale), scale.reshape(-1).contiguous(), ACT_INT8
    if op.act == "fp8":
        if op.fmt != Fmt.FP8 or not op.col_scale:
            raise FormatError(f"{op.spec_label}: W8A8 fp8 in Triton needs per-channel or per-tensor weight scales")
        scale = fp8_format.scale_from_amax(rows.abs().amax(dim=1, keepdim=True))
        return fp8_format.to_fp8(rows / scale), scale.reshape(-1).contiguous(), ACT_FP8
    raise FormatError(f"{op.spec_label}: activation {op.act!r} has no Triton path")


def dequant_matmul(
    x: torch.Tensor,
    op: WeightOperand,
    out: torch.Tensor | None = None,
    *,
    variant: str = "auto",
    split_k: int | None = None,
    workspace: torch.Tensor | None = None,
) -> torch.Tensor:
    """y [M, N] = x [M, K] @ W^T in x's dtype, W read from `op`'s packed tensors.

    `variant` "decode" / "prefill" overrides the M <= 16 rule; `split_k` the decode split; `out` and
    `workspace` (float32 [split_k, M, N]) let a caller supply (e.g. NaN-poisoned) buffers.
    """
    if x.dim() != 2 or x.shape[1] != op.k:
        raise FormatError(f"{op.spec_label}: activations {tuple(x.shape)} do not match a weight of in_features {op.k}")
    if x.dtype not in FLOAT_DTYPES:
        raise FormatError(f"{op.spec_label}: activation dtype {x.dtype} is not one of bf16, fp16, fp32")
    m, n, k = x.shape[0], op.n, op.k
    out = torch.empty(m, n, dtype=x.dtype, device=x.device) if out is None else out
    if m == 0:
        return out
    a, xs, act = quantize_activations(x, op)
    native = act == ACT_FP8 and native_fp8(x.device)
    w0 = op.w0.view(torch.float8_e4m3fn) if native else op.w0
    if act == ACT_FP8:
        a = a if native else a.view(torch.int8)
    decode = variant == "decode" or (variant == "auto" and m <= DECODE_MAX_M)
    split = (split_k or choose_split_k(m, n, k, x.device)) if decode else 1
    target = out
    if split > 1:
        target = torch.empty(split, m, n, dtype=torch.float32, device=x.device) if workspace is None else workspace
    kernel = _decode_kernel if decode else _prefill_kernel
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]), split)  # noqa: E731
    stride_os = target.stride(0) if split > 1 else 0
    stride_om, stride_on = (target.stride(1), target.stride(2)) if split > 1 else (target.stride(0), target.stride(1))
    kernel[grid](
        a, xs if xs is not None else op.w1, w0, op.w1, op.w2, op.w3, target,
        m, n, k, triton.next_power_of_2(m),
        a.stride(0), a.stride(1), stride_os, stride_om, stride_on,
        op.s0k, op.s0n, op.s1g, op.s1n, op.s2g, op.s2n,
        FMT=int(op.fmt), GROUP=op.group, HAS_GIDX=op.has_gidx, COL_SCALE=op.col_scale,
        ACT=act, NATIVE_FP8=native, DOT_FP32=interpreting() or x.dtype == torch.float32, SPLIT_K=split,
    )
    if split > 1:
        block = 1024
        _sum_splits[(triton.cdiv(m * n, block),)](
            target, out, m, n, target.stride(0), out.stride(0), out.stride(1), SPLIT_K=split, BLOCK=block
        )
    return out
