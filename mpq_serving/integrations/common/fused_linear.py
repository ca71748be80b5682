"""One engine linear layer computed from parts that may each have their own format.

Engines fuse q/k/v and gate/up into one matmul. When the plan gives those parts different formats
(say q fp8, k bf16, v mxfp4) there is no single packed tensor to hand to one kernel; re-quantizing
them into a common format would change the plan. So each part keeps its format and runs through
`layers.MixedPrecisionLinear` (its kernel chosen by `kernels.dispatch`), and the outputs are
concatenated in the engine's shard order — exact, at the cost of one `torch.cat`.  Consecutive parts
that share a spec and a row-wise layout (`formats.row_concat`: fp8 / int8 per-channel, MX, bf16) are
stacked into one weight first, so a uniform plan's q/k/v is one kernel call, as in the engine.
"""

from __future__ import annotations

import torch
from torch import nn

from ...formats import QuantizedTensor
from ...formats.row_concat import group_stackable
from ...layers.linear import MixedPrecisionLinear


class FusedMixedLinear(nn.Module):
    def __init__(self, parts: list[QuantizedTensor]):
        super().__init__()
        self.parts = nn.ModuleList(MixedPrecisionLinear(q) for q in group_stackable(parts))
        self.out_features = sum(p.out_features for p in self.parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.parts) == 1:
            return self.parts[0](x)
        return torch.cat([part(x) for part in self.parts], dim=-1)

    def extra_repr(self) -> str:
        return ", ".join(p.spec.describe() for p in self.parts)
