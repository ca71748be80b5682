"""An OpenAI-client load generator: streaming completions at a fixed concurrency, latency percentiles.

Each level keeps `concurrency` requests in flight (asyncio workers over one `AsyncOpenAI` client) until
`requests` have finished.  Per request it records the time to the first streamed token (TTFT), the gaps
between later streamed chunks (inter-token latency, ITL; engines stream one token per chunk), and the
output tokens the server reports (`stream_options.include_usage`, else the chunk count).  A level
reports requests/s and output tokens/s over its wall time, and p50 / p90 / p99 of TTFT and ITL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from openai import AsyncOpenAI


@dataclass
class RequestResult:
    ok: bool
    ttft_s: float = float("nan")
    gaps_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    latency_s: float = float("nan")
    error: str = ""


@dataclass
class LevelResult:
    target: str
    concurrency: int
    requests: int
    failed: int
    wall_s: float
    requests_per_s: float
    output_tokens_per_s: float
    ttft_ms: dict[str, float]
    itl_ms: dict[str, float]
    first_error: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


PERCENTILES = (50, 90, 99)


def percentiles_ms(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {f"p{p}": float("nan") for p in PERCENTILES}
    arr = np.asarray(values) * 1e3
    return {f"p{p}": float(np.percentile(arr, p)) for p in PERCENTILES}


async def one_request(client: AsyncOpenAI, model: str, prompt: str, max_tokens: int, extra_body: dict) -> RequestResult:
    """One streamed completion; failures are recorded, not raised, so a level always finishes."""
    start = time.perf_counter()
    stamps: list[float] = []
    usage_tokens = None
    try:
        stream = await client.completions.create(
            model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0, stream=True,
            stream_options={"include_usage": True}, extra_body=extra_body,
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                stamps.append(time.perf_counter())
            if chunk.usage is not None:
                usage_tokens = chunk.usage.completion_tokens
    except Exception as e:  # noqa: BLE001 - any client or server failure counts as a failed request
        return RequestResult(ok=False, error=f"{type(e).__name__}: {e}")
    end = time.perf_counter()
    if not stamps:
        return RequestResult(ok=False, error="the stream carried no text")
    return RequestResult(
        ok=True, ttft_s=stamps[0] - start, gaps_s=list(np.diff(stamps)),
        output_tokens=usage_tokens if usage_tokens is not None else len(stamps), latency_s=end - start,
    )


async def run_level(
    base_url: str, model: str, target: str, concurrency: int, prompts: Sequence[str], requests: int,
    max_tokens: int, extra_body: dict | None = None, timeout_s: float = 600.0,
) -> LevelResult:
    """`requests` streamed completions, `concurrency` at a time; prompts are used round-robin."""
    client = AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=timeout_s)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(prompts[i % len(prompts)])
    results: list[RequestResult] = []

    async def worker() -> None:
        while not queue.empty():
            prompt = queue.get_nowait()
            results.append(await one_request(client, model, prompt, max_tokens, extra_body or {}))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, requests))))
    wall = time.perf_counter() - start
    await client.close()
    ok = [r for r in results if r.ok]
    errors = [r.error for r in results if not r.ok]
    return LevelResult(
        target=target, concurrency=concurrency, requests=len(results), failed=len(errors), wall_s=wall,
        requests_per_s=len(ok) / wall, output_tokens_per_s=sum(r.output_tokens for r in ok) / wall,
        ttft_ms=percentiles_ms([r.ttft_s for r in ok]), itl_ms=percentiles_ms([g for r in ok for g in r.gaps_s]),
        first_error=errors[0] if errors else "",
    )


async def served_model(base_url: str) -> str:
    """The first model id the server lists (what requests must name)."""
    client = AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
    try:
        models = await client.models.list()
        return models.data[0].id
    finally:
        await client.close()
