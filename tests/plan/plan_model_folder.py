"""A tiny model folder with Llama / MoE weight names, written as safetensors (headers are what plans read)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN, INTER, EXPERTS = 256, 512, 4


def write_model(folder: Path, tensors: dict[str, torch.Tensor], config: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config or default_config(tensors)))
    return folder


def default_config(tensors: dict[str, torch.Tensor]) -> dict:
    """The config.json these tensors are a model of (shapes are checked against it)."""
    common = {"hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 4, "head_dim": HIDDEN // 4, "vocab_size": 64, "tie_word_embeddings": False}
    if any(".experts." in name for name in tensors):
        return {"model_type": "qwen3_moe", **common, "num_experts": EXPERTS, "num_experts_per_tok": 2,
                "moe_intermediate_size": INTER}
    return {"model_type": "llama", **common}


def tiny_tensors(moe: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    t: dict[str, torch.Tensor] = {"model.embed_tokens.weight": torch.randn(64, HIDDEN, generator=g)}
    for i in range(2):
        p = f"model.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            t[f"{p}.self_attn.{proj}.weight"] = torch.randn(HIDDEN, HIDDEN, generator=g) * 0.05
        t[f"{p}.input_layernorm.weight"] = torch.ones(HIDDEN)
        if moe:
            t[f"{p}.mlp.gate.weight"] = torch.randn(EXPERTS, HIDDEN, generator=g)
            for e in range(EXPERTS):
                t[f"{p}.mlp.experts.{e}.gate_proj.weight"] = torch.randn(INTER, HIDDEN, generator=g) * 0.05
                t[f"{p}.mlp.experts.{e}.up_proj.weight"] = torch.randn(INTER, HIDDEN, generator=g) * 0.05
                t[f"{p}.mlp.experts.{e}.down_proj.weight"] = torch.randn(HIDDEN, INTER, generator=g) * 0.05
        else:
            t[f"{p}.mlp.gate_proj.weight"] = torch.randn(INTER, HIDDEN, generator=g) * 0.05
            t[f"{p}.mlp.up_proj.weight"] = torch.randn(INTER, HIDDEN, generator=g) * 0.05
            t[f"{p}.mlp.down_proj.weight"] = torch.randn(HIDDEN, INTER, generator=g) * 0.05
    t["lm_head.weight"] = torch.randn(64, HIDDEN, generator=g)
    return {k: v.to(torch.bfloat16) for k, v in t.items()}


