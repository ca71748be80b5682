"""`mpq plan random` (seed 000): priorities, reproducibility, bad ratios, and plans `mpq plan validate` accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mpq_serving.cli.main import app
from mpq_serving.errors import MPQError
from mpq_serving.models.tiny import build_tiny
from mpq_serving.plan import load_plan, resolve
from mpq_serving.plan.model_weights import linear_weights
from mpq_serving.search.random_plan import RandomPlanConfig, random_plan

runner = CliRunner()


@pytest.fixture(scope="module")
def mixtral_dir(tmp_path_factory) -> Path:
    return build_tiny("mixtral", tmp_path_factory.mktemp("tiny") / "mixtral")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return build_tiny("llama", tmp_path_factory.mktemp("tiny") / "llama")


def run(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def formats_of(plan_path: Path, model: Path) -> dict[str, str]:
    names = [w.name for w in linear_weights(model)]
    return {n: r.spec.format for n, r in resolve(load_plan(plan_path), names).items()}


def test_same_seed_same_plan_and_other_seed_other_plan(tmp_path, llama_dir):
    for name, seed in (("a.json", 7), ("b.json", 7), ("c.json", 8)):
        assert run("plan", "random", llama_dir, "--mxfp4-ratio", 0.4, "--bf16-ratio", 0.2, "--seed", seed,
                   "-o", tmp_path / name).exit_code == 0
    a, b, c = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json", "c.json"))
    assert a["overrides"] == b["overrides"]
    assert a["overrides"] != c["overrides"]


def test_experts_take_mxfp4_first_attention_bf16_first_rest_mxfp8(tmp_path, mixtral_dir):
    out = tmp_path / "plan.json"
    result = run("plan", "random", mixtral_dir, "--mxfp4-ratio", 0.25, "--bf16-ratio", 0.1, "--output-config", out)
    assert result.exit_code == 0, result.output
    assert run("plan", "validate", out, "--model", mixtral_dir).exit_code == 0
    weights = linear_weights(mixtral_dir)
    fmt = formats_of(out, mixtral_dir)
    drawn = [w for w in weights if w.category not in ("lm_head", "router")]
    n4, n16 = round(0.25 * len(drawn)), round(0.1 * len(drawn))
    assert {w.category for w in drawn if fmt[w.name] == "mxfp4"} == {"expert"}  # 14 of 48 experts
    assert {w.category for w in drawn if fmt[w.name] == "bf16"} == {"attention"}
    assert sum(fmt[w.name] == "mxfp4" for w in drawn) == n4
    assert sum(fmt[w.name] == "bf16" for w in drawn) == n16
    assert all(fmt[w.name] == "bf16" for w in weights if w.category in ("lm_head", "router"))
    summary = json.loads(out.read_text())["summary"]
    assert {k: summary[k] for k in ("total_layers", "mxfp4_layers", "bf16_layers", "mxfp8_layers", "seed",
                                    "group_size")} == {"total_layers": len(drawn), "mxfp4_layers": n4,
                                                       "bf16_layers": n16, "mxfp8_layers": len(drawn) - n4 - n16,
                                                       "seed": 42, "group_size": 32}
    assert summary["strategy"] == "random" and summary["history"]


def test_seed_form_keeps_activation_format_unless_weight_only(tmp_path, llama_dir):
    plan = random_plan(llama_dir, RandomPlanConfig(mxfp4_ratio=0.5, bf16_ratio=0.0))
    assert plan.default.aq == "mxfp8"
    assert {r.aq for r in plan.overrides if r.wq == "mxfp4"} == {"mxfp4"}
    weight_only = random_plan(llama_dir, RandomPlanConfig(mxfp4_ratio=0.5, bf16_ratio=0.0, weight_only=True))
    assert weight_only.default.aq is None and {r.aq for r in weight_only.overrides} == {None}


def test_more_mxfp4_than_experts_spills_to_other_layers(llama_dir):
    plan = random_plan(llama_dir, RandomPlanConfig(mxfp4_ratio=1.0, bf16_ratio=0.0))
    assert plan.summary["mxfp4_layers"] == plan.summary["total_layers"] == 14


@pytest.mark.parametrize("args, message", [
    (("--mxfp4-ratio", 1.5), "--mxfp4-ratio must be in [0, 1], got 1.5"),
    (("--bf16-ratio", -0.1), "--bf16-ratio must be in [0, 1], got -0.1"),
    (("--mxfp4-ratio", 0.7, "--bf16-ratio", 0.4), "must be <= 1"),
    (("--group-size", 64), "OCP MX block of 32"),
])
def test_bad_parameters_are_refused_naming_the_flag(tmp_path, llama_dir, args, message):
    result = run("plan", "random", llama_dir, *args, "-o", tmp_path / "p.json")
    assert result.exit_code == 1
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "p.json").exists()


def test_config_check_is_the_library_guard():
    with pytest.raises(MPQError, match="--mxfp4-ratio"):
        RandomPlanConfig(mxfp4_ratio=2.0).check()
