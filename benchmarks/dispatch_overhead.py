"""What choosing the kernel costs per layer call: choose-once (the layer's cache) against choosing on every
call, both against the chosen kernel's own run, interleaved A B C D A B C D, medians over rounds.
"cached choice" times the lookup a layer call makes (its buffers' view + `KernelCache.choose`); the rest of
"layer call beyond run" is the nn.Module call, reshapes and bias, which any layer pays.

    python benchmarks/dispatch_overhead.py [--rounds 15] [--threads 2]

Target (speed issue): choosing costs <= 5% of a layer call.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from mpq_serving.bench.timing import time_call
from mpq_serving.formats import QuantSpec, get_format
from mpq_serving.kernels import choose_kernel
from mpq_serving.layers.linear import MixedPrecisionLinear

CASES = [("gptq_int4", {"group_size": 64}, (1536, 576)), ("int8", {}, (1536, 576)),
         ("fp8", {}, (1536, 576)), ("gptq_int4", {"group_size": 128}, (4096, 4096))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    print(f"| format | shape | kernel | run only (µs) | layer call, chosen once (µs) | choosing every call (µs) "
          f"| cached choice (µs) | cached choice / layer call | layer call beyond run | choosing every call, beyond run |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, fields, shape in CASES:
        torch.manual_seed(0)
        q = get_format(name).quantize(torch.randn(shape) * 0.05, QuantSpec(name, **fields))
        layer = MixedPrecisionLinear(q)
        x = torch.randn(args.rows, shape[1], dtype=torch.bfloat16)
        layer(x)
        choice = choose_kernel(layer.qtensor, x, layer.kernel_cache)

        def run_only():
            return choice.kernel.run(x, q, choice.state)

        def every_call():
            c = choose_kernel(layer.qtensor, x, layer.kernel_cache)
            return c.kernel.run(x, layer.qtensor, c.state)

        def cached_choice():  # what a layer call does to find its kernel: the buffers' view and the cache lookup
            return layer.kernel_cache.choose(layer.qtensor, x)

        times: dict[str, list[float]] = {"run": [], "once": [], "every": [], "choice": []}
        for _ in range(args.rounds):  # interleaved: the machine's load hits all alike
            times["run"].append(time_call(run_only, cpu, 0.05))
            times["once"].append(time_call(lambda: layer(x), cpu, 0.05))
            times["every"].append(time_call(every_call, cpu, 0.05))
            times["choice"].append(time_call(cached_choice, cpu, 0.05))
        med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
        print(f"| {q.spec.describe()} | {shape[0]}x{shape[1]} | {choice.kernel.name} | {med['run']:.1f} | "
              f"{med['once']:.1f} | {med['every']:.1f} | {med['choice']:.2f} | {med['choice'] / med['once']:.1%} | "
              f"{(med['once'] - med['run']) / med['once']:.1%} | {(med['every'] - med['run']) / med['every']:.1%} |")


if __name__ == "__main__":
    main()
