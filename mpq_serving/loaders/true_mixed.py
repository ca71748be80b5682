"""TrueMixedPrecisionLoader: a plan + per-format sources + a base model → packed tensors per module.

Each module's tensors are read in their own format (or quantized from the base model when the plan's
format has no source) one module at a time: the loader never holds a dequantized copy of the model,
so peak memory stays near the packed size.  Every source tensor is checked from headers before the
first weight is read, so a bad plan fails before anything is half-loaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..errors import CheckpointError, FormatError, PlanError
from ..formats import QuantizedTensor, format_names, get_format
from ..plan import Plan, resolve, rule_problems
from ..plan.model_weights import LinearWeight, linear_weights
from .checkpoint import Checkpoint
from .expected_weights import check_against_config
from .folded_scales import reconcile_folded_scales
from .sources import Located, SourceSet


@dataclass(frozen=True)
class LoadStats:
    modules: int
    from_sources: int
    quantized_from_base: int
    packed_bytes: int


class TrueMixedPrecisionLoader:
    """Streams each linear module of a model in the format its plan gives it."""

    def __init__(self, plan: Plan, model_dir: str | Path | None = None):
        base = model_dir or plan.base_model_path
        self.plan = plan
        self.sources = SourceSet(plan.sources, base)
        self.reference = self._reference_checkpoint()
        self.weights: list[LinearWeight] = linear_weights(self.reference)
        check_against_config(self.reference, self.weights)
        names = [w.name for w in self.weights]
        self.resolved = resolve(plan, names)
        problems = rule_problems(plan, names, self.resolved, self.reference.path)
        if problems:  # the same refusal as `mpq plan validate`, for every command that loads a plan
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise PlanError("; ".join(problems[:3]) + more)
        self.located: dict[str, Located] = {
            w.name: self.sources.locate(w.name, self.resolved[w.name].spec, w.shape) for w in self.weights
        }
        self.shapes = {w.name: w.shape for w in self.weights}
        self.folded = reconcile_folded_scales(self.reference, self.located, self.shapes)

    def _reference_checkpoint(self) -> Checkpoint:
        """The checkpoint that names the model's modules: the base model, else a float source, else any source."""
        if self.sources.base is not None:
            return self.sources.base
        for fmt in ("bf16", "fp16", "fp32", *self.plan.sources):
            ckpt = self.sources.source(fmt)
            if ckpt is not None:
                return ckpt
        raise CheckpointError("the plan has no sources and no base_model_path; nothing to load from")

    def load_module(self, name: str) -> QuantizedTensor:
        """One module's packed tensors, read or quantized now."""
        loc = self.located[name]
        fmt = get_format(loc.spec.format)
        shape = self.shapes[name]
        if loc.quantize_from_base:
            weight = loc.checkpoint.read(loc.tensors["weight"])
            if name in self.folded.column_scales:  # re-folded onto the norm its neighbours were quantized against
                weight = (weight.float() * self.folded.column_scales[name]).to(weight.dtype)
            return fmt.quantize(weight, loc.spec, name=f"{loc.checkpoint.path}:{loc.tensors['weight']}")
        tensors = {suffix: loc.checkpoint.read(t) for suffix, t in loc.tensors.items()}
        if "g_idx" in fmt.layout(loc.spec, shape) and "g_idx" not in tensors:
            group = shape[1] if (loc.spec.group_size or -1) == -1 else loc.spec.group_size
            tensors["g_idx"] = torch.arange(shape[1], dtype=torch.int32) // group
        try:
            return fmt.from_tensors(tensors, loc.spec, shape, name=f"{loc.checkpoint.path}:{name}")
        except FormatError as e:
            raise CheckpointError(str(e)) from None

    def iter_modules(self, progress: bool = True) -> Iterator[tuple[str, QuantizedTensor]]:
        for w in tqdm(self.weights, desc="loading modules", unit="mod", disable=not progress):
            yield w.name, self.load_module(w.name)

    def other_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Everything that is not a linear weight (embeddings, norms, biases), from the reference checkpoint,
        except norms that carry scales folded by a source's tool (see folded_scales.py)."""
        stored_by_linears = self._linear_tensor_names(self.reference)
        for name in self.reference.tensors:
            if name not in stored_by_linears:
                yield name, self.folded.norms[name] if name in self.folded.norms else self.reference.read(name)

    def module_names(self) -> list[str]:
        return [w.name for w in self.weights]

    def other_tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of what `other_tensors` yields, from the headers (a re-folded norm keeps its shape)."""
        stored_by_linears = self._linear_tensor_names(self.reference)
        return {n: tuple(self.reference.info(n).shape) for n in self.reference.tensors if n not in stored_by_linears}

    def _linear_tensor_names(self, ckpt: Checkpoint) -> set[str]:
        suffixes = {suffix for fmt in format_names() for suffix in get_format(fmt).tensor_names}
        return {f"{w.name}.{s}" for w in self.weights for s in suffixes}

    def stats(self) -> LoadStats:
        from_base = sum(1 for loc in self.located.values() if loc.quantize_from_base)
        return LoadStats(len(self.located), len(self.located) - from_base, from_base, 0)
