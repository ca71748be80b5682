"""INT8 weight-only (W8A16) on CPU through torch's `_weight_int8pack_mm` (bf16, few rows).

Contract (torch 2.13, checked by probing): `_weight_int8pack_mm(x [M, K], w int8 [N, K], scales [N])`
→ [M, N] in x's dtype; x 2-D with a contiguous last dim, scales 1-D in exactly x's dtype, and
y = (x @ w^T) * scales with float32 accumulation.  It reads our stored int8 weight as is (no copy);
the prepared state is only the per-channel scales in bf16, rounded once (relative error <= 2^-8 per
output row, the size of the reference's own bf16 rounding of each weight).  Only bf16 is vectorized
(fp16 / fp32 take ~15x longer), and time grows linearly with rows (1536x576: 0.06 ms at 1 row,
0.4 ms at 16; exact dequantization + oneDNN: 0.3 ms, 0.4 ms), so past `MAX_ROWS` the fused
GEMV (`cpu_fused`, already ahead at 8 rows) or, without AVX-512, `fast_dequant` takes over.

Its vector loads need aligned operands: it segfaults on a weight whose data is not 16-byte aligned or on
an x not 32-byte aligned (probed). A safetensors file places a tensor at any byte offset, so a weight
read from a checkpoint can be misaligned; such a weight is copied once (prepare), such an x per call.
"""

from __future__ import annotations

import torch

from ..formats import QuantizedTensor
from .checks import cpu_weight_only
from .dispatch import Kernel

ALIGNMENT = 64  # bytes; what torch's CPU allocator gives, above the 16 / 32 the kernel needs
# Crossover with the fused GEMV, 2 threads: int8pack ahead at 1 row (2.2x vs 1.5x bf16 at 1536x576),
# behind at 8 (0.9x vs 1.05x) on 1536x576, 576x1536 and 4096x4096.
MAX_ROWS = 4


def _can_run(q: QuantizedTensor, x: torch.Tensor) -> tuple[bool, str]:
    why = cpu_weight_only(q, x, frozenset({"int8"}), (torch.bfloat16,))
    if why:
        return False, why + ("" if q.format != "int8" else " (only bf16 is vectorized)")
    return True, "torch _weight_int8pack_mm"


def aligned(t: torch.Tensor) -> torch.Tensor:
    """`t` contiguous with its data on an ALIGNMENT-byte boundary (a fresh copy only when it is not)."""
    t = t.contiguous()
    return t if t.data_ptr() % ALIGNMENT == 0 else t.clone()


def _prepare(q: QuantizedTensor) -> tuple[torch.Tensor, torch.Tensor]:
    return aligned(q.tensors["weight"]), aligned(q.tensors["weight_scale"].reshape(-1).to(torch.bfloat16))


def _run(x: torch.Tensor, q: QuantizedTensor, state: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    weight, scales = state
    return torch.ops.aten._weight_int8pack_mm(aligned(x), weight, scales)


INT8_PACK = Kernel("int8pack (torch W8A16)", _can_run, _run, _prepare, max_rows=MAX_ROWS)
