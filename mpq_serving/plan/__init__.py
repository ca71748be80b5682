"""The mixed-precision plan: schema, file forms, name matching, resolution, validation, average bits."""

from .io import check_plan_output, load_plan, plan_from_dict, plan_to_json_dict, plan_to_yaml_dict, save_plan
from .matching import Pattern, is_protected, normalize_name
from .resolve import Resolution, resolve, rule_problems, unmatched_rules
from .schema import Plan, Rule, SpecFields

__all__ = [
    "Pattern",
    "Plan",
    "Resolution",
    "Rule",
    "SpecFields",
    "is_protected",
    "load_plan",
    "normalize_name",
    "plan_from_dict",
    "plan_to_json_dict",
    "plan_to_yaml_dict",
    "resolve",
    "save_plan",
    "check_plan_output",
    "rule_problems",
    "unmatched_rules",
]
