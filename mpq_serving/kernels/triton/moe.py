"""Grouped MoE in Triton: each expert's tokens run through that expert's own format, a few launches per layer.

Experts are grouped by their (gate, up, down) formats; each group's weights are stacked once into one
operand per projection (`operands.stack_experts`).  Per forward, for every group: the (token, slot)
pairs routed to the group's experts are sorted by expert and padded to BLOCK_M rows per expert
(`align_pairs`, torch ops on the device, no host sync, like vLLM's `moe_align_block_size`), and one
launch per projection runs every block of rows against its expert's weight.  So a layer costs
3 launches per format group plus a handful of element-wise torch ops (activation, weighted sum) for
any number of experts, and nothing loops over experts in Python.

The grid is sized for the worst case (every expert of the group padded), and blocks past the last
expert's rows return at once, so the launch never waits on the routing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ...errors import FormatError
from ...formats import QuantizedTensor
from .configs import moe_configs
from .dequant import weight_tile
from .operands import WeightOperand, stack_experts
from .runtime import interpreting


@triton.jit
def _grouped_dequant_gemm(
    x, w0, w1, w2, w3, out, sorted_ids, block_expert,
    P, N, K, ROWS_PER_TOKEN,
    stride_xm, stride_xk, stride_om, stride_on,
    e0, e1, e2, e3, s0k, s0n, s1g, s1n, s2g, s2n,
    NUM_EXPERTS: tl.constexpr, FMT: tl.constexpr, GROUP: tl.constexpr, HAS_GIDX: tl.constexpr,
    COL_SCALE: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[pair] = x[pair // ROWS_PER_TOKEN] @ W_e^T for the BLOCK_M sorted pairs of one expert e."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(block_expert + pid_m)
    if e >= NUM_EXPERTS:
        return
    rows = tl.load(sorted_ids + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    rmask = rows[:, None] < P
    tokens = rows // ROWS_PER_TOKEN
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n[None, :] < N
    w0 += e * e0
    w1 += e * e1
    w2 += e * e2
    w3 += e * e3
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(x + tokens[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=rmask & (offs_k[None, :] < K), other=0.0)
        b = weight_tile(w0, w1, w2, w3, k0, offs_k[:, None], offs_n[None, :], offs_k[:, None] < K, nmask,
                        s0k, s0n, s1g, s1n, s2g, s2n, FMT, GROUP, HAS_GIDX, BLOCK_K).to(a.dtype)
        if DOT_FP32:
            acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(a, b)
    if COL_SCALE:
        acc = acc * tl.load(w1 + offs_n[None, :] * s1n, mask=nmask, other=0.0)
    tl.store(out + rows[:, None] * stride_om + offs_n[None, :] * stride_on, acc.to(out.dtype.element_ty),
             mask=rmask & nmask)


_grouped_kernel = triton.autotune(
    configs=moe_configs(), key=["N", "K", "FMT", "GROUP", "HAS_GIDX", "NUM_EXPERTS", "BLOCK_M"]
)(_grouped_dequant_gemm)


@dataclass(frozen=True)
class ExpertGroup:
    """Experts (global ids) sharing one (gate, up, down) format triple, with their stacked weights."""

    experts: torch.Tensor  # int64 [E_g]
    gate: WeightOperand
    up: WeightOperand
    down: WeightOperand

    @property
    def nbytes(self) -> int:
        return self.gate.nbytes + self.up.nbytes + self.down.nbytes


@dataclass(frozen=True)
class GroupedExperts:
    """A whole MoE layer's experts for the grouped kernel: the groups and a global → (group, local) map."""

    groups: tuple[ExpertGroup, ...]
    group_of: torch.Tensor  # int64 [E]: group index of each expert
    local_of: torch.Tensor  # int64 [E]: index within its group's stack
    intermediate: int
    hidden: int


def build_grouped_experts(experts: Sequence[tuple[QuantizedTensor, QuantizedTensor, QuantizedTensor]]) -> GroupedExperts:
    """Stack (gate, up, down) packed weights per format triple; experts keep their global index."""
    if not experts:
        raise FormatError("an MoE layer needs at least one expert")
    keys: dict[tuple[str, ...], list[int]] = {}
    for i, triple in enumerate(experts):
        keys.setdefault(tuple(q.spec.describe() for q in triple), []).append(i)
    inter, hidden = experts[0][0].shape
    device = next(iter(experts[0][0].tensors.values())).device
    group_of = torch.empty(len(experts), dtype=torch.int64)
    local_of = torch.empty(len(experts), dtype=torch.int64)
    groups = []
    for g, members in enumerate(keys.values()):
        for j, e in enumerate(members):
            group_of[e], local_of[e] = g, j
        gate, up, down = (stack_experts([experts[e][p] for e in members]) for p in range(3))
        if (gate.n, gate.k, up.n, up.k, down.n, down.k) != (inter, hidden, inter, hidden, hidden, inter):
            raise FormatError(
                f"experts {members}: gate/up must be [{inter}, {hidden}] and down [{hidden}, {inter}] like expert 0"
            )
        groups.append(ExpertGroup(torch.tensor(members, dtype=torch.int64, device=device), gate, up, down))
    return GroupedExperts(tuple(groups), group_of.to(device), local_of.to(device), inter, hidden)


