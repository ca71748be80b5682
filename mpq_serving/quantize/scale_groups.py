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

Other families differ in which norm feeds which projections (see `_mlp_norm`: Gemma 2/3's
pre_feedforward_layernorm, OLMo-2's norms after the sublayers, Cohere's one norm for both) and in fused
projections (Phi-3's qkv_proj / gate_up_proj); how a norm applies its weight (Gemma's x̂·(1 + w)) is
`folding.py`'s business.  tests/quantize/test_folding_families.py folds random scales on each family
and requires the float output unchanged.
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
    attn_in = _linears(attn, ("q_proj", "k_proj", "v_proj")) or _linears(attn, ("qkv_proj",))
    mlp = getattr(layer, "mlp", None)
    dense = mlp is not None and _is_dense_mlp(mlp)
    mlp_in = (_linears(mlp, ("gate_proj", "up_proj")) or _linears(mlp, ("gate_up_proj",))) if dense else []
    attn_norm, mlp_norm = getattr(layer, "input_layernorm", None), _mlp_norm(layer)
    parallel = attn_norm is not None and mlp_norm is attn_norm
    if attn_in and attn_norm is not None:
        # a parallel block (Cohere) feeds one norm to both: its scale goes to all their input linears
        linears = attn_in + mlp_in if parallel else attn_in
        groups.append(ScaleGroup("qkv_gate_up" if parallel and mlp_in else "qkv", attn_norm, linears, attn,
                                 needs_layer_kwargs=True))
    v, o = getattr(attn, "v_proj", None), getattr(attn, "o_proj", None)
    if isinstance(v, MixedPrecisionLinear) and isinstance(o, MixedPrecisionLinear) and (
            (v.out_features, v.in_features) == (o.out_features, o.in_features)):
        groups.append(ScaleGroup("v_o", v, [o], o))
    if dense:
        if mlp_in and mlp_norm is not None and not parallel:
            groups.append(ScaleGroup("gate_up", mlp_norm, mlp_in, mlp))
        if isinstance(getattr(mlp, "up_proj", None), MixedPrecisionLinear):  # a fused gate_up_proj has no own rows
            groups.append(ScaleGroup("up_down", mlp.up_proj, [mlp.down_proj], mlp.down_proj))
    elif mlp is not None:
        experts = getattr(mlp, "experts", None)
        for i, expert in enumerate(getattr(experts, "experts", [])):
            groups.append(ScaleGroup(f"expert{i}.up_down", expert.up_proj, [expert.down_proj], expert.down_proj))
        shared = getattr(mlp, "shared_expert", None)
        if shared is not None and _is_dense_mlp(shared) and hasattr(shared, "up_proj"):
            groups.append(ScaleGroup("shared_expert.up_down", shared.up_proj, [shared.down_proj], shared.down_proj))
    return groups


def _mlp_norm(layer: nn.Module) -> nn.Module | None:
    """The norm whose output is the MLP's input, from the norms the layer has:
    `pre_feedforward_layernorm` (Gemma 2/3, whose `post_attention_layernorm` normalises the attention output);
    none when norms follow the sublayers (`post_feedforward_layernorm` without a pre-norm: OLMo-2);
    `post_attention_layernorm` (Llama and most); `input_layernorm` alone (a parallel block: Cohere)."""
    for name in ("pre_feedforward_layernorm",):
        if getattr(layer, name, None) is not None:
            return getattr(layer, name)
    if getattr(layer, "post_feedforward_layernorm", None) is not None:
        return None
    if getattr(layer, "post_attention_layernorm", None) is not None:
        return layer.post_attention_layernorm if getattr(layer, "input_layernorm", None) is not None else None
    return getattr(layer, "input_layernorm", None)


def _linears(module: nn.Module | None, names: tuple[str, ...]) -> list[MixedPrecisionLinear]:
    found = [getattr(module, n, None) for n in names] if module is not None else []
    return found if found and all(isinstance(m, MixedPrecisionLinear) for m in found) else []


def _is_dense_mlp(mlp: nn.Module) -> bool:
    return bool(_linears(mlp, ("gate_proj", "up_proj", "down_proj")) or _linears(mlp, ("gate_up_proj", "down_proj")))
