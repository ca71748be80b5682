"""Prompt logprobs from a running vLLM server and from our HF path, and the tolerance between them.

Both run bf16 activations but with different attention kernels, different matmul kernels (vLLM's own
int4 CPU kernel for GPTQ/AWQ layers) and summation orders, so logprobs differ by bf16 rounding
carried through the layers. The tolerance is measured, not guessed: the HF path in bf16 against the
same HF path in float32 (identical weights, only arithmetic precision differs) gives the size of that
noise; vLLM-vs-HF must stay within 3x it plus 0.02 nats (mean over the prompt). A wrongly read format
(scale, packing order, expert mix-up) moves logprobs by whole nats, far outside this bound.
"""

from __future__ import annotations

from pathlib import Path

import openai
import torch


def served_prompt_logprobs(client: openai.OpenAI, model_id: str, ids: list[int]) -> torch.Tensor:
    """log p(ids[i] | ids[:i]) for i >= 1, as vLLM computes them (echo + logprobs)."""
    r = client.completions.create(model=model_id, prompt=ids, max_tokens=1, echo=True, logprobs=0, temperature=0)
    return torch.tensor(r.choices[0].logprobs.token_logprobs[1:len(ids)], dtype=torch.float64)


def hf_prompt_logprobs(packed: Path, ids: list[int], dtype: torch.dtype) -> torch.Tensor:
    from mpq_serving.loaders.hf_model import load_model

    model = load_model(packed, dtype=dtype, progress=False)
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    lp = torch.log_softmax(logits, dim=-1)
    return lp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0].double()


def assert_matches_hf(client: openai.OpenAI, model_id: str, packed: Path, ids: list[int]) -> None:
    served = served_prompt_logprobs(client, model_id, ids)
    hf_bf16 = hf_prompt_logprobs(packed, ids, torch.bfloat16)
    hf_fp32 = hf_prompt_logprobs(packed, ids, torch.float32)
    noise = (hf_bf16 - hf_fp32).abs().mean().item()
    vs_bf16 = (served - hf_bf16).abs().mean().item()
    vs_fp32 = (served - hf_fp32).abs().mean().item()
    print(f"mean |vLLM - HF bf16| {vs_bf16:.4f}, |vLLM - HF fp32| {vs_fp32:.4f}; HF bf16 vs fp32 {noise:.4f} nats")
    bound = 3 * noise + 0.02
    assert vs_bf16 <= bound, f"vLLM vs HF bf16: {vs_bf16:.4f} nats > {bound:.4f}"
    assert vs_fp32 <= bound, f"vLLM vs HF fp32: {vs_fp32:.4f} nats > {bound:.4f}"
