"""SGLang serves a tiny Qwen3-MoE whose experts inside each layer have five different formats.

Random weights (a structure test): SGLang's FusedMoE layers run `MpqFusedMoEMethod` (experts 0-1 fp8,
2-3 mxfp4, 4-5 gptq_int4, 6 awq_int4, 7 int8 in every layer; attention mxfp8 / bf16), and the
outputs are compared with our HF path on the same packed checkpoint (tolerance: engine_compare.py).
"""

from __future__ import annotations

import json

import openai
import pytest
from servers import SglangServer
from engine_compare import assert_greedy_matches_hf, assert_prompt_logprobs_match_hf

PROMPT_IDS = [1, 504, 3575, 282, 4649, 314, 7042, 30, 378, 4256, 282, 260, 1345, 314, 2574, 4258, 355, 1341, 30]


@pytest.fixture(scope="module")
def server(packed_tiny_moe, tmp_path_factory):
    with SglangServer(packed_tiny_moe, tmp_path_factory.mktemp("sglang-tiny-moe"), ["--skip-server-warmup"]) as s:
        yield s


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", timeout=600)


@pytest.fixture(scope="module")
def model_id(client) -> str:
    return client.models.list().data[0].id


def test_experts_of_one_layer_have_five_formats(packed_tiny_moe):
    modules = json.loads((packed_tiny_moe / "config.json").read_text())["quantization_config"]["modules"]
    layer0 = {modules[f"model.layers.0.mlp.experts.{e}.down_proj"]["format"] for e in range(8)}
    assert layer0 == {"fp8", "mxfp4", "gptq_int4", "awq_int4", "int8"}


def test_config_quant_method_selects_the_plugin(server, client, model_id):
    """No --quantization flag: config.json's quant_method "mpq" picks the plugin; every expert format ran."""
    client.completions.create(model=model_id, prompt=PROMPT_IDS, max_tokens=1, temperature=0)  # routes to all 8
    log = server.log_path.read_text()
    assert "quant=mpq" in log
    for label in ("fp8 channel with", "mxfp4 g32 with", "gptq_int4 g64 with", "awq_int4 g64", "int8 ",
                  "mxfp8 g32 with"):
        assert label in log, f"no weight in {label.removesuffix(' with')!r} ran through mpq's kernels"


def test_prompt_logprobs_match_the_hf_path(client, model_id, packed_tiny_moe):
    assert_prompt_logprobs_match_hf(client, model_id, packed_tiny_moe, PROMPT_IDS)


def test_greedy_output_matches_the_hf_path(server, packed_tiny_moe):
    assert_greedy_matches_hf(server.base_url, packed_tiny_moe, PROMPT_IDS, n=6)
