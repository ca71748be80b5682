"""Per-column quantizers for GPTQ / SparseGPT: round one input column at a time on a fixed grid.

GPTQ rounds column i, then moves its error onto the columns after it, so a format's grid (scales and
zeros) must be fixed for a column before that column is rounded: for grouped int4 the grid of a group
is computed when its first column is reached, from the weights as updated so far (GPTQModel with
`static_groups=False`); per-channel formats (int8, int4 per-channel) fix theirs from the whole weight
up front.  Grids come from the formats' own round-to-nearest code (`quantize_groups`, int8's
`scale_from_amax`), and the final codes are handed to the format's `pack`, so GPTQ output is written
in exactly the layout round-to-nearest output is.
"""

from __future__ import annotations

import torch

from ..errors import MPQError
from ..formats import QuantizedTensor, QuantSpec, get_format
from ..formats.ct_int4 import SCALE_DTYPE as CT_SCALE_DTYPE
from ..formats.int4_packing import Int4Parts, quantize_groups
from ..formats.int8 import scale_from_amax, to_int8

INT4_FORMATS = {"gptq_int4": torch.float16, "awq_int4": torch.float16, "ct_int4": CT_SCALE_DTYPE}
# every grouped integer format, with its scale dtype: the column grid below works at any width
INT_GROUP_FORMATS = {**INT4_FORMATS, "gptq_int2": torch.float16, "gptq_int3": torch.float16, "gptq_int8": torch.float16,
                     "ct_int8": CT_SCALE_DTYPE}
FLOAT_FORMATS = {"bf16", "fp16", "fp32"}


def supports_gptq(spec: QuantSpec) -> bool:
    """Formats with a per-column grid implemented here; others fall back to round-to-nearest."""
    name = get_format(spec.format).name
    return name in INT_GROUP_FORMATS or name in FLOAT_FORMATS or name == "int8"


class ColumnQuantizer:
    """Grid for one weight: `begin_group` at each group start, `round` per column, `finish` → QuantizedTensor.

    Columns are given in processing order (a permutation of the input columns under act-order).
    """

    group_size: int = -1  # columns per grid; -1: one grid for the whole row

    def begin(self, weight: torch.Tensor) -> None:
        """Called once with the whole (permuted, dead-zeroed) weight before the first column."""

    def begin_group(self, block: torch.Tensor) -> None:
        """Called with the current weights of the next `group_size` columns before the first is rounded."""

    def begin_static(self, weight: torch.Tensor, perm: torch.Tensor | None) -> None:
        """Static groups: fix every group's grid now from the whole weight (original column order), so
        act-order can visit columns in any order while groups stay contiguous (no g_idx needed)."""

    def round(self, column: torch.Tensor, position: int) -> torch.Tensor:
        """The dequantized value of column `position` (processing order) on the current grid."""
        raise NotImplementedError

    def finish(self, perm: torch.Tensor | None) -> QuantizedTensor:
        raise NotImplementedError


