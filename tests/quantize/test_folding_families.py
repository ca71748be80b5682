"""Folding random per-channel scales (what AWQ and SmoothQuant do) leaves each family's float output unchanged:
which norm feeds which projections, and how each norm applies its weight, come from the model, not a Llama
assumption."""

from __future__ import annotations

import pytest
import torch
from tiny_hf import DENSE_ARCHS, save_tiny

from mpq_serving.loaders.hf_model import load_model
from mpq_serving.plan import plan_from_dict
from mpq_serving.quantize.folding import fold_scales, scales_by_one_plus_weight
from mpq_serving.quantize.scale_groups import scale_groups

LLAMA_LIKE = ["qkv", "gate_up", "up_down"]  # grouped-query attention: no v → o group
EXPECTED = {
    "gemma3_text": LLAMA_LIKE, "gemma2": LLAMA_LIKE, "granite": LLAMA_LIKE, "qwen2": LLAMA_LIKE, "qwen3": LLAMA_LIKE,
    "mistral": LLAMA_LIKE,
    "phi3": ["qkv", "gate_up"],  # fused qkv_proj / gate_up_proj: no up rows of their own to fold into
    "olmo2": ["up_down"],  # norms follow the sublayers: none feeds a projection
    "cohere": ["qkv_gate_up", "up_down"],  # one norm feeds attention and MLP in parallel
}
MLP_NORM = {"gemma3_text": "pre_feedforward_layernorm", "gemma2": "pre_feedforward_layernorm"}


@pytest.mark.parametrize("arch", sorted(DENSE_ARCHS))
def test_folding_random_scales_leaves_the_float_model_unchanged(arch, tmp_path):
    folder = save_tiny(arch, tmp_path / arch)
    model = load_model(plan_from_dict({"default": {"wq": "fp32"}, "base_model_path": str(folder)}),
                       dtype=torch.float32, progress=False)
    ids = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26, 43, 38, 32, 79]])
    with torch.no_grad():
        before = model(ids).logits
    generator = torch.Generator().manual_seed(0)
    for layer in model.model.layers:
        groups = scale_groups(layer)
        assert [g.key for g in groups] == EXPECTED[arch]
        for g in groups:
            if g.key == "gate_up" and arch in MLP_NORM:
                assert g.prev is getattr(layer, MLP_NORM[arch])
            scales = torch.empty(g.linears[0].in_features).uniform_(0.5, 2.0, generator=generator)
            fold_scales(g, scales)
    with torch.no_grad():
        after = model(ids).logits
    assert float((after - before).abs().max() / before.abs().max()) < 1e-5, arch


def test_gemma_norms_are_told_apart_by_what_they_compute(tmp_path):
    folder = save_tiny("gemma3_text", tmp_path / "gemma")
    model = load_model(plan_from_dict({"default": {"wq": "fp32"}, "base_model_path": str(folder)}),
                       dtype=torch.float32, progress=False)
    layer = model.model.layers[0]
    assert scales_by_one_plus_weight(layer.input_layernorm)
    saved = layer.input_layernorm.weight.clone()
    assert torch.equal(layer.input_layernorm.weight, saved)  # the probe leaves the weight as it was
    llama = load_model(plan_from_dict({"default": {"wq": "fp32"}, "base_model_path": str(save_tiny("llama", tmp_path / "l"))}),
                       dtype=torch.float32, progress=False)
    assert not scales_by_one_plus_weight(llama.model.layers[0].input_layernorm)
