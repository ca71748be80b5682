"""Bad inputs fail before anything is half-loaded, with a message naming the tensor and the file."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_hf import save_tiny

from mpq_serving.errors import CheckpointError, MPQError, PlanError
from mpq_serving.formats import QuantSpec, get_format
from mpq_serving.loaders.hf_model import load_model
from mpq_serving.loaders.pack import pack
from mpq_serving.loaders.true_mixed import TrueMixedPrecisionLoader
from mpq_serving.plan import plan_from_dict
from mpq_serving.plan.model_weights import linear_weights

GPTQ_CONFIG = {"quant_method": "gptq", "bits": 4, "group_size": 64, "desc_act": False, "sym": True}


@pytest.fixture
def llama(tmp_path):
    return save_tiny("llama", tmp_path / "llama")


def gptq_release(base, folder, drop=(), reshape=None, config=GPTQ_CONFIG):
    """A GPTQ-layout checkpoint of `base` (every linear but lm_head), as GPTQModel lays it out."""
    tensors = {k: v for k, v in load_file(str(base / "model.safetensors")).items()}
    fmt = get_format("gptq_int4")
    for w in linear_weights(base):
        if w.name == "lm_head":
            continue
        q = fmt.quantize(tensors.pop(f"{w.name}.weight"), QuantSpec("gptq_int4", group_size=64, symmetric=True))
        tensors.update({f"{w.name}.{k}": v for k, v in q.tensors.items()})
    for name in drop:
        del tensors[name]
    if reshape:
        tensors[reshape] = torch.zeros(1, 1, dtype=torch.int32)
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "quantize_config.json").write_text(json.dumps(config))
    (folder / "config.json").write_text((base / "config.json").read_text())
    return folder


def plan_with_gptq_source(src, base=None, **extra):
    return plan_from_dict({"default": {"wq": "gptq_int4"}, "sources": {"gptq_int4": str(src)},
                           **({"base_model_path": str(base)} if base else {}), **extra})


def test_a_gptq_release_loads_without_requantizing(tmp_path, llama):
    src = gptq_release(llama, tmp_path / "gptq")
    loader = TrueMixedPrecisionLoader(plan_with_gptq_source(src, llama))
    q = loader.load_module("model.layers.1.mlp.down_proj")
    stored = load_file(str(src / "model.safetensors"))
    assert q.spec.group_size == 64  # taken from quantize_config.json
    assert torch.equal(q.tensors["qweight"], stored["model.layers.1.mlp.down_proj.qweight"])
    assert loader.stats().from_sources == len(loader.located) - 1  # lm_head (protected) comes from the base


def test_gptq_dynamic_override_excludes_a_module(tmp_path, llama):
    config = {**GPTQ_CONFIG, "dynamic": {"-:model\\.layers\\.0\\.self_attn\\.q_proj": {}}}
    src = gptq_release(llama, tmp_path / "gptq", config=config)
    with pytest.raises(CheckpointError, match=r"model.layers.0.self_attn.q_proj is not quantized in this gptq_int4 source"):
        TrueMixedPrecisionLoader(plan_with_gptq_source(src, llama))


def test_missing_source_folder_is_named(tmp_path, llama):
    plan = plan_with_gptq_source(tmp_path / "nowhere", llama)
    with pytest.raises(CheckpointError, match=r"nowhere: source checkpoint for gptq_int4"):
        TrueMixedPrecisionLoader(plan)


def test_missing_tensor_is_named_with_its_file(tmp_path, llama):
    src = gptq_release(llama, tmp_path / "gptq", drop=["model.layers.1.self_attn.v_proj.scales"])
    with pytest.raises(CheckpointError, match=r"gptq: tensor model.layers.1.self_attn.v_proj.scales is missing"):
        TrueMixedPrecisionLoader(plan_with_gptq_source(src, llama))


def test_wrong_shape_is_named_with_expected_shape(tmp_path, llama):
    src = gptq_release(llama, tmp_path / "gptq", reshape="model.layers.0.mlp.up_proj.qzeros")
    with pytest.raises(CheckpointError, match=r"model.layers.0.mlp.up_proj.qzeros has shape \(1, 1\), expected \(2, 32\)"):
        TrueMixedPrecisionLoader(plan_with_gptq_source(src, llama))


def test_group_size_contradicting_the_source_is_refused(tmp_path, llama):
    src = gptq_release(llama, tmp_path / "gptq")
    plan = plan_from_dict({"default": {"wq": "gptq_int4", "group_size": 128}, "sources": {"gptq_int4": str(src)},
                           "base_model_path": str(llama)})
    with pytest.raises(CheckpointError, match="stored with group_size=64, but the plan asks group_size=128"):
        TrueMixedPrecisionLoader(plan)


def test_corrupt_safetensors_header_is_named(tmp_path, llama):
    (llama / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match=r"model.safetensors: corrupt or unreadable safetensors"):
        load_model(plan_from_dict({"default": {"wq": "fp8"}}), llama, progress=False)


def test_plan_naming_an_absent_layer_fails_validation(tmp_path, llama):
    from mpq_serving.plan.validate import validate_plan

    plan = plan_from_dict({"default": {"wq": "fp8"}, "overrides": [{"pattern": "model.layers.7.mlp.up_proj", "wq": "int8"}]})
    problems = validate_plan(plan, llama)
    assert problems == ["overrides[0] pattern 'model.layers.7.mlp.up_proj' matches no weight of " + str(llama)]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([{"pattern": "re:.*_proj", "wq": "int8"}, {"pattern": "re:.*q_proj", "wq": "mxfp4"}],
         "overrides[1] pattern 're:.*q_proj' decides no weight: every weight it matches (e.g. "
         "model.layers.0.self_attn.q_proj) is decided first by overrides[0] 're:.*_proj'; remove it or move it up"),
        ([{"pattern": "re:lm_h.*", "wq": "int8"}],
         "overrides[0] pattern 're:lm_h.*' decides no weight: every weight it matches (e.g. lm_head) is decided "
         "first by protection (it stays bf16); remove it or move it up"),
    ],
)
def test_shadowed_rule_is_refused_by_validate_and_every_loader(llama, overrides, message):
    """A rule that changes nothing is a mistake (order, or protection): validate, pack and load_model say so alike."""
    from mpq_serving.plan.validate import validate_plan

    plan = plan_from_dict({"default": {"wq": "fp8"}, "overrides": overrides})
    assert validate_plan(plan, llama) == [message]
    with pytest.raises(PlanError) as refused:
        load_model(plan, llama, progress=False)
    assert str(refused.value) == message


def test_no_source_and_no_base_is_refused(tmp_path, llama):
    src = gptq_release(llama, tmp_path / "gptq")
    plan = plan_from_dict({"default": {"wq": "gptq_int4"}, "overrides": [{"pattern": "q_proj", "wq": "fp8"}],
                           "sources": {"gptq_int4": str(src)}})
    with pytest.raises(CheckpointError, match=r"there is no (bf16|fp8)_path source and no base model"):
        TrueMixedPrecisionLoader(plan)


def test_failed_pack_leaves_nothing_behind(tmp_path, llama):
    (llama / "config.json").unlink()
    with pytest.raises((MPQError, FileNotFoundError)):
        pack(plan_from_dict({"default": {"wq": "fp8"}}), tmp_path / "out", llama, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["llama"]


def test_sharded_checkpoint_with_index_loads(tmp_path, llama):
    tensors = load_file(str(llama / "model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    (llama / "model.safetensors").unlink()
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, str(llama / file))
    index = {"weight_map": {n: f for f, part in shards.items() for n in part}}
    (llama / "model.safetensors.index.json").write_text(json.dumps(index))
    model = load_model(plan_from_dict({"default": {"wq": "int8"}}), llama, progress=False)
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 96)
    (llama / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="names shard model-00002-of-00002.safetensors, which is missing"):
        load_model(plan_from_dict({"default": {"wq": "int8"}}), llama, progress=False)


def test_a_base_tensor_with_the_wrong_shape_is_refused_before_packing(tmp_path, llama):
    tensors = load_file(str(llama / "model.safetensors"))
    tensors["model.layers.1.self_attn.o_proj.weight"] = tensors["model.layers.1.self_attn.o_proj.weight"][:, :64].contiguous()
    save_file(tensors, str(llama / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model.layers.1.self_attn.o_proj.weight has shape \(128, 64\), "
                                              r"but config.json makes it \(128, 128\)"):
        pack(plan_from_dict({"default": {"wq": "int8"}}), tmp_path / "out", llama, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_base_tensor_missing_is_refused_naming_it(tmp_path, llama):
    tensors = load_file(str(llama / "model.safetensors"))
    del tensors["model.layers.0.mlp.up_proj.weight"]
    save_file(tensors, str(llama / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing: model.layers.0.mlp.up_proj.weight"):
        TrueMixedPrecisionLoader(plan_from_dict({"default": {"wq": "int8"}}), llama)
    from mpq_serving.plan.validate import validate_plan

    assert any("model.layers.0.mlp.up_proj.weight" in p for p in validate_plan(plan_from_dict({"default": {"wq": "int8"}}), llama))


def _count_reads(monkeypatch):
    from mpq_serving.loaders.checkpoint import Checkpoint

    reads = []
    original = Checkpoint.read

    def read(self, name):
        reads.append(name)
        return original(self, name)

    monkeypatch.setattr(Checkpoint, "read", read)
    return reads


@pytest.mark.parametrize("packed", [False, True])
def test_a_missing_norm_is_refused_before_a_single_module_is_read(tmp_path, llama, monkeypatch, packed):
    """load_model checks, from the config and the headers, that every parameter the model needs is stored."""
    plan = plan_from_dict({"default": {"wq": "gptq_int4", "group_size": 64}, "base_model_path": str(llama)})
    if packed:
        folder = pack(plan, tmp_path / "packed", progress=False)
        target = folder / "model.safetensors"
    else:
        folder = tmp_path / "base"
        folder.mkdir()
        for f in llama.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        target = folder / "model.safetensors"
        plan = plan_from_dict({"default": {"wq": "gptq_int4", "group_size": 64}, "base_model_path": str(folder)})
    tensors = load_file(str(target))
    del tensors["model.layers.1.post_attention_layernorm.weight"]
    save_file(tensors, str(target))
    reads = _count_reads(monkeypatch)
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: model\.layers\.1\.post_attention_layernorm"):
        load_model(folder if packed else plan, progress=False)
    assert reads == []


def test_a_norm_of_the_wrong_shape_is_refused_before_a_single_module_is_read(tmp_path, llama, monkeypatch):
    folder = pack(plan_from_dict({"default": {"wq": "int8"}, "base_model_path": str(llama)}), tmp_path / "p",
                  progress=False)
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["model.norm.weight"] = torch.ones(7)
    save_file(tensors, str(folder / "model.safetensors"))
    reads = _count_reads(monkeypatch)
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight: shape \(7,\), the model expects"):
        load_model(folder, progress=False)
    assert reads == []


def test_a_packed_module_tensor_missing_is_refused_before_a_single_module_is_read(tmp_path, llama, monkeypatch):
    folder = pack(plan_from_dict({"default": {"wq": "int8"}, "base_model_path": str(llama)}), tmp_path / "p",
                  progress=False)
    tensors = load_file(str(folder / "model.safetensors"))
    scale = next(n for n in tensors if n.startswith("model.layers.1.") and n.endswith("scale"))
    del tensors[scale]
    save_file(tensors, str(folder / "model.safetensors"))
    reads = _count_reads(monkeypatch)
    with pytest.raises(CheckpointError, match=f"tensor {scale} is missing"):
        load_model(folder, progress=False)
    assert reads == []
