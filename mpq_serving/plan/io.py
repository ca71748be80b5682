"""Read and write plans in both forms, with errors that name the key (and the line, for YAML)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import PlanError, UnknownFormatError
from ..formats import canonical_name
from ..outputs import check_output_file, write_text_output
from .schema import Plan, Rule, SpecFields

_SECTION = "mixed_precision"
# A plan naming every one of Qwen3-235B-A22B's 36k expert weights is a few MiB; far beyond that is not a plan.
MAX_PLAN_BYTES = 64 << 20
# Nodes after expanding YAML aliases: bounds "billion laughs" files that are tiny on disk.
MAX_YAML_NODES = 5_000_000


class _YamlSection(BaseModel):
    """Seed 004's `mixed_precision:` block; `<format>_path` keys are collected separately."""

    model_config = ConfigDict(extra="forbid")

    weight_mapping: dict[str, Any] = Field(default_factory=dict)
    base_model_path: str | None = None
    default: Any = None
    summary: dict[str, Any] = Field(default_factory=dict)


def load_plan(path: str | Path) -> Plan:
    """Parse a plan file (`.json`, `.yaml` / `.yml`) into a Plan; PlanError naming the key otherwise."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"{path}: plan file not found")
    size = path.stat().st_size
    if size > MAX_PLAN_BYTES:
        raise PlanError(f"{path}: {size / 2**20:.0f} MiB is too large for a plan file (limit {MAX_PLAN_BYTES >> 20} MiB)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PlanError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        except PlanError as e:
            raise PlanError(f"{path}: {e}") from None
        except json.JSONDecodeError as e:
            raise PlanError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        lines: dict[tuple, int] = {}
    elif path.suffix.lower() in {".yaml", ".yml"}:
        data, lines = _load_yaml_with_lines(text, path)
    else:
        raise PlanError(f"{path}: unknown plan file type {path.suffix!r}; use .json, .yaml or .yml")
    return plan_from_dict(data, source=str(path), lines=lines)


def plan_from_dict(data: Any, source: str = "<plan>", lines: dict[tuple, int] | None = None) -> Plan:
    """Build a Plan from a parsed JSON or YAML document of either form."""
    lines = lines or {}
    if not isinstance(data, dict):
        raise PlanError(f"{source}: a plan must be a mapping at the top level, got {type(data).__name__}")
    if _SECTION in data:
        extra = sorted(set(data) - {_SECTION})
        if extra:
            raise PlanError(f"{source}: unexpected top-level key(s) {extra} next to {_SECTION!r}")
        return _from_yaml_section(data[_SECTION], source, lines)
    try:
        return Plan.model_validate(_rename(data, {"search_summary": "summary"}))
    except ValidationError as e:
        raise PlanError(_describe(e, source, lines, ())) from None


def _from_yaml_section(section: Any, source: str, lines: dict[tuple, int]) -> Plan:
    if not isinstance(section, dict):
        raise PlanError(f"{source}: {_SECTION!r} must be a mapping{_at(lines, (_SECTION,))}")
    sources: dict[str, str] = {}
    rest: dict[str, Any] = {}
    for key, value in section.items():
        if isinstance(key, str) and key.endswith("_path") and key != "base_model_path":
            try:
                fmt = canonical_name(key[: -len("_path")])
            except UnknownFormatError as e:
                raise PlanError(f"{source}: key {_SECTION}.{key}{_at(lines, (_SECTION, key))}: {e}") from None
            if fmt in sources:
                raise PlanError(f"{source}: two source paths for format {fmt}{_at(lines, (_SECTION, key))}")
            sources[fmt] = str(value)
        else:
            rest[key] = value
    try:
        parsed = _YamlSection.model_validate(rest)
    except ValidationError as e:
        raise PlanError(_describe(e, source, lines, (_SECTION,))) from None
    rules = []
    for pattern, value in parsed.weight_mapping.items():
        loc = (_SECTION, "weight_mapping", pattern)
        fields = _entry(value, source, lines, loc)
        try:
            rules.append(Rule(pattern=str(pattern), **fields.model_dump(by_alias=False, exclude_none=True)))
        except ValidationError as e:
            raise PlanError(_describe(e, source, lines, loc)) from None
    default = _entry(parsed.default, source, lines, (_SECTION, "default")) if parsed.default else SpecFields(wq="bf16")
    return Plan(
        default=default,
        overrides=rules,
        sources=sources,
        base_model_path=parsed.base_model_path,
        summary=parsed.summary,
    )


def _entry(value: Any, source: str, lines: dict[tuple, int], loc: tuple) -> SpecFields:
    """A weight_mapping value: a bare format name, or a mapping of rule fields."""
    try:
        if isinstance(value, str):
            return SpecFields(wq=value)
        if isinstance(value, dict):
            return SpecFields.model_validate(value)
    except ValidationError as e:
        raise PlanError(_describe(e, source, lines, loc)) from None
    key = ".".join(map(str, loc))
    raise PlanError(f"{source}: key {key}{_at(lines, loc)}: expected a format name or a mapping, got {value!r}")


def plan_to_json_dict(plan: Plan) -> dict[str, Any]:
    """The JSON form: `{default, overrides, sources, base_model_path, summary}`."""
    out: dict[str, Any] = {"default": _fields_dict(plan.default)}
    out["overrides"] = [{"pattern": r.pattern, **_fields_dict(r)} for r in plan.overrides]
    if plan.sources:
        out["sources"] = dict(plan.sources)
    if plan.base_model_path:
        out["base_model_path"] = plan.base_model_path
    if plan.summary:
        out["summary"] = plan.summary
    return out


def plan_to_yaml_dict(plan: Plan) -> dict[str, Any]:
    """The YAML form: `{mixed_precision: {<fmt>_path, base_model_path, default, weight_mapping}}`."""
    section: dict[str, Any] = {f"{fmt}_path": path for fmt, path in plan.sources.items()}
    if plan.base_model_path:
        section["base_model_path"] = plan.base_model_path
    section["default"] = _compact(_fields_dict(plan.default))
    mapping: dict[str, Any] = {}
    for rule in plan.overrides:
        if rule.pattern in mapping:
            raise PlanError(f"pattern {rule.pattern!r} appears twice; the YAML form keys rules by pattern")
        mapping[rule.pattern] = _compact(_fields_dict(rule))
    section["weight_mapping"] = mapping
    if plan.summary:
        section["summary"] = plan.summary
    return {_SECTION: section}


def save_plan(plan: Plan, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a plan; the suffix (.json / .yaml / .yml) picks the form.

    An existing file is replaced only with `overwrite`, and only if it is itself a plan.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = json.dumps(plan_to_json_dict(plan), indent=2) + "\n"
    elif suffix in {".yaml", ".yml"}:
        text = yaml.safe_dump(plan_to_yaml_dict(plan), sort_keys=False, allow_unicode=True)
    else:
        raise PlanError(f"{path}: unknown plan file type {path.suffix!r}; use .json, .yaml or .yml")
    write_text_output(path, text, "plan file", overwrite=overwrite, recognise=is_plan_file)
    return path


def check_plan_output(path: str | Path, *, overwrite: bool = False) -> None:
    """Refuse a plan output before a search spends minutes on it (the same checks `save_plan` makes)."""
    if Path(path).suffix.lower() not in {".json", ".yaml", ".yml"}:
        raise PlanError(f"{path}: unknown plan file type {Path(path).suffix!r}; use .json, .yaml or .yml")
    check_output_file(path, "plan file", overwrite=overwrite, recognise=is_plan_file)


def is_plan_file(path: Path) -> bool:
    """Whether `path` parses as a plan: the only kind of file a plan writer may replace."""
    try:
        load_plan(path)
    except (PlanError, OSError, UnicodeDecodeError):
        return False
    return True


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise PlanError(f"key {key!r} appears twice in one JSON object")
        out[key] = value
    return out


def _fields_dict(fields: SpecFields) -> dict[str, Any]:
    data = fields.model_dump(by_alias=False, exclude_none=True, exclude={"pattern"})
    if not data.get("skip"):
        data.pop("skip", None)
    return data


def _compact(data: dict[str, Any]) -> Any:
    """A rule that only names a format is written as the bare format name (seed 004's style)."""
    return data["wq"] if set(data) == {"wq"} else data


def _rename(data: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    out = dict(data)
    for old, new in names.items():
        if old in out:
            if new in out:
                raise PlanError(f"both {old!r} and {new!r} given; keep one")
            out[new] = out.pop(old)
    return out


def _describe(error: ValidationError, source: str, lines: dict[tuple, int], prefix: tuple) -> str:
    problems = []
    for err in error.errors():
        loc = prefix + tuple(err["loc"])
        key = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
        problems.append(f"{source}: key {key}{_at(lines, loc)}: {err['msg']}")
    return "\n".join(problems)


def _at(lines: dict[tuple, int], loc: tuple) -> str:
    """` (line N)` for the deepest known prefix of a key path in a YAML file."""
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return f" (line {lines[loc[:end]]})"
    return ""


def _expanded_size(root: yaml.Node | None) -> int:
    """How many nodes the document has once every alias is expanded, counted in time linear in its size."""
    sizes: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        sizes[id(n)] = 1  # a recursive alias counts once instead of looping
        if isinstance(n, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in n.value)
        elif isinstance(n, yaml.SequenceNode):
            total = 1 + sum(size(v) for v in n.value)
        else:
            total = 1
        sizes[id(n)] = total
        return total

    return 0 if root is None else size(root)


def _load_yaml_with_lines(text: str, path: Path) -> tuple[Any, dict[tuple, int]]:
    """safe_load, plus the line of every mapping key; duplicate keys are an error, not a silent overwrite."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        expanded = _expanded_size(node)
        if expanded > MAX_YAML_NODES:
            raise PlanError(f"{path}: its aliases expand to more than {MAX_YAML_NODES:,} YAML nodes "
                            f"({expanded:.3g}); a plan never needs that many (nested anchors and aliases?)")
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise PlanError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', None) or e}") from None
    lines: dict[tuple, int] = {}

    def walk(n: yaml.Node, loc: tuple) -> None:
        if isinstance(n, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in n.value:
                key = k.value
                line = k.start_mark.line + 1
                if key in seen:
                    raise PlanError(
                        f"{path}: key {'.'.join(map(str, loc + (key,)))} appears twice (lines {seen[key]} and {line})"
                    )
                seen[key] = line
                lines[loc + (key,)] = line
                walk(v, loc + (key,))
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                lines[loc + (i,)] = v.start_mark.line + 1
                walk(v, loc + (i,))

    if node is not None:
        walk(node, ())
    return data, lines
