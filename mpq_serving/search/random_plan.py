"""Seed 000's random mixed-precision plan: a ratio of mxfp4 layers and a ratio of bf16 layers, drawn at random.

The seed's priorities, kept as written: experts go to mxfp4 first (they hold most parameters and are
each used by few tokens), attention goes to bf16 first (few parameters, used by every token), what
the two groups cannot fill is drawn at random from the remaining layers, and everything else stays at
the mxfp8 default. lm_head, MoE routers and embeddings are not drawn: they stay bf16.

The seed's `*.mlp.gate*` glob is read as "MoE routers" (`mlp.gate`, `block_sparse_moe.gate`): a dense
model's `mlp.gate_proj` is an ordinary MLP projection and is drawn like the others. Embeddings are not
linear weights of the checkpoint (nothing a plan rule may name), so no rule is written for them; they
stay bf16 all the same.

Counts are `round(ratio * layers)` over the drawn layers; the draw uses `random.Random(seed)` over the
checkpoint's weight order, so the same seed on the same model gives the same plan.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MPQError
from ..plan import Plan, Rule, SpecFields, resolve
from ..plan.bits import average_bits
from ..plan.model_weights import LinearWeight, linear_weights
from .common import SearchRecord

MX_BLOCK = 32
_SPECIAL = ("lm_head", "router")  # categories the seed keeps in bf16
DEVICES = ("cpu", "cuda")
DTYPES = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class RandomPlanConfig:
    """The seed's parameters; `weight_only` drops the seed's `aq` (activations then stay bf16)."""

    mxfp4_ratio: float = 0.3
    bf16_ratio: float = 0.2
    seed: int = 42
    group_size: int = MX_BLOCK
    device: str = "cpu"
    dtype: str = "fp32"
    weight_only: bool = False

    def check(self) -> None:
        """Refuse what the seed refuses (ratios outside [0, 1], a sum above 1), naming the flag."""
        for flag, value in (("--mxfp4-ratio", self.mxfp4_ratio), ("--bf16-ratio", self.bf16_ratio)):
            if not 0.0 <= value <= 1.0:
                raise MPQError(f"{flag} must be in [0, 1], got {value}")
        if self.mxfp4_ratio + self.bf16_ratio > 1.0 + 1e-9:
            raise MPQError(
                f"--mxfp4-ratio + --bf16-ratio must be <= 1 (the rest is mxfp8), got "
                f"{self.mxfp4_ratio} + {self.bf16_ratio} = {self.mxfp4_ratio + self.bf16_ratio:g}"
            )
        if self.group_size != MX_BLOCK:
            raise MPQError(f"--group-size {self.group_size}: mxfp4 and mxfp8 use the OCP MX block of {MX_BLOCK}; "
                           f"pass --group-size {MX_BLOCK}")
        if self.device not in DEVICES:
            raise MPQError(f"--device {self.device!r}: choose one of {', '.join(DEVICES)}")
        if self.dtype not in DTYPES:
            raise MPQError(f"--dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")


def classify(weights: list[LinearWeight]) -> dict[str, list[LinearWeight]]:
    """The seed's classes: expert / attention / other (drawn), and special (kept bf16)."""
    groups: dict[str, list[LinearWeight]] = {"expert": [], "attention": [], "other": [], "special": []}
    for w in weights:
        if w.category in _SPECIAL:
            groups["special"].append(w)
        elif w.category in ("expert", "attention"):
            groups[w.category].append(w)
        else:
            groups["other"].append(w)
    return groups


def _draw(preferred: list[str], rest: list[str], count: int, rng: random.Random) -> list[str]:
    """`count` names: from `preferred` first (all of it if it is too small), then at random from `rest`."""
    if count <= len(preferred):
        return rng.sample(preferred, count)
    return list(preferred) + rng.sample(rest, count - len(preferred))


def random_assignment(weights: list[LinearWeight],
                      config: RandomPlanConfig) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """name -> precision (mxfp4 / bf16 / mxfp8) for the drawn layers, and the steps taken (the history)."""
    config.check()
    groups = classify(weights)
    drawn = [w for w in weights if w.category not in _SPECIAL]
    if not drawn:
        raise MPQError("no linear layer to draw from: every linear weight is lm_head or a router")
    n_mxfp4 = round(config.mxfp4_ratio * len(drawn))
    n_bf16 = min(round(config.bf16_ratio * len(drawn)), len(drawn) - n_mxfp4)
    rng = random.Random(config.seed)
    experts = [w.name for w in groups["expert"]]
    non_experts = [w.name for w in drawn if w.category != "expert"]
    mxfp4 = _draw(experts, non_experts, n_mxfp4, rng)
    taken = set(mxfp4)
    attention = [w.name for w in groups["attention"] if w.name not in taken]
    others = [w.name for w in drawn if w.category != "attention" and w.name not in taken]
    bf16 = _draw(attention, others, n_bf16, rng)
    chosen = {**{n: "mxfp4" for n in mxfp4}, **{n: "bf16" for n in bf16}}
    n_experts, n_attention = len(set(mxfp4) & set(experts)), len(set(bf16) & set(attention))
    history = [
        {"step": "mxfp4", "target": n_mxfp4, "from_experts": n_experts, "from_others": n_mxfp4 - n_experts},
        {"step": "bf16", "target": n_bf16, "from_attention": n_attention, "from_others": n_bf16 - n_attention},
    ]
    return {w.name: chosen.get(w.name, "mxfp8") for w in drawn}, history


def random_plan(model_dir: str | Path, config: RandomPlanConfig) -> Plan:
    """The seed-000 plan for a model folder, in the JSON `default / overrides / summary` form."""
    record = SearchRecord("random", parameters={
        "model": str(model_dir), "mxfp4_ratio": config.mxfp4_ratio, "bf16_ratio": config.bf16_ratio,
        "group_size": config.group_size, "device": config.device, "dtype": config.dtype,
        "weight_only": config.weight_only}, seed=config.seed)
    weights = linear_weights(model_dir)
    assignment, record.history = random_assignment(weights, config)
    category = {w.name: w.category for w in weights}

    def quantized(fmt: str) -> dict[str, Any]:
        return {"wq": fmt, "group_size": config.group_size, **({} if config.weight_only else {"aq": fmt})}

    rules = [Rule(pattern=w.name, skip=True, category=w.category, precision="bf16")
             for w in classify(weights)["special"]]
    for name, precision in assignment.items():
        if precision == "mxfp4":
            rules.append(Rule(pattern=name, **quantized("mxfp4"), category=category[name], precision="mxfp4"))
        elif precision == "bf16":
            rules.append(Rule(pattern=name, skip=True, category=category[name], precision="bf16"))
    plan = Plan(default=SpecFields(**quantized("mxfp8")), overrides=rules)
    counts = {p: sum(v == p for v in assignment.values()) for p in ("mxfp4", "bf16", "mxfp8")}
    total = len(assignment)
    bits = average_bits(weights, resolve(plan, [w.name for w in weights])).avg_bits
    plan.summary = record.summary(
        total_layers=total, mxfp4_layers=counts["mxfp4"], bf16_layers=counts["bf16"], mxfp8_layers=counts["mxfp8"],
        mxfp4_ratio=round(counts["mxfp4"] / total, 4), bf16_ratio=round(counts["bf16"] / total, 4),
        mxfp8_ratio=round(counts["mxfp8"] / total, 4), group_size=config.group_size,
        special_bf16_layers=len(rules) - counts["bf16"] - counts["mxfp4"], avg_bits=round(bits, 4))
    return plan

