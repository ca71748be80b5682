"""`MpqFusedMoEMethod`: one SGLang `FusedMoE` layer whose experts may each have their own format.

SGLang allows one quantization method per MoE layer, so per-expert mixing lives inside this method.
Loading goes through `FusedMoE.weight_loader(param, tensor, name, shard_id, expert_id)` unchanged: it
maps the checkpoint's global expert id to this rank's local slot under expert parallelism (experts
owned by another rank are dropped there) and, for parameters flagged `is_gguf_weight`, keeps each
expert's tensor as it came in `param.expert_data_map[(local_id, shard_id)]` — the per-expert
storage SGLang made for GGUF, whose experts may also differ in type.  There is one such parameter per
checkpoint suffix (`w13_qweight`, `w2_weight_scale`...).  After loading, each local expert's tensors go
through `PartCollector`s (format checks, MoE tensor-parallel slicing: gate/up by rows, down by
columns) into `grouped_experts` (integrations/common): experts grouped by format, each group run
through mpq_serving.kernels' choice for that format.
"""

from __future__ import annotations

import torch
from sglang.srt.layers.quantization.base_config import FusedMoEMethodBase
from torch import nn

from ..common import ROLES, ModuleEntry, PartCollector, grouped_experts
from ..common.experts import activation

#: per role: FusedMoE's shard id, its stacked parameter prefix, and the tensor-parallel split.
_SHARD = {"gate": ("w1", "w13", "out"), "up": ("w3", "w13", "out"), "down": ("w2", "w2", "in")}


class MpqFusedMoEMethod(FusedMoEMethodBase):
    def __init__(self, prefix: str, experts: dict[int, dict[str, ModuleEntry]]):
        super().__init__()
        self.prefix = prefix
        self.experts = experts  # by global expert id

    def create_weights(self, layer: nn.Module, num_experts: int, hidden_size: int,
                       intermediate_size_per_partition: int, params_dtype: torch.dtype, **extra_weight_attrs) -> None:
        tp_size = getattr(layer, "moe_tp_size", 1) or 1
        gate = self.experts[0]["gate"]
        if gate.shape != (intermediate_size_per_partition * tp_size, hidden_size):
            raise ValueError(f"{self.prefix}: SGLang builds experts of {intermediate_size_per_partition * tp_size}"
                             f"x{hidden_size}, the packed checkpoint's {gate.name} is {gate.shape}")
        names: dict[str, torch.dtype] = {}
        for roles in self.experts.values():
            for role, entry in roles.items():
                for suffix, (_, dtype) in entry.layout().items():
                    names.setdefault(f"{_SHARD[role][1]}_{suffix}", dtype)
        for name, dtype in names.items():
            param = nn.Parameter(torch.empty(0, dtype=dtype), requires_grad=False)
            for key, value in extra_weight_attrs.items():  # FusedMoE's weight_loader among them
                setattr(param, key, value)
            param.is_gguf_weight = True  # FusedMoE keeps each expert's tensor whole, in expert_data_map
            param.data_container = []
            param.expert_data_map = {}
            layer.register_parameter(name, param)
        self.param_names = list(names)

    def create_moe_runner(self, layer: nn.Module, moe_runner_config) -> None:
        self.moe_runner_config = moe_runner_config
        activation(moe_runner_config.activation)  # refuse an unsupported activation at start-up
        if not moe_runner_config.is_gated or moe_runner_config.apply_router_weight_on_input:
            raise NotImplementedError(f"{self.prefix}: mpq experts are gated MLPs with router weights applied "
                                      "to their outputs")

    def get_moe_runner_backend(self, layer: nn.Module):
        return None  # a direct kernel: standard top-k output with local expert ids

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        params = {name: getattr(layer, name) for name in self.param_names}
        device = next(iter(params.values())).device
        local_to_global = {}
        for g in sorted(self.experts):
            local = layer._map_global_expert_id_to_local_expert_id(g)
            if local >= 0:
                local_to_global[local] = g
        tp_rank, tp_size = getattr(layer, "moe_tp_rank", 0) or 0, getattr(layer, "moe_tp_size", 1) or 1
        by_expert: dict[int, dict] = {}
        for local, g in sorted(local_to_global.items()):
            by_expert[local] = {}
            for role in ROLES:
                shard_id, stacked, split = _SHARD[role]
                collector = PartCollector({role: self.experts[g][role]}, split if tp_size > 1 else None, tp_rank, tp_size)
                for suffix in self.experts[g][role].layout():
                    tensor = params[f"{stacked}_{suffix}"].expert_data_map.get((local, shard_id))
                    if tensor is not None:
                        collector.add(role, suffix, tensor)
                by_expert[local][role] = collector.finish()[role]  # names any tensor that never arrived
        for name in self.param_names:
            delattr(layer, name)
        layer.mpq_experts = grouped_experts(by_expert, self.moe_runner_config.activation).to(device)

    def apply(self, layer: nn.Module, dispatch_output):
        from sglang.srt.layers.moe.token_dispatcher import StandardCombineInput

        topk_weights, topk_ids, _ = dispatch_output.topk_output
        out = layer.mpq_experts(dispatch_output.hidden_states, topk_ids, topk_weights)
        return StandardCombineInput(hidden_states=out)
