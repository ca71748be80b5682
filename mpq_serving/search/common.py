"""What every plan-search strategy shares: candidate specs per weight, calibration tokens, writing the plan."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import FormatError
from ..formats import QuantSpec, get_format
from ..plan import Plan, Rule, SpecFields, save_plan

_GROUPED = {"gptq_int4", "awq_int4", "ct_int4"}


def candidate_spec(fmt: str, in_features: int, preferred_group: int = 128) -> QuantSpec:
    """The spec a strategy uses for `fmt` on a weight with `in_features` inputs.

    Grouped int4 formats take the preferred group size when it divides in_features, else the largest
    of 128 / 64 / 32 that does, else per-channel (-1). SmolLM2's hidden 576 gets g64; its 1536 gets g128.
    """
    name = get_format(fmt).name
    if name not in _GROUPED:
        return QuantSpec(name)
    for group in (preferred_group, 128, 64, 32):
        if group <= in_features and in_features % group == 0:
            return QuantSpec(name, group_size=group)
    return QuantSpec(name, group_size=-1)


def fits(spec: QuantSpec, shape: tuple[int, int]) -> bool:
    """Whether a weight of this shape can take the spec (e.g. MX needs in_features % 32 == 0)."""
    fmt = get_format(spec.format)
    try:
        fmt.check_shape(fmt.normalize(spec), shape, "weight")
    except FormatError:
        return False
    return True


def calibration_tokens(tokenizer, nsamples: int = 16, seq_len: int = 256, text: str = "wiki_calib",
                       seed: int = 0) -> torch.Tensor:
    """`nsamples` random windows of `seq_len` tokens from a calibration text, as a [nsamples, seq_len] tensor."""
    from ..eval.text import load_text

    ids = tokenizer(load_text(text), return_tensors="pt").input_ids[0]
    if len(ids) <= seq_len:
        raise ValueError(f"calibration text {text!r} has {len(ids)} tokens; need more than seq_len={seq_len}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seq_len, (nsamples,), generator=gen)
    return torch.stack([ids[s: s + seq_len] for s in starts.tolist()])


@dataclass
class SearchRecord:
    """Parameters, seed, timing and history a strategy stores in its plan's `summary`."""

    strategy: str
    parameters: dict[str, Any]
    seed: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def summary(self, **extra: Any) -> dict[str, Any]:
        return {"strategy": self.strategy, "parameters": self.parameters, "seed": self.seed,
                "search_seconds": round(time.perf_counter() - self.started, 2), **extra, "history": self.history}


def plan_from_assignment(assignment: dict[str, QuantSpec], default: QuantSpec, record: SearchRecord,
                         categories: dict[str, str] | None = None, **summary: Any) -> Plan:
    """A plan naming every weight whose spec differs from the default exactly (first-match order is moot)."""
    def fields(spec: QuantSpec) -> dict[str, Any]:
        out: dict[str, Any] = {"wq": spec.format}
        for key in ("group_size", "granularity", "symmetric"):
            if getattr(spec, key) is not None:
                out[key] = getattr(spec, key)
        if spec.act_order:
            out["act_order"] = True
        if spec.activation:
            out["aq"] = spec.activation
        return out

    rules = [Rule(pattern=name, **fields(spec), **({"category": categories[name]} if categories else {}))
             for name, spec in assignment.items() if spec != default]
    return Plan(default=SpecFields(**fields(default)), overrides=rules, summary=record.summary(**summary))


def write_plan(plan: Plan, path: str | Path) -> Path:
    return save_plan(plan, path)
