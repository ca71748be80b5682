"""The Triton linear kernel as a `kernels.dispatch.Kernel`: first choice for CUDA activations.

`can_run` decides from the spec, device, dtype and shape without importing Triton; `prepare` (once per
layer) describes the packed tensors for the kernel (`operands.operand_for`); `run` launches it.  The
dispatch logs each choice once with this module's reasons, e.g. "Triton fused dequantize-GEMM
(decode split-K, M=1)" or "tensors on cpu: Triton runs on CUDA ...".
"""

from __future__ import annotations

import torch

from ...formats import QuantizedTensor, get_format
from ..dispatch import Kernel, Unsupported
from .runtime import unavailable_reason

FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
FLOAT_WEIGHTS = frozenset({"bf16", "fp16", "fp32"})  # the grouped MoE kernel reads these; linears use cuBLAS
DECODE_MAX_M = 16  # configs.DECODE_MAX_M, repeated so that this check imports no Triton


def _formats() -> frozenset[str]:
    from .operands import TRITON_FORMATS  # no Triton import either

    return TRITON_FORMATS


def _can_run(q: QuantizedTensor, x: torch.Tensor) -> tuple[bool, str]:
    why = unavailable_reason(x.device)
    if why:
        return False, why
    if q.format not in _formats():
        return False, f"no Triton kernel for {q.format}"
    if q.format in FLOAT_WEIGHTS:
        return False, f"{q.format} weights: the vendor GEMM (F.linear) is faster"
    if x.dtype not in FLOAT_DTYPES:
        return False, f"activation dtype {x.dtype}"
    if any(t.device != x.device for t in q.tensors.values()):
        return False, "weight and activations on different devices"
    spec = get_format(q.format).normalize(q.spec)
    if spec.activation == "fp8" and spec.granularity == "block":
        return False, "W8A8 fp8 with block scales (per-channel / per-tensor only)"
    variant = "decode split-K" if x.shape[0] <= DECODE_MAX_M else "prefill tiles"
    return True, f"Triton fused dequantize-GEMM ({variant}, M={x.shape[0]})"


def _prepare(q: QuantizedTensor):
    from ...errors import FormatError
    from .operands import operand_for

    try:
        return operand_for(q)
    except FormatError as e:
        raise Unsupported(str(e)) from e


def _run(x: torch.Tensor, q: QuantizedTensor, op) -> torch.Tensor:
    from .gemm import dequant_matmul

    return dequant_matmul(x, op)


TRITON_LINEAR = Kernel("triton dequant-GEMM", _can_run, _run, _prepare)
