"""The packed checkpoint's `quantization_config`: the contract between `mpq pack` / `mpq quantize` and
every reader (the HF path, the vLLM and SGLang plugins, the exports).

One pydantic model is the only writer and the only reader, so a reader can never accept what another
refuses. It is versioned: `format_version` newer than this code is refused, older ones pass through
`MIGRATIONS` (one function per version step) before validation. It imports nothing but pydantic, so
an engine can parse a config before torch or our kernels load.

    {"quant_method": "mpq", "format_version": 1,
     "modules": {"model.layers.0.mlp.down_proj": {"format": "gptq_int4", "group_size": 128, "shape": [576, 1536]}, ...},
     "plan": {...the plan it was packed from...}, "quantize": {...what `mpq quantize` measured, if it wrote it...}}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import CheckpointError

if TYPE_CHECKING:
    from .formats.spec import QuantSpec

QUANT_METHOD = "mpq"
FORMAT_VERSION = 1

ENGINE_RUNTIME_KEYS = frozenset({
    "packed_modules_mapping", "hf_config", "requantization_method",  # SGLang's get_quant_config adds these
    "total_num_heads", "total_num_kv_heads",  # vLLM's weight_utils adds these for some methods
})
"""Keys an engine writes into the config dict it hands its quantization method; not ours, not stored."""

MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}
"""version N -> a function turning a version-N config into a version-(N+1) one (none needed yet)."""


class PackedModule(BaseModel):
    """One stored module (a linear, or one expert's projection): its format's fields and its (out, in) shape."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str
    shape: tuple[int, int]
    group_size: int | None = None
    symmetric: bool | None = None
    act_order: bool = False
    granularity: Literal["tensor", "channel", "block"] | None = None
    activation: str | None = None
    checkpoint_format: Literal["gptq", "gptq_v2"] = "gptq"

    @classmethod
    def of(cls, spec: QuantSpec, shape: tuple[int, int]) -> PackedModule:
        return cls(shape=(int(shape[0]), int(shape[1])), **vars(spec))

    def spec(self) -> QuantSpec:
        from .formats.spec import QuantSpec

        return QuantSpec(**self.model_dump(exclude={"shape"}))


class PackedConfig(BaseModel):
    """The whole `quantization_config` of a packed folder."""

    model_config = ConfigDict(extra="forbid")

    quant_method: Literal["mpq"] = QUANT_METHOD
    format_version: int = Field(FORMAT_VERSION, ge=1)
    modules: dict[str, PackedModule]
    plan: dict[str, Any] | None = None
    quantize: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        version = data.get("format_version", 1)
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise ValueError(f"format_version {version} is newer than this mpq-serving reads ({FORMAT_VERSION}); "
                             "upgrade mpq-serving")
        while isinstance(version, int) and version < FORMAT_VERSION:
            data = MIGRATIONS[version](data)
            version = data["format_version"] = version + 1
        return data

    @classmethod
    def read(cls, quantization_config: Mapping[str, Any] | None, where: object) -> PackedConfig:
        """Validate a folder's quantization_config; a `CheckpointError` naming the field otherwise."""
        if not quantization_config or quantization_config.get("quant_method") != QUANT_METHOD:
            method = (quantization_config or {}).get("quant_method")
            raise CheckpointError(f"{where}: quantization_config.quant_method is {method!r}, not {QUANT_METHOD!r}: "
                                  "not a packed mixed checkpoint (write one with `mpq pack`)")
        ours = {k: v for k, v in quantization_config.items() if k not in ENGINE_RUNTIME_KEYS}
        try:
            return cls.model_validate(ours)
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            raise CheckpointError(f"{where}: quantization_config.{field}: {first['msg']}"
                                  + (f" (and {e.error_count() - 1} more problems)" if e.error_count() > 1 else "")) from None

    @classmethod
    def build(cls, modules: Mapping[str, tuple[QuantSpec, tuple[int, int]]], plan: dict[str, Any],
              quantize: dict[str, Any] | None = None) -> PackedConfig:
        return cls(modules={name: PackedModule.of(spec, shape) for name, (spec, shape) in modules.items()},
                   plan=plan, quantize=quantize)

    def to_dict(self) -> dict[str, Any]:
        """What goes into config.json: defaults left out of each module, as the formats' tools write them."""
        out = self.model_dump(mode="json", exclude_none=True, exclude={"modules"})
        out["modules"] = {name: m.model_dump(mode="json", exclude_none=True, exclude_defaults=True) | {
            "format": m.format, "shape": list(m.shape)} for name, m in self.modules.items()}
        return out
