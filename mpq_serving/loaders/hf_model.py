"""`load_model`: a transformers model whose linear layers and MoE experts are our mixed-precision modules.

The model is built on the meta device (no bf16 copy of the weights is ever made), each linear is
replaced by a MixedPrecisionLinear holding its packed tensors, each MoE `experts` module by a
MixedPrecisionExperts, and the remaining tensors (embeddings, norms, routers) are read from the
checkpoint.  This HF path is the reference the engine plugins are compared to.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import init_empty_weights
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from ..errors import CheckpointError, MPQError
from ..formats import QuantizedTensor, get_format
from ..layers.linear import MixedPrecisionLinear
from ..layers.moe import MixedPrecisionExpert, MixedPrecisionExperts
from ..packed_config import QUANT_METHOD, PackedConfig
from ..plan import Plan, load_plan
from .checkpoint import Checkpoint
from .expected_weights import EXPERT_NAME as _EXPERT
from .expected_weights import EXPERT_ROLE as _ROLE
from .tool_folder import tool_folder_plan, tool_quantization_config
from .true_mixed import TrueMixedPrecisionLoader

_FLOAT = {"bf16", "fp16", "fp32"}


def is_packed(path: str | Path) -> bool:
    """True for a folder written by `mpq pack` (config.json quant_method "mpq")."""
    path = Path(path)
    if not (path / "config.json").is_file():
        return False
    return _quant_method(path) == QUANT_METHOD


def _quant_method(path: Path) -> str | None:
    qc = json.loads((path / "config.json").read_text()).get("quantization_config") or {}
    return qc.get("quant_method")


class PackedSource:
    """Modules of a packed checkpoint, read one at a time."""

    def __init__(self, path: Path):
        self.checkpoint = Checkpoint(path)
        packed = PackedConfig.read(self.checkpoint.quantization_config, path / "config.json")
        self.modules = {name: (e.spec(), e.shape) for name, e in packed.modules.items()}

    def iter_modules(self) -> Iterator[tuple[str, QuantizedTensor]]:
        for name, (spec, shape) in self.modules.items():
            fmt = get_format(spec.format)
            tensors = {s: self.checkpoint.read(f"{name}.{s}") for s in fmt.layout(spec, shape)}
            yield name, fmt.from_tensors(tensors, spec, shape, name=f"{self.checkpoint.path}:{name}")

    def _owned(self) -> set[str]:
        owned = set()
        for name, (spec, shape) in self.modules.items():
            owned.update(f"{name}.{s}" for s in get_format(spec.format).layout(spec, shape))
        return owned

    def check_headers(self) -> None:
        """Every module's tensors present with the shape its format stores, before any is read."""
        for name, (spec, shape) in self.modules.items():
            for suffix, (want, _) in get_format(spec.format).layout(spec, shape).items():
                tensor = f"{name}.{suffix}"
                if tensor not in self.checkpoint:
                    raise CheckpointError(f"{self.checkpoint.path}: tensor {tensor} is missing "
                                          f"(needed for {spec.describe()})")
                have = tuple(self.checkpoint.info(tensor).shape)
                if have != tuple(want) and not (have == () and tuple(want) == (1,)):
                    raise CheckpointError(f"{self.checkpoint.path}: tensor {tensor} has shape {have}, expected "
                                          f"{tuple(want)} for {spec.describe()} of a {shape[0]}x{shape[1]} weight")

    def module_names(self) -> list[str]:
        return list(self.modules)

    def other_tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        owned = self._owned()
        return {n: tuple(self.checkpoint.info(n).shape) for n in self.checkpoint.tensors if n not in owned}

    def other_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        owned = self._owned()
        for name in self.checkpoint.tensors:
            if name not in owned:
                yield name, self.checkpoint.read(name)


