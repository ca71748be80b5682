"""Where a per-input-channel scale can be folded: the (previous op → linears) pairs of a decoder layer.

AWQ and SmoothQuant both multiply a linear's input columns by s and divide the op producing that input
by s, which leaves the float model's output unchanged.  The op must be per-channel linear in its
output and its output must feed *only* the scaled linears.  For llama-like layers (Llama, Mistral,
Qwen2/3, and the attention of every MoE model) these are the pairs AutoAWQ's `LlamaAWQForCausalLM.
get_layers_for_scaling` lists:

* input_layernorm → q_proj, k_proj, v_proj (inspected through self_attn);
* v_proj → o_proj, only when their shapes match (no grouped-query attention: with GQA one v channel
  feeds several heads' o_proj inputs);
* post_attention_layernorm → gate_proj, up_proj (inspected through the MLP), dense MLPs only: in an MoE
  layer that norm also feeds the router and shared expert, which are not scaled here;
* up_proj → down_proj, per dense MLP and per MoE expert (each expert with its own routed tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..layers.linear import MixedPrecisionLinear


@dataclass
class ScaleGroup:
    """`prev` (an RMSNorm or a linear) produces the input of `linears`; `inspect` is the module whose
    output AWQ compares (called with that input), `key` names the group in records."""

    key: str
    prev: nn.Module
    linears: list[MixedPrecisionLinear]
    inspect: nn.Module
    needs_layer_kwargs: bool = False


def scale_groups(layer: nn.Module) -> list[ScaleGroup]:
    """The foldable groups of one decoder layer, in the order the layer computes them."""
    groups: list[ScaleGroup] = []
    attn = getattr(layer, "self_attn", None)
    norm = getattr(layer, "input_layernorm", None)
    if attn is not None and norm is not None and all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj")):
        groups.append(ScaleGroup("qkv", norm, [attn.q_proj, attn.k_proj, attn.v_proj], attn, needs_layer_kwargs=True))
        v, o = attn.v_proj, getattr(attn, "o_proj", None)
        if o is not None and (v.out_features, v.in_features) == (o.out_features, o.in_features):
            groups.append(ScaleGroup("v_o", v, [o], o))
    mlp = getattr(layer, "mlp", None)
    post = getattr(layer, "post_attention_layernorm", None)
    if mlp is not None and _is_dense_mlp(mlp):
        if post is not None:
            groups.append(ScaleGroup("gate_up", post, [mlp.gate_proj, mlp.up_proj], mlp))
        groups.append(ScaleGroup("up_down", mlp.up_proj, [mlp.down_proj], mlp.down_proj))
    elif mlp is not None:
        experts = getattr(mlp, "experts", None)
        for i, expert in enumerate(getattr(experts, "experts", [])):
            groups.append(ScaleGroup(f"expert{i}.up_down", expert.up_proj, [expert.down_proj], expert.down_proj))
        shared = getattr(mlp, "shared_expert", None)
        if shared is not None and _is_dense_mlp(shared):
            groups.append(ScaleGroup("shared_expert.up_down", shared.up_proj, [shared.down_proj], shared.down_proj))
    return groups


def _is_dense_mlp(mlp: nn.Module) -> bool:
    return all(isinstance(getattr(mlp, p, None), MixedPrecisionLinear) for p in ("gate_proj", "up_proj", "down_proj"))
