"""Stack weights of one spec along the output dimension, where every stored tensor is laid out per output row.

Engines fuse q/k/v and gate/up into one layer.  When the parts share a spec and each of their stored
tensors has one row per output feature (fp8 and int8 per-channel, mxfp8, mxfp4, bf16: codes and scales
both row-major), stacking the tensors row-wise is the stored form of the fused weight, bit for bit, so
one kernel call replaces one per part plus a concatenation.  Layouts with anything else along dim 0
(GPTQ's packed rows of K, AWQ / compressed-tensors int4's packed zero points, 128x128 block scales,
per-tensor scalars) are left as parts: the check is structural, so no format has to declare it.
"""

from __future__ import annotations

import torch

from .spec import QuantizedTensor


def stackable_rows(parts: list[QuantizedTensor]) -> bool:
    """Same spec, same tensor names, in_features, trailing shapes and dtypes, and every tensor with one row per output."""
    first = parts[0]
    for q in parts:
        if q.spec != first.spec or q.shape[1] != first.shape[1] or q.tensors.keys() != first.tensors.keys():
            return False
        for name, t in q.tensors.items():
            ref = first.tensors[name]
            if t.dim() == 0 or t.shape[0] != q.shape[0] or t.shape[1:] != ref.shape[1:] or t.dtype != ref.dtype:
                return False
            if t.device != ref.device:
                return False
    return True


def stack_rows(parts: list[QuantizedTensor]) -> QuantizedTensor:
    """The fused weight of `parts` (checked by `stackable_rows`), rows in the parts' order."""
    if not stackable_rows(parts):
        raise ValueError(f"cannot stack {', '.join(q.spec.describe() for q in parts)} row-wise")
    tensors = {}
    for name, ref in parts[0].tensors.items():
        bytes_view = [q.tensors[name].contiguous().view(torch.uint8) for q in parts]  # fp8 / e8m0 included
        tensors[name] = torch.cat(bytes_view, dim=0).view(ref.dtype)
    return QuantizedTensor(parts[0].spec, (sum(q.shape[0] for q in parts), parts[0].shape[1]), tensors)


def group_stackable(parts: list[QuantizedTensor]) -> list[QuantizedTensor]:
    """Runs of consecutive stackable parts stacked into one, others kept: the output order is unchanged."""
    groups: list[list[QuantizedTensor]] = []
    for q in parts:
        if groups and stackable_rows([*groups[-1], q]):
            groups[-1].append(q)
        else:
            groups.append([q])
    return [g[0] if len(g) == 1 else stack_rows(g) for g in groups]
