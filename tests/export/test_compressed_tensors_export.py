"""`mpq export compressed-tensors`: compressed-tensors' own decompressor reads our export back to our weights,
and what stock engines cannot express is refused with the reason, leaving nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from mpq_serving.cli.main import app
from mpq_serving.export.compressed_tensors import ExportRefused, export_compressed_tensors, scheme_for
from mpq_serving.export.source import open_source
from mpq_serving.formats import QuantSpec, get_format
from mpq_serving.loaders.pack import pack
from mpq_serving.plan import plan_from_dict

compressed_tensors = pytest.importorskip("compressed_tensors")


@pytest.fixture(scope="module")
def exported(tiny_packed, tmp_path_factory) -> Path:
    return export_compressed_tensors(tiny_packed, tmp_path_factory.mktemp("ct") / "out").path


def _decompress_with_compressed_tensors(folder: Path):
    """Build the model, let compressed-tensors attach its schemes (its own target / ignore matching), load our
    compressed tensors into the modules and run its ModelCompressor.decompress_model."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config
    from compressed_tensors.utils.module import replace_direct_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM

    qconfig = QuantizationConfig.model_validate(json.loads((folder / "config.json").read_text())["quantization_config"])
    config = AutoConfig.from_pretrained(folder)
    config.__dict__.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    apply_quantization_config(model, qconfig)
    tensors = load_file(str(folder / "model.safetensors"))
    formats = {}
    for name, module in model.named_modules():
        if getattr(module, "quantization_scheme", None) is not None:
            local = {k[len(name) + 1:]: v for k, v in tensors.items() if k.rpartition(".")[0] == name}
            replace_direct_state_dict(module, local)
            module.quantization_status = "compressed"
            formats[name] = str(module.quantization_scheme.format)
    ModelCompressor(quantization_config=qconfig).decompress_model(model)
    return model, formats


def test_compressed_tensors_decompresses_our_export_to_our_weights(tiny_packed, exported):
    model, formats = _decompress_with_compressed_tensors(exported)
    seen = set()
    for name, q in open_source(tiny_packed).modules():
        fmt = get_format(q.format).name
        if fmt == "bf16":
            assert name not in formats, f"{name} is bf16 in the plan but compressed-tensors quantizes it"
            continue
        theirs = model.get_submodule(name).weight
        ours = get_format(fmt).dequantize(q)
        # Theirs is computed in the scale's dtype (one rounding of an exact product): equal to ours rounded once.
        assert torch.equal(ours.to(theirs.dtype), theirs), f"{name} ({q.spec.describe()}, {formats[name]})"
        seen.add(fmt)
    assert seen == {"int8", "mxfp8", "gptq_int4", "ct_int4", "fp8", "mxfp4", "awq_int4"}


def test_8_bit_packed_formats_and_nvfp4_export(tiny_llama, tmp_path):
    """gptq_int8 and ct_int8 leave as pack-quantized int8 (W8A16) groups, nvfp4 as NVFP4A16; compressed-tensors
    decompresses each to our weights."""
    plan = plan_from_dict({"default": {"wq": "bf16"}, "overrides": [
        {"pattern": "model.layers.0.mlp.down_proj", "wq": "gptq_int8", "group_size": 64, "symmetric": False},
        {"pattern": "model.layers.1.mlp.down_proj", "wq": "ct_int8", "group_size": -1},
        {"pattern": "model.layers.1.self_attn.o_proj", "wq": "nvfp4"}]})
    packed = pack(plan, tmp_path / "packed", tiny_llama, progress=False)
    out = export_compressed_tensors(packed, tmp_path / "ct").path
    model, formats = _decompress_with_compressed_tensors(out)
    for name, q in open_source(packed).modules():
        if q.format in ("gptq_int8", "ct_int8", "nvfp4"):
            assert formats[name] == ("nvfp4-pack-quantized" if q.format == "nvfp4" else "pack-quantized")
            ours = get_format(q.format).dequantize(q)
            theirs = model.get_submodule(name).weight  # in the scale's dtype: fp16 for GPTQ, bf16 for ours
            assert torch.equal(ours.to(theirs.dtype), theirs), name


def test_config_is_mixed_precision_with_one_group_per_scheme(exported):
    qc = json.loads((exported / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "mixed-precision"
    groups = qc["config_groups"]
    assert {g["format"] for g in groups.values()} == {
        "int-quantized", "pack-quantized", "float-quantized", "mxfp4-pack-quantized", "mxfp8-quantized"}
    targets = [t for g in groups.values() for t in g["targets"]]
    assert len(targets) == len(set(targets)) == 14  # every quantized linear exactly once
    assert qc["ignore"] == ["lm_head"]
    w8a8 = next(g for g in groups.values() if g["format"] == "int-quantized")
    assert w8a8["input_activations"]["dynamic"] is True and w8a8["input_activations"]["strategy"] == "token"
    compressed_tensors.quantization.QuantizationConfig.model_validate(qc)  # their schema accepts it


def _pack(model: Path, mapping: dict, out: Path) -> Path:
    plan = plan_from_dict({"mixed_precision": {"default": "bf16", "weight_mapping": mapping}})
    return pack(plan, out, model, progress=False)


def test_refuses_per_expert_mixing_in_one_moe_layer(tiny_mixtral, tmp_path):
    packed = _pack(tiny_mixtral, {r"re:model\.layers\.0\.block_sparse_moe\.experts\.[0-3]\..*": "int8"}, tmp_path / "p")
    with pytest.raises(ExportRefused, match=r"layers\.0\.block_sparse_moe\.experts: the plan mixes schemes.*one scheme"):
        export_compressed_tensors(packed, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_one_scheme_per_moe_layer_is_exported(tiny_mixtral, tmp_path):
    packed = _pack(tiny_mixtral, {r"re:model\.layers\.0\.block_sparse_moe\.experts\..*": "int8"}, tmp_path / "p")
    result = export_compressed_tensors(packed, tmp_path / "out")
    assert [g.n_modules for g in result.groups] == [24]  # 8 experts x gate/up/down


def test_refuses_different_schemes_on_fused_projections(tiny_llama, tmp_path):
    packed = _pack(tiny_llama, {"model.layers.0.self_attn.k_proj": "int8"}, tmp_path / "p")
    with pytest.raises(ExportRefused, match=r"layers\.0\.self_attn: k_proj: int8.*q_proj: bf16.*fuse q_proj/k_proj/v_proj"):
        export_compressed_tensors(packed, tmp_path / "out")


@pytest.mark.parametrize(("spec", "reason"), [
    (QuantSpec("gptq_int4", group_size=64, act_order=True), "act-order"),
    (QuantSpec("mxfp4", activation="mxfp8"), "mxfp4 weights with mxfp8 activations"),
    (QuantSpec("fp32"), "fp32"),
])
def test_refuses_what_stock_engines_cannot_express(spec, reason):
    with pytest.raises(ExportRefused, match=reason):
        scheme_for(spec, "model.layers.0.mlp.up_proj")


def test_cli_refusal_exits_with_the_reason(tiny_llama, tmp_path):
    packed = _pack(tiny_llama, {"model.layers.0.self_attn.k_proj": "int8"}, tmp_path / "p")
    result = CliRunner().invoke(app, ["export", "compressed-tensors", str(packed), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "fuse q_proj/k_proj/v_proj" in " ".join(result.output.split())
