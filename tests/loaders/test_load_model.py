"""The HF path: mixed layers give the logits of "dequantize every weight, run transformers in fp32"."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from tiny_hf import dequantized_reference, save_tiny

from mpq_serving.layers.linear import MixedPrecisionLinear
from mpq_serving.layers.moe import MixedPrecisionExperts
from mpq_serving.loaders.hf_model import load_model
from mpq_serving.loaders.pack import pack
from mpq_serving.plan import plan_from_dict

DENSE_PLAN = {"default": {"wq": "fp8"}, "overrides": [
    {"pattern": "model.layers.0.self_attn.q_proj", "wq": "int8"},
    {"pattern": "model.layers.0.self_attn.k_proj", "wq": "fp8", "granularity": "block", "group_size": 64},
    {"pattern": "model.layers.0.self_attn.v_proj", "wq": "mxfp8"},
    {"pattern": "o_proj", "wq": "mxfp4"},
    {"pattern": "model.layers.0.mlp.gate_proj", "wq": "gptq_int4", "group_size": 64, "act_order": True, "symmetric": False},
    {"pattern": "up_proj", "wq": "awq_int4", "group_size": 64},
    {"pattern": "down_proj", "wq": "gptq_int4", "group_size": 128},
    {"pattern": "lm_head", "wq": "fp8"},
]}

# Experts of one layer in four formats; the other layer's experts in two.
MOE_MAPPING = {
    "model.layers.0.mlp.experts.0.w13_weight": "fp8",
    "model.layers.0.mlp.experts.0.w2_weight": "gptq_int4",
    "model.layers.0.mlp.experts.1.w13_weight": "awq_int4",
    "model.layers.0.mlp.experts.1.w2_weight": "fp8",
    "model.layers.0.mlp.experts.2.w13_weight": "mxfp4",
    "model.layers.0.mlp.experts.2.w2_weight": "int8",
    "re:model\\.layers\\.1\\..*experts\\.[02]\\..*": "mxfp8",
}


def moe_plan(arch: str) -> dict:
    mapping = dict(MOE_MAPPING)
    if arch == "mixtral":
        mapping = {k.replace(".mlp.", ".block_sparse_moe."): v for k, v in mapping.items()}
    return {"mixed_precision": {"default": "int8", "weight_mapping": mapping}}


def tokens(vocab: int = 96, n: int = 24) -> torch.Tensor:
    return torch.randint(0, vocab, (2, n), generator=torch.Generator().manual_seed(1))


def assert_close_rel(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-3) -> None:
    err = (a - b).abs().max() / b.abs().max()
    assert err < rel, f"relative error {err:.2e}"


def test_dense_mixed_logits_equal_dequantized_fp32(tmp_path):
    folder = save_tiny("llama", tmp_path / "llama")
    plan = plan_from_dict(DENSE_PLAN)
    mixed = load_model(plan, folder, dtype=torch.float32, progress=False)
    assert isinstance(mixed.model.layers[0].mlp.down_proj, MixedPrecisionLinear)
    reference = dequantized_reference(folder, plan)
    ids = tokens()
    with torch.no_grad():
        assert_close_rel(mixed(ids).logits, reference(ids).logits)


@pytest.mark.parametrize("arch", ["mixtral", "qwen3_moe", "qwen2_moe"])
def test_moe_with_per_expert_formats_equals_dequantized_fp32(tmp_path, arch):
    folder = save_tiny(arch, tmp_path / arch)
    plan = plan_from_dict(moe_plan(arch))
    mixed = load_model(plan, folder, dtype=torch.float32, progress=False)
    experts = mixed.model.layers[0].mlp.experts
    assert isinstance(experts, MixedPrecisionExperts)
    assert len(experts.format_groups) == 4  # fp8/gptq, awq/fp8, mxfp4/int8, int8/int8
    reference = dequantized_reference(folder, plan)
    ids = tokens()
    with torch.no_grad():
        assert_close_rel(mixed(ids).logits, reference(ids).logits)


def test_packed_checkpoint_loads_to_the_same_model(tmp_path):
    folder = save_tiny("qwen3_moe", tmp_path / "moe")
    plan = plan_from_dict(moe_plan("qwen3_moe"))
    out = pack(plan, tmp_path / "packed", folder, progress=False)
    config = json.loads((out / "config.json").read_text())
    qc = config["quantization_config"]
    assert qc["quant_method"] == "mpq"
    assert qc["modules"]["model.layers.0.mlp.experts.1.up_proj"]["format"] == "awq_int4"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert {"model.layers.0.mlp.experts.0.down_proj.qweight", "model.layers.0.mlp.experts.0.down_proj.g_idx",
            "model.layers.0.mlp.experts.1.up_proj.qzeros", "model.layers.0.mlp.experts.2.up_proj.weight_packed",
            "model.layers.0.mlp.gate.weight"} <= names
    assert not any(n.endswith("gate_up_proj") for n in names)
    from_plan = load_model(plan, folder, dtype=torch.float32, progress=False)
    from_packed = load_model(out, dtype=torch.float32)
    ids = tokens()
    with torch.no_grad():
        torch.testing.assert_close(from_packed(ids).logits, from_plan(ids).logits, rtol=0, atol=0)


def test_routing_is_unchanged_with_bf16_experts(tmp_path):
    folder = save_tiny("mixtral", tmp_path / "mixtral")
    plan = plan_from_dict({"default": {"wq": "bf16"}})
    mixed = load_model(plan, folder, dtype=torch.float32, progress=False)
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():  # the plan stores every linear weight (router included) in bf16: do the same here
        for name, p in plain.named_parameters():
            if p.dim() >= 2 and "embed_tokens" not in name:
                p.copy_(p.to(torch.bfloat16).float())
    ids = tokens()
    with torch.no_grad():
        assert_close_rel(mixed(ids).logits, plain(ids).logits, rel=1e-5)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "qwen2-moe", "qwen3-moe", "mixtral"])
def test_every_supported_family_matches_its_dequantized_reference(tmp_path, arch):
    from mpq_serving.models.tiny import build_tiny

    folder = build_tiny(arch, tmp_path / arch, seed=3)
    overrides = [{"pattern": "q_proj", "wq": "fp8"}, {"pattern": "k_proj", "wq": "awq_int4"}, {"pattern": "v_proj", "wq": "int8"},
                 {"pattern": "re:.*(up_proj|w3)", "wq": "mxfp4"}]
    if arch in ("qwen2-moe", "qwen3-moe", "mixtral"):  # a rule matching no weight is refused: experts only where they exist
        overrides.append({"pattern": "re:.*experts\\.1\\..*", "wq": "mxfp8"})
    plan = plan_from_dict({"default": {"wq": "gptq_int4", "group_size": 64}, "overrides": overrides})
    mixed = load_model(plan, folder, dtype=torch.float32, progress=False)
    reference = dequantized_reference(folder, plan)
    ids = tokens(vocab=1000)
    with torch.no_grad():
        assert_close_rel(mixed(ids).logits, reference(ids).logits)


def test_experts_marked_minus_one_are_skipped():
    """Under expert parallelism vLLM marks experts held by another rank as -1 (this broke once)."""
    import torch.nn.functional as F

    from mpq_serving.formats import QuantSpec, get_format
    from mpq_serving.layers.linear import MixedPrecisionLinear
    from mpq_serving.layers.moe import MixedPrecisionExpert

    fmt, spec = get_format("bf16"), QuantSpec("bf16")
    g = torch.Generator().manual_seed(0)

    def linear(o, i):
        return MixedPrecisionLinear(fmt.quantize(torch.randn(o, i, generator=g) * 0.1, spec))

    experts = MixedPrecisionExperts([MixedPrecisionExpert(linear(16, 32), linear(16, 32), linear(32, 16))
                                     for _ in range(4)], F.silu)
    x = torch.randn(4, 32, generator=g)
    index = torch.tensor([[0, 3], [-1, 2], [1, -1], [-1, -1]])
    weights = torch.rand(4, 2, generator=g)
    expected = torch.zeros_like(x)
    for t in range(4):
        for k in range(2):
            if index[t, k] >= 0:
                expected[t] += weights[t, k] * experts.experts[int(index[t, k])](x[t : t + 1], F.silu)[0]
    with torch.inference_mode():
        torch.testing.assert_close(experts(x, index, weights), expected)
