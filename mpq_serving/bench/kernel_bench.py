"""Kernel roofline benchmark: each format's matmul vs torch bf16 and vs the device's copy bandwidth.

For every (shape, format, batch) it times the kernel the dispatch chooses on that device (the Triton
fused dequantize-GEMM on CUDA; the CPU kernels on CPU), counts the bytes it must move (packed weight +
activations + output), and reports achieved GB/s, the fraction of the copy bandwidth measured in the
same run, and the speed-up over `F.linear` with the bf16 weight.  The MoE row is one mixed-format
layer (experts cycle through the formats) run by the grouped kernel on CUDA, or the per-expert HF
module on CPU; its bytes are the experts actually routed to, so `pct_peak` compares with the time
those bytes need at peak bandwidth.  Weights are random (speed does not depend on the values).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..formats import QuantizedTensor, QuantSpec, get_format
from ..kernels import KernelCache, choose_kernel
from .timing import copy_bandwidth, time_call

# (in_features K, out_features N): Llama-3-8B / Mistral-7B attention, MLP up, MLP down.
LARGE_SHAPES = ((4096, 4096), (4096, 14336), (14336, 4096))
SMALL_SHAPES = ((512, 512), (512, 1792), (1792, 512))
BATCHES = (1, 4, 16, 64, 256)


@dataclass(frozen=True)
class MoEShape:
    experts: int
    top_k: int
    hidden: int
    intermediate: int

    def label(self) -> str:
        return f"moe {self.experts}x top-{self.top_k} {self.hidden}x{self.intermediate}"


LARGE_MOE = MoEShape(128, 8, 2048, 768)  # Qwen3-30B-A3B's MoE layer
SMALL_MOE = MoEShape(8, 2, 256, 512)

SPECS: dict[str, QuantSpec] = {
    "gptq_int4": QuantSpec("gptq_int4", group_size=128),
    "gptq_int4_act_order": QuantSpec("gptq_int4", group_size=128, act_order=True),
    "awq_int4": QuantSpec("awq_int4", group_size=128),
    "fp8": QuantSpec("fp8"),
    "fp8_block": QuantSpec("fp8", granularity="block", group_size=128),
    "fp8_w8a8": QuantSpec("fp8", activation="fp8"),
    "int8": QuantSpec("int8"),
    "int8_w8a8": QuantSpec("int8", activation="int8"),
    "mxfp4": QuantSpec("mxfp4"),
    "mxfp8": QuantSpec("mxfp8"),
}
MOE_FORMATS = ("gptq_int4", "awq_int4", "fp8", "int8", "mxfp4", "mxfp8")


@dataclass
class Row:
    shape: str
    format: str
    batch: int
    kernel: str
    time_us: float
    bytes_moved: int
    gbps: float
    pct_peak: float
    bf16_time_us: float
    speedup_vs_bf16: float
    x_roofline: float  # time / (bytes_moved / peak): 1.0 is the memory roofline, 1.15 the MoE target


def quantize(spec: QuantSpec, out_f: int, in_f: int, device: torch.device) -> QuantizedTensor:
    w = torch.randn(out_f, in_f, device=device) * 0.02
    return get_format(spec.format).quantize(w, spec)


def _row(shape: str, fmt: str, batch: int, kernel: str, seconds: float, nbytes: int, peak: float,
         bf16_seconds: float) -> Row:
    gbps = nbytes / seconds / 1e9
    return Row(shape, fmt, batch, kernel, seconds * 1e6, nbytes, gbps, 100 * gbps * 1e9 / peak,
               bf16_seconds * 1e6, bf16_seconds / seconds, seconds * peak / nbytes)


def linear_rows(shapes: Sequence[tuple[int, int]], formats: Sequence[str], batches: Sequence[int],
                device: torch.device, peak: float) -> Iterator[Row]:
    """One row per (shape, format, batch), the bf16 F.linear baseline included as format `bf16`."""
    for in_f, out_f in shapes:
        label = f"{in_f}x{out_f}"
        w_bf16 = torch.randn(out_f, in_f, device=device, dtype=torch.bfloat16)
        quantized = {name: quantize(SPECS[name], out_f, in_f, device) for name in formats}
        for batch in batches:
            x = torch.randn(batch, in_f, device=device, dtype=torch.bfloat16)
            act_bytes = (batch * in_f + batch * out_f) * 2
            bf16_s = time_call(lambda: F.linear(x, w_bf16), device)
            yield _row(label, "bf16", batch, "torch F.linear", bf16_s, w_bf16.numel() * 2 + act_bytes, peak, bf16_s)
            for name, q in quantized.items():
                choice = choose_kernel(q, x, KernelCache())
                run, state = choice.kernel.run, choice.state
                seconds = time_call(lambda: run(x, q, state), device)
                yield _row(label, name, batch, choice.kernel.name, seconds, q.nbytes() + act_bytes, peak, bf16_s)
            del x


def _routing(tokens: int, moe: MoEShape, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(tokens, moe.experts, device=device)
    weights, idx = logits.softmax(-1).topk(moe.top_k)
    return weights.to(torch.bfloat16), idx


def _moe_runner(moe: MoEShape, triples: list[tuple[QuantizedTensor, ...]], device: torch.device
                ) -> tuple[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]]:
    """The grouped Triton kernel on CUDA; the HF per-expert module (CPU kernels) elsewhere."""
    if device.type == "cuda":
        from ..kernels.triton.moe import build_grouped_experts, grouped_moe

        grouped = build_grouped_experts(triples)
        return "triton grouped MoE", lambda x, i, w: grouped_moe(x, i, w, grouped, F.silu)
    from ..layers.linear import MixedPrecisionLinear
    from ..layers.moe import MixedPrecisionExpert, MixedPrecisionExperts

    module = MixedPrecisionExperts([MixedPrecisionExpert(*(MixedPrecisionLinear(q) for q in t)) for t in triples], F.silu)
    return "HF per-expert loop (CPU kernels)", lambda x, i, w: module(x, i, w)


def _bf16_moe(moe: MoEShape, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The plain torch baseline: bf16 experts, a loop over the experts that received tokens."""
    gate_up = torch.randn(moe.experts, 2 * moe.intermediate, moe.hidden, device=device, dtype=torch.bfloat16)
    down = torch.randn(moe.experts, moe.hidden, moe.intermediate, device=device, dtype=torch.bfloat16)

    def run(x: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for e in torch.unique(idx).tolist():
            token, slot = (idx == e).nonzero(as_tuple=True)
            gate, up = F.linear(x[token], gate_up[e]).chunk(2, dim=-1)
            y = F.linear(F.silu(gate) * up, down[e])
            out.index_add_(0, token, y * weights[token, slot, None])
        return out

    return run


def moe_rows(moe: MoEShape, batches: Sequence[int], device: torch.device, peak: float) -> Iterator[Row]:
    """A mixed-format MoE layer (expert e in MOE_FORMATS[e % 6]) per batch size."""
    specs = [SPECS[MOE_FORMATS[e % len(MOE_FORMATS)]] for e in range(moe.experts)]
    triples = [
        tuple(quantize(s, o, i, device) for o, i in ((moe.intermediate, moe.hidden),) * 2 + ((moe.hidden, moe.intermediate),))
        for s in specs
    ]
    expert_bytes = [sum(q.nbytes() for q in t) for t in triples]
    kernel, run = _moe_runner(moe, triples, device)
    bf16 = _bf16_moe(moe, device)
    for batch in batches:
        x = torch.randn(batch, moe.hidden, device=device, dtype=torch.bfloat16)
        weights, idx = _routing(batch, moe, device)
        hit = torch.unique(idx).tolist()
        nbytes = sum(expert_bytes[e] for e in hit) + 2 * 2 * batch * moe.hidden
        bf16_s = time_call(lambda: bf16(x, idx, weights), device)
        seconds = time_call(lambda: run(x, idx, weights), device)
        yield _row(moe.label(), "mixed", batch, kernel, seconds, nbytes, peak, bf16_s)


def run_kernel_bench(
    *, device: torch.device, small: bool, formats: Sequence[str], batches: Sequence[int], moe: bool = True,
    progress: Callable[[Row], None] | None = None,
) -> tuple[float, list[Row]]:
    """(peak copy bandwidth in bytes/s, rows); `small` picks the CPU-sized shapes."""
    unknown = sorted(set(formats) - set(SPECS))
    if unknown:
        raise ValueError(f"unknown benchmark formats {', '.join(unknown)}; choose from {', '.join(SPECS)}")
    peak = copy_bandwidth(device, (64 << 20) if small else (1 << 30))
    rows = []
    shapes = SMALL_SHAPES if small else LARGE_SHAPES
    sources = [linear_rows(shapes, formats, batches, device, peak)]
    if moe:
        sources.append(moe_rows(SMALL_MOE if small else LARGE_MOE, batches, device, peak))
    for source in sources:
        for row in source:
            rows.append(row)
            if progress:
                progress(row)
    return peak, rows


def rows_as_json(device: str, peak: float, rows: list[Row]) -> dict:
    return {"device": device, "peak_copy_gbps": peak / 1e9, "rows": [asdict(r) for r in rows]}


def rows_as_markdown(device: str, peak: float, rows: list[Row], command: str) -> str:
    """The results file: one table, the copy bandwidth it is measured against, and the command that wrote it."""
    lines = [
        f"# Kernels on {device}",
        "",
        f"Peak copy bandwidth measured in the same run: {peak / 1e9:.1f} GB/s (read + write).  "
        "GB/s counts the packed weight, x and y once; × bf16 is `F.linear` on the bf16 weight's time / this kernel's.",
        f"Regenerate: `{command}`",
        "",
        "| shape (K x N) | format | batch | kernel | µs | GB/s | % copy BW | × bf16 |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r.shape} | {r.format} | {r.batch} | {r.kernel} | {r.time_us:.1f} | {r.gbps:.1f} | "
                     f"{r.pct_peak:.0f} | {r.speedup_vs_bf16:.2f} |")
    return "\n".join(lines) + "\n"
