"""A packed checkpoint's modules, looked up by the names engines give their (fused) layers.

Engines fuse checkpoint modules: `qkv_proj` holds `q_proj`, `k_proj`, `v_proj`; `gate_up_proj` holds
`gate_proj`, `up_proj`; an MoE layer holds every expert's gate / up / down.  In a mixed checkpoint
each of those parts may have its own format, so a plugin needs, per engine layer, the list of parts
in output order with each part's spec and shape.  Names are the checkpoint's (HF) names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import CheckpointError
from ...formats import QuantSpec, get_format
from ...loaders.source_config import spec_from_dict

#: engine's fused layer name → the checkpoint modules it concatenates along the output dim, in order.
FUSED_PARTS: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}
#: expert projection names per role, HF style and Mixtral style.
EXPERT_ROLES: dict[str, tuple[str, ...]] = {"gate": ("gate_proj", "w1"), "up": ("up_proj", "w3"), "down": ("down_proj", "w2")}
#: engines rename Mixtral's `block_sparse_moe` to `mlp`; the checkpoint may use either.
_MOE_BLOCK_ALIASES = (".mlp.", ".block_sparse_moe.")
_FLOAT = {"bf16", "fp16", "fp32"}


@dataclass(frozen=True)
class PackedModule:
    """One checkpoint module: its name, spec and logical (out, in) shape."""

    name: str
    spec: QuantSpec
    shape: tuple[int, int]

    @property
    def is_float(self) -> bool:
        return self.spec.format in _FLOAT

    def layout(self) -> dict[str, tuple[tuple[int, ...], Any]]:
        """Suffix → (shape, dtype) of each tensor this module stores."""
        return get_format(self.spec.format).layout(self.spec, self.shape)


class PackedModules:
    """The `modules` table of a packed checkpoint's `quantization_config` (quant_method "mpq")."""

    def __init__(self, quantization_config: dict[str, Any], where: str = "quantization_config"):
        modules = quantization_config.get("modules")
        if not isinstance(modules, dict) or not modules:
            raise CheckpointError(f"{where}: an mpq quantization_config needs a non-empty 'modules' table "
                                  "(written by `mpq pack`)")
        self.where = where
        self.modules: dict[str, PackedModule] = {}
        for name, entry in modules.items():
            try:
                spec = spec_from_dict({k: v for k, v in entry.items() if k != "shape"})
                get_format(spec.format)
                shape = tuple(int(d) for d in entry["shape"])
            except Exception as e:  # noqa: BLE001  (any malformed entry: name it)
                raise CheckpointError(f"{where}: module {name}: bad entry {entry!r}: {e}") from e
            self.modules[name] = PackedModule(name, spec, shape)

    def get(self, name: str) -> PackedModule | None:
        for alias in _aliases(name):
            if alias in self.modules:
                return self.modules[alias]
        return None

    def parts(self, prefix: str) -> list[PackedModule] | None:
        """The checkpoint modules an engine layer named `prefix` holds, in output order; None if none."""
        head, _, leaf = prefix.rpartition(".")
        names = [f"{head}.{p}" if head else p for p in FUSED_PARTS[leaf]] if leaf in FUSED_PARTS else [prefix]
        found = [self.get(n) for n in names]
        if all(m is None for m in found):
            return None
        missing = [n for n, m in zip(names, found) if m is None]
        if missing:
            raise CheckpointError(f"{self.where}: {prefix} fuses {', '.join(names)}, but the modules table lacks "
                                  f"{', '.join(missing)}")
        return found  # type: ignore[return-value]

    def experts(self, prefix: str, num_experts: int) -> list[dict[str, PackedModule]] | None:
        """Per expert (global id), its gate / up / down modules, for an MoE `experts` layer; None if absent."""
        table: list[dict[str, PackedModule]] = []
        for e in range(num_experts):
            roles = {}
            for role, names in EXPERT_ROLES.items():
                m = next((m for n in names if (m := self.get(f"{prefix}.{e}.{n}")) is not None), None)
                if m is not None:
                    roles[role] = m
            table.append(roles)
        if not any(table):
            return None
        incomplete = [e for e, roles in enumerate(table) if set(roles) != set(EXPERT_ROLES)]
        if incomplete:
            raise CheckpointError(f"{self.where}: {prefix}: experts {incomplete[:8]} lack a gate, up or down "
                                  "projection in the modules table")
        return table


def _aliases(name: str) -> list[str]:
    names = [name]
    for a in _MOE_BLOCK_ALIASES:
        if a in name:
            names += [name.replace(a, b) for b in _MOE_BLOCK_ALIASES if b != a]
    return names

