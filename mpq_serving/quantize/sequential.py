"""`quantize_model`: the layer-by-layer pass that turns a float model + plan into packed modules.

The reference tools' loop (GPTQModel / AutoGPTQ / AutoAWQ / SparseGPT): catch what enters decoder
layer 0 on the calibration tokens, then for each layer in turn

1. optionally fold SmoothQuant scales into the layer (smoothquant.py) where the plan quantizes activations;
2. AWQ: search and fold activation-aware scales, clip, then round to nearest (awq.py), the next layer
   seeing the float layer's output, as AutoAWQ does;
   GPTQ / SparseGPT: true-sequential stages (q/k/v, o, gate/up, down): hooks accumulate each linear's
   input Hessian over the stage's forward pass, the stage is quantized (gptq.py / sparsegpt.py) and
   replaced by its quantized module, so later stages and the next layer see the quantized outputs;
   RTN: each weight rounded by its format's own `quantize`;
3. run the layer on its inputs to get the next layer's inputs.

MoE experts are separate modules here (`load_model` builds MixedPrecisionExperts), so a hook on an
expert sees exactly the tokens the router sends it: each expert gets its own Hessian / AWQ inputs.
An expert no calibration token reached is rounded to nearest, and its record says so.

Only one layer's activations (nsamples × seq_len × hidden floats, in and out) are alive at a time;
the float32 model itself is held whole (for SmolLM2: 0.5 GB).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import MPQError
from ..formats import QuantizedTensor, QuantSpec, get_format
from ..layers.linear import MixedPrecisionLinear
from ..loaders.hf_model import _EXPERT, _ROLE, _renamer, load_model
from ..plan import Plan, is_protected, resolve
from ..plan.model_weights import linear_weights
from . import awq
from .calibration import LayerInputs, calibration_tokens, capture_first_layer_inputs, decoder_layers, run_layer
from .column_quantizers import FLOAT_FORMATS, INT_GROUP_FORMATS, supports_gptq
from .folding import fold_scales
from .gptq import gptq_quantize
from .hessian import HessianAccumulator
from .plan_groups import group_records
from .scale_groups import ScaleGroup, scale_groups
from .smoothquant import activation_quantized, smooth_group
from .sparsegpt import parse_pattern, sparsegpt_quantize

Method = Literal["rtn", "gptq", "awq"]
# True-sequential stages by a linear's last name component; anything else goes last.
STAGES = (("q_proj", "k_proj", "v_proj", "qkv_proj"), ("o_proj",), ("gate_proj", "up_proj", "w1", "w3"),
          ("down_proj", "w2"))
_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


@dataclass
class QuantizeConfig:
    """How `mpq quantize` makes each weight; every field is recorded in the output's config."""

    method: Method = "gptq"
    nsamples: int = 128
    seq_len: int = 512
    calib: str = "wiki_calib"
    damp: float = 0.01
    act_order: bool = False
    static_groups: bool = False  # act-order visits columns by the Hessian, groups stay contiguous (no g_idx)
    smooth_alpha: float | None = None
    sparsity: float = 0.0
    sparsity_pattern: str | None = None
    batch_size: int = 8
    awq_samples: int = 32  # calibration samples the AWQ grid search runs on (all samples feed the layers)
    true_sequential: bool = True  # GPTQ stages q/k/v → o → gate/up → down, each seeing the quantized earlier ones
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in ("rtn", "gptq", "awq"):
            raise MPQError(f"unknown method {self.method!r}; choose rtn, gptq or awq")
        if self.nsamples < 1 or self.seq_len < 2:
            raise MPQError(f"need nsamples >= 1 and seq_len >= 2, got {self.nsamples} and {self.seq_len}")
        if self.smooth_alpha is not None and not 0.0 <= self.smooth_alpha <= 1.0:
            raise MPQError(f"--smooth-alpha must be in [0, 1], got {self.smooth_alpha}")
        parse_pattern(self.sparsity_pattern)
        if self.sparsity_pattern and self.sparsity_pattern != "unstructured":
            n, m = parse_pattern(self.sparsity_pattern)
            self.sparsity = n / m
        if not 0.0 <= self.sparsity < 1.0:
            raise MPQError(f"--sparsity must be in [0, 1), got {self.sparsity}")

    @property
    def needs_calibration(self) -> bool:
        return self.method != "rtn" or self.smooth_alpha is not None or self.sparsity > 0


