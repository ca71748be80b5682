"""`mpq pack`: write a packed mixed checkpoint — the folder the engine plugins and `load_model` read.

An HF model folder whose config.json carries `quantization_config: {"quant_method": "mpq",
"modules": {name: spec}, "plan": ...}` and whose safetensors hold each module in its own format's
layout (experts stay per expert).  Written to a temporary folder and renamed at the end, so a failed
pack leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..outputs import output_folder
from ..packed_config import FORMAT_VERSION, QUANT_METHOD, PackedConfig
from ..plan import Plan, plan_to_json_dict
from .checkpoint import INDEX_FILE
from .true_mixed import TrueMixedPrecisionLoader

__all__ = ["CHECKPOINT_KIND", "FORMAT_VERSION", "QUANT_METHOD", "copy_side_files", "pack", "ShardWriter"]

CHECKPOINT_KIND = "mpq-checkpoint"  # the output kind (see outputs.py) of `mpq pack` and `mpq quantize`
_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
               "vocab.json", "merges.txt", "generation_config.json", "chat_template.jinja", "chat_template.json")


class ShardWriter:
    """Accumulate tensors and flush a safetensors shard every `max_bytes`, so memory stays bounded."""

    def __init__(self, folder: Path, max_bytes: int):
        self.folder, self.max_bytes = folder, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[dict[str, torch.Tensor] | list[str]] = []
        self.weight_map: dict[str, str] = {}
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        tensor = tensor.contiguous()
        self.pending[name] = tensor
        self.pending_bytes += tensor.numel() * tensor.element_size()
        if self.pending_bytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        index = len(self.shards)
        file = f"model-{index:05d}.safetensors"
        save_file(self.pending, str(self.folder / file), metadata={"format": "pt"})
        self.weight_map.update({name: file for name in self.pending})
        self.shards.append(list(self.pending))
        self.total_bytes += self.pending_bytes
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> None:
        self.flush()
        if len(self.shards) == 1:
            (self.folder / "model-00000.safetensors").rename(self.folder / "model.safetensors")
            return
        n = len(self.shards)
        renamed = {}
        for i in range(n):
            old, new = f"model-{i:05d}.safetensors", f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            (self.folder / old).rename(self.folder / new)
            renamed[old] = new
        index = {"metadata": {"total_size": self.total_bytes},
                 "weight_map": {k: renamed[v] for k, v in sorted(self.weight_map.items())}}
        (self.folder / INDEX_FILE).write_text(json.dumps(index, indent=2))


def pack(plan: Plan, output: str | Path, model_dir: str | Path | None = None, *, shard_bytes: int = 2 << 30,
         progress: bool = True, overwrite: bool = False) -> Path:
    """Resolve, check, then stream every module into a packed mixed checkpoint at `output`.

    `output` must be new or empty; with `overwrite`, a previous packed checkpoint is replaced (never
    anything else, never an input of the plan).
    """
    loader = TrueMixedPrecisionLoader(plan, model_dir)
    inputs = [loader.reference.path, *loader.sources.paths()]
    with output_folder(output, CHECKPOINT_KIND, overwrite=overwrite, inputs=inputs) as tmp:
        writer = ShardWriter(tmp, shard_bytes)
        modules = {}
        for name, q in loader.iter_modules(progress=progress):
            modules[name] = (q.spec, q.shape)
            for suffix, tensor in q.tensors.items():
                writer.add(f"{name}.{suffix}", tensor)
        for name, tensor in loader.other_tensors():
            writer.add(name, tensor)
        writer.finish()
        _write_config(loader, tmp, modules, plan)
        copy_side_files(loader.reference.path, tmp)
    return Path(output)


def _write_config(loader: TrueMixedPrecisionLoader, folder: Path, modules: dict, plan: Plan) -> None:
    """The base model's config.json with our quantization_config (`packed_config.PackedConfig`)."""
    config = dict(loader.reference.config)
    if not config:
        raise FileNotFoundError(f"{loader.reference.path}: config.json missing; a packed checkpoint needs it")
    config.pop("quantization_config", None)
    config["quantization_config"] = PackedConfig.build(modules, plan_to_json_dict(plan)).to_dict()
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def copy_side_files(source: Path, folder: Path) -> None:
    for name in _SIDE_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, folder / name)
