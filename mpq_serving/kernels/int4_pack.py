"""GPTQ / AWQ / compressed-tensors int4 on CPU through torch's tinygemm int4pack kernel (bf16, few rows).

Contract (torch 2.13, aten/src/ATen/native/cpu/int4mm_kernel.cpp):

* `_convert_weight_to_int4pack_for_cpu(codes int32 [N, K], inner_k_tiles)` → uint8 [N, K/2] in a
  CPU-capability-specific order (inner_k_tiles is ignored on CPU); N % 16 == 0, codes unsigned 0..15;
* `_weight_int4pack_mm_for_cpu(x [M, K], packed, group, scales_and_zeros [K/group, N, 2])` → [M, N]
  in x's dtype, group in {32, 64, 128, 256}, scales_and_zeros in x's dtype; it computes
  w = (code - 8) * scale + zero in float32 (FMA) and accumulates in float32.

So our w = (code - z) * s is torch's with zero = (8 - z) * s.  Both are rounded to bf16 once here:
the one difference from dequantize-then-cast, relative error <= 2^-8 per group term, the size of
the reference's own bf16 rounding of each weight.  Only bf16 runs vectorized (fp16 / fp32 run a
scalar loop, ~30x slower), and the kernel is a GEMV at heart: its time grows linearly with rows
(1536x576: 0.06 ms at 1 row, 1.3 ms at 64; exact dequantization + oneDNN: 0.7 ms, 1.7 ms), so past
`MAX_ROWS` the `fast_dequant` kernel takes over.

Groups: torch supports group sizes 32..256 (powers of two); a larger group size divisible by 32,
including per-channel (-1), is run as its largest supported divisor with scales repeated, which is
exact.  Act-order (GPTQ g_idx): the input columns are sorted by group once (a stable argsort of
g_idx), which makes the groups contiguous when every group has in/groups columns, as GPTQ writes;
x's columns get the same permutation on every call.  Other g_idx are left to the next kernel.
The codes come from `int4_dequant.unpack_codes` (byte ops, not the formats' float32 unpackers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..formats import QuantizedTensor, get_format
from .checks import cpu_weight_only
from .dispatch import Kernel
from .int4_dequant import act_order_perm, unpack_codes
from .workspace import row_chunks

INT4_FORMATS = frozenset({"gptq_int4", "awq_int4", "ct_int4"})
TORCH_GROUPS = (256, 128, 64, 32)
# Up to this many rows tinygemm beats exact dequantization + bf16 F.linear (crossover measured at
# 64-90 rows on this CPU for 1536x576 and 4096x4096, one thread).
MAX_ROWS = 64


@dataclass(frozen=True)
class Int4PackState:
    """What one layer keeps: about the packed size again, plus 1/8 byte per weight for group 32 scales."""

    packed: torch.Tensor  # uint8 [N, K/2], torch's CPU int4pack layout
    group: int  # the torch group size the scales are expanded to
    scales_zeros: torch.Tensor  # bf16 [K/group, N, 2]: scale, (8 - zero) * scale
    perm: torch.Tensor | None  # act-order: x's columns in group order


def group_size(q: QuantizedTensor) -> int:
    """Input columns per group (in_features for per-channel)."""
    size = get_format(q.format).normalize(q.spec).group_size
    return q.shape[1] if size == -1 else size


def torch_group(size: int) -> int | None:
    """The largest torch-supported group size that divides `size`, or None."""
    return next((g for g in TORCH_GROUPS if size % g == 0), None)


def _can_run(q: QuantizedTensor, x: torch.Tensor) -> tuple[bool, str]:
    why = cpu_weight_only(q, x, INT4_FORMATS, (torch.bfloat16,))
    if why:
        return False, why + ("" if q.format not in INT4_FORMATS else " (only bf16 is vectorized)")
    out_f = q.shape[0]
    if out_f % 16:
        return False, f"out_features {out_f} is not a multiple of 16"
    size = group_size(q)
    group = torch_group(size)
    if group is None:
        return False, f"group size {size} is not a multiple of 32"
    return True, f"torch int4pack, group {size}" + (f" run as {group}" if group != size else "")


def _prepare(q: QuantizedTensor) -> Int4PackState:
    perm = act_order_perm(q)
    parts = []  # (codes [rows, in] int32, scales [rows, G], zeros [rows, G]) per chunk of output rows
    for rows in row_chunks(*q.shape):
        u = unpack_codes(q, rows)
        if u.input_major:
            parts.append((u.codes.t().to(torch.int32), u.scales.t(), u.zeros.t()))
        else:
            parts.append((u.codes.to(torch.int32), u.scales, u.zeros))
    codes, scales, zeros = (torch.cat(p) for p in zip(*parts, strict=True))
    if perm is not None:
        codes = codes[:, perm]
    size = q.shape[1] // scales.shape[1]
    reps = size // torch_group(size)
    scales = scales.to(torch.float32).repeat_interleave(reps, dim=1)  # [out, in / group]
    zeros = zeros.to(torch.float32).repeat_interleave(reps, dim=1)
    scales_zeros = torch.stack((scales, (8 - zeros) * scales), dim=-1).transpose(0, 1)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.contiguous(), 1)
    return Int4PackState(packed, torch_group(size), scales_zeros.to(torch.bfloat16).contiguous(), perm)


def _run(x: torch.Tensor, q: QuantizedTensor, state: Int4PackState) -> torch.Tensor:
    if state.perm is not None:
        x = x.index_select(1, state.perm)
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x.contiguous(), state.packed, state.group, state.scales_zeros)


INT4_PACK = Kernel("int4pack (torch tinygemm)", _can_run, _run, _prepare, max_rows=MAX_ROWS)
