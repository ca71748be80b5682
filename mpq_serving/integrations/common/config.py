"""The packed checkpoint's `quantization_config` (written by `loaders/pack.py`) as specs per module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import CheckpointError, MPQError
from ...formats import QuantSpec, get_format
from ...loaders.pack import FORMAT_VERSION, QUANT_METHOD
from ...loaders.source_config import spec_from_dict


@dataclass(frozen=True)
class ModuleEntry:
    """One checkpoint module (a linear or one expert's projection): its normalized spec and (out, in)."""

    name: str
    spec: QuantSpec
    shape: tuple[int, int]

    @property
    def format(self) -> str:
        return self.spec.format

    def layout(self):
        return get_format(self.spec.format).layout(self.spec, self.shape)


@dataclass(frozen=True)
class MpqCheckpointConfig:
    modules: dict[str, ModuleEntry]
    raw: dict[str, Any]

    @classmethod
    def from_quantization_config(cls, qc: dict[str, Any]) -> "MpqCheckpointConfig":
        if qc.get("quant_method") != QUANT_METHOD:
            raise CheckpointError(f"quantization_config.quant_method is {qc.get('quant_method')!r}, "
                                  f"not {QUANT_METHOD!r}: not a packed mixed checkpoint (write one with `mpq pack`)")
        version = qc.get("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise CheckpointError(f"quantization_config.format_version {version} is newer than this "
                                  f"mpq-serving reads ({FORMAT_VERSION}); upgrade mpq-serving")
        modules = {}
        for name, entry in (qc.get("modules") or {}).items():
            try:
                fields = {k: v for k, v in entry.items() if k != "shape"}
                fmt = get_format(fields["format"])
                spec = fmt.normalize(spec_from_dict(fields))
                shape = tuple(int(d) for d in entry["shape"])
            except (KeyError, TypeError, ValueError, MPQError) as e:  # e.g. an unknown format
                raise CheckpointError(f"quantization_config.modules[{name!r}]: malformed entry {entry!r} ({e})") from None
            modules[name] = ModuleEntry(name, spec, shape)
        return cls(modules, dict(qc))

    def check_tensors(self, folder: str | Path) -> None:
        """Every tensor every module's format stores is in the folder's safetensors, at its shape.

        Read from the safetensors headers only (no tensor data), before an engine builds anything:
        engines load fused layers shard by shard and may not notice a shard that never arrives.
        """
        from ...loaders.checkpoint import Checkpoint

        checkpoint = Checkpoint(folder)
        missing, wrong = [], []
        for entry in self.modules.values():
            for suffix, (shape, _) in entry.layout().items():
                name = f"{entry.name}.{suffix}"
                if name not in checkpoint:
                    missing.append(name)
                elif tuple(checkpoint.tensors[name].shape) != tuple(shape):
                    wrong.append(f"{name} has shape {tuple(checkpoint.tensors[name].shape)}, "
                                 f"{entry.spec.describe()} of a {entry.shape} weight stores {tuple(shape)}")
        problems = []
        if missing:
            problems.append(f"tensors missing: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
        if wrong:
            problems.append(f"mis-shaped: {'; '.join(wrong[:10])}")
        if problems:
            raise CheckpointError(f"{folder}: the packed checkpoint does not match its quantization_config: "
                                  + "; ".join(problems))

    def get(self, name: str) -> ModuleEntry | None:
        return self.modules.get(name)

    def formats(self) -> set[str]:
        return {e.format for e in self.modules.values()}
