"""Sources whose tool folded AWQ / SmoothQuant scales into norms and linears merge into a right model.

Per-layer bit-exactness cannot see this: the logits of the merged model are compared with the source's
own model and with the float model, with scales far from 1 so any norm taken from the wrong place shows.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_hf import save_tiny

from mpq_serving.errors import CheckpointError
from mpq_serving.formats import QuantSpec, get_format
from mpq_serving.loaders.hf_model import load_model
from mpq_serving.loaders.true_mixed import TrueMixedPrecisionLoader
from mpq_serving.plan import plan_from_dict
from mpq_serving.plan.model_weights import linear_weights

TOKENS = torch.tensor([[1, 5, 9, 17, 33, 2, 60, 71]])
# As AutoAWQ writes it: no modules_to_not_convert, though lm_head is stored unquantized.
AWQ_CONFIG = {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True, "version": "gemm",
              "modules_to_not_convert": None}
GPTQ_CONFIG = {"quant_method": "gptq", "bits": 4, "group_size": 64, "desc_act": False, "sym": True}


@pytest.fixture
def llama(tmp_path):
    return save_tiny("llama", tmp_path / "llama")


def folded_release(base, folder, fmt_name, config, seed):
    """What AWQ / SmoothQuant tools write: each norm and up_proj divided by s, their consumers' input
    columns multiplied by s, then every linear but lm_head quantized."""
    tensors = load_file(str(base / "model.safetensors"))
    gen = torch.Generator().manual_seed(seed)

    def scale(n):
        return torch.empty(n).uniform_(0.25, 4.0, generator=gen)

    for i in range(2):
        p = f"model.layers.{i}."
        for norm, consumers in (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                                ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"))):
            s = scale(tensors[f"{p}{norm}.weight"].numel())
            tensors[f"{p}{norm}.weight"] = tensors[f"{p}{norm}.weight"] / s
            for c in consumers:
                tensors[f"{p}{c}.weight"] = tensors[f"{p}{c}.weight"] * s
        s = scale(tensors[f"{p}mlp.up_proj.weight"].shape[0])
        tensors[f"{p}mlp.up_proj.weight"] = tensors[f"{p}mlp.up_proj.weight"] / s[:, None]
        tensors[f"{p}mlp.down_proj.weight"] = tensors[f"{p}mlp.down_proj.weight"] * s
    fmt = get_format(fmt_name)
    for w in linear_weights(base):
        if w.name != "lm_head":
            q = fmt.quantize(tensors.pop(f"{w.name}.weight"), QuantSpec(fmt_name, group_size=64))
            tensors.update({f"{w.name}.{k}": v.contiguous() for k, v in q.tensors.items()})
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    cfg = json.loads((base / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "quantization_config": config}))
    return folder


def logits(plan, base=None):
    model = load_model(plan_from_dict(plan), base, dtype=torch.float32, progress=False)
    with torch.no_grad():
        return model(TOKENS).logits.float()


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture
def awq(tmp_path, llama):
    return folded_release(llama, tmp_path / "awq", "awq_int4", AWQ_CONFIG, seed=1)


@pytest.fixture
def float_logits(llama):
    return logits({"default": {"wq": "fp32"}}, llama)


def test_a_folded_source_merged_with_the_base_equals_the_tools_own_model(llama, awq, float_logits):
    own = logits({"default": {"wq": "awq_int4"}, "sources": {"awq_int4": str(awq), "bf16": str(awq)}})
    merged = logits({"default": {"wq": "awq_int4"}, "sources": {"awq_int4": str(awq)}}, llama)
    assert torch.allclose(merged, own, atol=1e-5, rtol=0)
    # what taking every norm from the base model gave: the same linears against unfolded norms
    model = load_model(plan_from_dict({"default": {"wq": "awq_int4"}, "sources": {"awq_int4": str(awq)}}), llama,
                       dtype=torch.float32, progress=False)
    base = load_file(str(llama / "model.safetensors"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight"):
                param.copy_(base[name])
        wrong = model(TOKENS).logits.float()
    assert rel(wrong, float_logits) > 2 * rel(own, float_logits)


def test_a_float_consumer_from_the_base_is_refolded_onto_the_sources_norm(llama, awq, float_logits):
    own = logits({"default": {"wq": "awq_int4"}, "sources": {"awq_int4": str(awq), "bf16": str(awq)}})
    plan = {"default": {"wq": "awq_int4"}, "sources": {"awq_int4": str(awq)},
            "overrides": [{"pattern": "q_proj", "wq": "fp32"}, {"pattern": "gate_proj", "wq": "fp32"}]}
    loader = TrueMixedPrecisionLoader(plan_from_dict(plan), llama)
    assert set(loader.folded.column_scales) == {f"model.layers.{i}.{p}" for i in range(2)
                                                for p in ("self_attn.q_proj", "mlp.gate_proj")}
    merged = logits(plan, llama)
    assert rel(merged, float_logits) <= rel(own, float_logits) * 1.2


def test_an_awq_consumer_without_its_producer_is_refused(llama, awq):
    plan = {"default": {"wq": "awq_int4"}, "sources": {"awq_int4": str(awq)},
            "overrides": [{"pattern": "up_proj", "wq": "fp8"}]}
    with pytest.raises(CheckpointError, match=r"down_proj comes from .*awq but .*up_proj.*AWQ checkpoint"):
        TrueMixedPrecisionLoader(plan_from_dict(plan), llama)


def test_consumers_quantized_against_different_norms_are_refused(tmp_path, llama, awq):
    smoothed = folded_release(llama, tmp_path / "gptq", "gptq_int4", GPTQ_CONFIG, seed=2)
    plan = {"default": {"wq": "awq_int4"}, "sources": {"awq_int4": str(awq), "gptq_int4": str(smoothed)},
            "overrides": [{"pattern": "k_proj", "wq": "gptq_int4"}]}
    with pytest.raises(CheckpointError, match=r"input_layernorm.weight: .*different versions of this norm"):
        TrueMixedPrecisionLoader(plan_from_dict(plan), llama)


def test_unfolded_sources_keep_the_base_norms(tmp_path, llama):
    plain = folded_release(llama, tmp_path / "plain", "gptq_int4", GPTQ_CONFIG, seed=3)
    tensors = load_file(str(plain / "model.safetensors"))
    base = load_file(str(llama / "model.safetensors"))
    for name in [n for n in tensors if n.endswith("layernorm.weight")]:
        tensors[name] = base[name]  # a GPTQ tool leaves norms alone (the linears here are then simply off)
    save_file(tensors, str(plain / "model.safetensors"))
    loader = TrueMixedPrecisionLoader(plan_from_dict({"default": {"wq": "gptq_int4"},
                                                      "sources": {"gptq_int4": str(plain)}}), llama)
    assert loader.folded.norms == {} and loader.folded.column_scales == {}
