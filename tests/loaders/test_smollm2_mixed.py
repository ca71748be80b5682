"""Mixed SmolLM2 on the HF path: exact against the dequantized model, and served over HTTP by `mpq serve`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from tiny_hf import dequantized_reference

from mpq_serving.loaders.hf_model import load_model
from mpq_serving.loaders.pack import pack
from mpq_serving.plan import load_plan, resolve
from mpq_serving.plan.model_weights import linear_weights

REPO = Path(__file__).resolve().parents[2]
PLAN = REPO / "configs" / "smollm2_mixed.yaml"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def packed(smollm2_dir, tmp_path_factory) -> Path:
    return pack(load_plan(PLAN), tmp_path_factory.mktemp("packed") / "smollm2-mixed", smollm2_dir, progress=False)


def test_mixed_logits_equal_dequantize_everything_in_fp32(smollm2_dir):
    plan = load_plan(PLAN)
    formats = {r.spec.format for r in resolve(plan, [w.name for w in linear_weights(smollm2_dir)]).values()}
    assert {"fp8", "gptq_int4", "awq_int4", "mxfp4", "int8", "bf16"} <= formats
    ids = torch.randint(0, 49152, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        mixed = load_model(plan, smollm2_dir, dtype=torch.float32, progress=False)(ids).logits
        reference = dequantized_reference(smollm2_dir, plan)(ids).logits
    rel = (mixed - reference).abs().max() / reference.abs().max()
    assert rel < 1e-3, f"relative error {rel:.2e}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mpq_serve_hf_answers_openai_requests(packed):
    from openai import BadRequestError, OpenAI

    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mpq_serving.cli.main", "serve", str(packed), "--engine", "hf",
                             "--port", str(port), "--served-model-name", "smollm2-mixed"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "server did not start"
            time.sleep(1)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        assert [m.id for m in client.models.list().data] == ["smollm2-mixed"]
        chat = client.chat.completions.create(model="smollm2-mixed", max_tokens=12, temperature=0,
                                              messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert chat.choices[0].message.content.strip()
        assert chat.usage.completion_tokens <= 12
        # the README's snippet (no temperature: the folder's sampling, 0.2 / top_p 0.9), seeded to be repeatable
        readme = client.chat.completions.create(model="smollm2-mixed", max_tokens=32, seed=0,
                                                messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in readme.choices[0].message.content, readme.choices[0].message.content
        text = client.completions.create(model="smollm2-mixed", prompt="The capital of France is", max_tokens=8,
                                         temperature=0).choices[0].text
        streamed = "".join(c.choices[0].text for c in client.completions.create(
            model="smollm2-mixed", prompt="The capital of France is", max_tokens=8, temperature=0, stream=True))
        assert streamed == text and text.strip()
        with pytest.raises(BadRequestError):
            client.completions.create(model="smollm2-mixed", prompt="hi", max_tokens=-1)
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
