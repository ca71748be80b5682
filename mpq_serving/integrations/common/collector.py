"""Collect one engine layer's packed tensors as the engine's weight loader hands them over.

Engines load a checkpoint tensor by tensor and call a weight loader per tensor; they do not know our
formats. A `PartCollector` knows, for each checkpoint module of the layer (a part of a fused linear,
or one expert projection), which tensors its format stores and at which full shape: each arriving
tensor is checked (a wrong shape or dtype is an error naming the checkpoint tensor), cut to this
rank's tensor-parallel slice, and kept. `finish()` wraps them in QuantizedTensors and refuses any
tensor that never arrived, by name — nothing half-loaded gets served.
"""

from __future__ import annotations

import torch

from ...errors import CheckpointError
from ...formats import QuantizedTensor, get_format
from ...formats.base import _dtype_compatible
from .config import ModuleEntry
from .partition import partition_slices, partitioned_shape, slice_for_partition


class PartCollector:
    """Tensors of several checkpoint modules, keyed by a part key (shard index, or (expert, role)).

    `split`: None (replicated), "out" (column parallel) or "in" (row parallel); `rank`/`size` the TP rank.
    """

    def __init__(self, parts: dict[object, ModuleEntry], split: str | None = None, rank: int = 0, size: int = 1):
        self.parts = parts
        self.split, self.rank, self.size = split, rank, size
        self.slices = {key: partition_slices(e, split, rank, size) if split else {s: {} for s in e.layout()}
                       for key, e in parts.items()}
        self.received: dict[object, dict[str, torch.Tensor]] = {key: {} for key in parts}

    def expects(self, key: object, suffix: str) -> bool:
        return key in self.parts and suffix in self.slices[key]

    def add(self, key: object, suffix: str, tensor: torch.Tensor) -> None:
        """Check one checkpoint tensor against its format's layout and keep this rank's slice of it."""
        if key not in self.parts:
            raise CheckpointError(f"unexpected checkpoint tensor for part {key!r} (.{suffix}); "
                                  f"this layer has parts {list(self.parts)}")
        entry = self.parts[key]
        name = f"{entry.name}.{suffix}"
        layout = entry.layout()
        if suffix not in layout:
            raise CheckpointError(f"{name}: {entry.spec.describe()} stores no tensor .{suffix} "
                                  f"(it stores {', '.join(layout)}); the checkpoint does not match its quantization_config")
        shape, dtype = layout[suffix]
        if tuple(tensor.shape) != tuple(shape):
            raise CheckpointError(f"{name}: shape {tuple(tensor.shape)} in the checkpoint, but {entry.spec.describe()} "
                                  f"for a weight of shape {entry.shape} stores {tuple(shape)}")
        if not _dtype_compatible(tensor.dtype, dtype):
            raise CheckpointError(f"{name}: dtype {tensor.dtype} in the checkpoint, {entry.spec.describe()} stores {dtype}")
        piece = slice_for_partition(tensor, self.slices[key][suffix])
        if suffix == "g_idx" and self.split == "in" and self.size > 1:
            piece = piece - piece.min()  # group indices restart at 0 within this rank's columns
        self.received[key][suffix] = piece.contiguous().clone()

    def missing(self) -> list[str]:
        return [f"{self.parts[key].name}.{suffix}" for key in self.parts
                for suffix in self.slices[key] if suffix not in self.received[key]]

    def finish(self) -> dict[object, QuantizedTensor]:
        missing = self.missing()
        if missing:
            raise CheckpointError(f"tensors missing from the checkpoint: {', '.join(missing[:10])}"
                                  f"{' ...' if len(missing) > 10 else ''}")
        out = {}
        for key, entry in self.parts.items():
            shape = partitioned_shape(entry, self.split, self.size)
            fmt = get_format(entry.spec.format)
            out[key] = fmt.from_tensors(self.received[key], entry.spec, shape, name=entry.name)
        self.received = {key: {} for key in self.parts}
        return out
