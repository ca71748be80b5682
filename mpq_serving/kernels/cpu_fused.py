"""fp8 (per-tensor, per-channel, 128x128 blocks), mxfp8 and mxfp4 weights on CPU at decode: one fused pass.

The exact-dequantization kernel (`fast_dequant`) writes the whole weight in the activation dtype
on every call and hands it to oneDNN: at one row of x that costs several times the bytes the packed
weight holds.  This kernel (C source `cpu_fused_gemv.c`, built by `cpu_fused_build`) reads each
packed byte once, decodes it to the exact float32 weight the format's reference builds, and
multiplies in float32 with float32 accumulation; the result is rounded once into x's dtype.  It is
chosen for up to `MAX_ROWS` rows of x; past that oneDNN's GEMM on the dequantized weight is faster
and `fast_dequant` takes over (each row of x costs this kernel a full pass of multiply-adds).

Prepared state: the float32 scales shaped per row (what `byte_dequant` prepares: tiny for fp8,
one float per 32 weights for MX) and the decode table; the packed bytes are used in place.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch

from ..formats import QuantizedTensor
from ..formats.mxfp4 import e2m1_decode
from . import byte_dequant
from .checks import cpu_weight_only
from .cpu_fused_build import load, unavailable
from .dispatch import Kernel, Unsupported

CODE_E4M3, CODE_E2M1 = 0, 1
VECTOR = 16  # float32 lanes of one AVX-512 register: scale blocks must not split a vector
# Crossover with exact dequantization + oneDNN bf16 GEMM (benchmarks/cpu_kernels.py, 2 threads).
MAX_ROWS = 16

_E4M3_LUT = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).to(torch.float32) / 256.0
_E2M1_LUT = e2m1_decode(torch.arange(16, dtype=torch.uint8)).to(torch.float32).contiguous()

_PREPARE = {
    "fp8": (byte_dequant.prepare_fp8, CODE_E4M3, "weight"),
    "mxfp8": (byte_dequant.prepare_mxfp8, CODE_E4M3, "weight"),
    "mxfp4": (byte_dequant.prepare_mxfp4, CODE_E2M1, "weight_packed"),
}
_FORMATS = frozenset(_PREPARE)


@dataclass(frozen=True)
class FusedState:
    """The packed bytes (contiguous, as stored), float32 scales [1 or out, blocks], and how to read them."""

    code: int
    weight: torch.Tensor
    scales: torch.Tensor
    scale_row_stride: int
    block: int
    lut: torch.Tensor


def _can_run(q: QuantizedTensor, x: torch.Tensor) -> tuple[bool, str]:
    why = cpu_weight_only(q, x, _FORMATS)
    if why:
        return False, why
    if unavailable():
        return False, unavailable()
    if torch.is_grad_enabled() and x.requires_grad:
        return False, "x requires grad: the fused kernel has no backward"
    return True, f"fused {q.format} decode + float32 multiply-add, AVX-512"


def _prepare(q: QuantizedTensor) -> FusedState:
    prepare, code, name = _PREPARE[q.format]
    state = prepare(q)  # raises Unsupported for E4M3 NaN codes / scales that overflow with 2^8
    in_f = q.shape[1]
    if state.block % VECTOR and state.block < in_f:
        raise Unsupported(f"scale blocks of {state.block} columns split a {VECTOR}-lane vector")
    scales = state.scale.to(torch.float32).contiguous()
    stride = 0 if scales.shape[0] == 1 else scales.shape[1]
    lut = _E4M3_LUT if code == CODE_E4M3 else _E2M1_LUT
    return FusedState(code, q.tensors[name].contiguous(), scales, stride, state.block, lut)


def _run(x: torch.Tensor, q: QuantizedTensor, state: FusedState) -> torch.Tensor:
    out_f, in_f = q.shape
    xf = x.to(torch.float32).contiguous()
    y = torch.empty(x.shape[0], out_f, dtype=torch.float32)
    w = state.weight
    load().mpq_fused_gemv(
        state.code, w.data_ptr(), w.shape[1] * w.element_size(), state.scales.data_ptr(), state.scale_row_stride,
        state.block, state.lut.data_ptr(), xf.data_ptr(), y.data_ptr(), x.shape[0], out_f, in_f,
        ctypes.c_int(torch.get_num_threads()),
    )
    return y if x.dtype == torch.float32 else y.to(x.dtype)


CPU_FUSED = Kernel("fused fp8 / MX GEMV (AVX-512)", _can_run, _run, _prepare, max_rows=MAX_ROWS)
