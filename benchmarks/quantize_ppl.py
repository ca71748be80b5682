"""Perplexity of SmolLM2-135M quantized by RTN, GPTQ, AWQ, SmoothQuant W8A8 and SparseGPT (wiki_eval).

    python benchmarks/quantize_ppl.py [--nsamples 128] [--calib-seq-len 512] [--max-tokens 8192] [--only gptq,awq]

Weight-only rows are evaluated with their dequantized weights in float32 dense layers (exactly the
stored numbers; `--real-kernels` runs the packed kernels instead, slower on CPU); W8A8 rows run their
real int8 modules (per-token int8 activations).  Every row runs `quantize_model` on the bf16 model with calibration windows from `wiki_calib`, writes the
checkpoint (`write_checkpoint`, mpq layout) and measures it loaded back through `load_model` — the
path `mpq quantize` + `mpq eval ppl` take.  int4 rule for SmolLM2 (hidden 576 is not a multiple of
128): group 128 where it divides in_features (mlp.down_proj, in = 1536), group 64 elsewhere.
gptq_int4 rows are symmetric (GPTQ's default), awq_int4 rows asymmetric (AutoAWQ's zero point).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from rich.console import Console
from rich.table import Table
from transformers import AutoTokenizer

from mpq_serving.eval.memory import weight_memory
from mpq_serving.formats import get_format
from mpq_serving.layers.linear import MixedPrecisionLinear
from mpq_serving.eval.perplexity import perplexity
from mpq_serving.eval.text import load_text
from mpq_serving.loaders.hf_model import load_model
from mpq_serving.plan import plan_from_dict
from mpq_serving.quantize import QuantizeConfig, quantize_model, write_checkpoint


def int4(fmt: str) -> dict:
    return {"default": {"wq": fmt, "group_size": 64},
            "overrides": [{"pattern": "down_proj", "wq": fmt, "group_size": 128}]}


W8A8 = {"default": {"wq": "int8", "aq": "int8"}}
BF16 = {"default": {"wq": "bf16"}}

# key: (label, plan, QuantizeConfig fields)
ROWS = {
    "bf16": ("bf16", BF16, None),
    "rtn": ("int4 gptq layout (sym), RTN", int4("gptq_int4"), {"method": "rtn"}),
    "gptq": ("int4 gptq layout (sym), GPTQ", int4("gptq_int4"), {"method": "gptq"}),
    "gptq-act": ("int4 gptq layout (sym), GPTQ act-order", int4("gptq_int4"), {"method": "gptq", "act_order": True}),
    "rtn-awq": ("int4 awq layout (asym), RTN", int4("awq_int4"), {"method": "rtn"}),
    "awq": ("int4 awq layout (asym), AWQ", int4("awq_int4"), {"method": "awq"}),
    "gptq-awq-layout": ("int4 awq layout (asym), GPTQ", int4("awq_int4"), {"method": "gptq"}),
    "w8a8": ("W8A8 int8, RTN", W8A8, {"method": "rtn"}),
    "w8a8-sq": ("W8A8 int8, SmoothQuant a=0.5, RTN", W8A8, {"method": "rtn", "smooth_alpha": 0.5}),
    "w8a8-sq-gptq": ("W8A8 int8, SmoothQuant a=0.5, GPTQ", W8A8, {"method": "gptq", "smooth_alpha": 0.5}),
    "sparse50": ("SparseGPT 50% unstructured, bf16", BF16, {"method": "gptq", "sparsity": 0.5}),
    "sparse50-int4": ("SparseGPT 50% + GPTQ int4 (sym)", int4("gptq_int4"), {"method": "gptq", "sparsity": 0.5}),
    "sparse24": ("SparseGPT 2:4, bf16", BF16, {"method": "gptq", "sparsity_pattern": "2:4"}),
}


def dense_dequantized(model: torch.nn.Module) -> torch.nn.Module:
    """Weight-only layers as float32 nn.Linear holding exactly the dequantized weights (same numbers as the
    kernels compute with, up to summation order, and much faster on a busy CPU); activation-quantized
    layers (W8A8) keep their real module, whose per-token int8 activations change the result."""
    model = model.float()
    for name, module in list(model.named_modules()):
        if isinstance(module, MixedPrecisionLinear) and not module.spec.activation:
            dense = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            dense.weight.data = get_format(module.spec.format).dequantize(module.qtensor).float()
            if module.bias is not None:
                dense.bias.data = module.bias.float()
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, dense)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--calib-seq-len", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=512, help="perplexity window")
    parser.add_argument("--awq-samples", type=int, default=32, help="samples the AWQ grid search runs on")
    parser.add_argument("--no-true-sequential", action="store_true", help="GPTQ: one Hessian pass per layer")
    parser.add_argument("--real-kernels", action="store_true",
                        help="evaluate weight-only rows through the int4 kernels instead of dense float32 dequantized weights")
    parser.add_argument("--only", default=",".join(ROWS), help=f"comma-separated rows of {', '.join(ROWS)}")
    args = parser.parse_args()
    from mpq_serving.cli.common import resolve_model

    model_dir = resolve_model("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = load_text("wiki_eval")
    table = Table(title=f"SmolLM2-135M on wiki_eval ({args.max_tokens} tokens, window {args.seq_len}); "
                        f"calibration {args.nsamples} x {args.calib_seq_len} tokens of wiki_calib")
    for col in ("row", "avg bits", "ppl", "quantize s"):
        table.add_column(col, justify="left" if col == "row" else "right")
    for key in args.only.split(","):
        label, plan_dict, fields = ROWS[key]
        plan = plan_from_dict(plan_dict)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="mpq-quantize-ppl-") as tmp:
            if fields is None:
                model, seconds = load_model(model_dir), 0.0
            else:
                config = QuantizeConfig(nsamples=args.nsamples, seq_len=args.calib_seq_len, awq_samples=args.awq_samples,
                                        true_sequential=not args.no_true_sequential, **fields)
                result = quantize_model(model_dir, plan, config)
                folder = write_checkpoint(result, plan, f"{tmp}/out")
                del result
                seconds = time.perf_counter() - start
                model = load_model(folder, progress=False)
            bits = weight_memory(model).avg_bits
            if not args.real_kernels:
                model = dense_dequantized(model)
            ppl = perplexity(model, tokenizer, text, seq_len=args.seq_len, max_tokens=args.max_tokens).ppl
        table.add_row(label, f"{bits:.2f}", f"{ppl:.2f}", f"{seconds:.0f}")
        Console(highlight=False).print(f"{label}: ppl {ppl:.4f}", soft_wrap=True)
    Console().print(table)


if __name__ == "__main__":
    main()
