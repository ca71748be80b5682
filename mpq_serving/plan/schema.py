"""The plan schema: one model for both on-disk forms (seed JSON and seed YAML).

The JSON form (seeds 000 / 001) is `{default, overrides[], summary | search_summary}`; the YAML form
(seed 004) is `{mixed_precision: {<format>_path..., base_model_path, weight_mapping}}`.  Both parse
into `Plan`; `Plan` writes either form back without loss.
"""

from __future__ import annotations

from difflib import get_close_matches
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import UnknownFormatError
from ..formats import QuantSpec, canonical_name

_FLOAT_ACTIVATIONS = {"bf16", "fp16", "fp32", "bfloat16", "float16", "float32", "none"}
# Keys a rule may carry that describe it without changing what it does: the seeds' `category`,
# `precision` (seed 000) and `alpha_hill` (seed 001), and free-text notes.
ANNOTATION_KEYS = {"category", "precision", "alpha_hill", "note", "comment", "reason"}


def _known_format(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return canonical_name(value)
    except UnknownFormatError as e:
        raise ValueError(str(e)) from None


class SpecFields(BaseModel):
    """Fields a rule or the default may set; unset fields fall back to the default's."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    wq: str | None = Field(default=None, alias="format")
    aq: str | None = None
    group_size: int | None = None
    symmetric: bool | None = None
    act_order: bool | None = None
    granularity: Literal["tensor", "channel", "block"] | None = None
    skip: bool = False

    @model_validator(mode="before")
    @classmethod
    def _precision_is_wq(cls, data: Any) -> Any:
        # Seed 000 writes the chosen format as `precision` next to (or instead of) `wq`.
        if isinstance(data, dict) and data.get("wq") is None and data.get("format") is None and "precision" in data:
            data = {**data, "wq": data["precision"]}
        return data

    @model_validator(mode="after")
    def _no_unknown_keys(self) -> SpecFields:
        # A misspelt field (`activation:` for `aq:`) would otherwise be kept as an annotation and do nothing.
        unknown = sorted(set(self.model_extra or {}) - ANNOTATION_KEYS)
        if unknown:
            known = sorted({f.alias or n for n, f in type(self).model_fields.items()} | set(type(self).model_fields)
                           | ANNOTATION_KEYS)
            hints = [f"{k!r}" + (f" (did you mean {close[0]!r}?)" if (close := get_close_matches(k, known, 1)) else "")
                     for k in unknown]
            raise ValueError(f"unknown key(s) {', '.join(hints)}; a rule's keys are {', '.join(known)}")
        return self

    @field_validator("wq")
    @classmethod
    def _wq_known(cls, v: str | None) -> str | None:
        return _known_format(v)

    @field_validator("group_size")
    @classmethod
    def _group_size_valid(cls, v: int | None) -> int | None:
        if v is not None and v != -1 and v <= 0:
            raise ValueError(f"group_size must be a positive integer or -1 (per-channel), got {v}")
        return v


class Rule(SpecFields):
    """One override: a pattern and what the weights it matches get."""

    pattern: str
    category: str | None = None

    @field_validator("pattern")
    @classmethod
    def _pattern_nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("pattern is empty")
        return v


class Plan(BaseModel):
    """Who gets what: a default, ordered rules, and where each format's weights come from."""

    model_config = ConfigDict(extra="forbid")

    default: SpecFields = Field(default_factory=lambda: SpecFields(wq="bf16"))
    overrides: list[Rule] = Field(default_factory=list)
    sources: dict[str, str] = Field(default_factory=dict)
    base_model_path: str | None = None
    summary: dict[str, Any] = Field(default_factory=dict)

    @field_validator("sources")
    @classmethod
    def _source_formats_known(cls, v: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for fmt, path in v.items():
            name = _known_format(fmt)
            assert name is not None
            out[name] = path
        return out

    def spec_of(self, fields: SpecFields) -> QuantSpec:
        """The QuantSpec a rule (or the default) gives: its own fields over the default's.

        A rule inherits the default's other fields only when it keeps the default's format.  Fields
        neither sets stay None: the format's defaults apply later (`Format.normalize`), so a
        source checkpoint can still supply them (a GPTQ release's group size).
        """
        d = self.default
        fmt = "bf16" if fields.skip else (fields.wq or d.wq or "bf16")
        same_format = fmt == (d.wq or "bf16")

        def pick(attr: str) -> Any:
            # Format-specific fields (group size, granularity...) are inherited only by rules that keep
            # the default's format: a g128 GPTQ default says nothing about an fp8 override.
            own = getattr(fields, attr)
            return own if own is not None or not same_format else getattr(d, attr)

        aq = fields.aq if fields.aq is not None else (d.aq if same_format else None)
        activation = None if aq is None or aq.lower() in _FLOAT_ACTIVATIONS or aq.lower() == fmt else aq.lower()
        if aq is not None and aq.lower() == fmt and fmt in {"fp8", "int8", "mxfp8", "mxfp4"}:
            activation = fmt  # `wq: int8, aq: int8` is W8A8; `wq: mxfp4, aq: mxfp4` is MX W4A4
        if fmt in {"bf16", "fp16", "fp32"}:
            return QuantSpec(fmt)
        return QuantSpec(
            format=fmt,
            group_size=pick("group_size"),
            symmetric=pick("symmetric"),
            act_order=bool(pick("act_order")),
            granularity=pick("granularity"),
            activation=activation,
        )

    @property
    def default_spec(self) -> QuantSpec:
        return self.spec_of(self.default)
