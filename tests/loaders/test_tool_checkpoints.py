"""Checkpoints written by the quantization tools themselves load bit for bit.

compressed-tensors 0.20 writes the checkpoints here through its own API, the way llm-compressor drives
it: `apply_quantization_config`, scales from each weight's min / max through their `calculate_qparams`
(llm-compressor's min-max observer; llm-compressor itself is not installed), `ModelCompressor`
`compress_model`, `save_pretrained`, `update_config`; so config.json carries their real
`quantization_config` (config_groups, format, ignore: lm_head).  For each, through
TrueMixedPrecisionLoader:

* every tensor the tool wrote for a module is read (the static `input_scale` too: a declared static
  activation scheme is run as declared), and the tensors returned are byte-identical to the file's;
* our float32 dequantization equals theirs: transformers + compressed-tensors loading the folder with
  `dequantize=True` (their `decompress_model`, their compressors).  For a float32 model that is exact.
  For a bfloat16 model their decompression multiplies in the scale's dtype: code x scale is exact in
  float32 (at most 8 x 8 significant bits, which ours keeps), and torch rounds that exact product once to
  bfloat16, so theirs == ours rounded to bfloat16 (the difference documented in formats/fp8.py); for the
  MX formats (power-of-two scales) even the bfloat16 value is exact, and equality is asserted in float32.

Releases no installed tool writes (DeepSeek-V3 / Qwen3 FP8-block, AutoFP8, AutoAWQ, GPTQModel gptq_v2
in config.json) are built by hand from our formats with the tool's own config spelling; the test is
that the spec comes from the config, and the dequantization equals an outside reader where one exists
(transformers' FineGrainedFP8 and compressed-tensors' FP8BlockDequantizer, compressed-tensors'
AutoAWQConverter) or a GPTQModel-style unpacking written here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from compressed_tensors.compressors import BaseCompressor, ModelCompressor
from compressed_tensors.entrypoints.convert.converters.autoawq import AutoAWQConverter
from compressed_tensors.entrypoints.convert.converters.fp8block_dequantizer import (
    FP8BlockDequantizer,
)
from compressed_tensors.quantization import (
    QuantizationArgs,
    QuantizationConfig,
    QuantizationScheme,
    QuantizationStrategy,
    apply_quantization_config,
    preset_name_to_scheme,
)
from compressed_tensors.quantization.utils import (
    calculate_qparams,
    generate_gparam,
    is_module_quantized,
    maybe_pad_tensor_for_block_quant,
)
from compressed_tensors.utils.match import match_name
from safetensors.torch import load_file, save_file
from autoawq_gemv import autoawq_gemv_from_linear
from tiny_hf import save_tiny
from transformers import (
    AutoModelForCausalLM,
    CompressedTensorsConfig,
    FineGrainedFP8Config,
)

from mpq_serving.errors import CheckpointError
from mpq_serving.formats import QuantSpec, get_format
from mpq_serving.loaders.source_config import module_spec
from mpq_serving.loaders.true_mixed import TrueMixedPrecisionLoader
from mpq_serving.plan import plan_from_dict
from mpq_serving.plan.model_weights import linear_weights

BF16, F32 = torch.bfloat16, torch.float32


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return save_tiny("llama", tmp_path_factory.mktemp("tool") / "base")


# --- compressed-tensors, driven the llm-compressor way ----------------------------------------------


def _min_max(w: torch.Tensor, args: QuantizationArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """What llm-compressor's min-max observer reduces a weight to, per the strategy's scale shape."""
    s = args.strategy
    if s == QuantizationStrategy.TENSOR:
        return w.amin(), w.amax()
    if s == QuantizationStrategy.CHANNEL:
        return w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    if s in (QuantizationStrategy.GROUP, QuantizationStrategy.TENSOR_GROUP):
        g = w.reshape(w.shape[0], -1, args.group_size)
        return g.amin(-1), g.amax(-1)
    if s == QuantizationStrategy.BLOCK:
        r, c = args.block_structure
        p = maybe_pad_tensor_for_block_quant(w, (r, c))
        blocks = p.reshape(p.shape[0] // r, r, p.shape[1] // c, c)
        return blocks.amin(dim=(1, 3)), blocks.amax(dim=(1, 3))
    raise AssertionError(f"no observer for strategy {s}")


def _calibrate(module: torch.nn.Module) -> None:
    """Fill the scales apply_quantization_config allocated, with compressed-tensors' calculate_qparams."""
    args, w = module.quantization_scheme.weights, module.weight.data
    global_scale = None
    if args.strategy == QuantizationStrategy.TENSOR_GROUP:  # NVFP4
        global_scale = generate_gparam(w.amin(), w.amax())
        module.weight_global_scale.data.copy_(global_scale)
    scale, zero_point = calculate_qparams(*_min_max(w, args), args, global_scale=global_scale)
    assert module.weight_scale.shape == scale.shape
    module.weight_scale.data.copy_(scale)
    if hasattr(module, "weight_zero_point"):
        module.weight_zero_point.data.copy_(zero_point)
    if hasattr(module, "input_scale"):  # a static activation scale: what calibration data would give
        module.input_scale.data.fill_(0.03125)


