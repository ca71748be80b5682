"""Weight-only formats on CPU: dequantize into the activation dtype, then one `F.linear`.

Same math as each format's float32 reference, but the matmul runs in the activation dtype (bf16 on
these CPUs runs on AVX512-BF16, ~10x the fp32 reference here). Activation-quantized specs (W8A8, MX
activations) keep their format's own matmul.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..formats import QuantizedTensor, get_format
from .dispatch import Kernel, register_kernel


def _can_run(q: QuantizedTensor, x: torch.Tensor) -> tuple[bool, str]:
    if q.spec.activation is not None:
        return False, f"activations are quantized ({q.spec.activation})"
    return True, ""


def _run(x: torch.Tensor, q: QuantizedTensor) -> torch.Tensor:
    return F.linear(x, get_format(q.format).dequantize(q).to(x.dtype))


register_kernel(Kernel("dequantize + F.linear", _can_run, _run), priority_first=False)
