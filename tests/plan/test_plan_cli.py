"""`mpq plan validate | show | avg-bits | convert` on a model folder, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from mpq_serving.cli.main import app
from mpq_serving.formats import QuantSpec, get_format
from mpq_serving.plan.model_weights import linear_weights

from plan_model_folder import HIDDEN, INTER, write_model

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def write_plan(tmp_path: Path, data: dict, name: str = "plan.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


def test_avg_bits_is_computed_from_real_shapes(tmp_path, dense_dir):
    plan = write_plan(tmp_path, {"default": {"wq": "fp8"}, "overrides": [
        {"pattern": "down_proj", "wq": "gptq_int4", "group_size": 128},
        {"pattern": "model.layers.0.self_attn.q_proj", "skip": True}]})
    result = run("plan", "avg-bits", plan, "--model", dense_dir)
    assert result.exit_code == 0, result.output
    # Independent arithmetic: fp8 channel = 8 bits + one fp32 scale per row; gptq g128 = 4 + (16 + 4)/128 + 32/in.
    fp8 = lambda o, i: o * i * 8 + o * 32
    gptq = lambda o, i: o * i * 4 + (i // 128) * o * (16 + 4) + i * 32
    attn = HIDDEN * HIDDEN
    total = 0.0
    for layer in range(2):
        total += (attn * 16 if layer == 0 else fp8(HIDDEN, HIDDEN)) + 3 * fp8(HIDDEN, HIDDEN)
        total += 2 * fp8(INTER, HIDDEN) + gptq(HIDDEN, INTER)
    total += 64 * HIDDEN * 16  # lm_head: protected, bf16
    params = 2 * (4 * attn + 3 * INTER * HIDDEN) + 64 * HIDDEN
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("avg_bits: ")
    assert abs(float(last.split()[1]) - total / params) < 1e-3


def test_avg_bits_ignores_any_summary_in_the_file(tmp_path, dense_dir):
    plan = write_plan(tmp_path, {"default": {"wq": "bf16"}, "summary": {"avg_bits": 3.0}})
    result = run("plan", "avg-bits", plan, "--model", dense_dir)
    assert result.output.strip().splitlines()[-1] == "avg_bits: 16.0000"


def test_validate_accepts_a_good_plan(tmp_path, dense_dir):
    plan = write_plan(tmp_path, {"default": {"wq": "int8"}, "overrides": [{"pattern": "up_proj", "wq": "mxfp4"}]})
    result = run("plan", "validate", plan, "--model", dense_dir)
    assert result.exit_code == 0, result.output


def test_validate_lists_every_problem_and_exits_1(tmp_path, dense_dir):
    plan = write_plan(tmp_path, {"default": {"wq": "bf16"}, "overrides": [
        {"pattern": "experts.*", "wq": "fp8"},
        {"pattern": "q_proj", "wq": "gptq_int4", "group_size": 96},
    ], "sources": {"awq_int4": str(tmp_path / "no-such-awq")}})
    plan2 = write_plan(tmp_path, {"default": {"wq": "awq_int4"}, "sources": {"awq_int4": str(tmp_path / "no-such-awq")}}, "p2.json")
    result = run("plan", "validate", plan, "--model", dense_dir)
    assert result.exit_code == 1
    assert "overrides[0] pattern 'experts.*' matches no weight" in result.output
    assert "not divisible" in result.output and "q_proj" in result.output
    result = run("plan", "validate", plan2, "--model", dense_dir)
    assert result.exit_code == 1 and "no-such-awq" in result.output


def test_validate_finds_a_missing_tensor_in_a_source(tmp_path, dense_dir):
    # A GPTQ "release" of the model that lacks one layer's qzeros.
    tensors = {}
    fmt = get_format("gptq_int4")
    for w in linear_weights(dense_dir):
        if w.category == "lm_head":
            continue
        q = fmt.quantize(torch.randn(w.shape), QuantSpec("gptq_int4", group_size=128))
        tensors.update({f"{w.name}.{k}": v for k, v in q.tensors.items()})
    del tensors["model.layers.1.mlp.up_proj.qzeros"]
    src = write_model(tmp_path / "gptq", tensors, {"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True}})
    plan = write_plan(tmp_path, {"default": {"wq": "gptq_int4"}, "sources": {"gptq_int4": str(src)}})
    result = run("plan", "validate", plan, "--model", dense_dir)
    assert result.exit_code == 1
    assert "model.layers.1.mlp.up_proj.qzeros is missing" in result.output


def test_show_prints_one_row_per_weight_and_expert(tmp_path, moe_dir):
    plan = tmp_path / "p.yaml"
    plan.write_text('mixed_precision:\n  default: fp8\n  weight_mapping:\n    "model.layers.0.mlp.experts.1.w13_weight": mxfp4\n')
    result = run("plan", "show", plan, "--model", moe_dir)
    assert result.exit_code == 0, result.output
    text = result.output
    assert "experts.1.gate_proj" in text and "mxfp4" in text and "protected" in text
    assert len(linear_weights(moe_dir)) == 2 * (4 + 1 + 12) + 1


def test_convert_writes_the_other_form(tmp_path):
    src = write_plan(tmp_path, {"default": {"wq": "fp8"}, "overrides": [{"pattern": "q_proj", "wq": "int8"}]})
    out = tmp_path / "out.yaml"
    result = run("plan", "convert", src, "-o", out)
    assert result.exit_code == 0, result.output
    assert "mixed_precision:" in out.read_text()


def test_errors_exit_nonzero_with_a_message(tmp_path, dense_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mixed_precision:\n  weight_mapping:\n    q_proj: fp5\n")
    result = run("plan", "avg-bits", bad, "--model", dense_dir)
    assert result.exit_code == 1 and "fp5" in result.output
