"""What every plan-search strategy shares: candidate specs per weight, calibration tokens and the
calibration pass over them (`CalibrationTaps`), writing the plan."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import FormatError, MPQError
from ..formats import QuantSpec, get_format
from ..layers.linear import MixedPrecisionLinear
from ..layers.moe import MixedPrecisionExperts
from ..plan import Plan, Rule, SpecFields, is_protected, save_plan
from ..plan.model_weights import LinearWeight, linear_weights

Observer = Callable[[str, torch.Tensor], None]

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


def write_plan(plan: Plan, path: str | Path, *, overwrite: bool = False) -> Path:
    return save_plan(plan, path, overwrite=overwrite)


def searched_weights(model_dir: str | Path) -> list[LinearWeight]:
    """The linear weights a search assigns: all but the protected ones (lm_head, routers), which stay bf16."""
    return [w for w in linear_weights(model_dir) if not is_protected(w.name)]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class CalibrationTaps:
    """The calibration pass the layer-wise searches (seeds 002, 003) share.

    Both judge a numeric format by each linear layer's own output error on calibration inputs
    (layer-wise, as GPTQ and SmoothQuant do): every layer sees the unquantized model's activations, so
    one forward pass over all calibration tokens hands every layer all of its inputs at once. The model
    is loaded through `load_model` with an all-bf16 plan in float32, so each MoE expert is a module of
    its own, mapped back to the checkpoint name a plan uses.

    The float32 model with a hook on every searched weight that passes its input rows [n, in] on.

    `dense_experts=True` runs every expert on every token of its layer, with routing weight 0 where the
    router did not pick it (so the layer's output is unchanged): expert activations then share their
    tokens with every other layer, which statistics *between* layers (mutual information) need.
    """

    def __init__(self, model_dir: str | Path, weights: list[LinearWeight], device: torch.device | None = None,
                 dense_experts: bool = False):
        from ..loaders.hf_model import load_model, module_path

        self.device = device or default_device()
        self.model = load_model(Plan(), model_dir, dtype=torch.float32, progress=False).to(self.device)
        self.modules: dict[str, MixedPrecisionLinear] = {}
        for w in weights:
            target = module_path(self.model, w.name)
            module = self.model.get_submodule(target)
            if not isinstance(module, MixedPrecisionLinear):
                raise MPQError(f"{w.name}: expected a linear layer at {target}, found {type(module).__name__}")
            self.modules[w.name] = module
        self.dense_experts = dense_experts

    def weight(self, name: str) -> torch.Tensor:
        """The unquantized weight [out, in] in float32."""
        module = self.modules[name]
        return get_format(module.spec.format).dequantize(module.qtensor).to(self.device)

    @torch.no_grad()
    def run(self, tokens: torch.Tensor, observe: Observer, desc: str = "calibration", progress: bool = True) -> set[str]:
        """One forward pass over `tokens` [batch, seq]; returns the names observed (unrouted experts are not)."""
        if tokens.ndim != 2 or tokens.shape[1] < 2:
            raise ValueError(f"calibration tokens must be [nsamples, seq_len >= 2], got shape {tuple(tokens.shape)}")
        seen: set[str] = set()
        handles = []
        bar = tqdm(total=len(self.modules), desc=desc, unit="layer", disable=not progress)

        def hook(name: str):
            def fn(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                x = args[0].reshape(-1, args[0].shape[-1]).to(torch.float32)
                if x.shape[0]:
                    observe(name, x)
                    if name not in seen:
                        seen.add(name)
                        bar.update()
            return fn

        try:
            handles = [m.register_forward_pre_hook(hook(n)) for n, m in self.modules.items()]
            if self.dense_experts:
                handles += [m.register_forward_pre_hook(_route_to_all_experts)
                            for m in self.model.modules() if isinstance(m, MixedPrecisionExperts)]
            self.model.base_model(input_ids=tokens.to(self.device), use_cache=False)
        finally:
            for h in handles:
                h.remove()
            bar.close()
        return seen


def _route_to_all_experts(module: MixedPrecisionExperts, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Every token to every expert, weight 0 where the router did not pick the expert."""
    hidden, top_k_index, top_k_weights = args
    n, experts = hidden.shape[0], module.num_experts
    dense = torch.zeros(n, experts, dtype=top_k_weights.dtype, device=hidden.device)
    dense.scatter_(1, top_k_index, top_k_weights)
    return hidden, torch.arange(experts, device=hidden.device).expand(n, experts), dense
