"""The packed checkpoint's `quantization_config` (written by `loaders/pack.py`) as specs per module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import CheckpointError, MPQError
from ...formats import QuantSpec, get_format
from ...packed_config import PackedConfig


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
    def from_quantization_config(cls, qc: dict[str, Any], where: object = "config.json") -> "MpqCheckpointConfig":
        """Read through the one schema (`packed_config.PackedConfig`), then normalize each spec by its format."""
        packed = PackedConfig.read(qc, where)
        modules = {}
        for name, entry in packed.modules.items():
            try:
                spec = get_format(entry.format).normalize(entry.spec())
            except (TypeError, ValueError, MPQError) as e:  # e.g. an unknown format
                raise CheckpointError(f"{where}: quantization_config.modules[{name!r}]: {e}") from None
            modules[name] = ModuleEntry(name, spec, entry.shape)
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