def align_pairs(local: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort pairs by expert and pad each expert's run to a multiple of block_m.

    `local` int64 [P]: each pair's expert within the group, `num_experts` for pairs of other groups.
    Returns sorted_ids int32 [capacity] (pair index, P for padding) and block_expert int32
    [capacity / block_m] (the expert of each block, num_experts for blocks past the last one).
    """
    p = local.numel()
    # scatter_add, not bincount: CUDA's bincount reads the max back to the host to size its output
    counts = torch.zeros(num_experts + 1, dtype=torch.int64, device=local.device)
    counts = counts.scatter_add_(0, local, torch.ones_like(local))[:num_experts]
    padded = (counts + block_m - 1) // block_m * block_m
    ends = torch.cumsum(padded, 0)
    order = torch.argsort(local, stable=True)
    sorted_local = local[order]
    mine = sorted_local < num_experts
    first_of = torch.cumsum(counts, 0) - counts  # first sorted position of each expert's pairs
    e = sorted_local.clamp(max=num_experts - 1)
    position = (ends - padded)[e] + torch.arange(p, device=local.device) - first_of[e]
    capacity = triton.cdiv(p + num_experts * (block_m - 1), block_m) * block_m
    sorted_ids = torch.full((capacity + 1,), p, dtype=torch.int32, device=local.device)
    sorted_ids.scatter_(0, torch.where(mine, position, capacity), order.to(torch.int32))  # slot `capacity`: discard
    block_starts = torch.arange(0, capacity, block_m, device=local.device)
    block_expert = torch.searchsorted(ends, block_starts, right=True).to(torch.int32)
    return sorted_ids[:capacity], block_expert


def _launch(x: torch.Tensor, op: WeightOperand, out: torch.Tensor, sorted_ids: torch.Tensor,
            block_expert: torch.Tensor, rows_per_token: int, block_m: int) -> None:
    grid = lambda meta: (block_expert.numel(), triton.cdiv(op.n, meta["BLOCK_N"]))  # noqa: E731
    _grouped_kernel[grid](
        x, op.w0, op.w1, op.w2, op.w3, out, sorted_ids, block_expert,
        out.shape[0], op.n, op.k, rows_per_token,
        x.stride(0), x.stride(1), out.stride(0), out.stride(1),
        op.e0, op.e1, op.e2, op.e3, op.s0k, op.s0n, op.s1g, op.s1n, op.s2g, op.s2n,
        NUM_EXPERTS=op.experts, FMT=int(op.fmt), GROUP=op.group, HAS_GIDX=op.has_gidx, COL_SCALE=op.col_scale,
        DOT_FP32=interpreting() or x.dtype == torch.float32, BLOCK_M=block_m,
    )


def block_m_for(pairs: int, num_experts: int) -> int:
    """Rows per block: 16 (tl.dot's minimum) unless experts see many tokens each (prefill)."""
    return 16 if pairs <= 16 * num_experts else 64


def grouped_moe(
    x: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    experts: GroupedExperts,
    act_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    fill: float | None = None,
) -> torch.Tensor:
    """sum_j w[t, j] * down_e(act(gate_e(x_t)) * up_e(x_t)) with e = top_k_index[t, j], per token t.

    Ids outside 0..E-1 (-1 for experts on another rank under expert parallelism) contribute nothing.

    `fill` pre-fills every intermediate buffer the kernels write (tests pass NaN, so a row the kernels
    skip shows up in the output).
    """
    t, top_k = top_k_index.shape
    if x.dim() != 2 or x.shape != (t, experts.hidden):
        raise FormatError(f"MoE input {tuple(x.shape)} does not match {t} tokens of hidden size {experts.hidden}")
    pairs = t * top_k

    def buffer(cols: int) -> torch.Tensor:
        buf = torch.empty(pairs, cols, dtype=x.dtype, device=x.device)
        return buf if fill is None else buf.fill_(fill)

    gate_out, up_out, down_out = buffer(experts.intermediate), buffer(experts.intermediate), buffer(experts.hidden)
    flat = top_k_index.reshape(-1).to(torch.int64)
    routed = (flat >= 0) & (flat < experts.group_of.numel())  # -1: an expert on another rank (expert parallel)
    safe = torch.where(routed, flat, 0)
    group_of = torch.where(routed, experts.group_of[safe], -1)
    local_of = experts.local_of[safe]
    plans = []
    for g, group in enumerate(experts.groups):
        num = group.gate.experts
        block_m = block_m_for(pairs, num)
        local = torch.where(group_of == g, local_of, num)
        sorted_ids, block_expert = align_pairs(local, num, block_m)
        plans.append((group, sorted_ids, block_expert, block_m))
        _launch(x, group.gate, gate_out, sorted_ids, block_expert, top_k, block_m)
        _launch(x, group.up, up_out, sorted_ids, block_expert, top_k, block_m)
    hidden = act_fn(gate_out) * up_out
    for group, sorted_ids, block_expert, block_m in plans:
        _launch(hidden, group.down, down_out, sorted_ids, block_expert, 1, block_m)
    weighted = down_out.view(t, top_k, -1) * top_k_weights.to(down_out.dtype).unsqueeze(-1)
    weighted = torch.where(routed.view(t, top_k, 1), weighted, 0)  # rows no kernel wrote count as nothing
    return weighted.sum(dim=1)
