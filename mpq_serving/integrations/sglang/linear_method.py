"""`MpqLinearMethod`: one SGLang linear layer whose fused parts (q / k / v, gate / up) may each have a format.

Weights arrive through SGLang's usual protocol: the model's `load_weights` calls
`param.weight_loader(param, tensor[, shard_id])` per checkpoint tensor, with shard ids `q`/`k`/`v`
(QKVParallelLinear), `0`/`1` (MergedColumnParallelLinear) or none.  Each checkpoint suffix
(`qweight`, `weight_scale`...) is one (empty) parameter of the layer; its loader hands the tensor
to a `PartCollector` (integrations/common), which checks it against the part's format layout and
keeps this tensor-parallel rank's slice.  After loading, the parts become a `FusedMixedLinear`.
"""

from __future__ import annotations

import torch
from sglang.srt.layers.quantization.base_config import LinearMethodBase
from torch import nn

from ..common import FusedMixedLinear, ModuleEntry, PartCollector

_QKV = {"q": 0, "k": 1, "v": 2}


class MpqLinearMethod(LinearMethodBase):
    def __init__(self, prefix: str, parts: list[ModuleEntry]):
        self.prefix = prefix
        self.parts = parts

    def create_weights(self, layer: nn.Module, input_size_per_partition: int, output_partition_sizes: list[int],
                       input_size: int, output_size: int, params_dtype: torch.dtype, **extra_weight_attrs) -> None:
        split, rank, size = _tensor_parallel_split(layer)
        per_rank = [(o // size, i) if split == "out" else (o, i // size) if split == "in" else (o, i)
                    for o, i in (p.shape for p in self.parts)]
        asked = [(o, input_size_per_partition) for o in output_partition_sizes]
        if asked != per_rank:
            raise NotImplementedError(
                f"{self.prefix}: SGLang asks for parts {asked} on this rank, splitting "
                f"{', '.join(p.name for p in self.parts)} ({[p.shape for p in self.parts]}) {size} ways gives "
                f"{per_rank}; replicated KV heads under tensor parallelism are not supported by mpq's method")
        layer.mpq_collector = PartCollector(dict(enumerate(self.parts)), split, rank, size)
        suffixes: dict[str, torch.dtype] = {}
        for part in self.parts:
            for suffix, (_, dtype) in part.layout().items():
                suffixes.setdefault(suffix, dtype)
        for suffix, dtype in suffixes.items():
            param = nn.Parameter(torch.empty(0, dtype=dtype), requires_grad=False)  # a name to load into
            param.mpq_suffix = suffix
            param.weight_loader = _loader(layer)
            layer.register_parameter(suffix, param)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        device = next((p.device for p in layer.parameters(recurse=False)), torch.device("cpu"))
        parts = layer.mpq_collector.finish()
        for name in [n for n, p in layer.named_parameters(recurse=False) if hasattr(p, "mpq_suffix")]:
            delattr(layer, name)
        del layer.mpq_collector
        layer.mpq_linear = FusedMixedLinear([parts[i] for i in range(len(self.parts))]).to(device)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        y = layer.mpq_linear(x)
        return y if bias is None else y + bias.to(y.dtype)


def _loader(layer: nn.Module):
    def weight_loader(param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: str | int | None = None) -> None:
        index = 0 if shard_id is None else _QKV[shard_id] if isinstance(shard_id, str) else int(shard_id)
        layer.mpq_collector.add(index, param.mpq_suffix, loaded_weight)

    return weight_loader


def _tensor_parallel_split(layer: nn.Module) -> tuple[str | None, int, int]:
    """("out" | "in" | None, rank, size): how SGLang splits this layer across tensor-parallel ranks."""
    from sglang.srt.distributed.utils import get_group_rank_size
    from sglang.srt.layers.linear import ColumnParallelLinear, RowParallelLinear

    rank, size = get_group_rank_size(getattr(layer, "tp_group", None))
    if size == 1:
        return None, 0, 1
    if isinstance(layer, ColumnParallelLinear):
        return "out", rank, size
    if isinstance(layer, RowParallelLinear):
        return "in", rank, size
    return None, 0, 1
