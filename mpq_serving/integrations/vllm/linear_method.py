"""`MpqLinearMethod`: one vLLM linear layer (possibly fused q/k/v or gate/up) in any mix of formats.

Parameters: one empty placeholder per stored tensor name (`qkv_proj.weight_scale`, ...) so vLLM's
loader finds a parameter for every checkpoint tensor; their weight loader hands each tensor, with
its shard id (q/k/v, 0/1), to a `PartCollector`, which checks it and keeps this rank's
tensor-parallel slice. After loading, the parts become a `FusedMixedLinear`, run through the
`torch.ops.mpq.linear` custom op so torch.compile treats it as one opaque call.
"""

from __future__ import annotations

import torch
from vllm.model_executor.layers.linear import (
    ColumnParallelLinear,
    LinearMethodBase,
    QKVParallelLinear,
    RowParallelLinear,
)

from ...errors import CheckpointError
from ..common import FusedMixedLinear, ModuleEntry, PartCollector, register_layer
from ..common import ops as mpq_ops

_QKV = {"q": 0, "k": 1, "v": 2}


def layer_partition(layer: torch.nn.Module) -> tuple[str | None, int, int]:
    """(split dim, tp rank, tp size) of a vLLM linear: column parallel splits out, row parallel in."""
    size = int(getattr(layer, "tp_size", 1) or 1)
    rank = int(getattr(layer, "tp_rank", 0) or 0)
    if size == 1:
        return None, 0, 1
    if isinstance(layer, RowParallelLinear):
        return "in", rank, size
    if isinstance(layer, ColumnParallelLinear):
        return "out", rank, size
    return None, 0, 1  # ReplicatedLinear


def _part_partition(layer: torch.nn.Module, index: int, split: str | None, rank: int, size: int) -> tuple[str | None, int, int]:
    """K/V of a QKV layer are replicated when there are fewer KV heads than ranks."""
    if split == "out" and isinstance(layer, QKVParallelLinear) and index > 0:
        replicas = int(getattr(layer, "num_kv_head_replicas", 1) or 1)
        return split, rank // replicas, size // replicas
    return split, rank, size


class MpqLinearMethod(LinearMethodBase):
    def __init__(self, parts: list[ModuleEntry], prefix: str):
        self.parts = parts
        self.prefix = prefix

    def create_weights(self, layer: torch.nn.Module, input_size_per_partition: int, output_partition_sizes: list[int],
                       input_size: int, output_size: int, params_dtype: torch.dtype, **extra_weight_attrs) -> None:
        if len(output_partition_sizes) != len(self.parts):
            raise CheckpointError(f"{self.prefix}: vLLM fuses {len(output_partition_sizes)} parts here, "
                                  f"the checkpoint has {[p.name for p in self.parts]}")
        split, rank, size = layer_partition(layer)
        collectors = []
        for i, entry in enumerate(self.parts):
            part_split, part_rank, part_size = _part_partition(layer, i, split, rank, size)
            collectors.append(PartCollector({i: entry}, part_split, part_rank, part_size))
            out = entry.shape[0] // part_size if part_split == "out" else entry.shape[0]
            if out != output_partition_sizes[i]:
                raise CheckpointError(f"{entry.name}: {entry.shape[0]} output features in quantization_config, "
                                      f"vLLM's layer expects {output_partition_sizes[i]} per rank")
        layer.mpq_collectors = collectors
        layer.mpq_out_features = sum(output_partition_sizes)
        layer.mpq_handle = register_layer(torch.nn.Identity())  # replaced once the weights are in

        def weight_loader(param: torch.nn.Parameter, loaded_weight: torch.Tensor, loaded_shard_id=None) -> None:
            shard = loaded_shard_id if loaded_shard_id is not None else getattr(loaded_weight, "shard_id", None)
            index = _QKV.get(shard, shard) if shard is not None else 0
            if not isinstance(index, int) or not 0 <= index < len(collectors):
                raise CheckpointError(f"{self.prefix}.{param.mpq_suffix}: unexpected shard {shard!r}")
            collectors[index].add(index, param.mpq_suffix, loaded_weight)

        suffixes: dict[str, torch.dtype] = {}
        for entry in self.parts:
            for suffix, (_, dtype) in entry.layout().items():
                suffixes.setdefault(suffix, dtype)
        for suffix, dtype in suffixes.items():
            param = torch.nn.Parameter(torch.empty(0, dtype=dtype), requires_grad=False)
            param.mpq_suffix = suffix
            param.weight_loader = weight_loader
            layer.register_parameter(suffix, param)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        missing = [name for c in layer.mpq_collectors for name in c.missing()]
        if missing:
            raise CheckpointError(f"tensors missing from the checkpoint: {', '.join(missing[:10])}")
        parts = [c.finish()[i] for i, c in enumerate(layer.mpq_collectors)]
        mpq_ops.replace_layer(layer.mpq_handle, FusedMixedLinear(parts))
        del layer.mpq_collectors

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        y = torch.ops.mpq.linear(x, layer.mpq_handle, layer.mpq_out_features)
        return y if bias is None else y + bias
