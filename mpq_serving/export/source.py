"""What an export reads: a packed folder (`mpq pack`) or a model folder + plan, module by module.

Both give the same things, so the exporters need not care which one they were handed: the model's
config (without our `quantization_config`), each linear module as a QuantizedTensor in its plan's
format, and every other tensor (embeddings, norms, routers) as stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import MPQError
from ..formats import QuantizedTensor, QuantSpec
from ..loaders.hf_model import PackedSource, is_packed
from ..loaders.true_mixed import TrueMixedPrecisionLoader
from ..plan import Plan, load_plan


@dataclass
class ExportSource:
    """A mixed model ready to be written out: config, folder (tokenizer files), module and other tensors."""

    folder: Path
    config: dict[str, Any]
    _reader: PackedSource | TrueMixedPrecisionLoader
    module_shapes: dict[str, tuple[int, int]]
    module_specs: dict[str, QuantSpec]

    def modules(self, progress: bool = False) -> Iterator[tuple[str, QuantizedTensor]]:
        if isinstance(self._reader, TrueMixedPrecisionLoader):
            yield from self._reader.iter_modules(progress=progress)
        else:
            yield from self._reader.iter_modules()

    def other_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield from self._reader.other_tensors()


def open_source(model: str | Path, plan: str | Path | Plan | None = None) -> ExportSource:
    """A packed folder (plan must then be None) or a model folder quantized under `plan`."""
    model = Path(model)
    if plan is None:
        if not is_packed(model):
            raise MPQError(f"{model}: not a packed mpq checkpoint (config.json quant_method 'mpq'); "
                           "pass --plan to export a model folder under a plan, or run `mpq pack` first")
        reader = PackedSource(model)
        shapes = {name: shape for name, (_, shape) in reader.modules.items()}
        specs = {name: spec for name, (spec, _) in reader.modules.items()}
        folder = model
    else:
        if is_packed(model):
            raise MPQError(f"{model}: a packed checkpoint already carries its plan; drop --plan")
        loader = TrueMixedPrecisionLoader(plan if isinstance(plan, Plan) else load_plan(plan), model)
        reader, folder, shapes = loader, loader.reference.path, dict(loader.shapes)
        specs = {name: loc.spec for name, loc in loader.located.items()}
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    if not config:
        raise MPQError(f"{folder}: config.json missing; an export needs the model's config")
    config.pop("quantization_config", None)
    return ExportSource(folder, config, reader, shapes, specs)
