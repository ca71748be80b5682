"""Resolve a plan against a model's weight names: one QuantSpec per weight, and why.

Precedence, highest first (documented in docs/plan.md):
1. a rule whose pattern is exactly the weight's name (two such rules for one weight is an error);
2. protected layers (lm_head, embeddings, MoE routers) stay bf16;
3. the first rule, in file order, whose pattern matches;
4. the plan's default.

Plans of large MoE models list tens of thousands of exact expert names, so literal patterns are
looked up by dotted suffix in a dict; only globs and regexes are tried one by one.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from ..errors import PlanError
from ..formats import BF16, QuantSpec
from .matching import Pattern, is_protected
from .schema import Plan


@dataclass(frozen=True)
class Resolution:
    """The spec a weight got and the reason: `exact rule N`, `protected`, `rule N` or `default`."""

    spec: QuantSpec
    reason: str
    rule_index: int | None = None


class _RuleIndex:
    def __init__(self, plan: Plan):
        self.patterns = [Pattern(rule.pattern) for rule in plan.overrides]
        self.literal: dict[str, list[int]] = defaultdict(list)
        self.wild: list[int] = []
        for i, p in enumerate(self.patterns):
            if p.is_literal:
                for alt in p._alternatives:
                    self.literal[alt].append(i)
            else:
                self.wild.append(i)

    def exact(self, name: str) -> list[int]:
        return self.literal.get(name, [])

    def matching(self, name: str) -> list[int]:
        """All rules matching name, in file order."""
        parts = name.split(".")
        hits = {i for k in range(len(parts)) for i in self.literal.get(".".join(parts[k:]), ())}
        hits.update(i for i in self.wild if self.patterns[i].matches(name))
        return sorted(hits)


def resolve(plan: Plan, names: list[str]) -> dict[str, Resolution]:
    """Spec for every name (module names, e.g. `model.layers.0.mlp.down_proj`)."""
    index = _RuleIndex(plan)
    specs = [plan.spec_of(rule) for rule in plan.overrides]
    default = plan.default_spec
    out: dict[str, Resolution] = {}
    for name in names:
        exact = sorted(set(index.exact(name)))
        if len(exact) > 1:
            first, second = (plan.overrides[i].pattern for i in exact[:2])
            raise PlanError(
                f"weight {name}: named exactly by two rules (overrides[{exact[0]}] {first!r} and "
                f"overrides[{exact[1]}] {second!r}); keep one"
            )
        if exact:
            out[name] = Resolution(specs[exact[0]], f"exact rule {exact[0]}", exact[0])
        elif is_protected(name):
            out[name] = Resolution(BF16, "protected")
        else:
            hits = index.matching(name)
            out[name] = Resolution(specs[hits[0]], f"rule {hits[0]}", hits[0]) if hits else Resolution(default, "default")
    return out


def unmatched_rules(plan: Plan, names: list[str]) -> list[int]:
    """Indices of rules whose pattern matches none of the names (a typo, or the wrong model)."""
    index = _RuleIndex(plan)
    matched: set[int] = set()
    for name in names:
        matched.update(index.matching(name))
    return [i for i in range(len(plan.overrides)) if i not in matched]


def rule_problems(plan: Plan, names: list[str], resolved: dict[str, Resolution], model: object) -> list[str]:
    """Rules that cannot be what the author meant, one message each, the same for every command:
    a rule matching no weight of `model` (a typo, or a plan for another model), and a rule whose every
    match is decided before it (by an earlier rule, an exact rule or protection): it changes nothing.
    `resolved` is `resolve(plan, names)`, which the caller needs anyway (resolving 36k expert weights twice
    would double the cost)."""
    index = _RuleIndex(plan)
    first_match: dict[int, str] = {}
    for name in names:
        for i in index.matching(name):
            first_match.setdefault(i, name)
    problems = [
        f"overrides[{i}] pattern {plan.overrides[i].pattern!r} matches no weight of {model}"
        for i in range(len(plan.overrides)) if i not in first_match
    ]
    deciding = {r.rule_index for r in resolved.values() if r.rule_index is not None}
    for i in sorted(set(first_match) - deciding):
        name = first_match[i]
        winner = resolved[name]
        by = "protection (it stays bf16)" if winner.rule_index is None else (
            f"overrides[{winner.rule_index}] {plan.overrides[winner.rule_index].pattern!r}")
        problems.append(
            f"overrides[{i}] pattern {plan.overrides[i].pattern!r} decides no weight: every weight it matches "
            f"(e.g. {name}) is decided first by {by}; remove it or move it up"
        )
    return problems
