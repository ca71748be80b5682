"""Tiny random models: every architecture saves per-expert names, reloads and runs a forward."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from mpq_serving.errors import MPQError
from mpq_serving.models.hf_folder import safetensors_names
from mpq_serving.models.tiny import MOE_ARCHS, TINY_ARCHS, build_tiny

EXPERT_KEYS = {"mixtral": ".block_sparse_moe.experts.", "qwen3-moe": ".mlp.experts.", "qwen2-moe": ".mlp.experts."}


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_builds_reloads_and_runs(tmp_path, arch):
    folder = build_tiny(arch, tmp_path / arch, seed=0)
    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.dtype == torch.bfloat16
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([[1, 5, 9, 2]])).logits
    assert logits.shape == (1, 4, 49152) and torch.isfinite(logits).all()
    # Group-128 formats must apply to every linear layer (a router's or shared-expert gate's out-features
    # may be small, but in-features are what a group divides).
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            assert module.in_features % 128 == 0, name
    for name, param in model.named_parameters():
        if param.dim() == 3:  # fused experts in memory: [experts, out, in]
            assert param.shape[-1] % 128 == 0, name


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_tiny_moe_has_per_expert_names(tmp_path, arch):
    folder = build_tiny(arch, tmp_path / arch, seed=0)
    names = safetensors_names(folder)
    experts = {n.split(EXPERT_KEYS[arch])[1].split(".")[0] for n in names if EXPERT_KEYS[arch] in n}
    assert len(experts) in (4, 8) and experts == {str(e) for e in range(len(experts))}
    if arch == "qwen2-moe":
        assert "model.layers.0.mlp.shared_expert.down_proj.weight" in names
        assert "model.layers.0.mlp.shared_expert_gate.weight" in names


def test_tiny_is_seeded(tmp_path):
    a = AutoModelForCausalLM.from_pretrained(build_tiny("llama", tmp_path / "a", seed=3))
    b = AutoModelForCausalLM.from_pretrained(build_tiny("llama", tmp_path / "b", seed=3))
    c = AutoModelForCausalLM.from_pretrained(build_tiny("llama", tmp_path / "c", seed=4))
    w = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(a.state_dict()[w], b.state_dict()[w]) and not torch.equal(a.state_dict()[w], c.state_dict()[w])


def test_unknown_arch(tmp_path):
    with pytest.raises(MPQError, match="gpt2"):
        build_tiny("gpt2", tmp_path / "x")
