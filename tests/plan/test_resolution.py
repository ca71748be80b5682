"""Precedence: exact > protected > first matching pattern > default; globs, suffixes and `re:`."""

from __future__ import annotations

from mpq_serving.plan import Pattern, is_protected, plan_from_dict, resolve, unmatched_rules

NAMES = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.0.mlp.down_proj",
    "model.layers.1.mlp.down_proj",
    "model.layers.1.mlp.gate",
    "model.layers.1.mlp.gate_proj",
    "lm_head",
]


def formats(plan_dict):
    return {n: r.spec.format for n, r in resolve(plan_from_dict(plan_dict), NAMES).items()}


def test_first_matching_pattern_wins_in_file_order():
    got = formats({"default": {"wq": "fp8"}, "overrides": [
        {"pattern": "down_proj", "wq": "int8"},
        {"pattern": "model.layers.1.*", "wq": "mxfp4"},
    ]})
    assert got["model.layers.1.mlp.down_proj"] == "int8"
    assert got["model.layers.1.mlp.gate_proj"] == "mxfp4"
    assert got["model.layers.0.self_attn.q_proj"] == "fp8"


def test_exact_name_beats_an_earlier_pattern():
    got = formats({"default": {"wq": "fp8"}, "overrides": [
        {"pattern": "*down_proj", "wq": "int8"},
        {"pattern": "model.layers.0.mlp.down_proj", "wq": "gptq_int4"},
    ]})
    assert got["model.layers.0.mlp.down_proj"] == "gptq_int4"
    assert got["model.layers.1.mlp.down_proj"] == "int8"


def test_protected_layers_stay_bf16_unless_named_exactly():
    got = formats({"default": {"wq": "fp8"}, "overrides": [{"pattern": "*", "wq": "int8"}]})
    assert got["lm_head"] == "bf16" and got["model.layers.1.mlp.gate"] == "bf16"
    assert got["model.layers.1.mlp.gate_proj"] == "int8"
    got = formats({"default": {"wq": "fp8"}, "overrides": [{"pattern": "lm_head", "wq": "int8"}]})
    assert got["lm_head"] == "int8"


def test_regex_patterns_match_the_whole_name():
    got = formats({"default": {"wq": "bf16"}, "overrides": [{"pattern": r"re:model\.layers\.[01]\.mlp\.down_proj", "wq": "fp8"},
                                                             {"pattern": "re:layers", "wq": "int8"}]})
    assert got["model.layers.0.mlp.down_proj"] == got["model.layers.1.mlp.down_proj"] == "fp8"
    assert got["model.layers.0.self_attn.q_proj"] == "bf16"  # `re:layers` must match the whole name


def test_skip_means_bf16_and_unset_fields_inherit_the_default():
    plan = plan_from_dict({"default": {"wq": "gptq_int4", "group_size": 64}, "overrides": [
        {"pattern": "q_proj", "skip": True}, {"pattern": "down_proj", "act_order": True}]})
    r = resolve(plan, NAMES)
    assert r["model.layers.0.self_attn.q_proj"].spec.format == "bf16"
    spec = r["model.layers.0.mlp.down_proj"].spec
    assert (spec.format, spec.group_size, spec.act_order) == ("gptq_int4", 64, True)


def test_activation_format_is_kept_for_w8a8():
    plan = plan_from_dict({"default": {"wq": "int8", "aq": "int8"}})
    assert plan.default_spec.activation == "int8"
    assert plan_from_dict({"default": {"wq": "int8", "aq": "bf16"}}).default_spec.activation is None


def test_unmatched_rules_are_reported():
    plan = plan_from_dict({"overrides": [{"pattern": "q_proj", "wq": "fp8"}, {"pattern": "experts.*", "wq": "fp8"}]})
    assert unmatched_rules(plan, NAMES) == [1]


def test_pattern_suffix_matching_respects_dots():
    assert Pattern("q_proj").matches("model.layers.0.self_attn.q_proj")
    assert not Pattern("proj").matches("model.layers.0.self_attn.q_proj")
    assert Pattern("model.layers.0.self_attn.q_proj.weight").is_exact_for("model.layers.0.self_attn.q_proj")


def test_router_detection_does_not_catch_gate_proj():
    assert is_protected("model.layers.3.block_sparse_moe.gate")
    assert is_protected("model.layers.3.mlp.shared_expert_gate")
    assert not is_protected("model.layers.3.mlp.gate_proj")


def test_an_override_in_another_format_does_not_inherit_the_default_group_size():
    plan = plan_from_dict({"default": {"wq": "gptq_int4", "group_size": 64, "aq": "bf16"},
                           "overrides": [{"pattern": "q_proj", "wq": "fp8"}, {"pattern": "down_proj", "act_order": True}]})
    r = resolve(plan, NAMES)
    assert r["model.layers.0.self_attn.q_proj"].spec.group_size is None
    assert r["model.layers.0.mlp.down_proj"].spec.group_size == 64
