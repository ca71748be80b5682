"""What a release's config says about one module becomes its spec, or a refusal naming it.

Activations: running a layer weight-only when its release declares quantized activations changes its
numerics silently, so every declared scheme is either mapped to one that runs as declared or refused.
Widths: GPTQ at 2, 4 and 8 bits, per module through GPTQModel's `dynamic` overrides.
"""

from __future__ import annotations

import pytest

from mpq_serving.errors import CheckpointError
from mpq_serving.loaders.source_config import module_spec

MODULE = "model.layers.0.mlp.down_proj"


def ct(weights: dict, input_activations: dict | None) -> dict:
    return {"quant_method": "compressed-tensors", "format": "float-quantized",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights,
                                          "input_activations": input_activations}}}


FP8_CHANNEL = {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True}
FP8_BLOCK = {"num_bits": 8, "type": "float", "strategy": "block", "block_structure": [128, 128], "symmetric": True}


@pytest.mark.parametrize("config, activation, granularity", [
    ({"quant_method": "fp8", "activation_scheme": "static"}, "fp8_static", "tensor"),  # AutoFP8
    ({"quant_method": "fp8", "activation_scheme": "dynamic"}, "fp8", "tensor"),
    ({"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}, "fp8", "block"),
    (ct(FP8_CHANNEL, {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True}), "fp8", "channel"),
    (ct(FP8_CHANNEL, {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False}), "fp8_static",
     "channel"),
    (ct(FP8_BLOCK, {"num_bits": 8, "type": "float", "strategy": "group", "group_size": 128, "dynamic": True}),
     "fp8", "block"),
    (ct(FP8_CHANNEL, None), None, "channel"),
])
def test_declared_fp8_activations_are_read(config, activation, granularity):
    spec = module_spec(config, MODULE, "release")
    assert (spec.format, spec.activation, spec.granularity) == ("fp8", activation, granularity)


@pytest.mark.parametrize("config, message", [
    (ct(FP8_BLOCK, {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True}),
     r"group 'group_0': input_activations \(8-bit float, token, dynamic=True\)"),
    (ct(FP8_BLOCK, {"num_bits": 8, "type": "float", "strategy": "group", "group_size": 64, "dynamic": True}),
     "group 'group_0'"),
    (ct(FP8_CHANNEL, {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": False}),
     "asymmetric activations"),
    (ct({"num_bits": 4, "type": "float", "strategy": "group", "group_size": 32, "scale_dtype": "torch.uint8"},
        {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True}), "with MX weights"),
    ({"quant_method": "fp8", "activation_scheme": "static", "weight_block_size": [128, 128]},
     "block weights with activation_scheme static"),
    ({"quant_method": "fp8", "activation_scheme": "sometimes"}, "activation_scheme 'sometimes'"),
])
def test_activation_schemes_not_run_as_declared_are_refused(config, message):
    with pytest.raises(CheckpointError, match=message) as e:
        module_spec(config, MODULE, "release")
    assert "release" in str(e.value)


# --- GPTQ widths and GPTQModel `dynamic` (per-module bits) --------------------------------------------------

GPTQ_MIX = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True,
            "format": "gptq", "dynamic": {r"+:.*\.mlp\.down_proj": {"bits": 8, "group_size": 64},
                                          r"-:.*\.self_attn\.o_proj": {}}}


@pytest.mark.parametrize("module, fmt, group", [
    ("model.layers.3.mlp.down_proj", "gptq_int8", 64),  # the release's 8-bit modules
    ("model.layers.3.mlp.up_proj", "gptq_int4", 128),
    ("model.layers.3.self_attn.o_proj", None, None),  # `-:` left unquantized
])
def test_gptqmodel_dynamic_gives_modules_their_own_bits(module, fmt, group):
    spec = module_spec(GPTQ_MIX, module, "release")
    if fmt is None:
        assert spec is None
    else:
        assert (spec.format, spec.group_size) == (fmt, group)


@pytest.mark.parametrize("bits, fmt", [(2, "gptq_int2"), (3, "gptq_int3"), (4, "gptq_int4"), (8, "gptq_int8")])
def test_gptq_widths(bits, fmt):
    assert module_spec({"quant_method": "gptq", "bits": bits}, MODULE, "release").format == fmt


def test_unknown_gptq_width_and_8_bit_awq_are_refused_naming_the_module():
    config = {**GPTQ_MIX, "dynamic": {r".*\.mlp\.down_proj": {"bits": 5}}}
    with pytest.raises(CheckpointError, match=r"module model.layers.0.mlp.down_proj: 5-bit GPTQ"):
        module_spec(config, MODULE, "release")
    with pytest.raises(CheckpointError, match="8-bit AWQ"):
        module_spec({"quant_method": "awq", "bits": 8}, MODULE, "release")
