"""Any weight-only format on any device: the format's float32 dequantize, cast to x's dtype, one F.linear.

Same math as each format's float32 reference, but the matmul runs in the activation dtype (bf16 on
these CPUs runs on AVX512-BF16, ~10x the fp32 reference here).  The fallback for what the faster
kernels decline; activation-quantized specs (W8A8, MX activations) keep their format's own matmul.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..formats import QuantizedTensor, get_format
from .dispatch import Kernel


def _can_run(q: QuantizedTensor, x: torch.Tensor) -> tuple[bool, str]:
    if q.spec.activation is not None:
        return False, f"activations are quantized ({q.spec.activation})"
    return True, "float32 dequantize, cast to the activation dtype"


def _run(x: torch.Tensor, q: QuantizedTensor, state: Any) -> torch.Tensor:
    return F.linear(x, get_format(q.format).dequantize(q).to(x.dtype))


DEQUANT_LINEAR = Kernel("dequantize + F.linear", _can_run, _run)
