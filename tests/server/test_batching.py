"""Continuous batching: sequences that join and leave a padded decode batch produce exactly what they
produce alone; concurrent requests really share forwards; a full queue answers 503; clients that go
away free their slots; /metrics speaks vLLM's names."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import torch
from tiny_hf import save_tiny
from tiny_server import MODEL
from tokenizers import Tokenizer, models
from transformers import MistralConfig, PreTrainedTokenizerFast

from mpq_serving.loaders.hf_model import load_model
from mpq_serving.plan import plan_from_dict
from mpq_serving.server.decode_batch import DecodeBatch
from mpq_serving.server.generation import Generation, LanguageModel, SamplingParams
from mpq_serving.server.runner import serve_in_background

pytestmark = pytest.mark.slow

MIXED_PLANS = {
    "llama": {"mixed_precision": {"default": "gptq_int4", "weight_mapping": {
        "re:.*q_proj": "fp8", "re:.*down_proj": "int8", "re:.*layers\\.1\\.mlp\\..*": "mxfp4"}}},
    "qwen3_moe": {"mixed_precision": {"default": "int8", "weight_mapping": {
        "re:.*experts\\.0\\..*": "fp8", "re:.*experts\\.1\\..*": "gptq_int4", "re:.*experts\\.2\\..*": "mxfp4"}}},
}


def _word_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    """One word per id: enough to detokenize whatever a random model picks."""
    words = {f"w{i}": i for i in range(vocab)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(words, unk_token="w0")))


def _greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, logprobs=2)


@pytest.mark.parametrize("arch", ["llama", "qwen3_moe"])
def test_joining_and_leaving_rows_decode_as_they_would_alone(tmp_path, arch) -> None:
    """Prompts of different lengths join mid-way and finish at different steps (so the batch pads,
    selects rows and trims columns); every token and logprob equals the one-at-a-time reference."""
    folder = save_tiny(arch, tmp_path / arch)
    model = load_model(plan_from_dict(MIXED_PLANS[arch]), folder, dtype=torch.float32, progress=False)
    lm = LanguageModel(model, _word_tokenizer(96))
    rng = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 96, (n,), generator=rng).tolist() for n in (5, 17, 3, 9, 11)]
    budgets = [12, 4, 10, 7, 9]

    def logprob_of(delta) -> list[float]:
        return [] if delta is None else [entry.logprob for entry in delta.logprobs]

    alone, alone_logprobs = [], []
    for ids, budget in zip(prompts, budgets, strict=True):
        gen, seen = Generation(lm, ids, _greedy(budget), lm.rng(0)), []
        while gen.finish_reason is None:
            seen += logprob_of(gen.step())
        alone.append(gen)
        alone_logprobs.append(seen)

    batch = DecodeBatch(lm)
    together = [Generation(lm, ids, _greedy(b), lm.rng(0)) for ids, b in zip(prompts, budgets, strict=True)]
    together_logprobs: dict[int, list[float]] = {i: [] for i in range(len(prompts))}
    joins = {0: [0, 1], 2: [2], 3: [3, 4]}  # step number -> sequences that join before it
    step = 0
    while step in joins or len(batch):
        for i in joins.get(step, []):
            together_logprobs[i] += logprob_of(together[i].begin())
            batch.join(together[i])
        for gen, delta in zip(list(batch.gens), batch.step(), strict=True):
            together_logprobs[together.index(gen)] += logprob_of(delta)
        batch.drop_finished()
        step += 1
    for i, (one, many) in enumerate(zip(alone, together, strict=True)):
        assert many.ids == one.ids, f"sequence {i} diverged"
        assert many.finish_reason == one.finish_reason == "length"
        torch.testing.assert_close(together_logprobs[i], alone_logprobs[i], rtol=0, atol=1e-4)


def test_models_whose_cache_cannot_be_padded_decode_one_at_a_time() -> None:
    assert DecodeBatch.batchable(MistralConfig(num_hidden_layers=2, sliding_window=8)) is not None
    assert DecodeBatch.batchable(MistralConfig(num_hidden_layers=2, sliding_window=None)) is None


class _CountingForward:
    """Wraps a model's forward: records each call's batch size and can slow every call down."""

    def __init__(self, model, delay: float = 0.0) -> None:
        self.forward, self.delay = model.forward, delay
        self.rows: list[int] = []

    def __call__(self, *args, **kwargs):
        self.rows.append(int(kwargs["input_ids"].shape[0]))
        time.sleep(self.delay)
        return self.forward(*args, **kwargs)


@pytest.fixture()
def counted(model, monkeypatch) -> _CountingForward:
    wrapper = _CountingForward(model)
    monkeypatch.setattr(model, "forward", wrapper)
    return wrapper


@pytest.fixture()
def small_server(model, tokenizer) -> Iterator[httpx.Client]:
    """Two slots, one waiting place: easy to fill."""
    with serve_in_background(model, tokenizer, MODEL, max_num_seqs=2, max_waiting=1) as url:
        with httpx.Client(base_url=url.removesuffix("/v1"), timeout=30) as client:
            yield client


def _complete(http: httpx.Client, prompt: str, max_tokens: int = 12) -> list[int]:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "logprobs": 0}
    r = http.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["logprobs"]["tokens"]


def test_concurrent_requests_share_forwards_and_match_sequential(model, tokenizer, monkeypatch) -> None:
    prompts = [f"Request {i}: the quick" + " brown" * i for i in range(8)]
    with serve_in_background(model, tokenizer, MODEL) as url, httpx.Client(
        base_url=url.removesuffix("/v1"), timeout=60
    ) as http:
        sequential = [_complete(http, p) for p in prompts]
        counter = _CountingForward(model, delay=0.005)
        monkeypatch.setattr(model, "forward", counter)
        results: dict[int, list[int]] = {}
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, _complete(http, prompts[i])))
                   for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [results[i] for i in range(len(prompts))] == sequential
    assert max(counter.rows) > 1, "the concurrent requests never shared a forward"
    assert len(counter.rows) < len(prompts) * 12  # fewer forwards than one per token per request


def test_full_queue_answers_503_with_retry_after_and_frees_on_close(small_server, model, monkeypatch) -> None:
    monkeypatch.setattr(model, "forward", _CountingForward(model, delay=0.02))
    body = {"model": MODEL, "prompt": "The", "max_tokens": 100, "temperature": 0, "ignore_eos": True, "stream": True}
    streams = [small_server.stream("POST", "/v1/completions", json=body) for _ in range(3)]
    opened = [s.__enter__() for s in streams]  # two running, one waiting
    assert all(r.status_code == 200 for r in opened)
    refused = small_server.post("/v1/completions", json={**body, "stream": False, "max_tokens": 2})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "--max-waiting 1" in refused.json()["error"]["message"]
    too_many = small_server.post("/v1/completions", json={**body, "stream": False, "max_tokens": 2, "n": 4})
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "n"
    for s in streams:
        s.__exit__(None, None, None)
    deadline = time.monotonic() + 10
    while (r := small_server.post("/v1/completions", json={**body, "stream": False, "max_tokens": 2})).status_code \
            == 503 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


def test_dropped_non_streaming_request_is_cancelled(small_server, counted) -> None:
    counted.delay = 0.02
    body = {"model": MODEL, "prompt": "The", "max_tokens": 120, "temperature": 0, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        small_server.post("/v1/completions", json=body, timeout=0.3)
    time.sleep(0.3)
    calls = len(counted.rows)
    time.sleep(0.3)
    assert len(counted.rows) == calls < 60, "the abandoned request kept decoding"


def _metric(text: str, name: str) -> float:
    match = re.search(rf'^{re.escape(name)}\{{model_name="{MODEL}"[^}}]*\}} (\S+)$', text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match[1])


def test_metrics_use_vllm_names(small_server) -> None:
    _complete(small_server, "The quick", max_tokens=5)
    r = small_server.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert _metric(text, "vllm:num_requests_running") == 0
    assert _metric(text, "vllm:num_requests_waiting") == 0
    assert _metric(text, "vllm:generation_tokens_total") >= 5
    assert _metric(text, "vllm:prompt_tokens_total") > 0
    assert _metric(text, "vllm:time_to_first_token_seconds_count") >= 1
    assert _metric(text, "vllm:inter_token_latency_seconds_count") >= 4
    assert _metric(text, "vllm:e2e_request_latency_seconds_count") >= 1
    assert 'vllm:request_success_total{finished_reason="length",model_name="tiny-llama"}' in text
