"""Upcycled MoE: Hub Mixtral names on disk, and the same logits as the dense model it came from."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from mpq_serving.errors import MPQError
from mpq_serving.models.hf_folder import safetensors_names
from mpq_serving.models.upcycle import moe_tensor_names, upcycle

EXPERTS, TOP_K = 4, 2


def _dense(path: Path, tied: bool) -> Path:
    config = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    return path


def _logits(folder: Path, dtype: torch.dtype, ids: torch.Tensor) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


def _assert_same_logits(dense: Path, moe: Path, vocab: int) -> None:
    ids = torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(1))
    # float32: the bf16 weights load exactly, and the normalised top-k weights sum to 1 up to float32
    # rounding (~1e-7 relative), so only rounding-level differences are allowed.
    ref, got = _logits(dense, torch.float32, ids), _logits(moe, torch.float32, ids)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    # bfloat16: each expert's weighted output w_k * y is rounded to bf16 (8 significant bits) before the
    # k copies are summed, so a layer's MLP output may move by ~1 ulp (2^-8 relative). Allow a few ulps
    # of the largest logit. (transformers 5.23 happens to give bit-identical logits here.)
    ref, got = _logits(dense, torch.bfloat16, ids), _logits(moe, torch.bfloat16, ids)
    torch.testing.assert_close(got, ref, rtol=0, atol=2**-6 * ref.abs().max().item())
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.99


@pytest.mark.parametrize("tied", [True, False])
def test_upcycled_tiny_llama_matches_dense(tmp_path, tied):
    dense = _dense(tmp_path / "dense", tied)
    moe = upcycle(dense, tmp_path / "moe", experts=EXPERTS, top_k=TOP_K, seed=0, progress=False)
    _assert_same_logits(dense, moe, vocab=512)
    model = AutoModelForCausalLM.from_pretrained(moe)
    assert isinstance(model, MixtralForCausalLM)
    assert model.config.num_local_experts == EXPERTS and model.config.num_experts_per_tok == TOP_K


def test_names_on_disk_are_hub_mixtral(tmp_path):
    dense = _dense(tmp_path / "dense", tied=True)
    moe = upcycle(dense, tmp_path / "moe", experts=EXPERTS, top_k=TOP_K, seed=0, progress=False)
    attention = [f"model.layers.{i}.{p}.weight" for i in range(2) for p in (
        "input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
        "self_attn.v_proj", "self_attn.o_proj")]
    expected = ["lm_head.weight", "model.embed_tokens.weight", "model.norm.weight", *attention,
                *moe_tensor_names(0, EXPERTS), *moe_tensor_names(1, EXPERTS)]
    assert safetensors_names(moe) == sorted(expected)
    config = json.loads((moe / "config.json").read_text())
    assert config["architectures"] == ["MixtralForCausalLM"] and config["tie_word_embeddings"] is False


def test_experts_are_copies_and_router_is_seeded(tmp_path):
    dense = _dense(tmp_path / "dense", tied=False)
    a = upcycle(dense, tmp_path / "a", experts=EXPERTS, top_k=TOP_K, seed=0, progress=False)
    b = upcycle(dense, tmp_path / "b", experts=EXPERTS, top_k=TOP_K, seed=1, progress=False)
    with safe_open(str(dense / "model.safetensors"), "pt") as d, safe_open(str(a / "model.safetensors"), "pt") as m:
        for w, proj in (("w1", "gate_proj"), ("w2", "down_proj"), ("w3", "up_proj")):
            for e in range(EXPERTS):
                assert torch.equal(m.get_tensor(f"model.layers.1.block_sparse_moe.experts.{e}.{w}.weight"),
                                   d.get_tensor(f"model.layers.1.mlp.{proj}.weight"))
        gate_a = m.get_tensor("model.layers.0.block_sparse_moe.gate.weight")
    with safe_open(str(b / "model.safetensors"), "pt") as m:
        gate_b = m.get_tensor("model.layers.0.block_sparse_moe.gate.weight")
    assert gate_a.shape == (EXPERTS, 128) and not torch.equal(gate_a, gate_b)
    assert 0.01 < gate_a.float().std() < 0.04  # small: initializer_range 0.02


def test_rejects_non_llama_and_bad_top_k(tmp_path):
    config = Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "qwen2")
    with pytest.raises(MPQError, match="qwen2"):
        upcycle(tmp_path / "qwen2", tmp_path / "out", progress=False)
    with pytest.raises(MPQError, match="top_k"):
        upcycle(_dense(tmp_path / "dense", tied=True), tmp_path / "out", experts=2, top_k=3, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_upcycled_smollm2_matches_dense(smollm2_dir, tmp_path):
    moe = upcycle(smollm2_dir, tmp_path / "moe", experts=8, top_k=2, seed=0, progress=False)
    _assert_same_logits(smollm2_dir, moe, vocab=49152)