@dataclass
class QuantizedModel:
    """The packed modules, the float model they came from (norms may hold folded scales), and records."""

    modules: dict[str, QuantizedTensor]
    model: nn.Module
    model_dir: Path
    config: QuantizeConfig
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    rename: Callable[[str], str] = staticmethod(lambda n: n)
    groups: list[dict[str, Any]] = field(default_factory=list)  # seed 003's layer groups, when the plan has them

    def summary(self) -> dict[str, Any]:
        return {**asdict(self.config), "layers": self.records, **({"groups": self.groups} if self.groups else {})}

    def float_tensor(self, name: str) -> torch.Tensor:
        """A non-linear tensor (norm, embedding, bias) of the float model by checkpoint name."""
        target = self.rename(name)
        owner, _, leaf = target.rpartition(".")
        value = getattr(self.model.get_submodule(owner), leaf, None)
        if not isinstance(value, torch.Tensor):
            raise MPQError(f"{name}: no tensor {target} in the calibration model")
        return value.detach()


@dataclass
class LinearSlot:
    """Where one planned linear lives in the calibration model."""

    name: str
    parent: nn.Module
    attr: str
    spec: QuantSpec

    @property
    def module(self) -> MixedPrecisionLinear:
        return getattr(self.parent, self.attr)

    @property
    def role(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    @property
    def is_float(self) -> bool:
        return get_format(self.spec.format).name in FLOAT_FORMATS


def quantize_model(model_dir: str | Path, plan: Plan, config: QuantizeConfig, progress: bool = True) -> QuantizedModel:
    """Quantize every linear weight of `model_dir` to its plan spec with `config.method`."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    names = [w.name for w in linear_weights(model_dir)]
    resolved = resolve(plan, names)
    model, slots = calibration_model(model_dir, {n: _spec(resolved[n].spec, config) for n in names})
    rename = _renamer(model)
    result = QuantizedModel({}, model, model_dir, config, rename=rename)
    by_layer: dict[int, list[LinearSlot]] = defaultdict(list)
    outside: list[LinearSlot] = []
    for slot in slots.values():
        m = _LAYER_INDEX.search("." + rename(slot.name))
        (by_layer[int(m.group(1))] if m else outside).append(slot)

    layers = decoder_layers(model)
    inputs = None
    if config.needs_calibration:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        tokens = calibration_tokens(tokenizer, config.nsamples, config.seq_len, config.calib, config.seed)
        inputs = capture_first_layer_inputs(model, tokens, config.batch_size)
    bar = tqdm(range(len(layers)), desc=f"quantize ({config.method})", unit="layer", disable=not progress)
    for index in bar:
        layer_slots = by_layer.get(index, [])
        if inputs is None:
            for slot in layer_slots:
                _finish_rtn(result, slot, "rtn")
            continue
        inputs = _quantize_layer(result, layers[index], layer_slots, inputs)
    for slot in outside:  # lm_head and anything outside the decoder stack: no calibration inputs kept
        _finish_rtn(result, slot, "rtn")
    missing = [n for n in slots if n not in result.modules]
    if missing:
        raise MPQError(f"internal: modules not quantized: {missing[:5]}")
    result.groups = group_records(plan, result.records)
    return result


def calibration_model(model_dir: str | Path, specs: dict[str, QuantSpec] | None = None) -> tuple[nn.Module, dict[str, LinearSlot]]:
    """The model in float32 with every linear (and MoE expert projection) a float32 copy the passes can
    scale, hook and replace; `specs` (checkpoint name → target spec, default bf16) are what each becomes."""
    model = load_model(Plan(), model_dir, dtype=torch.float32, progress=False)
    rename = _renamer(model)
    if specs is None:
        specs = {w.name: QuantSpec("bf16") for w in linear_weights(model_dir)}
    slots = {}
    for name, spec in specs.items():
        if is_protected(name) and spec.format == "bf16" and not _is_linear_at(model, rename, name):
            continue  # an MoE router module (e.g. Qwen3MoeTopKRouter): kept as the model has it, in float
        slots[name] = _slot(model, rename, name, spec)
    return model, slots


def _is_linear_at(model: nn.Module, rename: Callable[[str], str], name: str) -> bool:
    try:
        return isinstance(model.get_submodule(rename(name)), MixedPrecisionLinear)
    except AttributeError:
        return False


def _spec(spec: QuantSpec, config: QuantizeConfig) -> QuantSpec:
    fmt = get_format(spec.format).name
    stores_g_idx = "g_idx" in get_format(fmt).tensor_names  # the GPTQ formats, at any width
    if config.act_order and config.method == "gptq" and (stores_g_idx or (config.static_groups and fmt in INT_GROUP_FORMATS)):
        return replace(spec, act_order=True)
    return spec


def _slot(model: nn.Module, rename: Callable[[str], str], name: str, spec: QuantSpec) -> LinearSlot:
    """Find the linear, and swap in a float32 copy the passes can scale and hook."""
    target = rename(name)
    m = _EXPERT.match(target)
    if m:  # MixedPrecisionExperts keeps its experts in `.experts`, each with gate/up/down_proj
        target = f"{m['prefix']}.experts.{m['e']}.{_ROLE[m['proj']]}_proj"
    parent_name, _, attr = target.rpartition(".")
    parent = model.get_submodule(parent_name)
    old = getattr(parent, attr, None)
    if not isinstance(old, MixedPrecisionLinear):
        raise MPQError(f"{name}: expected a linear layer at {target}, found {type(old).__name__}")
    weight = get_format(old.spec.format).dequantize(old.qtensor)
    copy = MixedPrecisionLinear(QuantizedTensor(QuantSpec("fp32"), tuple(weight.shape), {"weight": weight}),
                                None if old.bias is None else old.bias.detach().float())
    copy.target_activation = spec.activation
    setattr(parent, attr, copy)
    return LinearSlot(name, parent, attr, spec)


# ------------------------------------------------------------------------------------------ per layer

def _quantize_layer(result: QuantizedModel, layer: nn.Module, slots: list[LinearSlot], inputs: LayerInputs) -> LayerInputs:
    config = result.config
    by_module = {id(s.module): s for s in slots}
    groups = scale_groups(layer)
    if config.smooth_alpha is not None:
        _smooth(result, layer, groups, by_module, inputs)
    if config.method == "awq" and config.sparsity == 0:
        next_hidden = run_layer(layer, inputs)  # AutoAWQ: the next layer sees this layer in float
        _awq(result, layer, groups, by_module, slots, inputs)
        return LayerInputs(next_hidden, inputs.kwargs)
    if config.method == "gptq" or config.sparsity > 0:
        _gptq_stages(result, layer, slots, inputs)
    else:
        for slot in slots:
            _finish_rtn(result, slot, "rtn")
    return LayerInputs(run_layer(layer, inputs), inputs.kwargs)


def _capture(layer: nn.Module, inputs: LayerInputs, modules: dict[str, nn.Module],
             observe: Callable[[str, torch.Tensor], None], batches: int | None = None) -> None:
    """Run the layer on (the first `batches` of) its inputs with a pre-hook passing each module's input on."""
    def hook(name: str):
        def fn(_module: nn.Module, args: tuple) -> None:
            if args[0].numel():
                observe(name, args[0].detach())
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in modules.items()]
    try:
        n = len(inputs.hidden) if batches is None else batches
        run_layer(layer, LayerInputs(inputs.hidden[:n], inputs.kwargs[:n]))
    finally:
        for h in handles:
            h.remove()