def write_ct(base: Path, out: Path, groups: dict[str, QuantizationScheme], dtype=BF16, **save) -> Path:
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    apply_quantization_config(model, QuantizationConfig(config_groups=groups, ignore=["lm_head"]), show_progress=False)
    for module in model.modules():
        if is_module_quantized(module):
            _calibrate(module)
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(out, **save)
    compressor.update_config(out)
    return out


def preset(name: str, targets=("Linear",)) -> QuantizationScheme:
    return preset_name_to_scheme(name, list(targets))


def weights_only(**args) -> QuantizationScheme:
    return QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**args))


# --- what is in the files, and what the tools make of it --------------------------------------------


def file_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every shard, read with safetensors itself (not our Checkpoint)."""
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def assert_same_bytes(ours: torch.Tensor, stored: torch.Tensor, name: str) -> None:
    assert ours.dtype == stored.dtype, name
    assert tuple(ours.shape) == tuple(stored.shape), name
    assert torch.equal(ours.reshape(-1).view(torch.uint8), stored.reshape(-1).view(torch.uint8)), name


def assert_dequant_equal(ours: torch.Tensor, theirs: torch.Tensor, name: str, exact: bool) -> None:
    """Exact in float32, or (bf16 / fp16 output) theirs is ours rounded once to their dtype."""
    assert ours.dtype == F32 and ours.shape == theirs.shape, name
    if exact or theirs.dtype == F32:
        assert torch.equal(ours, theirs.to(F32)), name
    else:
        assert torch.equal(ours.to(theirs.dtype), theirs), name


def ct_dequantized(folder: Path) -> dict[str, torch.Tensor]:
    """The weights transformers + compressed-tensors decompress the folder to."""
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=CompressedTensorsConfig(dequantize=True))
    return {k: v.detach() for k, v in model.state_dict().items()}


def ct_decompressed_per_module(folder: Path) -> dict[str, torch.Tensor]:
    """compressed-tensors' own per-module decompression: the module's config group (their `match_name`), its
    format's compressor.  (transformers' `dequantize=True` gives every dense module the first group's scheme.)"""
    qc = QuantizationConfig.model_validate(json.loads((folder / "config.json").read_text())["quantization_config"])
    stored = file_tensors(folder)
    out = {}
    for module in sorted({n.rpartition(".")[0] for n in stored}):
        scheme = next((g for g in qc.config_groups.values() if any(match_name(module, t) for t in g.targets)), None)
        if scheme is None or any(match_name(module, i) for i in qc.ignore):
            continue
        local = {n.rpartition(".")[2]: t for n, t in stored.items() if n.rpartition(".")[0] == module}
        compressor = BaseCompressor.get_value_from_registry(scheme.format)
        out[f"{module}.weight"] = compressor.decompress(local, scheme)["weight"]
    return out


def load_and_compare(loader: TrueMixedPrecisionLoader, folder: Path, theirs: dict[str, torch.Tensor],
                     expect, exact: bool = False) -> dict[str, QuantSpec]:
    """Every linear but lm_head comes from `folder`, byte-identical, dequantizing to `theirs`; the specs."""
    stored = file_tensors(folder)
    specs = {}
    for w in loader.weights:
        loc = loader.located[w.name]
        if w.name == "lm_head":  # ignored by the tool, protected by the plan: the base model's
            assert loc.quantize_from_base and loc.spec.format == "bf16"
            continue
        assert not loc.quantize_from_base and loc.checkpoint.path == folder, w.name
        for field, value in expect(w.name).items():
            assert getattr(loc.spec, field) == value, (w.name, field, loc.spec)
        written = {n for n in stored if n.rpartition(".")[0] == w.name}
        assert set(loc.tensors.values()) == written, w.name
        q = loader.load_module(w.name)
        for suffix, name in loc.tensors.items():
            assert_same_bytes(q.tensors[suffix], stored[name], name)
        assert_dequant_equal(get_format(q.format).dequantize(q), theirs[f"{w.name}.weight"], w.name, exact)
        specs[w.name] = loc.spec
    return specs


def single_source_plan(fmt: str, folder: Path, base: Path):
    return plan_from_dict({"default": {"wq": fmt}, "sources": {fmt: str(folder)}, "base_model_path": str(base)})


# --- compressed-tensors schemes -------------------------------------------------------------------------

