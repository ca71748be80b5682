"""vLLM serves a tiny Qwen3-MoE whose experts inside each layer have five different formats,
started the way a user does: `mpq serve PLAN --model BASE --engine vllm` (packs, then runs vLLM).

Random weights (structure test): the outputs are compared with our HF path on the same packed
checkpoint. This server runs vLLM's default compile mode (no --enforce-eager): the MoE method and
the mixed linears are `torch.ops.mpq.*` custom ops with fake implementations, so torch.compile
traces around the per-expert loop instead of failing on its data-dependent shapes.
"""

from __future__ import annotations

import sys

import pytest
import yaml
from servers import VllmServer
from engine_compare import assert_random_model_served_like_hf

PLAN = {"mixed_precision": {
    "default": {"format": "mxfp8"},
    "weight_mapping": {
        r"re:model\.layers\.\d+\.mlp\.experts\.[01]\..*": {"format": "fp8", "granularity": "channel"},
        r"re:model\.layers\.\d+\.mlp\.experts\.[23]\..*": "mxfp4",
        r"re:model\.layers\.\d+\.mlp\.experts\.[45]\..*": {"format": "gptq_int4", "group_size": 64},
        r"re:model\.layers\.\d+\.mlp\.experts\.6\..*": {"format": "awq_int4", "group_size": 64},
        r"re:model\.layers\.\d+\.mlp\.experts\.7\..*": "int8",
        r"re:model\.layers\.\d+\.self_attn\.o_proj": "bf16",
    },
}}


@pytest.fixture(scope="module")
def plan_and_base(smollm2_dir, tmp_path_factory):
    from mpq_serving.models.tiny import build_tiny

    tmp = tmp_path_factory.mktemp("tiny-moe")
    base = build_tiny("qwen3-moe", tmp / "base")  # smollm2_dir first: its tokenizer is copied in
    plan = tmp / "tiny_moe_plan.yaml"
    plan.write_text(yaml.safe_dump(PLAN))
    return plan, base


@pytest.fixture(scope="module")
def server(plan_and_base, tmp_path_factory):
    plan, base = plan_and_base
    launcher = [sys.executable, "-m", "mpq_serving.cli.main", "serve", str(plan), "--model", str(base),
                "--engine", "vllm"]
    with VllmServer(None, tmp_path_factory.mktemp("vllm-tiny-moe"), [], launcher=launcher) as s:  # compile mode
        yield s


@pytest.fixture(scope="module")
def packed(server, plan_and_base):
    """The folder `mpq serve` packed the plan into (cached by plan content + base model)."""
    from mpq_serving.integrations.common.launch import packed_for_plan

    return packed_for_plan(*plan_and_base)


def test_experts_of_one_layer_have_five_formats(packed, server):
    import json

    modules = json.loads((packed / "config.json").read_text())["quantization_config"]["modules"]
    layer0 = {modules[f"model.layers.0.mlp.experts.{e}.down_proj"]["format"] for e in range(8)}
    assert layer0 == {"fp8", "mxfp4", "gptq_int4", "awq_int4", "int8"}


def test_served_in_compile_mode_with_our_moe_method(server):
    log = server.log_path.read_text()
    assert "mpq-serving's grouped-by-format MoE" in log
    assert "Compil" in log and "enforce_eager=False" in log


def test_prompt_logprobs_match_the_hf_path(server, packed):
    assert_random_model_served_like_hf(server.base_url, packed)