def _smooth(result: QuantizedModel, layer: nn.Module, groups: list[ScaleGroup], by_module: dict[int, LinearSlot],
            inputs: LayerInputs) -> None:
    targets = [g for g in groups if activation_quantized(g)]
    if not targets:
        return
    absmax: dict[str, torch.Tensor] = {}

    def observe(key: str, x: torch.Tensor) -> None:
        m = x.reshape(-1, x.shape[-1]).abs().amax(0)
        absmax[key] = torch.maximum(absmax[key], m) if key in absmax else m

    _capture(layer, inputs, {g.key: g.linears[0] for g in targets}, observe)
    for g in targets:
        if g.key not in absmax:
            continue
        smooth_group(g, absmax[g.key], result.config.smooth_alpha)
        for linear in g.linears:
            slot = by_module.get(id(linear))
            if slot is not None:
                result.records.setdefault(slot.name, {})["smooth_alpha"] = result.config.smooth_alpha


def _awq(result: QuantizedModel, layer: nn.Module, groups: list[ScaleGroup], by_module: dict[int, LinearSlot],
         slots: list[LinearSlot], inputs: LayerInputs) -> None:
    config = result.config
    search_inputs = inputs.first_samples(config.awq_samples)
    captured: dict[str, list[torch.Tensor]] = defaultdict(list)
    _capture(layer, search_inputs, {s.name: s.module for s in slots}, lambda n, x: captured[n].append(x))
    kwargs = search_inputs.kwargs
    for g in groups:
        members = [by_module.get(id(linear)) for linear in g.linears]
        if any(m is None for m in members) or not captured.get(members[0].name):
            continue
        quantizers = [awq.fake_quantizer(m.spec, m.name) for m in members]
        if all(q is None for q in quantizers):
            continue
        specs = [get_format(m.spec.format).normalize(m.spec) for m in members]
        found = awq.search_scales(g, captured[members[0].name], kwargs if g.needs_layer_kwargs else None,
                                  quantizers, specs)
        fold_scales(g, found.scales)
        scaled = [x / found.scales for x in captured[members[0].name]]
        for m in members:
            captured[m.name] = scaled
            result.records.setdefault(m.name, {}).update(
                {"awq_group": g.key, "awq_ratio": found.ratio, "awq_loss": found.loss,
                 "awq_loss_unscaled": found.loss_at_ratio_0})
    for slot in slots:
        if slot.name in captured:
            max_val = awq.search_clip(slot.module.weight, captured[slot.name], slot.spec, slot.name)
            if max_val is not None:
                awq.apply_clip(slot.module.weight, max_val)
                result.records.setdefault(slot.name, {})["awq_clip"] = True
        _finish_rtn(result, slot, "awq" if slot.name in result.records and "awq_group" in result.records[slot.name]
                    else "rtn")


