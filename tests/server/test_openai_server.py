"""The embedded OpenAI-compatible server, end to end: a real uvicorn server on a free port, spoken to over
HTTP by the `openai` client, serving a tiny random Llama and a byte-level BPE tokenizer trained here."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from mpq_serving.server.generation import IncrementalDetokenizer
from mpq_serving.server.runner import serve_in_background

pytestmark = pytest.mark.slow

from tiny_server import MAX_LEN, MODEL


@pytest.fixture(scope="module")
def base_url(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast) -> Iterator[str]:
    with serve_in_background(model, tokenizer, MODEL) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url.removesuffix("/v1"), timeout=30) as c:
        yield c


def _reference_greedy(model: LlamaForCausalLM, ids: list[int], max_new_tokens: int) -> list[int]:
    out = model.generate(
        torch.tensor([ids]), do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=model.config.eos_token_id
    )
    return out[0, len(ids) :].tolist()


def _full_logprobs(model: LlamaForCausalLM, ids: list[int]) -> torch.Tensor:
    """Logprob of each token given its prefix, from one plain forward pass (no cache)."""
    with torch.no_grad():
        logprobs = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return logprobs[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def test_detokenizer_holds_back_partial_characters(tokenizer: PreTrainedTokenizerFast) -> None:
    text = "Ω≈ç√∫ 🚀 naïve 日本"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert len(ids) > len(text)  # unseen characters are split into byte tokens
    detok = IncrementalDetokenizer(tokenizer, tokenizer("Say:").input_ids)
    pieces = [detok.add(i) for i in ids]
    assert "".join(pieces) + detok.flush() == text
    assert not any("\ufffd" in piece for piece in pieces)


def test_models_and_health(client: openai.OpenAI, http: httpx.Client) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert http.get("/health").status_code == 200


def test_greedy_completion_matches_transformers(client: openai.OpenAI, model, tokenizer) -> None:
    prompt = "The quick brown fox"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
    expected_ids = _reference_greedy(model, tokenizer(prompt).input_ids, 12)
    assert r.choices[0].text == tokenizer.decode(expected_ids, skip_special_tokens=True)
    assert r.choices[0].finish_reason == ("stop" if expected_ids[-1] == tokenizer.eos_token_id else "length")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(tokenizer(prompt).input_ids), len(expected_ids))


def test_echo_logprobs_equal_a_forward_pass(client: openai.OpenAI, model, tokenizer) -> None:
    prompt = "Mixed-precision quantization, ça va? 🙂"
    ids = tokenizer(prompt).input_ids
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=0, echo=True, logprobs=3)
    choice = r.choices[0]
    assert choice.text == prompt and r.usage.completion_tokens == 0
    lp = choice.logprobs
    assert len(lp.tokens) == len(ids) and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    torch.testing.assert_close(torch.tensor(lp.token_logprobs[1:]), _full_logprobs(model, ids), rtol=0, atol=1e-5)
    assert all(len(top) <= 4 and token in top for token, top in zip(lp.tokens[1:], lp.top_logprobs[1:], strict=True))


def test_generated_logprobs_follow_the_sequence(client: openai.OpenAI, model, tokenizer) -> None:
    """Prompt given as token ids, echoed: every logprob, prompt and generated, matches one full forward."""
    ids = tokenizer("The lazy dog").input_ids
    new_ids = _reference_greedy(model, ids, 6)
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=6, temperature=0, echo=True, logprobs=1)
    got = torch.tensor(r.choices[0].logprobs.token_logprobs[1:])
    torch.testing.assert_close(got, _full_logprobs(model, ids + new_ids), rtol=0, atol=1e-4)
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    for entry in chat.choices[0].logprobs.content:  # greedy picks the most likely token
        assert len(entry.top_logprobs) == 2 and entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)


def test_streaming_concatenates_to_the_greedy_text(client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL, prompt="naïve 日本 🙂", max_tokens=24, temperature=0)
    full = client.completions.create(**kwargs)
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
    assert chunks[-1].usage == full.usage

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Héllo wörld"}]
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
    stream = list(
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0, stream=True)
    )
    assert stream[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in stream) == chat.choices[0].message.content
    assert stream[-1].choices[0].finish_reason == chat.choices[0].finish_reason


def test_stop_strings_cut_the_text(client: openai.OpenAI) -> None:
    kwargs = dict(
        model=MODEL, prompt="The quick brown fox", max_tokens=30, temperature=0, extra_body={"ignore_eos": True}
    )
    text = client.completions.create(**kwargs).choices[0].text
    stop = next(text[i : i + 2] for i in range(3, len(text) - 2) if "\ufffd" not in text[i : i + 2])
    expected = text[: text.find(stop)]
    for extra in ({}, {"stream": True}):
        r = client.completions.create(**kwargs, stop=["never matches", stop], **extra)
        chunks = list(r) if extra else [r]
        assert "".join(c.choices[0].text for c in chunks) == expected
        assert (chunks[-1].choices[0].finish_reason, chunks[-1].choices[0].stop_reason) == ("stop", stop)


def test_seeded_sampling_and_n(client: openai.OpenAI) -> None:
    kwargs = dict(
        model=MODEL, prompt="The", max_tokens=10, temperature=1.0, top_p=0.9, seed=7, n=3, extra_body={"top_k": 50}
    )
    first, second = client.completions.create(**kwargs), client.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.text for c in first.choices] == [c.text for c in second.choices]
    assert len({c.text for c in first.choices}) > 1  # the n samples share one generator, not one seed each


def test_sixteen_concurrent_streams(base_url: str) -> None:
    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[str, str | None]:
        stream = await client.completions.create(
            model=MODEL, prompt=f"Request {i}:", max_tokens=16, temperature=0, stream=True
        )
        text, finish = "", None
        async for chunk in stream:
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
        return text, finish

    async def main() -> list[tuple[str, str | None]]:
        async with openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0) as client:
            return await asyncio.wait_for(asyncio.gather(*(one(client, i) for i in range(16))), timeout=60)

    results = asyncio.run(main())
    assert len(results) == 16 and all(finish in ("stop", "length") for _, finish in results)


def test_abandoned_stream_stops_and_frees_the_model(http: httpx.Client, model, monkeypatch) -> None:
    forward, calls = model.forward, 0

    def slow_forward(*args, **kwargs):
        nonlocal calls
        calls += 1
        time.sleep(0.01)
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", slow_forward)
    body = {"model": MODEL, "prompt": "The", "max_tokens": 100, "temperature": 0, "ignore_eos": True, "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as response:
        next(response.iter_lines())
    r = http.post("/v1/completions", json={**body, "stream": False, "max_tokens": 2}, timeout=10)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    assert calls < 50  # the disconnect cancelled the first generation well before its 100 tokens


TOO_LONG = "The quick brown fox jumps over the lazy dog. " * 20
BAD_REQUESTS = [
    ("invalid-json", "/v1/completions", b'{"model": "tiny-llama", "prompt": ', 400, None),
    ("missing-prompt", "/v1/completions", {"model": MODEL}, 400, "prompt"),
    ("missing-messages", "/v1/chat/completions", {"model": MODEL}, 400, "messages"),
    ("missing-model", "/v1/completions", {"prompt": "hi"}, 400, "model"),
    ("max-tokens-type", "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": "many"}, 400, "max_tokens"),
    ("messages-type", "/v1/chat/completions", {"model": MODEL, "messages": "hi"}, 400, "messages"),
    ("negative-max-tokens", "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": -1}, 400, "max_tokens"),
    (
        "negative-temperature",
        "/v1/completions",
        {"model": MODEL, "prompt": "hi", "temperature": -1},
        400,
        "temperature",
    ),
    ("prompt-too-long", "/v1/completions", {"model": MODEL, "prompt": TOO_LONG}, 400, "prompt"),
    ("stream-too-long", "/v1/completions", {"model": MODEL, "prompt": TOO_LONG, "stream": True}, 400, "prompt"),
    (
        "chat-too-long",
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": TOO_LONG}]},
        400,
        "messages",
    ),
    ("budget-too-long", "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": MAX_LEN}, 400, "max_tokens"),
    ("unknown-model", "/v1/completions", {"model": "gpt-9", "prompt": "hi"}, 404, "model"),
    ("too-many-logprobs", "/v1/completions", {"model": MODEL, "prompt": "hi", "logprobs": 21}, 400, "logprobs"),
    ("token-out-of-vocab", "/v1/completions", {"model": MODEL, "prompt": [1, 10**6]}, 400, "prompt"),
    (
        "top-logprobs-alone",
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2},
        400,
        None,
    ),
    (
        "tools",
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]},
        400,
        "tools",
    ),
    (
        "stream-options-alone",
        "/v1/completions",
        {"model": MODEL, "prompt": "hi", "stream_options": {"include_usage": True}},
        400,
        None,
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "param"), [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_requests_get_openai_errors(http: httpx.Client, path: str, body, status: int, param: str | None) -> None:
    if isinstance(body, bytes):
        r = http.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = http.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    assert http.get("/health").status_code == 200


def test_client_sees_typed_errors_and_unknown_routes(client: openai.OpenAI, http: httpx.Client) -> None:
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="hi", max_tokens=-1)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-9", prompt="hi")
    assert http.get("/v1/nope").json()["error"]["type"] == "invalid_request_error"
    assert client.completions.create(model=MODEL, prompt="hi", max_tokens=2).usage.completion_tokens <= 2


def test_server_errors_are_500_and_the_server_survives(
    client: openai.OpenAI, http: httpx.Client, model, monkeypatch
) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(model, "forward", broken)
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
    assert r.status_code == 500 and "kernel exploded" in r.json()["error"]["message"]
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2, "stream": True})
    events = [line.removeprefix("data: ") for line in r.text.splitlines() if line.startswith("data: ")]
    assert "kernel exploded" in json.loads(events[0])["error"]["message"] and events[-1] == "[DONE]"
    monkeypatch.undo()
    assert client.completions.create(model=MODEL, prompt="hi", max_tokens=2).choices[0].finish_reason is not None


def test_unset_sampling_fields_take_the_models_generation_config(model, tokenizer, tmp_path) -> None:
    """As vLLM does by default: a request without temperature uses generation_config.json's (greedy here)."""
    import copy

    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.0, "top_k": 5}))
    served = copy.deepcopy(model)
    served.config._name_or_path = str(tmp_path)
    with serve_in_background(served, tokenizer, MODEL) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        kwargs = {"model": MODEL, "prompt": "The quick", "max_tokens": 12}
        greedy = client.completions.create(**kwargs, temperature=0.0).choices[0].text
        defaults = {client.completions.create(**kwargs, seed=s).choices[0].text for s in (1, 2, 3)}
        sampled = {client.completions.create(**kwargs, seed=s, temperature=1.0,
                                                    extra_body={"top_k": 0}).choices[0].text for s in (1, 2, 3)}
    assert defaults == {greedy}
    assert len(sampled) > 1  # an explicit field still wins over the default


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens(model, tokenizer) -> None:
    """vLLM's rule, over prompt and output tokens: greedy moves off a seen token only through the penalty."""
    from mpq_serving.server.generation import Generation, LanguageModel, SamplingParams

    lm = LanguageModel(model, tokenizer)

    def greedy(penalty: float, logits: list[float]) -> int:
        gen = Generation(lm, [3, 7], SamplingParams(max_tokens=1, temperature=0.0, repetition_penalty=penalty), lm.rng(0))
        full = torch.full((lm.vocab_size,), -5.0)
        full[[3, 4, 7, 8]] = torch.tensor(logits)
        return gen._sample(full)

    assert greedy(1.0, [2.0, 1.5, -5.0, -5.0]) == 3
    assert greedy(2.0, [2.0, 1.5, -5.0, -5.0]) == 4  # seen 3: 2.0 / 2 = 1.0 < 1.5
    assert greedy(1.0, [-5.0, -5.0, -0.1, -0.15]) == 7
    assert greedy(2.0, [-5.0, -5.0, -0.1, -0.15]) == 8  # seen 7: -0.1 * 2 = -0.2 < -0.15
