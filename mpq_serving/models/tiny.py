"""Tiny random models, one per supported architecture, for structure tests (loaders, plans, engines).

Sizes are chosen so every linear's in-features (hidden 128, attention 4 x 32, MLP 256, expert MLP 128)
is a multiple of 128: group-128 formats apply everywhere. The vocabulary is SmolLM2's (49152) so its
tokenizer works with every tiny model; it is copied in when the SmolLM2 folder has been prepared.
Weights are random: outputs are meaningless, only shapes, names and code paths are real.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    PretrainedConfig,
    Qwen2Config,
    Qwen2MoeConfig,
    Qwen3Config,
    Qwen3MoeConfig,
)

from ..errors import MPQError
from . import TINY_ARCHS, smollm2
from ..outputs import output_folder
from .hf_folder import MODEL_KIND, check_per_expert_names, copy_tokenizer

_COMMON = {
    "vocab_size": 49152, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "max_position_embeddings": 2048,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
}
_MOE = {"num_experts_per_tok": 2, "moe_intermediate_size": 128}

# arch name -> config; MoE sizes follow each family's conventions (Qwen2-MoE has a shared expert).
TINY_CONFIGS: dict[str, PretrainedConfig] = {
    "llama": LlamaConfig(**_COMMON),
    "mistral": MistralConfig(**_COMMON, sliding_window=None),
    "qwen2": Qwen2Config(**_COMMON, use_sliding_window=False),
    "qwen3": Qwen3Config(**_COMMON),
    "mixtral": MixtralConfig(**{**_COMMON, "intermediate_size": 128}, num_local_experts=8, num_experts_per_tok=2),
    "qwen3-moe": Qwen3MoeConfig(**_COMMON, **_MOE, num_experts=8, norm_topk_prob=True),
    "qwen2-moe": Qwen2MoeConfig(**_COMMON, **_MOE, num_experts=4, shared_expert_intermediate_size=256),
}
assert tuple(TINY_CONFIGS) == TINY_ARCHS, "keep mpq_serving.models.TINY_ARCHS in step with TINY_CONFIGS"
MOE_ARCHS = ("mixtral", "qwen3-moe", "qwen2-moe")


def build_tiny(arch: str, out_dir: Path, seed: int = 0, overwrite: bool = False) -> Path:
    """Save a random bf16 model of `arch` (see TINY_ARCHS) as an HF folder with per-expert tensor names."""
    if arch not in TINY_CONFIGS:
        raise MPQError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(TINY_ARCHS)}")
    config = copy.deepcopy(TINY_CONFIGS[arch])
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    with output_folder(Path(out_dir), MODEL_KIND, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        check_per_expert_names(tmp)
        if smollm2.is_complete(smollm2.default_dir()):
            copy_tokenizer(smollm2.default_dir(), tmp)
    return Path(out_dir)
