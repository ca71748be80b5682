"""The packed checkpoint's quantization_config has one schema: what pack writes reads back, and what any
reader refuses it refuses naming the field."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mpq_serving.errors import CheckpointError
from mpq_serving.formats import QuantSpec
from mpq_serving.integrations.common.config import MpqCheckpointConfig
from mpq_serving.packed_config import FORMAT_VERSION, PackedConfig

MODULES = {
    "model.layers.0.mlp.down_proj": (QuantSpec("gptq_int4", group_size=64, act_order=True), (576, 1536)),
    "model.layers.0.self_attn.q_proj": (QuantSpec("fp8", granularity="block", group_size=128), (576, 576)),
    "model.layers.0.mlp.experts.3.up_proj": (QuantSpec("mxfp4", group_size=32), (64, 576)),
}


def _written() -> dict:
    return PackedConfig.build(MODULES, {"default": {"format": "fp8"}}).to_dict()


def test_what_is_written_reads_back_the_same_specs() -> None:
    written = _written()
    assert written["quant_method"] == "mpq" and written["format_version"] == FORMAT_VERSION
    assert written["modules"]["model.layers.0.mlp.down_proj"] == {
        "format": "gptq_int4", "group_size": 64, "act_order": True, "shape": [576, 1536]}
    read = PackedConfig.read(written, "config.json")
    assert {name: (m.spec(), m.shape) for name, m in read.modules.items()} == MODULES
    assert set(MpqCheckpointConfig.from_quantization_config(written).modules) == set(MODULES)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda qc: qc["modules"]["model.layers.0.mlp.down_proj"].update(bits=3),
         "quantization_config.modules.model.layers.0.mlp.down_proj.bits: Extra inputs are not permitted"),
        (lambda qc: qc["modules"]["model.layers.0.mlp.down_proj"].pop("shape"),
         "quantization_config.modules.model.layers.0.mlp.down_proj.shape: Field required"),
        (lambda qc: qc.update(format_version=FORMAT_VERSION + 1), "newer than this mpq-serving reads"),
        (lambda qc: qc.update(quant_method="gptq"), "quant_method is 'gptq', not 'mpq'"),
        (lambda qc: qc.update(moduls={}), "quantization_config.moduls: Extra inputs are not permitted"),
    ],
)
def test_every_reader_refuses_the_same_way(change, message) -> None:
    qc = _written()
    change(qc)
    with pytest.raises(CheckpointError, match="config.json: .*" + message.replace(".", r"\.").replace("(", r"\(")):
        PackedConfig.read(qc, "config.json")
    with pytest.raises(CheckpointError, match=message.replace(".", r"\.")):
        MpqCheckpointConfig.from_quantization_config(qc)


def test_what_an_engine_adds_to_the_dict_it_hands_over_is_not_ours() -> None:
    """SGLang adds packed_modules_mapping and hf_config before calling from_config (found serving for real)."""
    qc = {**_written(), "packed_modules_mapping": {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}, "hf_config": object()}
    assert set(MpqCheckpointConfig.from_quantization_config(qc).modules) == set(MODULES)


def test_an_unknown_format_is_named() -> None:
    qc = _written()
    qc["modules"]["model.layers.0.mlp.down_proj"]["format"] = "nf4"
    with pytest.raises(CheckpointError, match=r"modules\['model.layers.0.mlp.down_proj'\]: .*nf4"):
        MpqCheckpointConfig.from_quantization_config(qc)


def test_the_schema_imports_without_torch() -> None:
    code = "import sys, mpq_serving.packed_config; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
