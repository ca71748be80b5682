"""fp8 (per-tensor, per-channel, 128x128 blocks), mxfp8, mxfp4 and int8 weights on CPU for up to 128 rows: one fused pass.

The exact-dequantization kernel (`fast_dequant`) writes the whole weight in the activation dtype
on every call and hands it to oneDNN: at one row of x that moves several times the bytes the packed
weight holds.  This kernel (C source `cpu_fused_gemv.c`, built by `cpu_fused_build`) reads each
packed byte once, decodes a chunk of a few weight rows into L1 and multiplies it there: bfloat16 x
with AVX512-BF16 `vdpbf16ps` (exact products, float32 sums -- the numbers of a bf16 GEMM on the
weight rounded to bf16), any other x in float32.  Measured on a 2-core AVX-512 (Zen 4) machine
(`benchmarks/results/kernels-cpu.md`): fp8 per-channel 4096x14336 at one row reads 21 GB/s, 66% of
the copy bandwidth and 2.2x bf16 `F.linear`; it stays ahead of exact dequantization + oneDNN up to
~128 rows (`MAX_ROWS`); prefill past that goes to `fast_dequant`.

Prepared state: the float32 scales shaped per row (what `byte_dequant` prepares: tiny for fp8,
one float per 32 weights for MX), how the bf16 path applies them (per row after the sum, as an
exponent increment for power-of-two MX scales, or per weight), and the decode tables; the packed
bytes are used in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..formats import QuantizedTensor
from ..formats.mxfp4 import e2m1_decode
from . import byte_dequant
from .checks import cpu_weight_only
from .cpu_fused_build import has_bf16, load, unavailable
from .dispatch import Kernel, Unsupported

CODE_E4M3, CODE_E2M1, CODE_I8 = 0, 1, 2
SCALE_EACH, SCALE_ROW, SCALE_POW2 = 0, 1, 2  # how the bfloat16 path applies scales (cpu_fused_gemv.c)
VECTOR = 16  # float32 lanes of one AVX-512 register: scale blocks must not split a vector
# Crossover with exact dequantization + oneDNN bf16 GEMM: parity at ~256 rows of 4096x4096, 2 threads.
MAX_ROWS = 128

_E4M3_LUT = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).to(torch.float32) / 256.0
_E2M1_LUT = e2m1_decode(torch.arange(16, dtype=torch.uint8)).to(torch.float32).contiguous()
_I8_LUT = torch.arange(256, dtype=torch.uint8).view(torch.int8).to(torch.float32)
# The same values as bfloat16 bits, 32 per AVX-512 register (exact: E4M3 and E2M1 fit bfloat16's mantissa).
_E4M3_BF16 = _E4M3_LUT[:128].to(torch.bfloat16).view(torch.int16).contiguous()
_E2M1_BF16 = torch.cat([_E2M1_LUT, torch.zeros(16)]).to(torch.bfloat16).view(torch.int16).contiguous()
# Exponents of the smallest non-zero and largest table values (E4M3 tables hold value * 2^-8).
_TABLE_EXPONENTS = {CODE_E4M3: (-17, 0), CODE_E2M1: (-1, 2)}
_BF16_EXPONENTS = (-126, 127)  # normal bfloat16: vdpbf16ps reads subnormals as zero
_NO_EXPONENTS = torch.zeros(1, dtype=torch.int16)
_NO_TABLE = torch.zeros(1, dtype=torch.int16)  # int8 codes are converted, not looked up

_PREPARE = {
    "fp8": (byte_dequant.prepare_fp8, CODE_E4M3, "weight"),
    "mxfp8": (byte_dequant.prepare_mxfp8, CODE_E4M3, "weight"),
    "mxfp4": (byte_dequant.prepare_mxfp4, CODE_E2M1, "weight_packed"),
    "int8": (byte_dequant.prepare_int8, CODE_I8, "weight"),
}
_TABLES = {CODE_E4M3: (_E4M3_LUT, _E4M3_BF16), CODE_E2M1: (_E2M1_LUT, _E2M1_BF16), CODE_I8: (_I8_LUT, _NO_TABLE)}
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
    scale_mode: int
    exp7: torch.Tensor  # SCALE_POW2: int16 log2(scale) << 7 per scale, the bf16 exponent-field increment
    bf16_table: torch.Tensor


def _can_run(q: QuantizedTensor, x: torch.Tensor) -> tuple[bool, str]:
    why = cpu_weight_only(q, x, _FORMATS)
    if why:
        return False, why
    if unavailable():
        return False, unavailable()
    if torch.is_grad_enabled() and x.requires_grad:
        return False, "x requires grad: the fused kernel has no backward"
    dot = "bf16 dot products (AVX512-BF16)" if x.dtype == torch.bfloat16 and has_bf16() else "float32 multiply-add"
    return True, f"fused {q.format} decode + {dot}, AVX-512"


def _prepare(q: QuantizedTensor) -> FusedState:
    return prepare_codes(q, q.format, _PREPARE[q.format][2])


def prepare_codes(q: QuantizedTensor, fmt: str, name: str) -> FusedState:
    """The kernel's state for q's stored codes `q.tensors[name]`, read as format `fmt`'s codes."""
    prepare, code, _ = _PREPARE[fmt]
    state = prepare(q)  # raises Unsupported for E4M3 NaN codes / scales that overflow with 2^8
    in_f = q.shape[1]
    if state.block % VECTOR and state.block < in_f:
        raise Unsupported(f"scale blocks of {state.block} columns split a {VECTOR}-lane vector")
    scales = state.scale.to(torch.float32).contiguous()
    stride = 0 if scales.shape[0] == 1 else scales.shape[1]
    lut, table = _TABLES[code]
    mode, exp7 = _scale_mode(code, scales, state.block, in_f)
    return FusedState(code, q.tensors[name].contiguous(), scales, stride, state.block, lut, mode, exp7, table)


