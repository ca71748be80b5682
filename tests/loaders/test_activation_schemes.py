"""What each release's config declares about activations becomes the spec's activation, or a refusal.

Running a layer weight-only when its release declares quantized activations changes its numerics
silently, so every declared scheme is either mapped to one that runs as declared or refused naming it.
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
