"""Both seed forms parse into one Plan; errors name the key (and the line, for YAML)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpq_serving.errors import PlanError
from mpq_serving.plan import load_plan, plan_to_json_dict, resolve, save_plan

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_seed_000_json_form_parses_with_precision_and_skip(tmp_path):
    plan = load_plan(write(tmp_path, "p.json", json.dumps({
        "default": {"wq": "mxfp8", "aq": "mxfp8", "group_size": 32},
        "overrides": [
            {"pattern": "mlp.up_proj", "wq": "mxfp4", "aq": "mxfp4", "group_size": 32, "category": "expert", "precision": "mxfp4"},
            {"pattern": "q_proj", "skip": True, "category": "attention", "precision": "bf16"},
        ],
        "summary": {"total_layers": 10, "seed": 42},
    })))
    assert plan.default_spec.format == "mxfp8"
    assert plan.spec_of(plan.overrides[0]).format == "mxfp4"
    assert plan.spec_of(plan.overrides[1]).format == "bf16"
    assert plan.summary["seed"] == 42


def test_seed_001_search_summary_is_kept_as_summary(tmp_path):
    plan = load_plan(write(tmp_path, "p.json", json.dumps({
        "default": {"wq": "bf16", "aq": "bf16", "group_size": 32},
        "overrides": [{"pattern": "model.layers.0.*", "wq": "mxfp4", "alpha_hill": 8.5}, {"pattern": "lm_head", "skip": True}],
        "search_summary": {"mxfp4_threshold": 8.5},
    })))
    assert plan.summary == {"mxfp4_threshold": 8.5}
    assert plan.overrides[0].model_extra["alpha_hill"] == 8.5


def test_seed_004_yaml_form_reads_sources_and_engine_expert_names(tmp_path):
    plan = load_plan(write(tmp_path, "p.yaml", """
mixed_precision:
  fp16_path: /models/fp16
  fp8_path: /models/fp8
  gptq_int4_path: /models/gptq
  awq_int4_path: /models/awq
  weight_mapping:
    "model.layers.0.self_attn.q_proj.weight": "fp8"
    "model.layers.0.mlp.experts.0.w13_weight": "awq_int4"
    "model.layers.0.mlp.experts.0.w2_weight": "gptq_int4"
  base_model_path: /models/base
"""))
    assert plan.sources == {"fp16": "/models/fp16", "fp8": "/models/fp8", "gptq_int4": "/models/gptq", "awq_int4": "/models/awq"}
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.experts.0.gate_proj",
             "model.layers.0.mlp.experts.0.up_proj", "model.layers.0.mlp.experts.0.down_proj",
             "model.layers.0.mlp.experts.1.gate_proj"]
    got = {n: r.spec.format for n, r in resolve(plan, names).items()}
    assert got == {names[0]: "fp8", names[1]: "awq_int4", names[2]: "awq_int4", names[3]: "gptq_int4", names[4]: "bf16"}


def test_hf_and_mixtral_expert_names_are_accepted(tmp_path):
    plan = load_plan(write(tmp_path, "p.yaml", """
mixed_precision:
  weight_mapping:
    "model.layers.1.block_sparse_moe.experts.3.w13_weight": int8
    "model.layers.1.mlp.experts.2.gate_proj.weight": fp8
