"""Weight-only formats on CPU: exact dequantization straight into the activation dtype, then F.linear.

Same weight as the `dequantize + F.linear` kernel (the format's float32 reference rounded once to
x's dtype, bit for bit), built per call in a few byte-level passes (`byte_dequant`, `int4_dequant`)
instead of the reference's float32 unpacking, one chunk of output rows at a time into per-thread
scratch buffers (`workspace`), each chunk multiplied by oneDNN's GEMM (AVX512-BF16) while it is
still in cache.  This is the path for many rows (prefill), for fp16 / fp32 activations, where
torch's int4pack / int8pack kernels are slower, and for fp8 / MX weights, which torch has no
weight-only CPU kernel for.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..formats import QuantizedTensor
from . import byte_dequant, int4_dequant
from .checks import cpu_weight_only
from .dispatch import Kernel
from .int4_dequant import DequantizedWeight
from .int4_pack import INT4_FORMATS
from .workspace import row_chunks

DequantizeRows = Callable[[QuantizedTensor, Any, torch.dtype, slice], DequantizedWeight]


@dataclass(frozen=True)
class Dequantizer:
    """`dequantize(q, state, dtype, rows)`: output rows [rows] of the weight, and x's column order."""

    dequantize: DequantizeRows
    prepare: Callable[[QuantizedTensor], Any] | None = None


def _plain(fn: Callable[[QuantizedTensor, Any, torch.dtype, slice], torch.Tensor]) -> DequantizeRows:
    """A dequantizer that keeps x's column order."""
    return lambda q, state, dtype, rows: (fn(q, state, dtype, rows), None)


DEQUANTIZERS: dict[str, Dequantizer] = {
    "fp8": Dequantizer(_plain(byte_dequant.dequantize_fp8), byte_dequant.prepare_fp8),
    "mxfp8": Dequantizer(_plain(byte_dequant.dequantize_fp8), byte_dequant.prepare_mxfp8),
    "mxfp4": Dequantizer(_plain(byte_dequant.dequantize_mxfp4), byte_dequant.prepare_mxfp4),
    "int8": Dequantizer(_plain(byte_dequant.dequantize_int8), byte_dequant.prepare_int8),
    **{name: Dequantizer(int4_dequant.dequantize_int4, int4_dequant.act_order_perm) for name in INT4_FORMATS},
    **{name: Dequantizer(_plain(byte_dequant.dequantize_float)) for name in ("bf16", "fp16", "fp32")},
}
_FORMATS = frozenset(DEQUANTIZERS)


def _can_run(q: QuantizedTensor, x: torch.Tensor) -> tuple[bool, str]:
    why = cpu_weight_only(q, x, _FORMATS)
    if why:
        return False, why
    if sys.byteorder != "little":
        return False, "the byte-level unpacking assumes a little-endian host"
    return True, f"exact {q.format} → {x.dtype} dequantization, oneDNN GEMM"


def _prepare(q: QuantizedTensor) -> Any:
    d = DEQUANTIZERS[q.format]
    return None if d.prepare is None else d.prepare(q)


def _run(x: torch.Tensor, q: QuantizedTensor, state: Any) -> torch.Tensor:
    dequantize_rows = DEQUANTIZERS[q.format].dequantize
    keep = torch.is_grad_enabled() and x.requires_grad  # autograd saves w; scratch is reused by the next chunk
    parts = []
    for rows in row_chunks(*q.shape):
        w, perm = dequantize_rows(q, state, x.dtype, rows)
        if rows.start == 0 and perm is not None:
            x = x.index_select(1, perm)
        parts.append(F.linear(x, w.clone() if keep else w))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def dequantize(q: QuantizedTensor, dtype: torch.dtype) -> DequantizedWeight:
    """The exact weight in `dtype` (a tensor of its own) and the column order it expects x in (None: as is)."""
    w, perm = DEQUANTIZERS[q.format].dequantize(q, _prepare(q), dtype, slice(0, q.shape[0]))
    return w.clone(), perm


FAST_DEQUANT = Kernel("fast exact dequantize + F.linear", _can_run, _run, _prepare)
