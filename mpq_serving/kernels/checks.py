"""The `can_run` conditions every CPU weight-only kernel shares, with the reason when one fails."""

from __future__ import annotations

import torch

from ..formats import QuantizedTensor

FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def cpu_weight_only(
    q: QuantizedTensor, x: torch.Tensor, formats: frozenset[str], dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES
) -> str | None:
    """None when q is one of `formats`, weight-only, and x and q live on the CPU in one of `dtypes`; else why not."""
    if q.format not in formats:
        return f"format {q.format} is not one of {', '.join(sorted(formats))}"
    if q.spec.activation is not None:
        return f"activations are quantized ({q.spec.activation})"
    if x.device.type != "cpu" or any(t.device.type != "cpu" for t in q.tensors.values()):
        return f"activations on {x.device.type}, weight on {next(iter(q.tensors.values())).device.type}: CPU only"
    if x.dtype not in dtypes:
        return f"activation dtype {x.dtype} is not one of {', '.join(str(d) for d in dtypes)}"
    return None
