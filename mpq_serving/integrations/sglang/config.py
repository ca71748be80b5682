"""`MpqConfig`: SGLang's view of a packed mixed checkpoint (`quantization_config.quant_method: "mpq"`).

Per layer it returns SGLang's own method where SGLang has a kernel for that layer's format on this
device, and ours otherwise (see `choose_linear_method`).  MoE layers get `MpqFusedMoEMethod`: one
method per layer whose experts may each have a different format.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from sglang.srt.layers.quantization.base_config import (
    QuantizationConfig,
    QuantizeMethodBase,
)

from ...packed_config import QUANT_METHOD
from ..common import ModuleEntry, MpqCheckpointConfig, linear_parts, moe_experts

logger = logging.getLogger(__name__)

#: SGLang's fused layers (its models also declare this as `packed_modules_mapping`).
DEFAULT_PACKED_MODULES = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
_FLOAT = {"bf16", "fp16"}


class MpqConfig(QuantizationConfig):
    def __init__(self, checkpoint: MpqCheckpointConfig):
        super().__init__()
        self.checkpoint = checkpoint

    @classmethod
    def get_name(cls) -> str:
        return QUANT_METHOD

    @classmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return 0  # our kernels run anywhere; SGLang's are only chosen where they run

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []  # everything is in config.json's quantization_config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "MpqConfig":
        return cls(MpqCheckpointConfig.from_quantization_config(config))

    def get_scaled_act_names(self) -> list[str]:
        return []

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> QuantizeMethodBase | None:
        from sglang.srt.layers.linear import LinearBase
        from sglang.srt.layers.moe.fused_moe_triton import FusedMoE
        from sglang.srt.layers.quantization.unquant import UnquantizedLinearMethod

        if isinstance(layer, FusedMoE):
            from .moe_method import MpqFusedMoEMethod

            experts = moe_experts(self.checkpoint, prefix)
            if len(experts) != layer.num_experts:
                raise ValueError(f"{prefix}: the packed checkpoint lists {len(experts)} experts in "
                                 f"quantization_config.modules, the model has {layer.num_experts}")
            return MpqFusedMoEMethod(prefix, experts)
        if isinstance(layer, LinearBase):
            parts = linear_parts(self.checkpoint, prefix, {**DEFAULT_PACKED_MODULES, **self.packed_modules_mapping})
            if parts is None:  # not in the plan (e.g. an MoE router): stored unquantized
                return UnquantizedLinearMethod()
            return choose_linear_method(prefix, parts)
        entry = self.checkpoint.get(prefix)
        if entry is not None and entry.format not in _FLOAT:  # e.g. a plan that quantizes lm_head
            raise ValueError(f"{prefix}: the plan gives it {entry.spec.describe()}, but SGLang builds it as a "
                             f"{type(layer).__name__}; mpq's SGLang plugin quantizes linear layers and MoE experts "
                             f"only: keep {prefix} in bf16")
        return None  # embeddings, lm_head: unquantized (the plan protects them)


def choose_linear_method(prefix: str, parts: list[ModuleEntry]) -> QuantizeMethodBase:
    """SGLang's own method where it has a kernel for the layer's format on this device, else ours.

    SGLang's unquantized method serves layers whose parts are all bf16 (or all fp16), on every device.
    SGLang's quantized CPU methods need Intel AMX; its CUDA methods (GPTQ / AWQ Marlin, FP8) would suit
    fused layers with one format across all parts, but are not chosen yet: no GPU with SGLang was
    available to test them.  Every quantized layer therefore gets `MpqLinearMethod`, whose per-part
    kernels mpq_serving.kernels picks (Triton on CUDA, torch packed / dequantizing kernels on CPU).
    """
    from sglang.srt.layers.quantization.unquant import UnquantizedLinearMethod

    from .linear_method import MpqLinearMethod

    formats = {p.format for p in parts}
    if len(formats) == 1 and formats <= _FLOAT:
        return UnquantizedLinearMethod()
    logger.debug("%s: mpq's method for %s", prefix, ", ".join(p.spec.describe() for p in parts))
    return MpqLinearMethod(prefix, parts)
