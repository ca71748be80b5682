"""Engine layer prefix → the checkpoint modules it is built from.

Engines fuse q/k/v into `qkv_proj` and gate/up into `gate_up_proj` (their `packed_modules_mapping`
says which), and stack an MoE layer's experts into `experts.w13_*` / `experts.w2_*`. The packed
checkpoint keeps the unfused Hugging Face names, one module per expert projection.
"""

from __future__ import annotations

import re

from ...errors import CheckpointError
from .config import ModuleEntry, MpqCheckpointConfig

# Per-expert projection names in Hugging Face checkpoints: Qwen/DeepSeek style and Mixtral style.
_ROLE_OF = {"gate_proj": "gate", "w1": "gate", "up_proj": "up", "w3": "up", "down_proj": "down", "w2": "down"}


def linear_parts(config: MpqCheckpointConfig, prefix: str,
                 packed_modules_mapping: dict[str, list[str]]) -> list[ModuleEntry] | None:
    """The checkpoint modules of an engine linear layer, in the engine's shard order.

    None when the checkpoint stores none of them in `modules` (the layer is plain bf16, e.g. lm_head).
    A fused layer with some parts listed and others not is an error naming the missing part.
    """
    head, _, leaf = prefix.rpartition(".")
    names = [f"{head}.{p}" if head else p for p in packed_modules_mapping.get(leaf, [])] or [prefix]
    entries = [config.get(n) for n in names]
    if all(e is None for e in entries):
        return None
    missing = [n for n, e in zip(names, entries) if e is None]
    if missing:
        raise CheckpointError(f"{prefix}: quantization_config.modules lists some parts of this fused layer "
                              f"but not {', '.join(missing)}")
    return entries


def moe_experts(config: MpqCheckpointConfig, prefix: str) -> dict[int, dict[str, ModuleEntry]]:
    """`{expert id: {"gate"|"up"|"down": entry}}` for the MoE layer at `prefix` (`....experts`).

    Empty when the checkpoint has no quantized experts there. Every expert must have all three roles.
    """
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.(" + "|".join(_ROLE_OF) + r")$")
    experts: dict[int, dict[str, ModuleEntry]] = {}
    for name, entry in config.modules.items():
        m = pattern.match(name)
        if m:
            experts.setdefault(int(m[1]), {})[_ROLE_OF[m[2]]] = entry
    incomplete = [e for e, roles in sorted(experts.items()) if set(roles) != {"gate", "up", "down"}]
    if incomplete:
        raise CheckpointError(f"{prefix}: experts {incomplete[:8]} lack a gate, up or down projection "
                              "in quantization_config.modules")
    return experts
