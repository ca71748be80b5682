"""MixedPrecisionExperts: the experts of one MoE layer, each expert in its own format.

Replaces transformers' fused `experts` module (same call: hidden_states, top_k_index, top_k_weights),
so the model's own router and shared expert run unchanged.  Experts are grouped by format once at
load time; each group's experts run through that format's kernel.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn

from ..kernels.triton.dispatch_kernel import grouped_experts_forward
from .linear import MixedPrecisionLinear


class MixedPrecisionExpert(nn.Module):
    """One gated MLP expert: down(act(gate(x)) * up(x))."""

    def __init__(self, gate_proj: MixedPrecisionLinear, up_proj: MixedPrecisionLinear, down_proj: MixedPrecisionLinear):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = gate_proj, up_proj, down_proj

    def forward(self, x: torch.Tensor, act_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return self.down_proj(act_fn(self.gate_proj(x)) * self.up_proj(x))

    @property
    def format_key(self) -> tuple[str, ...]:
        return tuple(p.spec.describe() for p in (self.gate_proj, self.up_proj, self.down_proj))


class MixedPrecisionExperts(nn.Module):
    def __init__(self, experts: list[MixedPrecisionExpert], act_fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.experts = nn.ModuleList(experts)
        self.num_experts = len(experts)
        self.act_fn = act_fn
        groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for i, e in enumerate(experts):
            groups[e.format_key].append(i)
        self.format_groups = dict(groups)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        # Where Triton runs (CUDA), one grouped launch per format group instead of the per-expert loop below.
        fused = grouped_experts_forward(self, hidden_states, top_k_index, top_k_weights)
        if fused is not None:
            return fused
        return self._per_expert(hidden_states, top_k_index, top_k_weights)

    def _per_expert(self, x: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        """One pass over the experts that received tokens, nothing for the others: the (token, expert)
        pairs are sorted by expert once, so each expert's rows are one contiguous slice."""
        out = torch.zeros_like(x)
        flat_experts = top_k_index.reshape(-1)
        # Under expert parallelism an engine marks experts held by another rank as -1: they are skipped.
        pairs = ((flat_experts >= 0) & (flat_experts < self.num_experts)).nonzero(as_tuple=True)[0]
        experts = flat_experts[pairs]
        order = experts.argsort(stable=True)
        pairs_sorted = pairs[order]
        tokens_sorted = pairs_sorted // top_k_index.shape[1]
        weights_sorted = top_k_weights.reshape(-1)[pairs_sorted]
        counts = torch.bincount(experts, minlength=self.num_experts)
        hit = counts.nonzero(as_tuple=True)[0]
        start = 0
        for e, count in zip(hit.tolist(), counts[hit].tolist(), strict=True):
            tokens = tokens_sorted[start : start + count]
            y = self.experts[e](x[tokens], self.act_fn)
            out.index_add_(0, tokens, (y * weights_sorted[start : start + count, None].to(y.dtype)).to(out.dtype))
            start += count
        return out

    def extra_repr(self) -> str:
        groups = ", ".join(f"{'/'.join(sorted(set(k)))}: {len(v)}" for k, v in self.format_groups.items())
        return f"num_experts={self.num_experts}, format groups: {groups}"