def load_model(path_or_plan: str | Path | Plan, model_dir: str | Path | None = None, *,
               dtype: torch.dtype = torch.bfloat16, progress: bool = True) -> nn.Module:
    """A ready transformers model with mixed-precision modules swapped in.

    `path_or_plan`: a packed folder (`mpq pack`), a plan file or Plan (then `model_dir` or the plan's
    base_model_path names the base model), a folder a quantization tool wrote (GPTQ, AWQ, FP8,
    compressed-tensors: read by our readers, see tool_folder.py), or a plain HF folder (loaded as is).
    """
    if not isinstance(path_or_plan, Plan) and tool_quantization_config(path_or_plan) is not None:
        path_or_plan = tool_folder_plan(path_or_plan)  # a tool's folder: through our readers, not transformers'
    if isinstance(path_or_plan, Plan) or Path(path_or_plan).is_file():
        plan = path_or_plan if isinstance(path_or_plan, Plan) else load_plan(path_or_plan)
        source = TrueMixedPrecisionLoader(plan, model_dir)
        config_dir = source.reference.path
        modules = source.iter_modules(progress=progress)
    elif is_packed(path_or_plan):
        source = PackedSource(Path(path_or_plan))
        config_dir = Path(path_or_plan)
        modules = source.iter_modules()
    else:
        return AutoModelForCausalLM.from_pretrained(path_or_plan, dtype=dtype).eval()

    config = AutoConfig.from_pretrained(config_dir)
    config.__dict__.pop("quantization_config", None)
    # Parameters on meta (the checkpoint fills them), buffers real: the model's own code computes the ones no
    # checkpoint stores (rotary tables, Gemma's embed_scale), which a plain `torch.device("meta")` would leave empty.
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    rename = _renamer(model)
    _check_before_streaming(model, config, rename, source)
    experts: dict[str, dict[int, dict[str, QuantizedTensor]]] = defaultdict(lambda: defaultdict(dict))
    pending_bias: dict[str, MixedPrecisionLinear] = {}
    for name, q in modules:
        m = _EXPERT.match(rename(name))
        if m:
            experts[m["prefix"]][int(m["e"])][_ROLE[m["proj"]]] = q
            continue
        target = rename(name)
        module = _get(model, target, name)
        if isinstance(module, nn.Linear):
            new = MixedPrecisionLinear(q)
            _set_module(model, target, new)
            if module.bias is not None:
                pending_bias[target] = new
        elif q.format in _FLOAT and isinstance(getattr(module, "weight", None), nn.Parameter):
            module.weight = nn.Parameter(get_format(q.format).dequantize(q).to(dtype), requires_grad=False)
        else:
            raise MPQError(f"{name}: the plan gives it {q.spec.describe()}, but it is a {type(module).__name__}, "
                           "not a linear layer or MoE expert mpq-serving can replace")
    for prefix, by_expert in experts.items():
        _replace_experts(model, prefix, by_expert)
    for name, tensor in source.other_tensors():
        target = rename(name)
        owner, _, leaf = target.rpartition(".")
        if owner in pending_bias and leaf == "bias":
            pending_bias.pop(owner).bias = nn.Parameter(tensor.to(dtype), requires_grad=False)
            continue
        _set_tensor(model, target, tensor, dtype, name)
    _finish(model, config, dtype)
    model.config._name_or_path = str(config_dir)  # where the tokenizer and generation config live
    return model.eval()


def _check_before_streaming(model: nn.Module, config, rename, source) -> None:
    """Everything that can fail, checked from the config and the headers before a single module is read:
    each linear the source holds has a place in the model, each other tensor a parameter or buffer of its
    shape, and every parameter the model needs comes from somewhere (else minutes of streaming end in an error)."""
    if isinstance(source, PackedSource):
        source.check_headers()
    covered: set[str] = set()
    expert_prefixes: set[str] = set()
    for name in source.module_names():
        target = rename(name)
        m = _EXPERT.match(target)
        if m:
            expert_prefixes.add(m["prefix"])
            continue
        module = _get(model, target, name)
        if not isinstance(module, nn.Linear) and not isinstance(getattr(module, "weight", None), nn.Parameter):
            raise MPQError(f"{name}: stored as a quantized linear, but the model's {target} is a "
                           f"{type(module).__name__}, not a linear layer or MoE expert mpq-serving can replace")
        covered.add(f"{target}.weight")
    for prefix in expert_prefixes:
        _get(model, prefix, prefix)
    for name, shape in source.other_tensor_shapes().items():
        target = rename(name)
        _tensor_slot(model, target, tuple(shape), name)
        covered.add(target)
    if getattr(config, "tie_word_embeddings", False):
        head = model.get_output_embeddings()
        if head is not None:
            covered.update(f"{n}.weight" for n, mod in model.named_modules() if mod is head)
    missing = [n for n, p in model.named_parameters(remove_duplicate=False)
               if p.is_meta and n not in covered and not any(n.startswith(f"{e}.") for e in expert_prefixes)]
    if missing:
        more = f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""
        raise CheckpointError(f"tensors missing from the checkpoint: {', '.join(missing[:10])}{more}")