def _gptq_stages(result: QuantizedModel, layer: nn.Module, slots: list[LinearSlot], inputs: LayerInputs) -> None:
    config = result.config
    stages: list[list[LinearSlot]] = [[] for _ in range(len(STAGES) + 1)]
    for slot in slots:
        index = next((i for i, roles in enumerate(STAGES) if slot.role in roles), len(STAGES))
        stages[index if config.true_sequential else 0].append(slot)
    for stage in stages:
        wanted = [s for s in stage if not s.is_float or (config.sparsity > 0 and not is_protected(s.name))]
        for slot in stage:
            if slot not in wanted:
                _finish_rtn(result, slot, "none")
        if not wanted:
            continue
        hessians = {s.name: HessianAccumulator(s.module.in_features) for s in wanted}
        _capture(layer, inputs, {s.name: s.module for s in wanted}, lambda n, x: hessians[n].add(x))
        for slot in wanted:
            acc = hessians[slot.name]
            if acc.rows == 0:
                _finish_rtn(result, slot, "rtn", note="no calibration token reached this module")
                continue
            _finish_obs(result, slot, acc)


def _finish_obs(result: QuantizedModel, slot: LinearSlot, acc: HessianAccumulator) -> None:
    """GPTQ and/or SparseGPT on one linear, then swap the quantized module in."""
    config = result.config
    weight = slot.module.weight
    record = {"rows": acc.rows, "nsamples": config.nsamples, "seq_len": config.seq_len, "damp": config.damp}
    sparse = config.sparsity > 0 and not is_protected(slot.name)
    fmt = get_format(slot.spec.format)
    if sparse:
        grid = slot.spec if supports_gptq(slot.spec) else QuantSpec("fp32")
        out = sparsegpt_quantize(weight, acc.value(), grid, sparsity=config.sparsity,
                                 pattern=config.sparsity_pattern, damp=config.damp, name=slot.name)
        q = out.qtensor
        method = "sparsegpt" + ("+gptq" if grid is slot.spec and not slot.is_float else "")
        if grid is not slot.spec:  # e.g. fp8 / mxfp4: prune with compensation, then round to nearest
            q = fmt.quantize(get_format("fp32").dequantize(q), slot.spec, name=slot.name)
            method = "sparsegpt+rtn"
        record.update(sparsity=config.sparsity, sparsity_pattern=config.sparsity_pattern or "unstructured")
    elif supports_gptq(slot.spec):
        out = gptq_quantize(weight, acc.value(), slot.spec, damp=config.damp, static_groups=config.static_groups,
                            name=slot.name)
        q, method = out.qtensor, "gptq"
        record.update(act_order=bool(slot.spec.act_order), static_groups=config.static_groups)
    else:
        _finish_rtn(result, slot, "rtn", note=f"GPTQ has no column grid for {fmt.name}")
        return
    record.update(method=method, loss=out.loss)
    result.records.setdefault(slot.name, {}).update(record)
    _install(result, slot, q)


def _finish_rtn(result: QuantizedModel, slot: LinearSlot, method: str, note: str | None = None) -> None:
    fmt = get_format(slot.spec.format)
    q = fmt.quantize(slot.module.weight, slot.spec, name=slot.name)
    record = result.records.setdefault(slot.name, {})
    record["method"] = "none" if slot.is_float else method
    if note:
        record["note"] = note
    _install(result, slot, q)


def _install(result: QuantizedModel, slot: LinearSlot, q: QuantizedTensor) -> None:
    """Keep the packed module and put it in the model, so later stages and layers see its real output."""
    old = slot.module
    result.modules[slot.name] = q
    if get_format(q.format).name in FLOAT_FORMATS:
        # keep the float32 copy (later folds scale it) but with the stored values: bf16 rounding, pruning
        old.weight.copy_(get_format(q.format).dequantize(q))
        return
    setattr(slot.parent, slot.attr, MixedPrecisionLinear(q, old.bias))