CT_CASES = [
    # (scheme, model dtype, our format, the format compressed-tensors infers, spec fields read, exact in bf16)
    pytest.param(lambda: preset("FP8"), BF16, "fp8", "float-quantized",
                 {"granularity": "tensor", "activation": "fp8_static"}, False, id="FP8-tensor-static-act"),
    pytest.param(lambda: preset("FP8_DYNAMIC"), BF16, "fp8", "float-quantized",
                 {"granularity": "channel", "activation": "fp8"}, False, id="FP8_DYNAMIC"),
    pytest.param(lambda: preset("FP8_DYNAMIC"), F32, "fp8", "float-quantized",
                 {"granularity": "channel", "activation": "fp8"}, True, id="FP8_DYNAMIC-fp32"),
    pytest.param(lambda: preset("FP8_BLOCK"), BF16, "fp8", "float-quantized",
                 {"granularity": "block", "group_size": 128, "activation": "fp8"}, False, id="FP8_BLOCK"),
    pytest.param(lambda: weights_only(num_bits=8, type="float", strategy="block", block_structure=[32, 32]), F32,
                 "fp8", "naive-quantized", {"granularity": "block", "group_size": 32, "activation": None}, True,
                 id="FP8-block32-weight-only-fp32"),
    pytest.param(lambda: preset("W8A8"), BF16, "int8", "int-quantized",
                 {"group_size": -1, "activation": "int8"}, False, id="W8A8-int8"),
    pytest.param(lambda: preset("W8A16"), BF16, "ct_int8", "pack-quantized",
                 {"group_size": 128, "symmetric": True}, False, id="W8A16-int8-group128"),
    pytest.param(lambda: weights_only(num_bits=8, strategy="group", group_size=32, symmetric=False), F32, "ct_int8",
                 "pack-quantized", {"group_size": 32, "symmetric": False}, True, id="W8A16-g32-asym-fp32"),
    pytest.param(lambda: weights_only(num_bits=8, strategy="channel"), BF16, "ct_int8", "pack-quantized",
                 {"group_size": -1, "symmetric": True}, False, id="W8A16-channel"),
    pytest.param(lambda: preset("W4A16"), BF16, "ct_int4", "pack-quantized",
                 {"group_size": 128, "symmetric": True}, False, id="W4A16"),
    pytest.param(lambda: preset("W4A16_ASYM"), BF16, "ct_int4", "pack-quantized",
                 {"group_size": 128, "symmetric": False}, False, id="W4A16_ASYM"),
    pytest.param(lambda: weights_only(num_bits=4, strategy="group", group_size=32, symmetric=False), F32,
                 "ct_int4", "pack-quantized", {"group_size": 32, "symmetric": False}, True, id="W4A16-g32-asym-fp32"),
    pytest.param(lambda: weights_only(num_bits=4, strategy="channel"), BF16, "ct_int4", "pack-quantized",
                 {"group_size": -1, "symmetric": True}, False, id="W4A16-channel"),
    pytest.param(lambda: preset("NVFP4A16"), BF16, "nvfp4", "nvfp4-pack-quantized", {"group_size": 16}, False,
                 id="NVFP4A16"),
    pytest.param(lambda: preset("MXFP4"), BF16, "mxfp4", "mxfp4-pack-quantized",
                 {"group_size": 32, "activation": "mxfp4"}, True, id="MXFP4"),
    pytest.param(lambda: preset("MXFP4A16"), BF16, "mxfp4", "mxfp4-pack-quantized",
                 {"group_size": 32, "activation": None}, True, id="MXFP4A16"),
    pytest.param(lambda: preset("MXFP8"), BF16, "mxfp8", "mxfp8-quantized",
                 {"group_size": 32, "activation": "mxfp8"}, True, id="MXFP8"),
    pytest.param(lambda: preset("MXFP8A16"), BF16, "mxfp8", "mxfp8-quantized",
                 {"group_size": 32, "activation": None}, True, id="MXFP8A16"),
]


@pytest.mark.parametrize("scheme, dtype, fmt, ct_format, expect, exact", CT_CASES)
def test_compressed_tensors_checkpoint_loads_bit_for_bit(tmp_path, base, scheme, dtype, fmt, ct_format, expect, exact):
    folder = write_ct(base, tmp_path / "ct", {"group_0": scheme()}, dtype)
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["ignore"] == ["lm_head"]
    assert qc["format"] == qc["config_groups"]["group_0"]["format"] == ct_format

    loader = TrueMixedPrecisionLoader(single_source_plan(fmt, folder, base))
    specs = load_and_compare(loader, folder, ct_dequantized(folder), lambda _: {"format": fmt, **expect}, exact)
    assert len(specs) == len(loader.weights) - 1


