"""`MpqMoEMethod`: one vLLM MoE layer whose experts may each have a different format.

vLLM stacks experts into `w13_*` / `w2_*` parameters and loads expert e's gate (w1), up (w3) and down
(w2) projections through the parameter's weight loader with (shard_id, expert_id). We keep one empty
placeholder per `w13_<suffix>` / `w2_<suffix>` and hand each tensor to a `PartCollector` keyed by
(local expert, role) — gate/up column-split and down row-split under tensor parallelism. After
loading, the experts become `layers.moe.MixedPrecisionExperts` (grouped by format, one kernel per
group), run through the `torch.ops.mpq.moe` custom op (fake impl: torch.compile-safe).
"""

from __future__ import annotations

import torch
from vllm.model_executor.layers.fused_moe import FusedMoEMethodBase

from ...errors import CheckpointError
from ..common import ModuleEntry, PartCollector, grouped_experts, register_layer
from ..common import ops as mpq_ops

_ROLE = {"w1": "gate", "w3": "up", "w2": "down"}


class MpqMoEMethod(FusedMoEMethodBase):
    def __init__(self, moe, experts: dict[int, dict[str, ModuleEntry]], prefix: str):
        super().__init__(moe)
        self.experts = experts
        self.prefix = prefix

    def create_weights(self, layer, num_experts: int, hidden_size: int, intermediate_size_per_partition: int,
                       params_dtype: torch.dtype, **extra_weight_attrs) -> None:
        parallel = self.moe.moe_parallel_config
        rank, size = (parallel.tp_rank, parallel.tp_size) if not parallel.use_ep else (0, 1)
        local = {}
        for global_id in sorted(self.experts):
            local_id = layer._map_global_expert_id_to_local_expert_id(global_id)
            if local_id != -1:
                local[global_id] = local_id
        if len(local) != num_experts:
            raise CheckpointError(f"{self.prefix}: vLLM places {num_experts} experts on this rank, the checkpoint "
                                  f"has {len(local)} of them (experts {sorted(self.experts)[:8]}...)")
        split = None if size == 1 else "out"
        up = PartCollector({(local[g], r): e for g, roles in self.experts.items() if g in local
                            for r, e in roles.items() if r != "down"}, split, rank, size)
        down = PartCollector({(local[g], "down"): roles["down"] for g, roles in self.experts.items() if g in local},
                             None if size == 1 else "in", rank, size)
        layer.mpq_collectors = (up, down)
        layer.mpq_handle = register_layer(torch.nn.Identity())

        def make_loader(suffix: str):
            def weight_loader(param, loaded_weight, weight_name=None, shard_id=None, expert_id=None,
                              return_success: bool = False):
                local_id = layer._map_global_expert_id_to_local_expert_id(int(expert_id))
                if local_id == -1:
                    return False if return_success else None
                role = _ROLE[shard_id]
                (down if role == "down" else up).add((local_id, role), suffix, loaded_weight)
                return True if return_success else None
            return weight_loader

        for stem, roles in (("w13", ("gate", "up")), ("w2", ("down",))):
            suffixes: dict[str, torch.dtype] = {}
            for expert in self.experts.values():
                for role in roles:
                    for suffix, (_, dtype) in expert[role].layout().items():
                        suffixes.setdefault(suffix, dtype)
            for suffix, dtype in suffixes.items():
                param = torch.nn.Parameter(torch.empty(0, dtype=dtype), requires_grad=False)
                param.weight_loader = make_loader(suffix)
                layer.register_parameter(f"{stem}_{suffix}", param)

    def process_weights_after_loading(self, layer) -> None:
        up, down = layer.mpq_collectors
        missing = up.missing() + down.missing()
        if missing:
            raise CheckpointError(f"tensors missing from the checkpoint: {', '.join(missing[:10])}")
        by_expert: dict[int, dict[str, object]] = {}
        for (e, role), q in {**up.finish(), **down.finish()}.items():
            by_expert.setdefault(e, {})[role] = q
        activation = getattr(layer, "activation", "silu")
        act_name = getattr(activation, "value", activation)
        act_name = str(act_name).lower().removesuffix("_and_mul")
        mpq_ops.replace_layer(layer.mpq_handle, grouped_experts(by_expert, act_name))
        del layer.mpq_collectors

    def get_fused_moe_quant_config(self, layer):
        return None

    def apply(self, layer, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
              shared_experts=None, shared_experts_input=None) -> torch.Tensor:
        if getattr(layer, "apply_router_weight_on_input", False):
            raise NotImplementedError("mpq MoE: apply_router_weight_on_input models are not supported")
        expert_map = getattr(layer, "expert_map", None)
        if expert_map is not None:
            topk_ids = expert_map[topk_ids]  # global -> local ids; -1 for experts on other ranks
        return torch.ops.mpq.moe(x, topk_weights, topk_ids.to(torch.int64), layer.mpq_handle)
