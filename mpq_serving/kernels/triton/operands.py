"""A packed weight as the Triton kernels read it: its stored tensors, their strides, and constexpr flags.

The kernels read the bytes each format stores (see `formats/*`), never a dequantized copy.  This module
only names, per format, which stored tensor plays which role and how to step through it:

* `w0` the codes, indexed (packed k, packed n): GPTQ `qweight` [K/8, N], AWQ `qweight` [K, N/8],
  fp8 / int8 / mxfp8 / float `weight` [N, K], mxfp4 `weight_packed` [N, K/2];
* `w1` the scales, indexed (k group, n): GPTQ / AWQ `scales` [G, N], fp8 block `weight_scale_inv`
  [N/B, K/B], MX `weight_scale` E8M0 [N, K/32]; per-channel / per-tensor scales (fp8, int8) are a
  float32 vector [N] applied once per output column after the dot (stride 0 for one tensor scale);
* `w2` the packed zero points (GPTQ / AWQ `qzeros` [G, N/8]); `w3` GPTQ's `g_idx` [K] (act-order).

Two conversions happen once here, both tiny and both exact: GPTQ v1 zeros get the whole-word
+0x11111111 its reader applies (so the kernel reads v2 zeros), and fp8 / mxfp8 weights are viewed as
int8 so the kernel decodes E4M3 with integer ops on any GPU (the native fp8 type is used only for W8A8
on GPUs with fp8 tensor cores).  Several experts of one format and shape stack into one operand with
an expert stride, which is what the grouped MoE kernel indexes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum

import torch

from ...errors import FormatError
from ...formats import QuantizedTensor, get_format
from ...formats.gptq_int4 import V1_ZERO_OFFSET
from ...formats.int4_packing import to_int32
from ...formats.mx_common import BLOCK_SIZE


class Fmt(IntEnum):
    """The format id the kernels branch on at compile time (a constexpr)."""

    GPTQ = 0
    AWQ = 1
    FP8 = 2
    INT8 = 3
    MXFP4 = 4
    MXFP8 = 5
    FLOAT = 6


FMT_OF = {
    "gptq_int4": Fmt.GPTQ,
    "awq_int4": Fmt.AWQ,
    "fp8": Fmt.FP8,
    "int8": Fmt.INT8,
    "mxfp4": Fmt.MXFP4,
    "mxfp8": Fmt.MXFP8,
    "bf16": Fmt.FLOAT,
    "fp16": Fmt.FLOAT,
    "fp32": Fmt.FLOAT,
}
TRITON_FORMATS = frozenset(FMT_OF)


@dataclass(frozen=True)
class WeightOperand:
    """Everything a kernel launch needs to know about one weight (or one stack of expert weights).

    Strides are in elements of each tensor; `e*` are the expert strides (0 for a single weight).
    `group` is the int4 group size along K (K for per-channel) or the fp8 block size, 1 when unused.
    `act` is the activation quantization the spec asks for: None, "int8", "fp8", "mxfp4", "mxfp8".
    """

    fmt: Fmt
    n: int
    k: int
    w0: torch.Tensor
    w1: torch.Tensor
    w2: torch.Tensor
    w3: torch.Tensor
    s0k: int
    s0n: int
    s1g: int = 0
    s1n: int = 0
    s2g: int = 0
    s2n: int = 0
    group: int = 1
    has_gidx: bool = False
    col_scale: bool = False
    act: str | None = None
    experts: int = 0
    e0: int = 0
    e1: int = 0
    e2: int = 0
    e3: int = 0
    spec_label: str = ""

    @property
    def nbytes(self) -> int:
        """Bytes the kernel streams from memory for the weight (all experts of a stack)."""
        seen, total = set(), 0
        for t in (self.w0, self.w1, self.w2, self.w3):
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
        return total


def _dummy(device: torch.device) -> torch.Tensor:
    return torch.zeros(1, dtype=torch.int32, device=device)


def _check_no_e4m3_nan(weight: torch.Tensor, label: str) -> None:
    """The in-kernel E4M3 decode reads NaN codes (0x7f / 0xff, never written by a quantizer) as finite."""
    if bool(((weight.view(torch.uint8) & 0x7F) == 0x7F).any()):
        raise FormatError(f"{label}: the weight holds E4M3 NaN codes, which the Triton decode does not reproduce")


def operand_for(q: QuantizedTensor) -> WeightOperand:
    """Describe one packed weight for the kernels; FormatError for a format or spec they do not cover."""
    if q.format not in FMT_OF:
        raise FormatError(f"{q.format}: no Triton kernel for this format (have {', '.join(sorted(FMT_OF))})")
    spec = get_format(q.format).normalize(q.spec)
    fmt = FMT_OF[q.format]
    n, k = q.shape
    t = {name: tensor.contiguous() for name, tensor in q.tensors.items()}  # stacking assumes row-major strides
    device = next(iter(t.values())).device
    dummy = _dummy(device)
    label = spec.describe()
    if fmt in (Fmt.GPTQ, Fmt.AWQ):
        qweight, scales, qzeros = t["qweight"], t["scales"], t["qzeros"]
        if fmt == Fmt.GPTQ and spec.checkpoint_format == "gptq":
            qzeros = to_int32(qzeros.to(torch.int64) + V1_ZERO_OFFSET)
        group = k if spec.group_size == -1 else spec.group_size
        g_idx, has_gidx = dummy, False
        if fmt == Fmt.GPTQ:
            g_idx = t["g_idx"].to(torch.int32).contiguous()
            contiguous = torch.arange(k, device=device, dtype=torch.int32) // group
            has_gidx = not torch.equal(g_idx, contiguous)
        return WeightOperand(
            fmt, n, k, qweight, scales, qzeros.contiguous(), g_idx,
            s0k=qweight.stride(0), s0n=qweight.stride(1), s1g=scales.stride(0), s1n=scales.stride(1),
            s2g=qzeros.stride(0), s2n=qzeros.stride(1), group=group, has_gidx=has_gidx, spec_label=label,
        )
    if fmt in (Fmt.FP8, Fmt.MXFP8):
        _check_no_e4m3_nan(t["weight"], label)
    if fmt == Fmt.FP8:
        w = t["weight"].view(torch.int8)
        if spec.granularity == "block":
            s = t["weight_scale_inv"].to(torch.float32).contiguous()
            return WeightOperand(fmt, n, k, w, s, dummy, dummy, s0k=w.stride(1), s0n=w.stride(0),
                                 s1g=s.stride(1), s1n=s.stride(0), group=spec.group_size,
                                 act=spec.activation, spec_label=label)
        s = t["weight_scale"].to(torch.float32).reshape(-1).contiguous()
        return WeightOperand(fmt, n, k, w, s, dummy, dummy, s0k=w.stride(1), s0n=w.stride(0),
                             s1n=1 if s.numel() > 1 else 0, col_scale=True, act=spec.activation, spec_label=label)
    if fmt == Fmt.INT8:
        w = t["weight"]
        s = t["weight_scale"].to(torch.float32).reshape(-1).contiguous()
        return WeightOperand(fmt, n, k, w, s, dummy, dummy, s0k=w.stride(1), s0n=w.stride(0), s1n=1,
                             col_scale=True, act=spec.activation, spec_label=label)
    if fmt in (Fmt.MXFP4, Fmt.MXFP8):
        w = t["weight_packed"] if fmt == Fmt.MXFP4 else t["weight"].view(torch.int8)
        s = t["weight_scale"]
        return WeightOperand(fmt, n, k, w, s, dummy, dummy, s0k=w.stride(1), s0n=w.stride(0),
                             s1g=s.stride(1), s1n=s.stride(0), group=BLOCK_SIZE, act=spec.activation,
                             spec_label=label)
    w = t["weight"]
    return WeightOperand(fmt, n, k, w, dummy, dummy, dummy, s0k=w.stride(1), s0n=w.stride(0), spec_label=label)


def stack_experts(qs: list[QuantizedTensor]) -> WeightOperand:
    """One operand for several experts' weights of one format, spec and shape (stacked copies)."""
    ops = [operand_for(q) for q in qs]
    first = ops[0]
    for q, op in zip(qs, ops, strict=True):
        if (op.fmt, op.n, op.k, op.group, op.col_scale, op.spec_label) != (
            first.fmt, first.n, first.k, first.group, first.col_scale, first.spec_label
        ):
            raise FormatError(
                f"experts stacked for one grouped launch must share format, spec and shape; got "
                f"{first.spec_label} {first.n}x{first.k} and {op.spec_label} {op.n}x{op.k} ({q.spec.describe()})"
            )
    stacks = [torch.stack([getattr(op, f) for op in ops]) for f in ("w0", "w1", "w2", "w3")]
    return replace(
        first,
        w0=stacks[0], w1=stacks[1], w2=stacks[2], w3=stacks[3],
        has_gidx=any(op.has_gidx for op in ops),
        experts=len(ops),
        e0=stacks[0].stride(0), e1=stacks[1].stride(0), e2=stacks[2].stride(0), e3=stacks[3].stride(0),
    )
