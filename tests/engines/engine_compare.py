"""An engine's logprobs and greedy output against our HF path on the same packed checkpoint, and the tolerance.

The engine and the HF path both run bf16 activations, but with different attention kernels, fused vs
separate q/k/v and gate/up projections, the engines' own int4 kernels for GPTQ/AWQ layers and
different summation orders, so logprobs differ by bf16 rounding carried through the layers. The
tolerance is measured, not guessed: the HF path in bf16 against the same HF path in float32
(identical weights, only the arithmetic precision differs) gives the size of that noise; engine-vs-HF
must stay within 3x it plus 0.02 nats (mean over the prompt), against both. A wrongly read format
(a scale, the packing order, an expert mix-up) moves logprobs by whole nats, far outside this bound.
Greedy continuations must be identical token for token, except after a step where HF's own top two
candidates are within that noise of each other (a near tie either side may break differently).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import httpx
import openai
import torch


def served_prompt_logprobs(client: openai.OpenAI, model_id: str, ids: list[int]) -> torch.Tensor:
    """log p(ids[i] | ids[:i]) for i >= 1, as the engine computes them (echo + logprobs)."""
    r = client.completions.create(model=model_id, prompt=ids, max_tokens=1, echo=True, logprobs=1, temperature=0)
    return torch.tensor(r.choices[0].logprobs.token_logprobs[1:len(ids)], dtype=torch.float64)


@lru_cache(maxsize=2)
def hf_model(packed: Path, dtype: torch.dtype):
    from mpq_serving.loaders.hf_model import load_model

    return load_model(packed, dtype=dtype, progress=False)


def hf_prompt_logprobs(packed: Path, ids: list[int], dtype: torch.dtype) -> torch.Tensor:
    with torch.inference_mode():
        logits = hf_model(packed, dtype)(torch.tensor([ids])).logits[0, :-1].float()
    lp = torch.log_softmax(logits, dim=-1)
    return lp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0].double()


def noise_bound(packed: Path, ids: list[int]) -> float:
    """3x the mean |HF bf16 - HF fp32| prompt logprob difference, plus 0.02 nats."""
    noise = (hf_prompt_logprobs(packed, ids, torch.bfloat16) - hf_prompt_logprobs(packed, ids, torch.float32)).abs()
    return 3 * noise.mean().item() + 0.02


def assert_prompt_logprobs_match_hf(client: openai.OpenAI, model_id: str, packed: Path, ids: list[int]) -> float:
    """Mean |engine - HF bf16| over the prompt, asserted within `noise_bound` (and the same against HF
    float32); returned for the report."""
    served = served_prompt_logprobs(client, model_id, ids)
    bound = noise_bound(packed, ids)
    diffs = {}
    for dtype in (torch.bfloat16, torch.float32):
        gap = (served - hf_prompt_logprobs(packed, ids, dtype)).abs()
        diffs[dtype] = gap.mean().item()
        print(f"mean |engine - HF {dtype}| prompt logprob {diffs[dtype]:.4f} nats (bound {bound:.4f}), "
              f"max {gap.max():.4f}")
        assert diffs[dtype] <= bound, f"engine vs HF {dtype}: {diffs[dtype]:.4f} nats > {bound:.4f}"
    return diffs[torch.bfloat16]


def assert_random_model_served_like_hf(base_url: str, packed: Path) -> None:
    """For a model with random weights (any tokens will do): prompt logprobs match HF, and a completion of
    8 tokens comes back."""
    client = openai.OpenAI(base_url=base_url, api_key="unused", timeout=300)
    model_id = client.models.list().data[0].id
    ids = list(range(1000, 1064))
    assert_prompt_logprobs_match_hf(client, model_id, packed, ids)
    r = client.completions.create(model=model_id, prompt=ids, max_tokens=8, temperature=0)
    assert r.usage.completion_tokens == 8


def served_greedy_ids(base_url: str, ids: list[int], n: int) -> list[int]:
    """SGLang's greedy continuation of `ids` as token ids (its native /generate endpoint returns ids)."""
    root = base_url.removesuffix("/v1")
    r = httpx.post(f"{root}/generate", timeout=600, json={
        "input_ids": ids, "sampling_params": {"max_new_tokens": n, "temperature": 0, "ignore_eos": True}})
    r.raise_for_status()
    return r.json()["output_ids"]


def assert_greedy_matches_hf(base_url: str, packed: Path, ids: list[int], n: int) -> int:
    """SGLang's greedy continuation equals HF's, up to the first near tie in HF's own logits.

    Returns how many tokens were compared equal."""
    served = served_greedy_ids(base_url, ids, n)
    assert len(served) == n
    tie = noise_bound(packed, ids)
    seq = list(ids)
    model = hf_model(packed, torch.bfloat16)
    with torch.inference_mode():
        for step, token in enumerate(served):
            logits = model(torch.tensor([seq])).logits[0, -1].float()
            top2 = torch.topk(torch.log_softmax(logits, -1), 2)
            if token != top2.indices[0].item():
                gap = (top2.values[0] - top2.values[1]).item()
                assert gap <= tie, (f"step {step}: SGLang chose {token}, HF {top2.indices[0].item()} with a "
                                    f"{gap:.3f}-nat lead (> near-tie bound {tie:.3f})")
                print(f"greedy: {step} tokens identical to HF, then a near tie ({gap:.3f} nats)")
                return step
            seq.append(token)
    print(f"greedy: {len(served)} tokens identical to HF")
    return len(served)
