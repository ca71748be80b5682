"""What every engine plugin needs from a packed mixed checkpoint, independent of the engine.

An engine builds its own model (fused `qkv_proj` / `gate_up_proj`, experts stacked as `w13` / `w2`),
asks its quantization config for a method per layer *prefix*, and streams checkpoint tensors into
that method's parameters through weight loaders. This package turns that into our core objects:

- `MpqCheckpointConfig.from_quantization_config(qc)` (config.py) — config.json's
  `quantization_config` (quant_method "mpq") as `{module: ModuleEntry(spec, shape)}`.
- `linear_parts(config, prefix, packed_modules_mapping)` / `moe_experts(config, prefix)` (prefixes.py)
  — which checkpoint modules an engine layer is made of: one for a plain linear, the q/k/v or
  gate/up parts of a fused linear (in the engine's shard order), `{expert: {gate, up, down}}` for an
  MoE layer's experts (per-expert names `experts.E.gate_proj|w1`, ...).
- `partition_slices` / `slice_for_partition` (partition.py) — how to cut each packed tensor of a
  format for tensor parallelism, derived from the format's own layout (no per-format table).
- `PartCollector` (collector.py) — receives checkpoint tensors one at a time (from any engine's
  weight loader), checks each against the format's layout (errors name the checkpoint tensor),
  slices it for this rank, and at the end returns QuantizedTensors, refusing any missing tensor.
- `FusedMixedLinear` (fused_linear.py) — the compute of one engine linear layer whose parts may
  each have a different format: each part runs through `layers.MixedPrecisionLinear` (so
  `kernels.dispatch` picks its kernel) and the outputs are concatenated in the engine's order.
  Decision for fused layers with mixed formats: we never re-pack parts into one format; the fused
  layer is computed part by part, which is exact and costs one extra `torch.cat` per call.
- `grouped_experts(...)` (experts.py) — `layers.moe.MixedPrecisionExperts` built from per-expert
  QuantizedTensors: experts grouped by format, each group run by its format's kernel.
- `ops.register_layer` + `torch.ops.mpq.linear` / `torch.ops.mpq.moe` (ops.py) — `torch.library`
  custom ops with fake implementations, so an engine's torch.compile traces over our data-dependent
  code (kernel dispatch, per-expert loops) instead of into it.
"""

from .collector import PartCollector
from .config import ModuleEntry, MpqCheckpointConfig
from .experts import ROLES, grouped_experts
from .fused_linear import FusedMixedLinear
from .ops import register_layer
from .partition import partition_slices, slice_for_partition
from .prefixes import linear_parts, moe_experts

__all__ = ["ModuleEntry", "MpqCheckpointConfig", "PartCollector", "FusedMixedLinear", "ROLES", "grouped_experts",
           "register_layer", "partition_slices", "slice_for_partition", "linear_parts", "moe_experts"]