def module_path(model: nn.Module, weight_name: str) -> str:
    """Where the module of checkpoint weight `weight_name` (no `.weight` suffix) sits in a model that
    `load_model` built: transformers' renames applied, and an MoE expert's projection at
    `<experts>.experts.<e>.<gate|up|down>_proj` inside MixedPrecisionExperts. For code that hooks or
    swaps single layers (the plan searches)."""
    target = _renamer(model)(weight_name)
    m = _EXPERT.match(target)
    return f"{m['prefix']}.experts.{m['e']}.{_ROLE[m['proj']]}_proj" if m else target


def _renamer(model: nn.Module):
    """Checkpoint name → model name: transformers 5 renames Mixtral's `block_sparse_moe` to `mlp`."""
    names = {n for n, _ in model.named_modules()}
    if any(".block_sparse_moe" in n for n in names):
        return lambda n: n
    return lambda n: n.replace(".block_sparse_moe.", ".mlp.")


def _get(model: nn.Module, target: str, original: str) -> nn.Module:
    try:
        return model.get_submodule(target)
    except AttributeError:
        raise CheckpointError(f"{original}: no module {target} in {type(model).__name__}; wrong model for this checkpoint?") from None


def _set_module(model: nn.Module, target: str, new: nn.Module) -> None:
    parent, _, leaf = target.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def _replace_experts(model: nn.Module, prefix: str, by_expert: dict[int, dict[str, QuantizedTensor]]) -> None:
    old = _get(model, prefix, prefix)
    n = getattr(old, "num_experts", len(by_expert))
    missing = [e for e in range(n) if set(by_expert.get(e, {})) != {"gate", "up", "down"}]
    if missing:
        raise CheckpointError(f"{prefix}: experts {missing[:8]} lack a gate, up or down projection")
    built = [MixedPrecisionExpert(*(MixedPrecisionLinear(by_expert[e][r]) for r in ("gate", "up", "down"))) for e in range(n)]
    _set_module(model, prefix, MixedPrecisionExperts(built, old.act_fn))


def _tensor_slot(model: nn.Module, target: str, shape: tuple[int, ...], original: str):
    """(owner module, attribute name, current tensor) of parameter or buffer `target`, which must have `shape`."""
    owner_name, _, leaf = target.rpartition(".")
    try:
        owner = model.get_submodule(owner_name)
    except AttributeError:
        raise CheckpointError(f"{original}: the model has no module {owner_name}") from None
    current = getattr(owner, leaf, None)
    if not isinstance(current, torch.Tensor):
        raise CheckpointError(f"{original}: the model has no parameter or buffer {target}")
    if tuple(current.shape) != shape:
        raise CheckpointError(f"{original}: shape {shape}, the model expects {tuple(current.shape)}")
    return owner, leaf, current


def _set_tensor(model: nn.Module, target: str, tensor: torch.Tensor, dtype: torch.dtype, original: str) -> None:
    owner, leaf, current = _tensor_slot(model, target, tuple(tensor.shape), original)
    value = tensor.to(dtype) if tensor.is_floating_point() else tensor
    if isinstance(current, nn.Parameter):
        setattr(owner, leaf, nn.Parameter(value, requires_grad=False))
    else:
        owner._buffers[leaf] = value


def _finish(model: nn.Module, config, dtype: torch.dtype) -> None:
    """Tie lm_head, rebuild rotary tables (built under the default dtype at init), refuse anything still unloaded."""
    if getattr(config, "tie_word_embeddings", False):
        head = model.get_output_embeddings()
        if isinstance(head, nn.Linear) and head.weight.is_meta:
            head.weight = model.get_input_embeddings().weight
    for name, module in list(model.named_modules()):
        if type(module).__name__.endswith("RotaryEmbedding"):
            with torch.device("cpu"):
                _set_module(model, name, type(module)(config=config))
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise CheckpointError(f"tensors missing from the checkpoint: {', '.join(leftover[:10])}")
