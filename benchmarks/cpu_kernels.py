"""CPU matmul of packed weights: the plain float32 dequantize + F.linear vs the kernel the dispatch
chooses vs bf16 F.linear on an unquantized weight; optionally SmolLM2 decode time per token.

    python benchmarks/cpu_kernels.py [--threads 1] [--decode /tmp/packed] [--shapes 1536x576 ...]

ms per call, medians; the three candidates run round-robin inside each repeat, so load from other
processes on a shared machine hits them alike.  Activations bf16, weights random (std 0.05).
"--decode FOLDER" loads a packed model (`mpq pack ... -o FOLDER`) in bf16 and times one-token forwards
with a KV cache after an 8-token prompt, first with the dispatch's choice, then with the plain
dequantize + F.linear kernel registered first, which is the dispatch as it was before these kernels.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from mpq_serving.formats import QuantizedTensor, QuantSpec, get_format
from mpq_serving.kernels import choose_kernel, register_kernel
from mpq_serving.kernels.dequant_linear import DEQUANT_LINEAR

FORMATS = [
    QuantSpec("fp8", granularity="channel"),
    QuantSpec("mxfp8"),
    QuantSpec("mxfp4"),
    QuantSpec("int8"),
    QuantSpec("gptq_int4", group_size=64),
    QuantSpec("gptq_int4", group_size=64, act_order=True, symmetric=False),
    QuantSpec("awq_int4", group_size=64),
    QuantSpec("ct_int4", group_size=64),
]


def medians(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median ms of each fn, run round-robin `repeats` times after one warm-up call each."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for t, fn in zip(times, fns, strict=True):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) * 1e3 for t in times]


def candidates(x: torch.Tensor, q: QuantizedTensor, dense: torch.Tensor) -> tuple[list[Callable[[], object]], str]:
    """The plain float32 dequantize + F.linear, the chosen kernel (prepared once, as a layer's cache
    does), bf16 F.linear on the unquantized weight; and the chosen kernel's name."""
    choice = choose_kernel(q, x)
    return [
        lambda: DEQUANT_LINEAR.run(x, q, None),
        lambda: choice.kernel.run(x, q, choice.state),
        lambda: F.linear(x, dense),
    ], choice.kernel.name


def kernel_table(shapes: list[tuple[int, int]], rows_list: list[int], repeats: int) -> Table:
    table = Table(title=f"ms per call, bf16 activations, {torch.get_num_threads()} thread(s), median of {repeats}")
    columns = ("format", "out x in", "rows", "dequantize + F.linear", "chosen kernel", "bf16 F.linear", "speed-up")
    for col in (*columns, "kernel"):
        table.add_column(col, justify="left" if col in ("format", "kernel") else "right")
    with torch.inference_mode():
        for shape in shapes:
            w = torch.randn(shape) * 0.05
            dense = w.to(torch.bfloat16)
            for spec in FORMATS:
                q = get_format(spec.format).quantize(w, spec)
                for rows in rows_list:
                    fns, name = candidates(torch.randn(rows, shape[1], dtype=torch.bfloat16), q, dense)
                    ref, fast, plain = medians(fns, repeats)
                    table.add_row(spec.describe(), f"{shape[0]}x{shape[1]}", str(rows), f"{ref:.3f}", f"{fast:.3f}",
                                  f"{plain:.3f}", f"{ref / fast:.0f}x", name)
    return table


def decode_ms(model: torch.nn.Module, steps: int) -> float:
    """Median ms of a one-token forward with a KV cache, after an 8-token prompt and 3 warm-up steps."""
    with torch.inference_mode():
        out = model(torch.arange(1, 9).unsqueeze(0), use_cache=True)
        cache, times = out.past_key_values, []
        token = out.logits[:, -1:].argmax(-1)
        for i in range(steps + 3):
            start = time.perf_counter()
            out = model(token, past_key_values=cache, use_cache=True)
            if i >= 3:
                times.append(time.perf_counter() - start)
            token = out.logits[:, -1:].argmax(-1)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--shapes", nargs="+", default=["1536x576", "576x1536", "4096x4096"])
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 8, 512])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--decode", type=Path, default=None, help="a packed model folder to time decoding")
    parser.add_argument("--decode-steps", type=int, default=20)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    shapes = [tuple(int(d) for d in s.split("x")) for s in args.shapes]
    console = Console(width=160)
    console.print(kernel_table(shapes, args.rows, args.repeats))

    if args.decode:
        from mpq_serving.loaders.hf_model import load_model

        model = load_model(args.decode, dtype=torch.bfloat16)
        after = decode_ms(model, args.decode_steps)
        register_kernel(DEQUANT_LINEAR, priority_first=True)  # the dispatch before the CPU kernels
        before = decode_ms(model, max(3, args.decode_steps // 4))
        console.print(f"{args.decode} decode, ms per token ({torch.get_num_threads()} thread(s), median): "
                        f"dequantize + F.linear {before:.0f}, chosen kernels {after:.1f} ({before / after:.0f}x)")


if __name__ == "__main__":
    main()
