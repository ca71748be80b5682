"""`mpq export gguf`: each format's GGML mapping against ggml's reference dequantization (gguf-py), the
file's names, hparams, tokenizer and q/k row order, MoE stacks at the widest type, and refusals."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mpq_serving.cli.main import app
from mpq_serving.errors import MPQError
from mpq_serving.export import gguf_names, gguf_types
from mpq_serving.export.gguf import export_gguf
from mpq_serving.export.source import open_source
from mpq_serving.formats import QuantSpec, get_format
from mpq_serving.loaders.pack import pack
from mpq_serving.plan import plan_from_dict

T = gguf.GGMLQuantizationType


def _weight(out_f=64, in_f=256, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out_f, in_f, generator=g) * 0.05


@pytest.mark.parametrize(("spec", "qtype"), [
    (QuantSpec("gptq_int4", group_size=128), T.Q4_0),
    (QuantSpec("gptq_int4", group_size=-1), T.Q4_0),
    (QuantSpec("ct_int4", group_size=32), T.Q4_0),
    (QuantSpec("mxfp4"), T.MXFP4),
    (QuantSpec("bf16"), T.BF16),
])
def test_exact_mappings_are_bit_exact_under_ggml_dequantization(spec, qtype):
    fmt = get_format(spec.format)
    q = fmt.quantize(_weight(), spec)
    choice = gguf_types.choose(q)
    assert choice.qtype == qtype and choice.exact
    data = gguf_types.encode(q, qtype)
    theirs = gguf_types.dequantize(data, qtype) if qtype != T.BF16 else torch.from_numpy(
        data.view(np.int16).copy()).view(torch.bfloat16).float()
    assert torch.equal(theirs.reshape(q.shape), fmt.dequantize(q))


@pytest.mark.parametrize("spec", [QuantSpec("awq_int4", group_size=64), QuantSpec("gptq_int4", group_size=32, symmetric=False)])
def test_asymmetric_int4_keeps_codes_and_scales_in_q4_1(spec):
    """Q4_1's offset m = -zero·scale is an fp16: the only rounding, at most half an fp16 ulp of 15·scale."""
    fmt = get_format(spec.format)
    q = fmt.quantize(_weight(), spec)
    assert gguf_types.choose(q).qtype == T.Q4_1
    theirs = gguf_types.dequantize(gguf_types.encode(q, T.Q4_1), T.Q4_1)
    parts = fmt.unpack(q)
    bound = 15 * parts.scales.float().amax() * 2.0**-11
    assert (theirs - fmt.dequantize(q)).abs().max() <= bound


def test_int8_goes_to_q8_0_with_its_own_codes():
    q = get_format("int8").quantize(_weight(), QuantSpec("int8"))
    data = gguf_types.encode(q, T.Q8_0)
    qs = data.reshape(64, -1, 34)[:, :, 2:].view(np.int8).reshape(64, -1)
    assert np.array_equal(qs, q.tensors["weight"].numpy())
    rel = (gguf_types.dequantize(data, T.Q8_0) - get_format("int8").dequantize(q)).abs().max() / q.tensors["weight_scale"].max()
    assert rel <= 127 * 2.0**-11  # the fp16 rounding of the channel scale, times the largest code


def test_act_order_and_ragged_rows_fall_back_and_say_so():
    q = get_format("gptq_int4").quantize(_weight(), QuantSpec("gptq_int4", group_size=64, act_order=True))
    choice = gguf_types.choose(q)
    assert choice.qtype == T.Q4_1 and not choice.exact and "act-order" in choice.why
    ragged = get_format("fp8").quantize(_weight(in_f=48), QuantSpec("fp8"))
    assert gguf_types.choose(ragged).qtype == T.BF16


@pytest.fixture(scope="module")
def tiny_gguf(tiny_packed, tmp_path_factory):
    return export_gguf(tiny_packed, tmp_path_factory.mktemp("gguf") / "tiny.gguf", progress=False)


def test_tiny_export_has_llama_names_types_and_hparams(tiny_gguf):
    reader = gguf.GGUFReader(str(tiny_gguf.path))
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == T.Q8_0 and types["blk.0.ffn_gate.weight"] == T.Q4_0
    assert types["blk.0.ffn_down.weight"] == T.Q4_1 and types["blk.1.attn_output.weight"] == T.MXFP4
    assert types["blk.0.attn_output.weight"] == T.Q8_0 and types["output.weight"] == T.BF16
    assert types["token_embd.weight"] == T.BF16 and types["output_norm.weight"] == T.F32
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["llama.block_count"].contents() == 2
    assert fields["llama.attention.head_count_kv"].contents() == 2
    assert "<|im_start|>" in fields["tokenizer.chat_template"].contents()
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"


