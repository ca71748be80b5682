"""Load benchmark of a served mixed model: 64 concurrent streaming chats, concurrency 8 against 1, and
a wave of clients that disconnect mid-stream followed by normal requests.

    python benchmarks/serve_load.py [--engine hf --engine vllm --engine sglang] [--plan configs/smollm2_mixed.yaml]

Per engine it packs the plan once (cached), starts `mpq serve --engine E` on 127.0.0.1 and measures:
- **64 streams**: 64 concurrent streaming chat completions of 64 tokens (ignore_eos); each stream must
  be well formed (every event JSON, the role first, one finish_reason, usage = 64 tokens, `[DONE]` last).
- **c8 / c1**: output tokens/s at concurrency 8 against concurrency 1, interleaved (c1 c8 c1 c8) in the
  same run, ratio of medians (target for the hf engine: >= 3x).
- **disconnects**: 16 streams of which 8 hang up after 4 chunks; then normal requests, whose median
  latency is compared with the same requests measured before the wave (1.0 = unaffected), and the
  server's `vllm:num_requests_running` right after the wave where it exports it.

Results go to stdout and, with --out, to a markdown table and a JSON file beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from mpq_serving.bench.load_gen import run_level
from mpq_serving.bench.serve_bench import make_prompts
from mpq_serving.bench.servers import launched_server
from mpq_serving.cli.common import resolve_model
from mpq_serving.integrations.common.launch import packed_for_plan

NAME = "bench"
TIMEOUT_S = 900.0


@dataclass
class EngineResult:
    engine: str
    streams_ok: int
    streams: int
    streams_wall_s: float
    streams_tok_per_s: float
    c1_tok_per_s: float
    c8_tok_per_s: float
    c8_over_c1: float
    hung_up: int
    normal_before_s: float
    normal_after_s: float
    after_over_before: float
    running_after_wave: float | None
    first_problem: str = ""


async def _chat_stream(http: httpx.AsyncClient, prompt: str, max_tokens: int, hang_up_after: int | None) -> str:
    """One streaming chat; '' when well formed (or hung up as asked), else what was wrong."""
    body = {"model": NAME, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}}
    events: list[str] = []
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            return f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
                if hang_up_after is not None and len(events) >= hang_up_after:
                    return ""
    if not events or events[-1] != "[DONE]":
        return "the stream does not end with [DONE]"
    try:
        chunks = [json.loads(e) for e in events[:-1]]
    except ValueError as exc:
        return f"an event is not JSON: {exc}"
    choices = [c["choices"][0] for c in chunks if c.get("choices")]
    if not choices or choices[0]["delta"].get("role") != "assistant":
        return "the first chunk does not carry the assistant role"
    finishes = [c["finish_reason"] for c in choices if c.get("finish_reason")]
    if finishes != ["length"]:
        return f"finish reasons {finishes}, expected one 'length'"
    usage = [c["usage"] for c in chunks if c.get("usage")]
    if not usage or usage[-1]["completion_tokens"] != max_tokens:
        return f"usage {usage[-1] if usage else None}, expected {max_tokens} completion tokens"
    return ""


async def _normal_latency(http: httpx.AsyncClient, prompts: list[str], max_tokens: int) -> float:
    """Median wall time of non-streaming completions sent one after another."""
    times = []
    for prompt in prompts:
        start = time.perf_counter()
        r = await http.post("/v1/completions", json={"model": NAME, "prompt": prompt, "max_tokens": max_tokens,
                                                     "temperature": 0, "ignore_eos": True})
        r.raise_for_status()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def _running(http: httpx.AsyncClient) -> float | None:
    r = await http.get("/metrics")
    match = re.search(r"^vllm:num_requests_running\{[^}]*\} (\S+)$", r.text, re.MULTILINE) if r.is_success else None
    return float(match[1]) if match else None


async def measure(engine: str, url: str, streams: int, tokens: int, rounds: int) -> EngineResult:
    prompts = make_prompts(streams, 48)
    root = url.removesuffix("/v1")
    limits = httpx.Limits(max_connections=streams + 8)
    async with httpx.AsyncClient(base_url=root, timeout=TIMEOUT_S, limits=limits) as http:
        await _normal_latency(http, prompts[:1], 4)  # warm-up
        start = time.perf_counter()
        problems = await asyncio.gather(*(_chat_stream(http, p, tokens, None) for p in prompts))
        wall = time.perf_counter() - start
        ok = sum(not p for p in problems)

        c1, c8 = [], []
        for _ in range(rounds):
            c1.append((await run_level(url, NAME, engine, 1, prompts, 4, tokens, {"ignore_eos": True})).output_tokens_per_s)
            c8.append((await run_level(url, NAME, engine, 8, prompts, 16, tokens, {"ignore_eos": True})).output_tokens_per_s)

        normal = prompts[:4]
        before = await _normal_latency(http, normal, 32)
        wave = [_chat_stream(http, p, 256, 4 if i % 2 == 0 else None) for i, p in enumerate(prompts[:16])]
        wave_problems = await asyncio.gather(*wave)
        running = await _running(http)
        after = await _normal_latency(http, normal, 32)
    first = next((p for p in [*problems, *wave_problems] if p), "")
    return EngineResult(
        engine=engine, streams_ok=ok, streams=streams, streams_wall_s=wall,
        streams_tok_per_s=ok * tokens / wall, c1_tok_per_s=statistics.median(c1), c8_tok_per_s=statistics.median(c8),
        c8_over_c1=statistics.median(c8) / statistics.median(c1), hung_up=8, normal_before_s=before,
        normal_after_s=after, after_over_before=after / before, running_after_wave=running, first_problem=first,
    )


def table(results: list[EngineResult], plan: str, threads: str) -> str:
    lines = [
        f"Serving `{plan}` on 127.0.0.1 ({threads}); 64 tokens per stream, ignore_eos, greedy.", "",
        "| engine | 64 streams well formed | 64 streams wall s | tok/s | c1 tok/s | c8 tok/s | c8 / c1 "
        "| normal latency before s | after 8 hang-ups s | after / before | running after wave |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        running = "n/a" if r.running_after_wave is None else f"{r.running_after_wave:.0f}"
        lines.append(
            f"| {r.engine} | {r.streams_ok}/{r.streams} | {r.streams_wall_s:.1f} | {r.streams_tok_per_s:.1f} "
            f"| {r.c1_tok_per_s:.1f} | {r.c8_tok_per_s:.1f} | {r.c8_over_c1:.2f} | {r.normal_before_s:.2f} "
            f"| {r.normal_after_s:.2f} | {r.after_over_before:.2f} | {running} |"
        )
    problems = [f"- {r.engine}: {r.first_problem}" for r in results if r.first_problem]
    return "\n".join([*lines, *(["", "Problems:", *problems] if problems else [])]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", action="append", choices=["hf", "vllm", "sglang"], help="repeatable; default hf")
    parser.add_argument("--plan", default="configs/smollm2_mixed.yaml")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="c1/c8 pairs, interleaved")
    parser.add_argument("--out", type=Path, help="markdown file for the table (JSON beside it)")
    args = parser.parse_args()
    engines = args.engine or ["hf"]
    packed = packed_for_plan(Path(args.plan), resolve_model(args.model))
    results = []
    for engine in engines:
        print(f"== {engine}: serving {packed}", flush=True)
        with launched_server(str(packed), engine, Path("out/serve-load-logs"), name=NAME) as url:
            result = asyncio.run(measure(engine, url, args.streams, args.tokens, args.rounds))
        print(json.dumps(asdict(result)), flush=True)
        results.append(result)
    import os

    text = table(results, args.plan, f"{os.cpu_count()} cores")
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps([asdict(r) for r in results], indent=1))


if __name__ == "__main__":
    main()