def test_sharded_compressed_tensors_checkpoint(tmp_path, base):
    folder = write_ct(base, tmp_path / "ct", {"group_0": preset("W4A16_ASYM")}, BF16, max_shard_size="24KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert not (folder / "model.safetensors").exists() and len(set(index.values())) >= 3
    loader = TrueMixedPrecisionLoader(single_source_plan("ct_int4", folder, base))
    load_and_compare(loader, folder, ct_dequantized(folder), lambda _: {"group_size": 128, "symmetric": False})


def test_mixed_precision_compressed_tensors_checkpoint(tmp_path, base):
    """Two config_groups with regex targets (format `mixed-precision`), one folder serving two formats."""
    groups = {
        "attention": preset("FP8_DYNAMIC", [r"re:.*self_attn\.[qkvo]_proj$"]),
        "mlp": QuantizationScheme(targets=[r"re:.*mlp\.(gate|up|down)_proj$"],
                                  weights=QuantizationArgs(num_bits=4, group_size=64, symmetric=False)),
    }
    folder = write_ct(base, tmp_path / "ct", groups, F32)
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "mixed-precision"
    plan = plan_from_dict({"default": {"wq": "ct_int4"}, "overrides": [{"pattern": "self_attn.*", "wq": "fp8"}],
                           "sources": {"ct_int4": str(folder), "fp8": str(folder)}, "base_model_path": str(base)})

    def expect(name):
        if ".self_attn." in name:
            return {"format": "fp8", "granularity": "channel", "activation": "fp8"}
        return {"format": "ct_int4", "group_size": 64, "symmetric": False}

    theirs = ct_decompressed_per_module(folder)
    assert len(theirs) == 14
    load_and_compare(TrueMixedPrecisionLoader(plan), folder, theirs, expect, exact=True)


UNREADABLE = [
    pytest.param(lambda: preset("NVFP4"), "nvfp4", r"input_activations \(4-bit float, tensor_group", id="NVFP4-W4A4"),
    pytest.param(lambda: preset("MXFP6A16"), "mxfp4", "is not a scheme mpq-serving reads", id="MXFP6A16"),
    pytest.param(lambda: weights_only(num_bits=8, type="float", strategy="block", block_structure=[64, 128]),
                 "fp8", r"block_structure \[64, 128\]; only square", id="FP8-block-64x128"),
    # Declared activation schemes we would otherwise have run weight-only: refused, never dropped.
    pytest.param(lambda: QuantizationScheme(
        targets=["Linear"], weights=QuantizationArgs(num_bits=8, strategy="channel"),
        input_activations=QuantizationArgs(num_bits=8, strategy="tensor", dynamic=False)),
        "int8", r"input_activations \(8-bit int, tensor, dynamic=False\): this activation scheme", id="W8A8-static-int8"),
    pytest.param(lambda: QuantizationScheme(
        targets=["Linear"], weights=QuantizationArgs(num_bits=4, group_size=128),
        input_activations=QuantizationArgs(num_bits=8, strategy="token", dynamic=True)),
        "ct_int4", "this activation scheme is not one mpq-serving runs", id="W4A8-int"),
]


@pytest.mark.parametrize("scheme, fmt, message", UNREADABLE)
def test_compressed_tensors_schemes_we_do_not_read_are_refused_up_front(tmp_path, base, scheme, fmt, message):
    folder = write_ct(base, tmp_path / "ct", {"group_0": scheme()}, BF16)
    with pytest.raises(CheckpointError, match=message):
        TrueMixedPrecisionLoader(single_source_plan(fmt, folder, base))


# --- releases built by hand in the tools' own spelling ---------------------------------------------------


def quantized_linears(base: Path):
    return [w for w in linear_weights(base) if w.name != "lm_head"]


def hand_release(base: Path, folder: Path, quantization_config: dict, quantize) -> Path:
    """`base`, every linear but lm_head replaced by `quantize(name, weight)`'s tensors; the config in config.json."""
    tensors = load_file(str(base / "model.safetensors"))
    for w in quantized_linears(base):
        q = quantize(w.name, tensors.pop(f"{w.name}.weight"))
        tensors.update({f"{w.name}.{k}": v for k, v in q.tensors.items()})
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    config = json.loads((base / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "quantization_config": quantization_config}))
    return folder


@pytest.mark.parametrize("block", [128, 32])
def test_deepseek_qwen_fp8_block_release(tmp_path, base, block):
    """`quant_method: fp8` + `weight_block_size`, tensors `weight` + `weight_scale_inv`: DeepSeek-V3 / Qwen3-FP8."""
    config = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3", "weight_block_size": [block, block]}
    fp8 = get_format("fp8")
    folder = hand_release(base, tmp_path / "fp8", config,
                          lambda _, w: fp8.quantize(w, QuantSpec("fp8", granularity="block", group_size=block)))
    stored = file_tensors(folder)
    assert "model.layers.0.mlp.down_proj.weight_scale_inv" in stored

    # Two outside readers: transformers' FineGrainedFP8 dequantize, compressed-tensors' FP8BlockDequantizer.
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=F32,
                                              quantization_config=FineGrainedFP8Config(dequantize=True)).state_dict()
    ct = FP8BlockDequantizer.from_pretrained(folder, weight_block_size=(block, block), dtype=F32).process(dict(stored))
    assert all(torch.equal(hf[f"{w.name}.weight"], ct[f"{w.name}.weight"]) for w in quantized_linears(base))

    loader = TrueMixedPrecisionLoader(single_source_plan("fp8", folder, base))
    load_and_compare(loader, folder, hf, lambda _: {"granularity": "block", "group_size": block, "activation": "fp8"},
                     exact=True)


