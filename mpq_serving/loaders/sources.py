"""Where each weight of a plan comes from: a per-format source checkpoint, or the base model to quantize.

Everything is decided from headers and configs before a single weight is read, so a plan that cannot
load fails up front, naming the module, the tensor and the file, with nothing half-loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, FormatError
from ..formats import QuantSpec, get_format
from .checkpoint import Checkpoint
from .source_config import merge_specs, module_spec

_FLOAT_FORMATS = ("bf16", "fp16", "fp32")

# Other names real tools give a layout tensor, tried when the layout's own name is absent.  A
# compressed-tensors FP8_BLOCK checkpoint stores the block scales DeepSeek-V3 calls `weight_scale_inv`
# as `weight_scale` (the same values: dequant = weight x scale per block); fp8's from_tensors reads
# either, so only the header check needs to know.
_OTHER_NAMES = {"weight_scale_inv": ("weight_scale",)}


@dataclass(frozen=True)
class Located:
    """How to obtain one module's packed weight: read `tensors` from `checkpoint`, or quantize its weight."""

    module: str
    spec: QuantSpec
    checkpoint: Checkpoint
    quantize_from_base: bool
    tensors: dict[str, str]  # layout suffix -> tensor name in the checkpoint


class SourceSet:
    """The plan's source checkpoints plus the base model, opened lazily (headers only)."""

    def __init__(self, sources: dict[str, str | Path], base: str | Path | None):
        self._paths = {fmt: Path(p) for fmt, p in sources.items()}
        self._opened: dict[str, Checkpoint] = {}
        self.base_path = Path(base) if base else None
        self._base: Checkpoint | None = None

    def paths(self) -> list[Path]:
        """Every folder this set reads from (sources, then the base model)."""
        return [*self._paths.values(), *([self.base_path] if self.base_path else [])]

    def source(self, fmt: str) -> Checkpoint | None:
        if fmt not in self._paths:
            return None
        if fmt not in self._opened:
            path = self._paths[fmt]
            if not path.exists():
                raise CheckpointError(f"{path}: source checkpoint for {fmt} ({fmt}_path) not found")
            self._opened[fmt] = Checkpoint(path)
        return self._opened[fmt]

    @property
    def base(self) -> Checkpoint | None:
        if self._base is None and self.base_path is not None:
            if not self.base_path.exists():
                raise CheckpointError(f"{self.base_path}: base model (base_model_path) not found")
            self._base = Checkpoint(self.base_path)
        return self._base

    def locate(self, module: str, spec: QuantSpec, shape: tuple[int, int]) -> Located:
        """Decide where `module` comes from and check every tensor it needs, from headers."""
        fmt = get_format(spec.format)
        candidates = [fmt.name] if fmt.name not in _FLOAT_FORMATS else [fmt.name, *_FLOAT_FORMATS]
        for name in candidates:
            ckpt = self.source(name)
            if ckpt is not None:
                return self._from_source(ckpt, name, module, spec, shape)
        if self.base is not None:
            return self._from_base(self.base, module, spec, shape)
        raise CheckpointError(
            f"module {module}: the plan gives it {spec.describe()}, but there is no {fmt.name}_path source "
            "and no base model to quantize from (set base_model_path or pass --model)"
        )

    def _from_source(self, ckpt: Checkpoint, src_fmt: str, module: str, spec: QuantSpec, shape) -> Located:
        where = str(ckpt.path)
        stored = module_spec(ckpt.quantization_config, module, where)
        if stored is not None and _stored_as_float(ckpt, module):
            stored = None  # e.g. AutoAWQ's lm_head: its config lists no modules_to_not_convert, yet it is not quantized
        if stored is None:
            if spec.format not in _FLOAT_FORMATS:
                raise CheckpointError(
                    f"{where}: module {module} is not quantized in this {src_fmt} source, "
                    f"but the plan asks {spec.describe()}"
                )
            return self._from_base(ckpt, module, spec, shape)
        merged = merge_specs(spec, stored, module, where)
        fmt = get_format(merged.format)
        try:
            fmt.check_shape(merged, shape, f"{module}.weight")
        except FormatError as e:
            raise CheckpointError(f"{where}: {e}") from None
        layout = fmt.layout(merged, shape)
        tensors = {}
        for suffix, (want_shape, _) in layout.items():
            name = _stored_name(ckpt, module, suffix)
            if name is None:
                if suffix == "g_idx" and not merged.act_order:
                    continue  # some GPTQ writers omit a trivial g_idx; it is rebuilt on read
                raise CheckpointError(f"{where}: tensor {module}.{suffix} is missing (needed for {merged.describe()})")
            have = tuple(ckpt.info(name).shape)
            if have == () and tuple(want_shape) == (1,):
                have = (1,)  # a 0-d per-tensor scale (AutoFP8); from_tensors reshapes it to (1,)
            if have != tuple(want_shape):
                raise CheckpointError(
                    f"{ckpt.info(name).file}: tensor {name} has shape {tuple(have)}, expected {tuple(want_shape)} "
                    f"for {merged.describe()} of a {shape[0]}x{shape[1]} weight"
                )
            tensors[suffix] = name
        return Located(module, merged, ckpt, False, tensors)

    def _from_base(self, ckpt: Checkpoint, module: str, spec: QuantSpec, shape) -> Located:
        name = f"{module}.weight"
        if name not in ckpt:
            raise CheckpointError(f"{ckpt.path}: tensor {name} is missing")
        info = ckpt.info(name)
        if tuple(info.shape) != tuple(shape):
            raise CheckpointError(f"{info.file}: tensor {name} has shape {tuple(info.shape)}, expected {tuple(shape)}")
        spec = get_format(spec.format).normalize(spec)
        try:
            get_format(spec.format).check_shape(spec, shape, name)
        except FormatError as e:
            raise CheckpointError(str(e)) from None
        return Located(module, spec, ckpt, True, {"weight": name})


def _stored_as_float(ckpt: Checkpoint, module: str) -> bool:
    """A plain floating-point `weight` and no packed tensor: the tool left this module unquantized."""
    name = f"{module}.weight"
    if name not in ckpt or ckpt.info(name).dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return False
    return not any(f"{module}.{s}" in ckpt for s in ("qweight", "weight_packed", "weight_scale", "weight_scale_inv"))


def _stored_name(ckpt: Checkpoint, module: str, suffix: str) -> str | None:
    """The checkpoint's name for one layout tensor: the layout's own, else another a real tool uses."""
    for candidate in (suffix, *_OTHER_NAMES.get(suffix, ())):
        if f"{module}.{candidate}" in ckpt:
            return f"{module}.{candidate}"
    return None
