"""`torch.ops.mpq.linear` / `torch.ops.mpq.moe`: our compute as opaque custom ops for torch.compile.

Engines compile their model with torch.compile. Our kernel dispatch (data pointers, prepared-state
caches) and the per-expert loop (`nonzero`, data-dependent shapes: `GuardOnDataDependentSymNode`)
cannot be traced, so each engine layer registers its module here under an integer handle and calls
the op with the handle; the fake implementation tells the compiler only the output shape.
Handles are per process: each engine worker process registers its own layers while building its model.
"""

from __future__ import annotations

import torch
from torch import nn

_LAYERS: list[nn.Module] = []


def register_layer(module: nn.Module) -> int:
    """Keep `module` for the ops; returns its handle."""
    _LAYERS.append(module)
    return len(_LAYERS) - 1


def replace_layer(handle: int, module: nn.Module) -> None:
    _LAYERS[handle] = module


@torch.library.custom_op("mpq::linear", mutates_args=())
def linear(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    """`x @ W^T` for the registered layer (a FusedMixedLinear); no bias."""
    return _LAYERS[handle](x)


@linear.register_fake
def _linear_fake(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


@torch.library.custom_op("mpq::moe", mutates_args=())
def moe(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, handle: int) -> torch.Tensor:
    """Routed experts of the registered layer (a MixedPrecisionExperts): sum_k w_k * expert_k(x)."""
    return _LAYERS[handle](x, topk_ids, topk_weights)


@moe.register_fake
def _moe_fake(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, handle: int) -> torch.Tensor:
    return torch.empty_like(x)
