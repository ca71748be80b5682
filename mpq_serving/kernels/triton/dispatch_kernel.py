"""The Triton kernels at the dispatch point: the linear kernel as a `kernels.dispatch.Kernel` (first choice
for CUDA activations), and `grouped_experts_forward` for a whole `MixedPrecisionExperts` layer.

`can_run` decides from the spec, device, dtype and shape without importing Triton; `prepare` (once per
layer) describes the packed tensors for the kernel (`operands.operand_for`); `run` launches it.  The
dispatch logs each choice once with this module's reasons, e.g. "Triton fused dequantize-GEMM
(decode split-K, M=1)" or "tensors on cpu: Triton runs on CUDA ...".
"""

from __future__ import annotations

import logging
import weakref

import torch

from ...formats import QuantizedTensor, get_format
from ..dispatch import Kernel, Unsupported
from .runtime import unavailable_reason

logger = logging.getLogger("mpq_serving.kernels.dispatch")

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
    if spec.activation == "fp8_static":
        return False, "static fp8 activations (a stored input_scale): the format's reference runs them"
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


_GROUPED: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, object]]" = weakref.WeakKeyDictionary()
_MOE_LOGGED: set[tuple[str, str]] = set()


def _experts_unsupported(module, hidden: torch.Tensor) -> str | None:
    why = unavailable_reason(hidden.device)
    if why:
        return why
    if hidden.dtype not in FLOAT_DTYPES:
        return f"activation dtype {hidden.dtype}"
    for expert in module.experts:
        for proj in (expert.gate_proj, expert.up_proj, expert.down_proj):
            if proj.spec.format not in _formats():
                return f"an expert is {proj.spec.format}, which has no Triton kernel"
            if proj.spec.activation is not None:
                return f"an expert quantizes activations ({proj.spec.describe()})"
    return None


def grouped_experts_forward(module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                            top_k_weights: torch.Tensor) -> torch.Tensor | None:
    """A `MixedPrecisionExperts` forward as a few grouped Triton launches, or None where Triton cannot run it.

    The choice is logged once per device with its reason.  The stacked per-format-group weights are
    built on first use and kept per module (rebuilt when the experts' buffers move or are replaced);
    they are a copy, so the experts' weights take twice their size while both exist.
    """
    why = _experts_unsupported(module, hidden_states)
    key = (hidden_states.device.type, why or "triton grouped MoE")
    if key not in _MOE_LOGGED:
        _MOE_LOGGED.add(key)
        logger.info("MoE experts on %s: %s", key[0], f"per-expert loop ({why})" if why else "Triton grouped MoE kernel")
    if why:
        return None
    from .moe import build_grouped_experts, grouped_moe

    triples = [(e.gate_proj.qtensor, e.up_proj.qtensor, e.down_proj.qtensor) for e in module.experts]
    signature = tuple(t.data_ptr() for triple in triples for q in triple for t in q.tensors.values())
    cached = _GROUPED.get(module)
    if cached is None or cached[0] != signature:
        cached = (signature, build_grouped_experts(triples))
        _GROUPED[module] = cached
    return grouped_moe(hidden_states, top_k_index, top_k_weights, cached[1], module.act_fn)