def _scale_mode(code: int, scales: torch.Tensor, block: int, in_f: int) -> tuple[int, torch.Tensor]:
    """One scale per row: applied to the sum.  Power-of-two scales per 32 columns whose products stay
    normal in bfloat16: added to the exponent field, exact.  Anything else: multiplied per weight."""
    if block >= in_f:
        return SCALE_ROW, _NO_EXPONENTS
    if block != 32:
        return SCALE_EACH, _NO_EXPONENTS
    mantissa, exponent = torch.frexp(scales)  # scale = mantissa * 2^exponent, mantissa 0.5 for a power of two
    exponent = exponent - 1
    low, high = _TABLE_EXPONENTS[code]
    exact = bool((mantissa == 0.5).all() and (exponent + low >= _BF16_EXPONENTS[0]).all()
                 and (exponent + high <= _BF16_EXPONENTS[1]).all())
    if not exact:
        return SCALE_EACH, _NO_EXPONENTS
    return SCALE_POW2, (exponent.to(torch.int32) << 7).to(torch.int16).contiguous()


def _run(x: torch.Tensor, q: QuantizedTensor, state: FusedState) -> torch.Tensor:
    if x.dtype == torch.bfloat16:
        return gemv(x, q, state, torch.bfloat16)
    y = gemv(x, q, state)
    return y if x.dtype == torch.float32 else y.to(x.dtype)


def gemv(x: torch.Tensor, q: QuantizedTensor, state: FusedState, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x [rows, in] @ W^T, summed in float32 (bfloat16 x multiplied as bfloat16 where the CPU can), returned
    in float32 or rounded once into bfloat16."""
    out_f, in_f = q.shape
    as_bf16 = x.dtype == torch.bfloat16 and has_bf16()
    xc = x.contiguous() if as_bf16 else x.to(torch.float32).contiguous()
    y = torch.empty(x.shape[0], out_f, dtype=out_dtype)
    w = state.weight
    load().mpq_fused_gemv(
        state.code, w.data_ptr(), w.shape[1] * w.element_size(), state.scales.data_ptr(), state.scale_row_stride,
        state.block, state.lut.data_ptr(), state.scale_mode, state.exp7.data_ptr(), state.bf16_table.data_ptr(),
        xc.data_ptr(), int(as_bf16), y.data_ptr(), int(out_dtype == torch.bfloat16), x.shape[0], out_f, in_f,
        torch.get_num_threads(),
    )
    return y


CPU_FUSED = Kernel("fused fp8 / MX / int8 GEMV (AVX-512)", _can_run, _run, _prepare, max_rows=MAX_ROWS)
