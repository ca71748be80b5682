"""Tiny random transformers models saved as HF folders, and the "dequantize everything" reference."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MixtralConfig, Qwen2MoeConfig, Qwen3MoeConfig

from mpq_serving.formats import get_format
from mpq_serving.loaders.true_mixed import TrueMixedPrecisionLoader

COMMON = dict(vocab_size=96, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=256, tie_word_embeddings=False)


def config_for(arch: str):
    if arch == "llama":
        return LlamaConfig(intermediate_size=256, **COMMON)
    if arch == "mixtral":
        return MixtralConfig(intermediate_size=256, num_local_experts=4, num_experts_per_tok=2, **COMMON)
    if arch == "qwen3_moe":
        return Qwen3MoeConfig(moe_intermediate_size=256, intermediate_size=256, num_experts=4, num_experts_per_tok=2,
                              head_dim=32, norm_topk_prob=True, **COMMON)
    if arch == "qwen2_moe":
        return Qwen2MoeConfig(moe_intermediate_size=256, intermediate_size=256, shared_expert_intermediate_size=256,
                              num_experts=4, num_experts_per_tok=2, **COMMON)
    if arch in DENSE_ARCHS:
        from transformers import AutoConfig

        return AutoConfig.for_model(arch, intermediate_size=256, **{**COMMON, **DENSE_ARCHS[arch]})
    raise ValueError(arch)


# Decoder-only families besides Llama, each with what sets it apart (norm conventions, fused projections,
# embedding scale, logit soft-capping, sliding windows); the extra keys keep their head_dim at 32.
DENSE_ARCHS = {
    "gemma3_text": dict(head_dim=32, sliding_window=16, query_pre_attn_scalar=32),  # (1 + w) norms, embed_scale
    "gemma2": dict(head_dim=32, sliding_window=16, query_pre_attn_scalar=32),
    "phi3": dict(pad_token_id=0),  # fused qkv_proj and gate_up_proj
    "granite": dict(embedding_multiplier=2.0, residual_multiplier=0.5, logits_scaling=4.0),
    "olmo2": dict(),  # norms after attention / MLP, q/k norms
    "cohere": dict(use_qk_norm=False),  # LayerNorm with bias-free weight, parallel attention + MLP
    "qwen2": dict(),
    "qwen3": dict(head_dim=32),
    "mistral": dict(head_dim=32),
}


def save_tiny(arch: str, folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config_for(arch), dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.08)  # bigger than the default init so logits are not flat
    model.save_pretrained(folder)
    return folder


_EXPERT = re.compile(r"^(.+\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj|w1|w3|w2)$")


def dequantized_reference(folder: Path, plan) -> torch.nn.Module:
    """transformers' own fp32 model with each linear weight replaced by its format's dequantization."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    params = dict(model.named_parameters())
    loader = TrueMixedPrecisionLoader(plan, folder)
    with torch.no_grad():
        for name, q in loader.iter_modules(progress=False):
            w = get_format(q.format).dequantize(q)
            name = name.replace(".block_sparse_moe.", ".mlp.")
            m = _EXPERT.match(name)
            if not m:
                params[f"{name}.weight"].copy_(w)
                continue
            prefix, e, proj = m[1], int(m[2]), m[3]
            inter = w.shape[0] if proj in ("gate_proj", "up_proj", "w1", "w3") else w.shape[1]
            if proj in ("gate_proj", "w1"):
                params[f"{prefix}.gate_up_proj"][e, :inter].copy_(w)
            elif proj in ("up_proj", "w3"):
                params[f"{prefix}.gate_up_proj"][e, inter:].copy_(w)
            else:
                params[f"{prefix}.down_proj"][e].copy_(w)
    return model
