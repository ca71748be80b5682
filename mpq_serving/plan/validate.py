"""Check a plan against a model before anything loads: one clear message per problem."""

from __future__ import annotations

from pathlib import Path

from ..errors import MPQError
from ..loaders.checkpoint import Checkpoint
from ..loaders.expected_weights import check_against_config
from ..loaders.sources import SourceSet
from .model_weights import linear_weights
from .resolve import resolve, rule_problems
from .schema import Plan


def validate_plan(plan: Plan, model_dir: str | Path) -> list[str]:
    """Every problem found: rules matching nothing, shapes a format cannot take, missing sources / tensors."""
    problems: list[str] = []
    try:
        weights = linear_weights(model_dir)
        check_against_config(Checkpoint(model_dir), weights)
        names = [w.name for w in weights]
        resolved = resolve(plan, names)
        problems += rule_problems(plan, names, resolved, model_dir)
    except MPQError as e:
        return problems + [str(e)]
    sources = SourceSet(plan.sources, plan.base_model_path or model_dir)
    for fmt in plan.sources:
        try:
            sources.source(fmt)
        except MPQError as e:
            problems.append(str(e))
    for w in weights:
        spec = resolved[w.name].spec
        try:
            sources.locate(w.name, spec, w.shape)
        except MPQError as e:
            problems.append(str(e))
    return problems
