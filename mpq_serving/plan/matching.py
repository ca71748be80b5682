"""How plan patterns name weights: exact names, globs, `re:` regexes, and engine expert aliases.

Names are module names (`model.layers.0.self_attn.q_proj`); a trailing `.weight` in a pattern is
dropped, so the weight name and the module name mean the same thing.  A pattern matches a name when

- `re:<regex>`: the regex matches the whole name (`re.fullmatch`);
- otherwise it is a glob (`*`, `?`, `[...]`) or a plain name, matched against the whole name or any
  dotted suffix of it: `q_proj` and `self_attn.*` match `model.layers.0.self_attn.q_proj`.

A pattern is *exact* for a name when it equals the full name.  Engine expert names are accepted:
`...experts.N.w13_weight` stands for the expert's gate and up projections and `...experts.N.w2_weight`
for its down projection, in both the Qwen / DeepSeek spelling (gate_proj, up_proj, down_proj) and the
Mixtral one (w1, w3, w2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import cached_property

from ..errors import PlanError

_ENGINE_EXPERT = re.compile(r"^(?P<prefix>.*\.experts\.(?:\d+|\*|\[[^\]]*\]))\.(?P<which>w13|w2)_weight$")
_ENGINE_EXPANSION = {"w13": ("gate_proj", "up_proj", "w1", "w3"), "w2": ("down_proj", "w2")}
_GLOB_CHARS = set("*?[")


def normalize_name(name: str) -> str:
    """Module name of a weight name: drop a trailing `.weight`."""
    return name[: -len(".weight")] if name.endswith(".weight") else name


@dataclass(frozen=True)
class Pattern:
    """One plan pattern, compiled once."""

    text: str

    @cached_property
    def _alternatives(self) -> tuple[str, ...]:
        body = self.text
        if body.startswith("re:"):
            return (body,)
        body = normalize_name(body)
        m = _ENGINE_EXPERT.match(body)
        if m:
            return tuple(f"{m['prefix']}.{proj}" for proj in _ENGINE_EXPANSION[m["which"]])
        return (body,)

    @cached_property
    def _regex(self) -> re.Pattern[str] | None:
        if not self.text.startswith("re:"):
            return None
        try:
            return re.compile(self.text[3:])
        except re.error as e:
            raise PlanError(f"pattern {self.text!r}: invalid regular expression ({e})") from None

    @property
    def is_literal(self) -> bool:
        """A plain name (no glob, no regex): can name a weight exactly."""
        return self._regex is None and not any(c in _GLOB_CHARS for alt in self._alternatives for c in alt)

    def is_exact_for(self, name: str) -> bool:
        return self.is_literal and name in self._alternatives

    def matches(self, name: str) -> bool:
        if self._regex is not None:
            return self._regex.fullmatch(name) is not None
        return any(fnmatchcase(name, alt) or fnmatchcase(name, "*." + alt) for alt in self._alternatives)


_PROTECTED_LAST = {"lm_head", "gate", "shared_expert_gate", "router"}


def is_protected(name: str) -> bool:
    """Layers kept in bf16 unless a rule names them exactly: lm_head, embeddings, MoE routers.

    A router is a module named `gate` (Mixtral `block_sparse_moe.gate`, Qwen `mlp.gate`) or
    `shared_expert_gate`; `gate_proj` is an ordinary linear and is not protected.
    """
    last = name.rsplit(".", 1)[-1]
    return last in _PROTECTED_LAST or "embed_tokens" in name or last in {"wte", "embed_in"}
