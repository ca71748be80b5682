"""int8 W8A8 (per-token dynamic int8 activations) on CPU: the activation codes through the fused GEMV.

vLLM-CPU and torch have no CPU kernel our dispatch can call for W8A8, and the format's reference
multiplies in float64 after widening the whole weight on every call.  Here x is quantized exactly as
the reference does (`formats.int8`: scale amax/127 per row, round half to even), and the int8 codes of
x and of the weight -- both exact in bfloat16 -- are multiplied by the fused kernel's bf16 dot products
with float32 sums (exact integers while |sum| < 2^24), then rescaled by the row's and the channel's
scales in float32.  Needs the kernel's bfloat16 path (AVX512-BF16).
"""

from __future__ import annotations

import torch

from ..formats import QuantizedTensor
from ..formats.int8 import scale_from_amax, to_int8
from . import cpu_fused
from .cpu_fused_build import has_bf16, unavailable
from .dispatch import Kernel


def _can_run(q: QuantizedTensor, x: torch.Tensor) -> tuple[bool, str]:
    if q.format != "int8" or q.spec.activation != "int8":
        return False, f"{q.spec.describe()} is not int8 W8A8"
    if x.device.type != "cpu" or any(t.device.type != "cpu" for t in q.tensors.values()):
        return False, "CPU only"
    if unavailable():
        return False, unavailable()
    if not has_bf16():
        return False, "this CPU has no AVX512-BF16 for the integer codes' dot products"
    if torch.is_grad_enabled() and x.requires_grad:
        return False, "x requires grad: the fused kernel has no backward"
    return True, "x to int8 per token, int8 x int8 as exact bf16 dot products, AVX512-BF16"


def _prepare(q: QuantizedTensor) -> cpu_fused.FusedState:
    return cpu_fused.prepare_codes(q, "int8", "weight")


def _run(x: torch.Tensor, q: QuantizedTensor, state: cpu_fused.FusedState) -> torch.Tensor:
    rows = x.to(torch.float32)
    x_scale = scale_from_amax(rows.abs().amax(dim=1, keepdim=True))
    codes = to_int8(rows / x_scale).to(torch.bfloat16)
    y = cpu_fused.gemv(codes, q, state)  # float32: integer sums times the weight's channel scales
    return (y * x_scale).to(x.dtype)


# No row limit: past the fused GEMV's crossover with bf16 GEMMs the alternative is the float64 reference.
CPU_FUSED_W8A8 = Kernel("fused int8 W8A8 GEMV (AVX512-BF16)", _can_run, _run, _prepare)