"""))
    names = ["model.layers.1.block_sparse_moe.experts.3.w1", "model.layers.1.block_sparse_moe.experts.3.w3",
             "model.layers.1.block_sparse_moe.experts.3.w2", "model.layers.1.mlp.experts.2.gate_proj"]
    got = {n: r.spec.format for n, r in resolve(plan, names).items()}
    assert got == {names[0]: "int8", names[1]: "int8", names[2]: "bf16", names[3]: "fp8"}


def test_unknown_format_names_the_key_and_yaml_line(tmp_path):
    path = write(tmp_path, "p.yaml", "mixed_precision:\n  weight_mapping:\n    q_proj: fp8\n    k_proj: fp3\n")
    with pytest.raises(PlanError, match=r"weight_mapping\.k_proj.*line 4.*unknown format 'fp3'"):
        load_plan(path)


def test_unknown_source_format_key_is_named(tmp_path):
    path = write(tmp_path, "p.yaml", "mixed_precision:\n  int3_path: /x\n  weight_mapping: {}\n")
    with pytest.raises(PlanError, match=r"mixed_precision\.int3_path \(line 2\).*unknown format"):
        load_plan(path)


def test_unknown_format_in_json_names_the_override_index(tmp_path):
    path = write(tmp_path, "p.json", json.dumps({"default": {"wq": "bf16"}, "overrides": [{"pattern": "x", "wq": "nope"}]}))
    with pytest.raises(PlanError, match=r"overrides\[0\]\.wq.*unknown format 'nope'"):
        load_plan(path)


def test_misspelled_top_level_key_is_refused(tmp_path):
    path = write(tmp_path, "p.json", json.dumps({"default": {"wq": "bf16"}, "overides": []}))
    with pytest.raises(PlanError, match="overides"):
        load_plan(path)


def test_misspelled_rule_key_is_refused_with_a_suggestion(tmp_path):
    path = write(tmp_path, "p.yaml", "mixed_precision:\n  weight_mapping:\n    q_proj: {wq: int8, grup_size: 64}\n")
    with pytest.raises(PlanError, match=r"weight_mapping\.q_proj \(line 3\).*'grup_size' \(did you mean 'group_size'\?\)"):
        load_plan(path)
    path = write(tmp_path, "p.json", json.dumps({"default": {"wq": "fp8"},
                                                 "overrides": [{"pattern": "x", "wq": "int8", "activation": "int8"}]}))
    with pytest.raises(PlanError, match=r"overrides\[0\].*unknown key\(s\) 'activation'"):
        load_plan(path)


def test_annotation_keys_are_kept_and_written_back(tmp_path):
    rule = {"pattern": "x", "wq": "mxfp4", "category": "mlp_up", "alpha_hill": 8.5, "note": "tail-heavy"}
    plan = load_plan(write(tmp_path, "p.json", json.dumps({"default": {"wq": "bf16"}, "overrides": [rule]})))
    assert plan_to_json_dict(plan)["overrides"][0] == rule


def test_malformed_json_and_yaml_name_the_line(tmp_path):
    with pytest.raises(PlanError, match="malformed JSON at line 2"):
        load_plan(write(tmp_path, "p.json", '{"default": {"wq": "bf16"},\n "overrides": [,]}'))
    with pytest.raises(PlanError, match="malformed YAML at line 3"):
        load_plan(write(tmp_path, "p.yaml", "mixed_precision:\n  weight_mapping:\n    a: fp8: b\n"))


def test_duplicate_yaml_key_is_an_error_with_both_lines(tmp_path):
    path = write(tmp_path, "p.yaml", "mixed_precision:\n  weight_mapping:\n    q_proj: fp8\n    q_proj: int8\n")
    with pytest.raises(PlanError, match=r"q_proj appears twice \(lines 3 and 4\)"):
        load_plan(path)


def test_two_exact_entries_for_one_weight_are_an_error(tmp_path):
    plan = load_plan(write(tmp_path, "p.yaml", """
mixed_precision:
  weight_mapping:
    "model.layers.0.self_attn.q_proj.weight": fp8
    "model.layers.0.self_attn.q_proj": int8
"""))
    with pytest.raises(PlanError, match="named exactly by two rules"):
        resolve(plan, ["model.layers.0.self_attn.q_proj"])


def test_bad_group_size_names_the_key(tmp_path):
    path = write(tmp_path, "p.json", json.dumps({"default": {"wq": "gptq_int4", "group_size": 0}}))
    with pytest.raises(PlanError, match=r"default\.group_size"):
        load_plan(path)


@pytest.mark.parametrize("start", ["json", "yaml"])
def test_convert_round_trips_without_loss(tmp_path, start):
    original = {
        "default": {"wq": "fp8", "granularity": "channel"},
        "overrides": [
            {"pattern": "re:.*layers\\.[0-4]\\.mlp\\.down_proj", "wq": "gptq_int4", "group_size": 128, "act_order": True},
            {"pattern": "*.o_proj", "wq": "int8", "aq": "int8"},
            {"pattern": "model.layers.0.self_attn.q_proj", "skip": True, "category": "attention"},
        ],
        "sources": {"gptq_int4": "/m/gptq"},
        "base_model_path": "/m/base",
        "summary": {"seed": 1},
    }
    first = tmp_path / f"a.{start}"
    save_plan(load_plan(write(tmp_path, "orig.json", json.dumps(original))), first)
    other = tmp_path / ("b.yaml" if start == "json" else "b.json")
    save_plan(load_plan(first), other)
    assert plan_to_json_dict(load_plan(other)) == plan_to_json_dict(load_plan(first))
    assert plan_to_json_dict(load_plan(other))["overrides"][0]["act_order"] is True


SHIPPED_PLANS = sorted(str(p.relative_to(REPO)) for d in ("configs", "benchmarks/plans") for p in (REPO / d).glob("*.*"))


@pytest.mark.parametrize("name", SHIPPED_PLANS)
def test_shipped_configs_parse(name):
    load_plan(REPO / name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED_PLANS)
def test_shipped_plans_validate_against_smollm2(name, smollm2_dir):
    """Every plan the repo ships is for SmolLM2: no rule matching nothing or deciding nothing, every source there."""
    from mpq_serving.plan.validate import validate_plan

    assert validate_plan(load_plan(REPO / name), smollm2_dir) == []
