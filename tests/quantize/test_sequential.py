"""The layer-by-layer pass on tiny models: written checkpoints load bit for bit, AWQ / SmoothQuant folds keep
the float model, MoE experts are calibrated on their own routed tokens, plain GPTQ / AWQ layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mpq_serving.cli.main import app
from mpq_serving.errors import MPQError
from mpq_serving.layers.linear import MixedPrecisionLinear
from mpq_serving.loaders.hf_model import load_model
from mpq_serving.loaders.true_mixed import TrueMixedPrecisionLoader
from mpq_serving.plan import Plan, plan_from_dict
from mpq_serving.quantize import QuantizeConfig, quantize_model, write_checkpoint
from mpq_serving.quantize.folding import fold_scales
from mpq_serving.quantize.scale_groups import scale_groups
from mpq_serving.quantize.sequential import calibration_model

SMALL = {"nsamples": 4, "seq_len": 32, "batch_size": 2, "awq_samples": 2}
INT4 = {"default": {"wq": "gptq_int4", "group_size": 64}}


def packed_modules(model: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    return {n: {k: v for k, v in m.named_buffers()} for n, m in model.named_modules()
            if isinstance(m, MixedPrecisionLinear)}


def assert_same_tensors(result, loaded: dict[str, dict[str, torch.Tensor]]) -> None:
    for name, q in result.modules.items():
        if q.format in ("bf16", "fp16", "fp32"):
            continue
        assert set(loaded[name]) == set(q.tensors), name
        for suffix, tensor in q.tensors.items():
            assert torch.equal(loaded[name][suffix], tensor), f"{name}.{suffix}"


@pytest.fixture(scope="module")
def gptq_result(tiny_llama):
    plan = plan_from_dict(INT4)
    return plan, quantize_model(tiny_llama, plan, QuantizeConfig(method="gptq", act_order=True, **SMALL), progress=False)


def test_mpq_checkpoint_loads_bit_for_bit_and_records_how(gptq_result, tmp_path):
    plan, result = gptq_result
    out = write_checkpoint(result, plan, tmp_path / "mpq")
    loaded = load_model(out, progress=False)
    assert_same_tensors(result, packed_modules(loaded))
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    record = qc["quantize"]["layers"]["model.layers.0.self_attn.q_proj"]
    assert record["method"] == "gptq" and record["act_order"] and record["damp"] == 0.01
    assert record["rows"] == 4 * 32 and qc["quantize"]["nsamples"] == 4
    assert qc["plan"]["summary"]["quantize"]["method"] == "gptq"
    assert qc["modules"]["model.layers.0.self_attn.q_proj"]["act_order"] is True


def test_plain_gptq_layout_reads_back_as_a_gptq_source(gptq_result, tmp_path):
    plan, result = gptq_result
    out = write_checkpoint(result, plan, tmp_path / "gptq", layout="gptq")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (qc["quant_method"], qc["bits"], qc["group_size"], qc["desc_act"], qc["sym"]) == ("gptq", 4, 64, True, True)
    source_plan = Plan(default={"wq": "gptq_int4", "group_size": 64, "act_order": True}, sources={"gptq_int4": str(out)})
    loader = TrueMixedPrecisionLoader(source_plan, out)  # lm_head stays bf16 in the same folder
    assert_same_tensors(result, {n: q.tensors for n, q in loader.iter_modules(progress=False)})


def test_awq_folds_keep_the_float_model(tiny_llama):
    model, _ = calibration_model(tiny_llama)
    tokens = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(input_ids=tokens).logits
        gen = torch.Generator().manual_seed(1)
        for layer in model.model.layers:
            groups = scale_groups(layer)
            assert [g.key for g in groups] == ["qkv", "gate_up", "up_down"]  # tiny llama has GQA: no v_o
            for g in groups:
                fold_scales(g, torch.rand(g.linears[0].in_features, generator=gen) * 4 + 0.25)
        after = model(input_ids=tokens).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_awq_writes_the_awq_layout_and_loads_bit_for_bit(tiny_llama, tmp_path):
    plan = plan_from_dict({"default": {"wq": "awq_int4", "group_size": 64}})
    result = quantize_model(tiny_llama, plan, QuantizeConfig(method="awq", **SMALL), progress=False)
    record = result.records["model.layers.0.mlp.gate_proj"]
    assert record["method"] == "awq" and record["awq_group"] == "gate_up"
    assert record["awq_loss"] <= record["awq_loss_unscaled"]
    assert result.records["model.layers.0.mlp.down_proj"]["awq_clip"] is True
    out = write_checkpoint(result, plan, tmp_path / "awq", layout="awq")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (qc["quant_method"], qc["version"], qc["zero_point"], qc["group_size"]) == ("awq", "gemm", True, 64)
    loader = TrueMixedPrecisionLoader(Plan(default={"wq": "awq_int4", "group_size": 64}, sources={"awq_int4": str(out)}), out)
    assert_same_tensors(result, {n: q.tensors for n, q in loader.iter_modules(progress=False)})
    # the folded norms are written: the checkpoint's input_layernorm differs from the base model's
    folded = load_model(write_checkpoint(result, plan, tmp_path / "mpq"), progress=False)
    base = load_model(tiny_llama, progress=False)
    assert not torch.equal(folded.model.layers[0].input_layernorm.weight, base.model.layers[0].input_layernorm.weight)


def test_plain_layouts_refuse_mixed_plans(tiny_llama, tmp_path):
    plan = plan_from_dict({**INT4, "overrides": [{"pattern": "o_proj", "wq": "int8"}]})
    result = quantize_model(tiny_llama, plan, QuantizeConfig(method="rtn"), progress=False)
    with pytest.raises(MPQError, match="o_proj.*int8"):
        write_checkpoint(result, plan, tmp_path / "gptq", layout="gptq")
    assert not (tmp_path / "gptq").exists()


def test_smoothquant_w8a8_folds_into_the_norms(tiny_llama, tmp_path):
    plan = plan_from_dict({"default": {"wq": "int8", "aq": "int8"}})
    result = quantize_model(tiny_llama, plan, QuantizeConfig(method="gptq", smooth_alpha=0.5, **SMALL), progress=False)
    assert result.records["model.layers.1.self_attn.k_proj"]["smooth_alpha"] == 0.5
    assert result.records["model.layers.1.mlp.up_proj"]["smooth_alpha"] == 0.5
    loaded = load_model(write_checkpoint(result, plan, tmp_path / "w8a8"), progress=False)
    assert_same_tensors(result, packed_modules(loaded))


def test_sparsegpt_through_the_pipeline(tiny_llama):
    result = quantize_model(tiny_llama, plan_from_dict(INT4), QuantizeConfig(method="gptq", sparsity_pattern="2:4", **SMALL),
                            progress=False)
    record = result.records["model.layers.0.mlp.up_proj"]
    assert record["method"] == "sparsegpt+gptq" and record["sparsity"] == 0.5
    from mpq_serving.formats import get_format

    w = get_format("gptq_int4").dequantize(result.modules["model.layers.0.mlp.up_proj"])
    assert int((w.reshape(w.shape[0], -1, 4) == 0).sum(-1).min()) >= 2


def test_moe_experts_see_only_their_routed_tokens(tiny_qwen3_moe):
    plan = plan_from_dict(INT4)
    result = quantize_model(tiny_qwen3_moe, plan, QuantizeConfig(method="gptq", **SMALL), progress=False)
    tokens, top_k = 4 * 32, 2
    for layer in (0, 1):
        rows = [r.get("rows", 0) for n, r in result.records.items()
                if n.startswith(f"model.layers.{layer}.mlp.experts.") and n.endswith("gate_proj")]
        assert len(rows) == 8 and sum(rows) == tokens * top_k  # each token reaches exactly top_k experts
        assert len(set(rows)) > 1  # and experts got different token sets


def test_cli_quantize(tiny_llama, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(INT4))
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["quantize", str(tiny_llama), "--plan", str(plan), "--method", "gptq",
                                   "--nsamples", "2", "--seq-len", "16", "--damp", "0.05", "--layout", "gptq", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "gptq 14" in res.output
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["damp_percent"] == 0.05
    bad = CliRunner().invoke(app, ["quantize", str(tiny_llama), "--plan", str(plan), "--method", "nope", "-o", str(out)])
    assert bad.exit_code == 1 and "unknown method" in bad.output

    # The GPTQ folder is a tool's folder like any other: evaluated through our readers (no optimum / gptqmodel).
    ppl = CliRunner().invoke(app, ["eval", "ppl", str(out), "--seq-len", "16", "--max-tokens", "48"])
    assert ppl.exit_code == 0, ppl.output
    assert ppl.output.strip().splitlines()[-1].startswith("ppl: ")


def test_mutual_info_groups_get_gptq_per_group(tiny_llama):
    """A seed-003 plan (groups in its summary): each group's layers GPTQ-quantized in the group's format."""
    attn = [f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in "qkvo"]
    mlp = [f"model.layers.{i}.mlp.{p}_proj" for i in (0, 1) for p in ("gate", "up", "down")]
    plan = plan_from_dict({"default": {"wq": "gptq_int4", "group_size": 64},
                           "overrides": [{"pattern": n, "wq": "int8"} for n in attn],
                           "summary": {"strategy": "mutual-info", "groups": [
                               {"group": 0, "format": "int8", "layers": attn},
                               {"group": 1, "format": "gptq_int4", "layers": mlp}]}})
    result = quantize_model(tiny_llama, plan, QuantizeConfig(method="gptq", **SMALL), progress=False)
    assert [g["methods"] for g in result.groups] == [{"gptq": 8}, {"gptq": 6}]
    assert result.records["model.layers.1.self_attn.o_proj"]["mi_group"] == 0
    assert result.modules["model.layers.1.self_attn.o_proj"].format == "int8"
    assert result.summary()["groups"][1]["loss"] > 0