def test_autofp8_release_with_0d_scales(tmp_path, base):
    """AutoFP8 (`quant_method: fp8`, `activation_scheme: static`) stores 0-d `weight_scale` / `input_scale`."""
    fp8 = get_format("fp8")

    def quantize(_, w):
        q = fp8.quantize(w, QuantSpec("fp8", granularity="tensor"))
        q.tensors = {"weight": q.tensors["weight"], "weight_scale": q.tensors["weight_scale"].reshape(()),
                     "input_scale": torch.tensor(0.02)}
        return q

    folder = hand_release(base, tmp_path / "autofp8", {"quant_method": "fp8", "activation_scheme": "static"}, quantize)
    stored = file_tensors(folder)
    theirs = {k: stored[k].to(F32) * stored[f"{k}_scale"] for k in stored if f"{k}_scale" in stored}
    loader = TrueMixedPrecisionLoader(single_source_plan("fp8", folder, base))
    for w in quantized_linears(base):
        q = loader.load_module(w.name)
        assert q.spec.granularity == "tensor" and q.spec.activation == "fp8_static"
        assert torch.equal(q.tensors["weight_scale"], stored[f"{w.name}.weight_scale"].reshape(1))
        assert torch.equal(q.tensors["input_scale"], stored[f"{w.name}.input_scale"].reshape(1))
        assert torch.equal(fp8.dequantize(q), theirs[f"{w.name}.weight"])


@pytest.mark.parametrize("where", ["config.json", "hf_quant_config.json"])
def test_modelopt_fp8_release(tmp_path, base, where):
    """NVIDIA ModelOpt FP8 (quant_algo FP8): per-tensor fp8 weight, weight_scale and a static input_scale, the
    config in config.json (`quant_method: modelopt`) or, in older exports, only in hf_quant_config.json;
    `exclude_modules` keeps layers in bf16 (wildcards as ModelOpt writes them)."""
    from mpq_serving.loaders.hf_model import load_model
    from mpq_serving.loaders.tool_folder import tool_folder_plan

    fp8 = get_format("fp8")
    excluded = "model.layers.0.self_attn.o_proj"

    def quantize(name, w):
        if name == excluded:
            return type("Dense", (), {"tensors": {"weight": w}})()
        q = fp8.quantize(w, QuantSpec("fp8", granularity="tensor"))
        q.tensors = {**q.tensors, "weight_scale": q.tensors["weight_scale"].reshape(()), "input_scale": torch.tensor(0.02)}
        return q

    quantization = {"quant_algo": "FP8", "kv_cache_quant_algo": None, "exclude_modules": ["lm_head", "*.0.self_attn.o_proj"]}
    folder = hand_release(base, tmp_path / "modelopt", {"quant_method": "modelopt", **quantization}, quantize)
    if where == "hf_quant_config.json":
        config = json.loads((folder / "config.json").read_text())
        del config["quantization_config"]
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "hf_quant_config.json").write_text(json.dumps({"producer": {"name": "modelopt"},
                                                                 "quantization": quantization}))
    plan = tool_folder_plan(folder)
    loader = TrueMixedPrecisionLoader(plan)
    assert loader.located[excluded].spec.format in ("bf16", "fp32")
    q = loader.load_module("model.layers.0.mlp.down_proj")
    assert (q.spec.format, q.spec.granularity, q.spec.activation) == ("fp8", "tensor", "fp8_static")
    assert float(q.tensors["input_scale"]) == pytest.approx(0.02)
    model = load_model(folder, dtype=F32, progress=False)
    assert model(torch.tensor([[1, 2, 3]])).logits.isfinite().all()


