"""Tensor-parallel slicing of packed tensors, derived from each format's own layout.

A column-parallel layer keeps out/tp rows of the weight, a row-parallel layer in/tp columns. Which
axis of each stored tensor (qweight, scales, weight_scale, ...) follows the out or in dimension, and
by how much it shrinks, is read off the format's `layout` at the full and at the partitioned shape:
an axis whose size changes is sliced, an axis that does not (a per-tensor scale) is replicated.
"""

from __future__ import annotations

from ...errors import FormatError
from ...formats import get_format
from .config import ModuleEntry

# axis -> (start, length) of this rank's slice
Slices = dict[int, tuple[int, int]]


def partition_slices(entry: ModuleEntry, dim: str, rank: int, size: int) -> dict[str, Slices]:
    """For each stored tensor of `entry`: the slice this rank keeps when splitting `dim` ("out" or "in")."""
    if size == 1:
        return {suffix: {} for suffix in entry.layout()}
    out_f, in_f = entry.shape
    full = entry.layout()
    if dim == "out":
        if out_f % size:
            raise FormatError(f"{entry.name}: out_features {out_f} do not split over {size} ranks")
        part_shape = (out_f // size, in_f)
    else:
        if in_f % size:
            raise FormatError(f"{entry.name}: in_features {in_f} do not split over {size} ranks")
        part_shape = (out_f, in_f // size)
        if entry.spec.act_order:
            raise FormatError(f"{entry.name}: act-order GPTQ (g_idx) cannot be split along in_features; "
                              "serve it with tensor parallel size 1")
    fmt = get_format(entry.spec.format)
    try:
        fmt.check_shape(entry.spec, part_shape, entry.name)
    except FormatError as e:
        raise FormatError(f"{entry.name}: its {entry.spec.describe()} layout cannot be split over {size} ranks "
                          f"along {dim}_features: {e}") from None
    part = fmt.layout(entry.spec, part_shape)
    slices: dict[str, Slices] = {}
    for suffix, (full_shape, _) in full.items():
        part_tensor_shape = part[suffix][0]
        slices[suffix] = {axis: (rank * p, p) for axis, (f, p) in enumerate(zip(full_shape, part_tensor_shape)) if f != p}
    return slices


def slice_for_partition(tensor, slices: Slices):
    for axis, (start, length) in slices.items():
        tensor = tensor.narrow(axis, start, length)
    return tensor


def partitioned_shape(entry: ModuleEntry, dim: str | None, size: int) -> tuple[int, int]:
    out_f, in_f = entry.shape
    if dim is None or size == 1:
        return entry.shape
    return (out_f // size, in_f) if dim == "out" else (out_f, in_f // size)