class IntGroupColumnQuantizer(ColumnQuantizer):
    """GPTQ / AWQ / compressed-tensors int4: per-group scale and zero, codes 0..15."""

    def __init__(self, spec: QuantSpec, shape: tuple[int, int], name: str):
        self.fmt = get_format(spec.format)
        self.spec = self.fmt.normalize(spec)
        self.fmt.check_shape(self.spec, shape, name)
        self.shape, self.name = shape, name
        in_f = shape[1]
        self.group_size = self.spec.group_size if self.spec.group_size != -1 else in_f
        self.scale_dtype = INT_GROUP_FORMATS[self.fmt.name]
        self.bits = getattr(self.fmt, "bits", 4)
        self.mid = 1 << (self.bits - 1)  # codes are stored + mid (8 for int4)
        v1_asym = "g_idx" in self.fmt.tensor_names and not self.spec.symmetric and self.spec.checkpoint_format == "gptq"
        self.min_zero = 1 if v1_asym else 0
        self.codes = torch.empty(shape, dtype=torch.float32)  # whole numbers; int32 once, in finish
        self.scales: list[torch.Tensor] = []
        self.zeros: list[torch.Tensor] = []

    def begin_group(self, block: torch.Tensor) -> None:
        parts = quantize_groups(block, 1, symmetric=self.spec.symmetric, scale_dtype=self.scale_dtype,
                                name=self.name, min_zero=self.min_zero, bits=self.bits)
        self.scales.append(parts.scales[:, 0])
        self.zeros.append(parts.zeros[:, 0])
        self._s = parts.scales[:, 0].to(torch.float32).to(block.device)
        self._z = parts.zeros[:, 0].to(torch.float32).to(block.device)
        self._shift = self._z - self.mid

    def begin_static(self, weight: torch.Tensor, perm: torch.Tensor | None) -> None:
        groups = self.shape[1] // self.group_size
        parts = quantize_groups(weight, groups, symmetric=self.spec.symmetric, scale_dtype=self.scale_dtype,
                                name=self.name, min_zero=self.min_zero, bits=self.bits)
        self.scales, self.zeros = list(parts.scales.unbind(1)), list(parts.zeros.unbind(1))
        self._static_s = parts.scales.to(torch.float32).to(weight.device)
        self._static_z = parts.zeros.to(torch.float32).to(weight.device)
        columns = torch.arange(self.shape[1]) if perm is None else perm.cpu()
        self._group_at = (columns // self.group_size).tolist()  # processing position -> its contiguous group

    def round(self, column: torch.Tensor, position: int) -> torch.Tensor:
        if hasattr(self, "_group_at"):
            g = self._group_at[position]
            self._s, self._z = self._static_s[:, g], self._static_z[:, g]
            self._shift = self._z - self.mid
        # The formats' rounding rule: round(clamp(w / s + (z - 8), -8, 7)) + 8 for int4 (see int4_packing).
        signed = torch.round((column / self._s + self._shift).clamp_(-self.mid, self.mid - 1))
        self.codes[:, position] = signed
        return (signed - self._shift) * self._s

    def finish(self, perm: torch.Tensor | None) -> QuantizedTensor:
        codes = self.codes.to(torch.int32) + self.mid
        g_idx = None
        if perm is not None:
            perm = perm.cpu()
            ordered = codes
            codes = torch.empty_like(ordered)
            codes[:, perm] = ordered
            if not hasattr(self, "_group_at"):  # static groups stay contiguous: no g_idx
                g_idx = torch.empty(self.shape[1], dtype=torch.int64)
                g_idx[perm] = torch.arange(self.shape[1]) // self.group_size
        parts = Int4Parts(codes, torch.stack(self.scales, 1).cpu(), torch.stack(self.zeros, 1).cpu(), g_idx)
        if g_idx is not None and "g_idx" not in self.fmt.tensor_names:
            raise MPQError(f"{self.name}: act-order needs a g_idx, which only the GPTQ formats store ({self.fmt.name} does not)")
        return self.fmt.pack(parts, self.spec)


class Int8ColumnQuantizer(ColumnQuantizer):
    """Symmetric per-channel int8 (W8A16 or W8A8): one scale per output row, fixed from the whole weight."""

    def __init__(self, spec: QuantSpec, shape: tuple[int, int], name: str):
        self.fmt = get_format(spec.format)
        self.spec = self.fmt.normalize(spec)
        self.fmt.check_shape(self.spec, shape, name)
        self.shape = shape
        self.codes = torch.empty(shape, dtype=torch.int8)

    def begin(self, weight: torch.Tensor) -> None:
        self.scale = scale_from_amax(weight.abs().amax(dim=1, keepdim=True))[:, 0]

    def round(self, column: torch.Tensor, position: int) -> torch.Tensor:
        code = to_int8(column / self.scale)
        self.codes[:, position] = code.cpu()
        return code.to(torch.float32) * self.scale

    def finish(self, perm: torch.Tensor | None) -> QuantizedTensor:
        codes = self.codes
        if perm is not None:
            codes = torch.empty_like(self.codes)
            codes[:, perm.cpu()] = self.codes
        return QuantizedTensor(self.spec, self.shape, {"weight": codes.contiguous(),
                                                       "weight_scale": self.scale.cpu().unsqueeze(1).contiguous()})


class FloatColumnQuantizer(ColumnQuantizer):
    """No rounding (bf16 / fp16 / fp32 weights): used when SparseGPT prunes a layer it does not quantize."""

    def __init__(self, spec: QuantSpec, shape: tuple[int, int], name: str):
        self.fmt = get_format(spec.format)
        self.spec, self.shape, self.name = self.fmt.normalize(spec), shape, name
        self.values = torch.empty(shape, dtype=torch.float32)

    def round(self, column: torch.Tensor, position: int) -> torch.Tensor:
        self.values[:, position] = column.cpu()
        return column

    def finish(self, perm: torch.Tensor | None) -> QuantizedTensor:
        values = self.values
        if perm is not None:
            values = torch.empty_like(self.values)
            values[:, perm.cpu()] = self.values
        return self.fmt.quantize(values, self.spec, name=self.name)


def column_quantizer(spec: QuantSpec, shape: tuple[int, int], name: str) -> ColumnQuantizer:
    fmt = get_format(spec.format).name
    if fmt in INT_GROUP_FORMATS:
        return IntGroupColumnQuantizer(spec, shape, name)
    if fmt == "int8":
        return Int8ColumnQuantizer(spec, shape, name)
    if fmt in FLOAT_FORMATS:
        return FloatColumnQuantizer(spec, shape, name)
    raise MPQError(f"{name}: no GPTQ column grid for format {fmt}; quantize it with --method rtn or awq")