def test_q_and_k_rows_are_permuted_as_llama_cpp_expects(tiny_packed, tiny_gguf):
    """ggml's rope pairs adjacent rows; undoing llama.cpp's converter permutation gives our weight back."""
    reader = gguf.GGUFReader(str(tiny_gguf.path))
    tensor = next(t for t in reader.tensors if t.name == "blk.1.attn_k.weight")
    stored = gguf_types.dequantize(np.array(tensor.data), T.Q8_0).reshape(64, 128)
    heads, rows = 2, 64
    unpermuted = stored.reshape(heads, rows // heads // 2, 2, -1).swapaxes(1, 2).reshape(rows, -1)
    q = dict(open_source(tiny_packed).modules())["model.layers.1.self_attn.k_proj"]
    ours = get_format("fp8").dequantize(q)
    assert (unpermuted - ours).abs().max() < ours.abs().max() / 127  # Q8_0 requantization of fp8


def test_mixed_experts_export_at_the_widest_type_with_a_warning(tiny_mixtral, tmp_path):
    plan = plan_from_dict({"mixed_precision": {"default": "bf16", "weight_mapping": {
        r"re:model\.layers\.0\.block_sparse_moe\.experts\.[0-3]\..*": "mxfp4",
        r"re:model\.layers\.0\.block_sparse_moe\.experts\.[4-7]\..*": "int8",
        r"re:model\.layers\.1\.block_sparse_moe\.experts\..*": {"format": "gptq_int4", "group_size": 32}}}})
    result = export_gguf(tiny_mixtral, tmp_path / "moe.gguf", plan, progress=False)
    rows = {r.name: r for r in result.rows}
    assert rows["blk.0.ffn_up_exps.weight"].ggml_type == "Q8_0" and not rows["blk.0.ffn_up_exps.weight"].exact
    assert rows["blk.1.ffn_up_exps.weight"].ggml_type == "Q4_0" and rows["blk.1.ffn_up_exps.weight"].exact
    assert any("blk.0.ffn_down_exps.weight" in w and "Q8_0 (the widest)" in w for w in result.warnings)
    reader = gguf.GGUFReader(str(tmp_path / "moe.gguf"))
    shape = next(t for t in reader.tensors if t.name == "blk.0.ffn_gate_exps.weight").shape.tolist()
    assert shape == [128, 128, 8] and reader.fields["llama.expert_count"].contents() == 8


def test_refuses_architectures_and_rope_it_cannot_express():
    with pytest.raises(MPQError, match="model_type 'qwen3'"):
        gguf_names.hparams({"model_type": "qwen3", "num_attention_heads": 4, "num_hidden_layers": 2, "hidden_size": 64})
    with pytest.raises(MPQError, match="rope type 'llama3'"):
        gguf_names.hparams({"model_type": "llama", "rope_parameters": {"rope_type": "llama3"}})


def test_packed_folder_refuses_a_second_plan(tiny_packed, tmp_path):
    with pytest.raises(MPQError, match="already carries its plan"):
        export_gguf(tiny_packed, tmp_path / "x.gguf", Path(__file__).parent / "tiny_mixed_plan.yaml")
    assert not (tmp_path / "x.gguf").exists()


def test_cli_prints_the_type_table(tiny_llama, tmp_path):
    plan = Path(__file__).parent / "tiny_mixed_plan.yaml"
    result = CliRunner().invoke(app, ["export", "gguf", str(tiny_llama), "--plan", str(plan), "-o", str(tmp_path / "t.gguf")])
    assert result.exit_code == 0, result.output
    assert "MXFP4" in result.output and "Q4_0" in result.output and "wrote" in result.output
    assert (tmp_path / "t.gguf").stat().st_size > 0


def test_pack_then_export_equals_export_under_plan(tiny_llama, tiny_packed, tiny_gguf, tmp_path):
    direct = export_gguf(tiny_llama, tmp_path / "d.gguf", Path(__file__).parent / "tiny_mixed_plan.yaml", progress=False)
    assert direct.path.read_bytes()[-4096:] == tiny_gguf.path.read_bytes()[-4096:]
    assert [(r.name, r.ggml_type) for r in direct.rows] == [(r.name, r.ggml_type) for r in tiny_gguf.rows]


def test_all_bf16_plan_exports_every_linear_as_bf16(tiny_llama, tmp_path):
    packed = pack(plan_from_dict({"mixed_precision": {"default": "bf16"}}), tmp_path / "p", tiny_llama, progress=False)
    result = export_gguf(packed, tmp_path / "bf16.gguf", progress=False)
    linear = [r for r in result.rows if "norm" not in r.name]
    assert len(linear) == 16 and {r.ggml_type for r in linear} == {"BF16"} and all(r.exact for r in linear)
