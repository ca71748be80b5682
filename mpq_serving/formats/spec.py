"""The per-weight quantization spec: what a plan resolves each weight to."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

Granularity = Literal["tensor", "channel", "block"]


@dataclass(frozen=True)
class QuantSpec:
    """How one weight is stored.

    `format` is a registered format name; the other fields refine it and are ignored by formats
    they do not concern (a bf16 weight has no group size).  `group_size` -1 means one group per
    output channel (per-channel); None (here and in `symmetric`, `granularity`) means the format's
    default, filled in by `Format.normalize`.  `checkpoint_format` names a stored variant of the layout:
    GPTQ's v1 / v2 zeros, or AutoAWQ's GEMV layout ("awq_gemv"), which is only ever read from a
    source and repacked to GEMM at load.
    """

    format: str
    group_size: int | None = None
    symmetric: bool | None = None
    act_order: bool = False
    granularity: Granularity | None = None
    activation: str | None = None
    checkpoint_format: Literal["gptq", "gptq_v2", "awq_gemv"] = "gptq"

    def with_defaults(self, **defaults: object) -> "QuantSpec":
        """Fill fields that are None with the given defaults (used by each format)."""
        changes = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        return replace(self, **changes) if changes else self

    def describe(self) -> str:
        """A short human label, e.g. `gptq_int4 g128 asym act-order`."""
        parts = [self.format]
        if self.granularity:
            parts.append(self.granularity)
        if self.group_size is not None:
            parts.append("per-channel" if self.group_size == -1 else f"g{self.group_size}")
        if self.symmetric is False:
            parts.append("asym")
        if self.act_order:
            parts.append("act-order")
        if self.activation:
            parts.append(f"a:{self.activation}")
        return " ".join(parts)


BF16 = QuantSpec("bf16")


@dataclass
class QuantizedTensor:
    """One weight in its format's on-disk layout.

    `tensors` maps the suffix the real tool writes (e.g. `qweight`, `weight_scale`) to the tensor;
    the full checkpoint name is `<module name>.<suffix>`.  `shape` is the logical (out, in) shape.
    """

    spec: QuantSpec
    shape: tuple[int, int]
    tensors: dict[str, "torch.Tensor"] = field(default_factory=dict)  # noqa: F821

    @property
    def format(self) -> str:
        return self.spec.format

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())
