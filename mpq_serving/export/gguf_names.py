"""HF Llama / Mistral / Mixtral names → llama.cpp's `llama` architecture: tensor names, hparams, q/k row order.

llama.cpp runs all three as `llama` (Mixtral = llama with `ffn_*_exps` expert stacks and a router).
Its rope rotates adjacent pairs while HF's rotates the two halves of each head, so, like llama.cpp's
own converter (`LlamaModel.permute` in convert_hf_to_gguf.py), q_proj and k_proj rows are reordered
per head; that is a permutation of output rows, so quantized rows move whole, blocks and scales intact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np

from ..errors import MPQError

ARCH = "llama"
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "mixtral")

_LAYER = re.compile(r"^model\.layers\.(?P<bid>\d+)\.(?P<rest>.+)$")
_EXPERT = re.compile(r"^(?:block_sparse_moe|mlp)\.experts\.(?P<e>\d+)\.(?P<proj>w1|w2|w3|gate_proj|up_proj|down_proj)$")
_EXPERT_STACK = {"w1": "ffn_gate_exps", "gate_proj": "ffn_gate_exps", "w3": "ffn_up_exps", "up_proj": "ffn_up_exps",
                 "w2": "ffn_down_exps", "down_proj": "ffn_down_exps"}
_IN_LAYER = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    "block_sparse_moe.gate": "ffn_gate_inp", "mlp.gate": "ffn_gate_inp",
}
_TOP = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


@dataclass(frozen=True)
class Hparams:
    n_layers: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_experts: int  # 0 for a dense model


def hparams(config: dict[str, Any]) -> Hparams:
    """The model's shape, refusing configs llama.cpp's llama architecture would run differently."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise MPQError(f"config.json model_type {model_type!r}: the GGUF export covers "
                       f"{', '.join(SUPPORTED_MODEL_TYPES)} (llama.cpp's 'llama' architecture)")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise MPQError(f"config.json rope type {rope.get('rope_type', rope.get('type'))!r}: only plain rope "
                       "is exported (scaled rope needs llama.cpp keys this exporter does not write)")
    if config.get("sliding_window") is not None:
        raise MPQError(f"config.json sliding_window {config['sliding_window']}: llama.cpp's llama architecture "
                       "attends to the whole context; a sliding-window model would run differently")
    heads = int(config["num_attention_heads"])
    return Hparams(
        n_layers=int(config["num_hidden_layers"]),
        n_head=heads,
        n_head_kv=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or config["hidden_size"] // heads),
        n_experts=int(config.get("num_local_experts") or 0),
    )


def write_hparams(writer: gguf.GGUFWriter, config: dict[str, Any], hp: Hparams) -> None:
    rope = config.get("rope_parameters") or {}
    writer.add_block_count(hp.n_layers)
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(hp.n_head)
    writer.add_head_count_kv(hp.n_head_kv)
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_rope_dimension_count(hp.head_dim)
    if hp.head_dim * hp.n_head != int(config["hidden_size"]):
        writer.add_key_length(hp.head_dim)
        writer.add_value_length(hp.head_dim)
    writer.add_vocab_size(int(config["vocab_size"]))
    if hp.n_experts:
        writer.add_expert_count(hp.n_experts)
        writer.add_expert_used_count(int(config["num_experts_per_tok"]))


@dataclass(frozen=True)
class Target:
    """Where one HF tensor goes: GGUF name, expert index (stacked tensors), and the heads to permute rows by."""

    name: str
    expert: int | None = None
    permute_heads: int | None = None


def gguf_target(hf_name: str, hp: Hparams) -> Target:
    """`model.layers.3.self_attn.q_proj.weight` → blk.3.attn_q.weight (permuted by n_head), etc."""
    module, _, leaf = hf_name.rpartition(".")
    if leaf not in ("weight", "bias"):
        raise MPQError(f"{hf_name}: no GGUF counterpart (only .weight and .bias tensors are exported)")
    if module in _TOP:
        return Target(f"{_TOP[module]}.{leaf}")
    m = _LAYER.match(module)
    if m:
        bid, rest = m["bid"], m["rest"]
        e = _EXPERT.match(rest)
        if e:
            return Target(f"blk.{bid}.{_EXPERT_STACK[e['proj']]}.{leaf}", expert=int(e["e"]))
        if rest in _IN_LAYER:
            heads = {"self_attn.q_proj": hp.n_head, "self_attn.k_proj": hp.n_head_kv}.get(rest)
            return Target(f"blk.{bid}.{_IN_LAYER[rest]}.{leaf}", permute_heads=heads)
    raise MPQError(f"{hf_name}: no tensor of llama.cpp's llama architecture corresponds to it")


def permute_rows(data: np.ndarray, heads: int) -> np.ndarray:
    """HF half-split rope rows → llama.cpp's interleaved pairs, per head (rows = output features)."""
    rows = data.shape[0]
    return data.reshape(heads, 2, rows // heads // 2, *data.shape[1:]).swapaxes(1, 2).reshape(data.shape)
