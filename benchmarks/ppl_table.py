"""Perplexity and average bits of SmolLM2-135M: bf16, each uniform format, the default mixed plan,
and the upcycled SmolLM2-MoE (bf16 experts, and per-expert mixed formats).

    python benchmarks/ppl_table.py [--max-tokens 16384] [--seq-len 512]

Uniform int4 formats use group 128 where it divides in_features (mlp.down_proj, in = 1536) and group
64 elsewhere (SmolLM2's hidden size 576 is not a multiple of 128). Prints a table.
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table
from transformers import AutoTokenizer

from mpq_serving.eval.memory import weight_memory
from mpq_serving.eval.perplexity import perplexity
from mpq_serving.eval.text import load_text
from mpq_serving.loaders.hf_model import load_model
from mpq_serving.plan import load_plan, plan_from_dict


def uniform(fmt: str, **fields) -> dict:
    rules = []
    if fmt in ("gptq_int4", "awq_int4"):
        rules = [{"pattern": "down_proj", "wq": fmt, "group_size": 128}]
        fields = {"group_size": 64, **fields}
    return {"default": {"wq": fmt, **fields}, "overrides": rules}


EXPERT_MIX = {"mixed_precision": {"default": "fp8", "weight_mapping": {
    "re:.*experts\\.[0-1]\\.(w1|w3)": {"format": "gptq_int4", "group_size": 64},
    "re:.*experts\\.[2-3]\\.(w1|w3)": {"format": "awq_int4", "group_size": 64},
    "re:.*experts\\.[4-5]\\..*": "mxfp4",
    "re:.*experts\\.[0-3]\\.w2": {"format": "gptq_int4", "group_size": 128},
    "re:.*experts\\.[6-7]\\..*": "int8",
}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=16384)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--skip-moe", action="store_true")
    args = parser.parse_args()
    from mpq_serving.cli.common import resolve_model

    dense = resolve_model("smollm2")
    text = load_text("wiki_eval")
    tokenizer = AutoTokenizer.from_pretrained(dense)
    rows = [("bf16 (dense)", dense, plan_from_dict({"default": {"wq": "bf16"}}))]
    for fmt, fields in (("fp8", {}), ("int8", {}), ("gptq_int4", {}), ("awq_int4", {}), ("mxfp8", {}), ("mxfp4", {})):
        rows.append((f"uniform {fmt}", dense, plan_from_dict(uniform(fmt, **fields))))
    rows.append(("mixed configs/smollm2_mixed.yaml", dense, load_plan("configs/smollm2_mixed.yaml")))
    if not args.skip_moe:
        moe = resolve_model("smollm2-moe")
        rows.append(("MoE e8 top2, bf16 experts", moe, plan_from_dict({"default": {"wq": "bf16"}})))
        rows.append(("MoE e8 top2, per-expert mixed", moe, plan_from_dict(EXPERT_MIX)))
    table = Table(title=f"SmolLM2-135M on wiki_eval ({args.max_tokens} tokens, seq {args.seq_len})")
    for col in ("model / plan", "avg bits", "weight MiB", "PPL", "seconds"):
        table.add_column(col, justify="left" if col == "model / plan" else "right")
    for label, folder, plan in rows:
        t0 = time.perf_counter()
        model = load_model(plan, folder, dtype=torch.bfloat16, progress=False)
        mem = weight_memory(model)
        result = perplexity(model, tokenizer, text, seq_len=args.seq_len, max_tokens=args.max_tokens, progress=False)
        table.add_row(label, f"{mem.avg_bits:.2f}", f"{mem.total_bytes / 2**20:.1f}", f"{result.ppl:.3f}",
                      f"{time.perf_counter() - t0:.0f}")
        Console().print(f"{label}: ppl {result.ppl:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
