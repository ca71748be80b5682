"""Upcycle a dense Llama-architecture model into a Mixtral MoE: every expert is a copy of the layer's MLP.

No real MoE model can be had here, and per-expert formats need one whose quality can be measured. With
identical experts and top-k weights renormalised to sum to 1 (Mixtral's router does this), every token's
MoE output is the dense MLP output whatever the router picks, so the upcycled model scores like the
dense one, and any loss after quantizing its experts is the formats' doing.

The checkpoint is written tensor by tensor with the names Hub Mixtral checkpoints use
(`model.layers.N.block_sparse_moe.experts.E.w1|w2|w3.weight`, `...block_sparse_moe.gate.weight`), which
vLLM, SGLang and transformers (that fuses them into 3-D tensors on load) all read.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationConfig,
    MixtralConfig,
)

from ..errors import CheckpointError, MPQError
from ..outputs import output_folder
from .hf_folder import MODEL_KIND, copy_tokenizer

# Dense model types whose attention, norms and rope are exactly Mixtral's (no biases, rotate-half rope).
SUPPORTED_DENSE_TYPES = ("llama", "mistral")


def upcycle(dense_dir: Path, out_dir: Path, experts: int = 8, top_k: int = 2, seed: int = 0,
            progress: bool = True, overwrite: bool = False) -> Path:
    """Write a MixtralForCausalLM folder at `out_dir` whose experts all equal `dense_dir`'s MLPs.

    The router (`gate`) is random (normal, std = the config's initializer_range, seeded): it does not
    change the output, but it spreads tokens over experts the way a trained router would look to a
    serving engine. The lm_head is written out even when the dense model ties it to the embeddings,
    since Hub Mixtral checkpoints are untied and engines' Mixtral loaders expect one.
    """
    dense_dir, out_dir = Path(dense_dir), Path(out_dir)
    if not 1 <= top_k <= experts:
        raise MPQError(f"upcycle: need 1 <= top_k <= experts, got top_k={top_k}, experts={experts}")
    dense_config = AutoConfig.from_pretrained(dense_dir)
    config = mixtral_config_from_dense(dense_config, experts, top_k)
    dense = AutoModelForCausalLM.from_pretrained(dense_dir, dtype="auto").eval()
    dtype = next(dense.parameters()).dtype
    config.dtype = dtype
    tensors = _moe_state_dict(dense.state_dict(), config, seed, dtype, progress)
    del dense
    with output_folder(out_dir, MODEL_KIND, overwrite=overwrite, inputs=[dense_dir]) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(tmp)
        _generation_config(dense_dir, config).save_pretrained(tmp)
        copy_tokenizer(dense_dir, tmp)
    return out_dir


def mixtral_config_from_dense(dense, experts: int, top_k: int) -> MixtralConfig:
    """A Mixtral config with the dense model's attention, norm, rope and vocabulary, and MoE MLPs."""
    if dense.model_type not in SUPPORTED_DENSE_TYPES:
        raise MPQError(f"upcycle: model_type {dense.model_type!r} is not Llama-architecture "
                       f"(supported: {', '.join(SUPPORTED_DENSE_TYPES)})")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(dense, flag, False):
            raise MPQError(f"upcycle: the dense model has {flag}=True; Mixtral has no biases")
    head_dim = getattr(dense, "head_dim", None) or dense.hidden_size // dense.num_attention_heads
    return MixtralConfig(
        vocab_size=dense.vocab_size,
        hidden_size=dense.hidden_size,
        intermediate_size=dense.intermediate_size,
        num_hidden_layers=dense.num_hidden_layers,
        num_attention_heads=dense.num_attention_heads,
        num_key_value_heads=dense.num_key_value_heads,
        head_dim=head_dim,
        hidden_act=dense.hidden_act,
        max_position_embeddings=dense.max_position_embeddings,
        initializer_range=dense.initializer_range,
        rms_norm_eps=dense.rms_norm_eps,
        rope_parameters=dict(dense.rope_parameters),
        sliding_window=getattr(dense, "sliding_window", None),
        bos_token_id=dense.bos_token_id,
        eos_token_id=dense.eos_token_id,
        pad_token_id=dense.pad_token_id,
        tie_word_embeddings=False,
        num_local_experts=experts,
        num_experts_per_tok=top_k,
        architectures=["MixtralForCausalLM"],
    )


def moe_tensor_names(layer: int, experts: int) -> list[str]:
    """The on-disk names of one Mixtral MoE block, as in Hub checkpoints."""
    prefix = f"model.layers.{layer}.block_sparse_moe"
    return [f"{prefix}.gate.weight"] + [f"{prefix}.experts.{e}.{w}.weight" for e in range(experts)
                                         for w in ("w1", "w2", "w3")]


def _moe_state_dict(dense: dict[str, torch.Tensor], config: MixtralConfig, seed: int, dtype: torch.dtype,
                    progress: bool) -> dict[str, torch.Tensor]:
    """Dense names mapped to Mixtral's: attention/norms unchanged, mlp.{gate,up,down}_proj -> experts.E.{w1,w3,w2}."""
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    consumed: set[str] = set()
    for name in ("model.embed_tokens.weight", "model.norm.weight"):
        out[name] = dense[name].contiguous()
        consumed.add(name)
    # Tied models have no lm_head of their own in the checkpoint; Mixtral gets an explicit copy.
    out["lm_head.weight"] = dense.get("lm_head.weight", dense["model.embed_tokens.weight"]).clone()
    consumed.add("lm_head.weight")
    for layer in tqdm(range(config.num_hidden_layers), desc="upcycle", unit="layer", disable=not progress):
        src = f"model.layers.{layer}"
        for part in ("input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
                     "self_attn.v_proj", "self_attn.o_proj"):
            out[f"{src}.{part}.weight"] = _take(dense, f"{src}.{part}.weight", consumed)
        mlp = {w: _take(dense, f"{src}.mlp.{proj}.weight", consumed)
               for w, proj in (("w1", "gate_proj"), ("w2", "down_proj"), ("w3", "up_proj"))}
        dst = f"{src}.block_sparse_moe"
        router = torch.randn(config.num_local_experts, config.hidden_size, generator=generator)
        out[f"{dst}.gate.weight"] = (router * config.initializer_range).to(dtype)
        for e in range(config.num_local_experts):
            for w, tensor in mlp.items():
                out[f"{dst}.experts.{e}.{w}.weight"] = tensor.clone()  # safetensors refuses shared storage
    left = sorted(set(dense) - consumed)
    if left:
        raise CheckpointError(f"upcycle: dense tensors with no Mixtral counterpart: {left[:5]}")
    return out


def _take(state: dict[str, torch.Tensor], name: str, consumed: set[str]) -> torch.Tensor:
    if name not in state:
        raise CheckpointError(f"upcycle: the dense model has no tensor {name!r}")
    consumed.add(name)
    return state[name].contiguous()


def _generation_config(dense_dir: Path, config: MixtralConfig) -> GenerationConfig:
    """The dense model's generation settings when it has them, else ones derived from the config."""
    if (dense_dir / "generation_config.json").is_file():
        return GenerationConfig.from_pretrained(dense_dir)
    return GenerationConfig.from_model_config(config)