def test_modelopt_nvfp4_is_refused_as_w4a4(tmp_path, base):
    with pytest.raises(CheckpointError, match="ModelOpt quant_algo NVFP4 is W4A4"):
        module_spec({"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16}, "model.layers.0.mlp.up_proj",
                    "release")


@pytest.mark.parametrize(
    "config",
    [
        {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True, "version": "gemm",
         "modules_to_not_convert": None},
        {"quant_method": "awq", "w_bit": 4, "q_group_size": 32, "zero_point": False, "version": "GEMM"},
    ],
    ids=["transformers-keys", "autoawq-keys-symmetric"],
)
def test_autoawq_release(tmp_path, base, config):
    group, zero_point = config.get("group_size", config.get("q_group_size")), config["zero_point"]
    awq = get_format("awq_int4")
    spec = QuantSpec("awq_int4", group_size=group, symmetric=not zero_point)
    folder = hand_release(base, tmp_path / "awq", config, lambda _, w: awq.quantize(w, spec))

    # compressed-tensors' own AutoAWQ reader: convert to pack-quantized, then its decompressor.
    converter = AutoAWQConverter(bits=4, group_size=group, zero_point=zero_point)
    scheme = converter.update_config(None).config_groups["config_group_0"]
    compressor = BaseCompressor.get_value_from_registry(scheme.format)
    converted = converter.process(file_tensors(folder))
    theirs, theirs_f32 = {}, {}
    for w in quantized_linears(base):
        local = {k.rpartition(".")[2]: v for k, v in converted.items() if k.rpartition(".")[0] == w.name}
        theirs[f"{w.name}.weight"] = compressor.decompress(local, scheme)["weight"]  # float16, like the scales
        local["weight_scale"] = local["weight_scale"].to(F32)
        theirs_f32[f"{w.name}.weight"] = compressor.decompress(local, scheme)["weight"]

    loader = TrueMixedPrecisionLoader(single_source_plan("awq_int4", folder, base))
    expect = lambda _: {"group_size": group, "symmetric": not zero_point}
    load_and_compare(loader, folder, theirs, expect)
    load_and_compare(loader, folder, theirs_f32, expect, exact=True)


def gptqmodel_dequantize(t: dict[str, torch.Tensor], v2: bool) -> torch.Tensor:
    """GPTQModel's `dequantize_weight`, written out: nibbles by shift-and-mask, v1 zeros stored minus one."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    codes = (t["qweight"].unsqueeze(1) >> shifts.view(1, 8, 1)) & 15  # [in/8, 8, out]
    codes = codes.reshape(-1, t["qweight"].shape[1])  # [in, out]
    zeros = ((t["qzeros"].unsqueeze(2) >> shifts.view(1, 1, 8)) & 15).reshape(t["qzeros"].shape[0], -1)
    zeros = zeros if v2 else (zeros + 1) & 15
    g = t["g_idx"].long()
    return ((codes - zeros[g]).to(F32) * t["scales"][g].to(F32)).t()


@pytest.mark.parametrize(
    "format_keys",
    [{"format": "gptq_v2", "checkpoint_format": "gptq_v2"}, {"checkpoint_format": "gptq_v2"}, {"format": "gptq_v2"}],
    ids=["gptqmodel-format+checkpoint_format", "legacy-checkpoint_format", "format-only"],
)
def test_gptqmodel_v2_release_config_in_config_json(tmp_path, base, format_keys):
    """GPTQModel's `quantization_config` inside config.json (no quantize_config.json), incl. a `dynamic` override."""
    config = {"bits": 4, "group_size": 32, "desc_act": True, "sym": False, "lm_head": False, "quant_method": "gptq",
              **format_keys, "pack_dtype": "int32", "dynamic": {r"+:.*\.down_proj": {"group_size": 64, "sym": True}},
              "meta": {"quantizer": ["gptqmodel:5.0.0"], "damp_percent": 0.05}}
    gptq = get_format("gptq_int4")

    def spec_of(name):
        if name.endswith("down_proj"):
            return QuantSpec("gptq_int4", group_size=64, symmetric=True, act_order=True, checkpoint_format="gptq_v2")
        return QuantSpec("gptq_int4", group_size=32, symmetric=False, act_order=True, checkpoint_format="gptq_v2")

    folder = hand_release(base, tmp_path / "gptq", config, lambda name, w: gptq.quantize(w, spec_of(name)))
    assert not (folder / "quantize_config.json").exists()
    stored = file_tensors(folder)
    theirs = {}
    for w in quantized_linears(base):
        t = {s: stored[f"{w.name}.{s}"] for s in ("qweight", "qzeros", "scales", "g_idx")}
        theirs[f"{w.name}.weight"] = gptqmodel_dequantize(t, v2=True)
        assert not torch.equal(theirs[f"{w.name}.weight"], gptqmodel_dequantize(t, v2=False))  # the field matters

    def expect(name):
        s = spec_of(name)
        return {"group_size": s.group_size, "symmetric": s.symmetric, "act_order": True, "checkpoint_format": "gptq_v2"}

    loader = TrueMixedPrecisionLoader(single_source_plan("gptq_int4", folder, base))
    load_and_compare(loader, folder, theirs, expect, exact=True)


# --- config spellings no 0.20 writer produces, read from the config alone -------------------------------


def _ct_config(scheme: QuantizationScheme, **edit_weights) -> dict:
    """A compressed-tensors quantization_config as update_config writes it, with its group's weights edited."""
    qc = QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"]).model_dump()
    qc["config_groups"]["group_0"]["weights"].update(edit_weights)
    return {"quant_method": "compressed-tensors", **qc}


@pytest.mark.parametrize(
    "config, outcome",
    [
        # llm-compressor's GPTQ actorder=group (gone in 0.20) writes weight_g_idx, which ct_int4 cannot apply.
        (lambda: _ct_config(preset("W4A16"), actorder="group"), "uses actorder='group'"),
        # MX told apart by its E8M0 (uint8) scales when no `format` names it, as compressed-tensors does.
        (lambda: _ct_config(preset("MXFP8")), QuantSpec("mxfp8", group_size=32, activation="mxfp8")),
        # fp8 with per-group float scales is no layout we read (it used to be taken for per-tensor).
        (lambda: _ct_config(weights_only(num_bits=8, type="float", strategy="group", group_size=128)),
         "is not a scheme mpq-serving reads"),
        # AutoGPTQ's Marlin repack is a different layout.
        (lambda: {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True, "is_marlin_format": True},
         "checkpoint_format 'marlin' is not supported"),
    ],
    ids=["ct-actorder-group", "ct-mxfp8-without-format", "ct-fp8-group128", "gptq-marlin"],
)
def test_module_spec_from_older_spellings(config, outcome):
    qc = config()
    if qc["quant_method"] == "compressed-tensors":
        qc["config_groups"]["group_0"]["format"] = None
        qc["format"] = None
    if isinstance(outcome, QuantSpec):
        assert module_spec(qc, "model.layers.0.mlp.up_proj", "src") == outcome
    else:
        with pytest.raises(CheckpointError, match=outcome):
            module_spec(qc, "model.layers.0.mlp.up_proj", "src")


def test_static_fp8_release_runs_its_input_scale_through_pack_and_load(tmp_path, base):
    """llm-compressor's FP8 preset (static per-tensor input scale) merged with bf16 layers: the packed checkpoint
    keeps each module's input_scale and declares fp8_static, and the loaded layer quantizes its input with it."""
    from mpq_serving.loaders.hf_model import load_model
    from mpq_serving.loaders.pack import pack
    from mpq_serving.packed_config import PackedConfig

    folder = write_ct(base, tmp_path / "ct", {"group_0": preset("FP8")}, F32)
    plan = plan_from_dict({"default": {"wq": "bf16"}, "overrides": [{"pattern": "mlp.*", "wq": "fp8"}],
                           "sources": {"fp8": str(folder)}, "base_model_path": str(base)})
    packed = pack(plan, tmp_path / "packed", progress=False)
    config = PackedConfig.read(json.loads((packed / "config.json").read_text())["quantization_config"], "packed")
    name = "model.layers.0.mlp.down_proj"
    assert config.modules[name].spec().activation == "fp8_static"
    stored = file_tensors(packed)
    assert torch.equal(stored[f"{name}.input_scale"], file_tensors(folder)[f"{name}.input_scale"])

    model = load_model(packed, dtype=F32, progress=False)
    layer = model.get_submodule(name)
    x = torch.randn(3, layer.in_features) * 8  # some values beyond 448 × input_scale: they saturate
    q = TrueMixedPrecisionLoader(plan).load_module(name)
    fp8 = get_format("fp8")
    assert torch.equal(layer(x), fp8.matmul(x, q))
    weight_only = x @ fp8.dequantize(q).t()
    assert not torch.allclose(layer(x), weight_only, rtol=1e-2)


def test_gptqmodel_int4_int8_mix_release_packs_and_loads(tmp_path, base):
    """A GPTQModel release whose `dynamic` gives down_proj 8 bits (the "Int4-Int8Mix" style) and up_proj 3 bits:
    each module read in its own width, byte for byte, packed, and run by the HF path."""
    from mpq_serving.loaders.hf_model import load_model
    from mpq_serving.loaders.pack import pack

    config = {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": False, "sym": False,
              "format": "gptq", "dynamic": {r"+:.*\.down_proj": {"bits": 8, "group_size": 64},
                                            r"+:.*\.up_proj": {"bits": 3}}}
    written = {}

    def quantize(name, w):
        fmt = {"down_proj": "gptq_int8", "up_proj": "gptq_int3"}.get(name.rsplit(".", 1)[-1], "gptq_int4")
        written[name] = get_format(fmt).quantize(
            w, QuantSpec(fmt, group_size=64 if fmt == "gptq_int8" else 32, symmetric=False))
        return written[name]

    folder = hand_release(base, tmp_path / "mix", config, quantize)
    plan = plan_from_dict({"default": {"wq": "gptq_int4"},
                           "overrides": [{"pattern": "*.down_proj", "wq": "gptq_int8"},
                                         {"pattern": "*.up_proj", "wq": "gptq_int3", "group_size": 32}],
                           "sources": {"gptq_int4": str(folder), "gptq_int8": str(folder), "gptq_int3": str(folder)},
                           "base_model_path": str(base)})
    loader = TrueMixedPrecisionLoader(plan)
    for name, q in written.items():
        got = loader.load_module(name)
        assert got.spec.format == q.spec.format and all(torch.equal(got.tensors[k], q.tensors[k]) for k in q.tensors)

    packed = pack(plan, tmp_path / "packed", progress=False)
    model = load_model(packed, dtype=F32, progress=False)
    down = model.get_submodule("model.layers.0.mlp.down_proj")
    x = torch.randn(2, down.in_features)
    w = get_format("gptq_int8").dequantize(written["model.layers.0.mlp.down_proj"])
    torch.testing.assert_close(down(x), x @ w.t(), rtol=1e-5, atol=1e-5)
    up = model.get_submodule("model.layers.0.mlp.up_proj")
    x = torch.randn(2, up.in_features)
    w = get_format("gptq_int3").dequantize(written["model.layers.0.mlp.up_proj"])
    torch.testing.assert_close(up(x), x @ w.t(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["gptq-int4-int8-mix", "autoawq", "autoawq-gemv", "ct-W4A16", "ct-FP8-static",
                                  "ct-NVFP4A16", "deepseek-fp8-block"])
def test_load_model_reads_a_tool_folder_through_our_readers(tmp_path, base, kind):
    """`load_model(folder)` (so `mpq eval ppl`, `mpq serve --engine hf`) on a tool's folder: every linear as stored,
    no transformers quantizer (which would want optimum / gptqmodel / autoawq), logits close to the float model's."""
    from mpq_serving.loaders.hf_model import load_model
    from mpq_serving.loaders.tool_folder import tool_folder_plan

    if kind == "gptq-int4-int8-mix":
        config = {"quant_method": "gptq", "bits": 4, "group_size": 32, "sym": True, "desc_act": False,
                  "dynamic": {r"+:.*\.down_proj": {"bits": 8}, r"-:.*\.o_proj": {}}}

        def quantize(name, w):
            if name.endswith("o_proj"):
                return type("Dense", (), {"tensors": {"weight": w}})()
            fmt = "gptq_int8" if name.endswith("down_proj") else "gptq_int4"
            return get_format(fmt).quantize(w, QuantSpec(fmt, group_size=32))

        folder = hand_release(base, tmp_path / kind, config, quantize)
        expected = {"model.layers.0.mlp.down_proj": "gptq_int8", "model.layers.0.self_attn.o_proj": "fp32",
                    "model.layers.0.mlp.up_proj": "gptq_int4"}
    elif kind == "autoawq":
        config = {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm"}
        folder = hand_release(base, tmp_path / kind, config,
                              lambda _, w: get_format("awq_int4").quantize(w, QuantSpec("awq_int4", group_size=32,
                                                                                        symmetric=False)))
        expected = {"model.layers.0.mlp.down_proj": "awq_int4"}
    elif kind == "autoawq-gemv":  # AutoAWQ's GEMV layout, written by its own packing code; repacked to GEMM at load
        config = {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemv"}
        awq = get_format("awq_int4")

        def quantize(_, w):
            gemm = awq.quantize(w, QuantSpec("awq_int4", group_size=32, symmetric=False))
            parts = awq.unpack(gemm)
            tensors = autoawq_gemv_from_linear(awq.dequantize(gemm).half(), parts.scales.half(), parts.zeros.half(), 32)
            return type("GEMV", (), {"tensors": tensors})()

        folder = hand_release(base, tmp_path / kind, config, quantize)
        expected = {"model.layers.0.mlp.down_proj": "awq_int4", "model.layers.0.self_attn.q_proj": "awq_int4"}
    elif kind == "deepseek-fp8-block":
        config = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [32, 32]}
        folder = hand_release(base, tmp_path / kind, config,
                              lambda _, w: get_format("fp8").quantize(w, QuantSpec("fp8", granularity="block",
                                                                                   group_size=32)))
        expected = {"model.layers.0.mlp.down_proj": "fp8"}
    else:
        name = {"ct-W4A16": "W4A16", "ct-FP8-static": "FP8", "ct-NVFP4A16": "NVFP4A16"}[kind]
        folder = write_ct(base, tmp_path / kind, {"group_0": preset(name)}, F32)
        expected = {"model.layers.0.mlp.down_proj": {"W4A16": "ct_int4", "FP8": "fp8", "NVFP4A16": "nvfp4"}[name]}

    plan = tool_folder_plan(folder)
    assert plan.sources and all(str(p) == str(folder) for p in plan.sources.values())
    loader = TrueMixedPrecisionLoader(plan)
    for module, fmt in expected.items():
        assert loader.located[module].spec.format == fmt, module
    assert loader.located["lm_head"].spec.format in ("bf16", "fp32")  # as stored

    model = load_model(folder, dtype=F32, progress=False)
    # The float model with every quantized weight replaced by its float32 dequantization: what a right reading
    # of each layout gives (to rounding), up to activation quantization where the release declares it.
    reference = AutoModelForCausalLM.from_pretrained(base, dtype=F32).eval()
    activations = False
    for name, q in loader.iter_modules(progress=False):
        if q.format not in ("bf16", "fp32"):
            reference.get_submodule(name).weight.data = get_format(q.format).dequantize(q)
            activations |= q.spec.activation is not None
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
    with torch.no_grad():
        ours, ref = model(ids).logits, reference(ids).logits
    # fp8 activations (per token-group / static) cost ~7% on this random 2-layer model; a misread layout ~100%
    assert float((ours - ref).norm() / ref.norm()) < (0.15 if activations else 1e-5), kind
