"""What routing costs in the CPU MoE path: the per-expert loop as it was (a Python check and a full
scan of the routing per expert) against the sorted pass (one argsort, then only the experts that got
tokens), on the same `MixedPrecisionExperts`, interleaved A B A B, medians.

    python benchmarks/moe_cpu_dispatch.py [--experts 64,128] [--tokens 1,8,64] [--rounds 7] [--threads 2]

Experts are bf16 (hidden 2048, width 768, top-8, as in `mpq bench kernels`' MoE layer) so the
difference is the routing's own work, not a kernel's.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from mpq_serving.bench.timing import time_call
from mpq_serving.formats import QuantSpec, get_format
from mpq_serving.layers.linear import MixedPrecisionLinear
from mpq_serving.layers.moe import MixedPrecisionExpert, MixedPrecisionExperts

HIDDEN, WIDTH, TOP_K = 2048, 768, 8


def build(num_experts: int) -> MixedPrecisionExperts:
    fmt, spec = get_format("bf16"), QuantSpec("bf16")

    def linear(out_f: int, in_f: int) -> MixedPrecisionLinear:
        return MixedPrecisionLinear(fmt.quantize(torch.randn(out_f, in_f, dtype=torch.bfloat16) * 0.02, spec))

    experts = [MixedPrecisionExpert(linear(WIDTH, HIDDEN), linear(WIDTH, HIDDEN), linear(HIDDEN, WIDTH))
               for _ in range(num_experts)]
    return MixedPrecisionExperts(experts, F.silu)


def loop_over_every_expert(layer: MixedPrecisionExperts, x, top_k_index, top_k_weights) -> torch.Tensor:
    """The loop before: every expert visited, each hit expert found by scanning all (token, expert) pairs."""
    out = torch.zeros_like(x)
    flat = top_k_index.reshape(-1)
    token_of = torch.arange(x.shape[0]).repeat_interleave(top_k_index.shape[1])
    weights = top_k_weights.reshape(-1)
    hit = set(torch.unique(flat).tolist())
    for members in layer.format_groups.values():
        for e in members:
            if e not in hit:
                continue
            sel = (flat == e).nonzero(as_tuple=True)[0]
            tokens = token_of[sel]
            y = layer.experts[e](x[tokens], layer.act_fn)
            out.index_add_(0, tokens, (y * weights[sel, None].to(y.dtype)).to(out.dtype))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", default="64,128")
    parser.add_argument("--tokens", default="1,8,64")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    print(f"| experts | tokens | before µs | sorted µs | before / sorted |  ({args.threads} threads, median of {args.rounds})")
    print("|---|---|---|---|---|")
    with torch.inference_mode():
        for num_experts in (int(e) for e in args.experts.split(",")):
            layer = build(num_experts)
            for tokens in (int(t) for t in args.tokens.split(",")):
                g = torch.Generator().manual_seed(tokens)
                x = torch.randn(tokens, HIDDEN, dtype=torch.bfloat16, generator=g)
                logits = torch.randn(tokens, num_experts, generator=g)
                weights, index = logits.softmax(-1).topk(TOP_K, dim=-1)
                torch.testing.assert_close(layer._per_expert(x, index, weights),
                                           loop_over_every_expert(layer, x, index, weights))
                before, after = [], []
                for _ in range(args.rounds):
                    before.append(time_call(lambda: loop_over_every_expert(layer, x, index, weights), cpu))
                    after.append(time_call(lambda: layer._per_expert(x, index, weights), cpu))
                b, a = statistics.median(before) * 1e6, statistics.median(after) * 1e6
                print(f"| {num_experts} | {tokens} | {b:.0f} | {a:.0f} | {b / a:.2f} |", flush=True)
            del layer


if __name__ == "__main__":
    main()
