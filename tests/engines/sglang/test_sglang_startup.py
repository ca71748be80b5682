"""Starting SGLang: through `mpq serve --engine sglang`, and refusing bad packed checkpoints by name."""

from __future__ import annotations

import json
import shutil
import sys

import openai
import pytest
from safetensors.torch import load_file, save_file
from servers import ServerStartError, SglangServer

MISSING = "model.layers.1.mlp.experts.2.down_proj.weight_scale"  # an mxfp4 expert's E8M0 scales


def test_mpq_serve_engine_sglang_answers(packed_tiny_moe, tmp_path):
    """`mpq serve PACKED --engine sglang --port P -- <SGLang args>` runs SGLang's server with the plugin."""
    launcher = [sys.executable, "-m", "mpq_serving.cli.main", "serve", str(packed_tiny_moe), "--engine", "sglang",
                "--served-model-name", "tiny-moe"]
    with SglangServer(packed_tiny_moe, tmp_path, ["--skip-server-warmup"], launcher=launcher) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", timeout=600)
        r = client.completions.create(model="tiny-moe", prompt=[1, 504, 3575], max_tokens=3, temperature=0)
        assert r.usage.completion_tokens == 3
        assert "quant=mpq" in server.log_path.read_text()


def test_missing_tensor_stops_start_up_naming_it(packed_tiny_moe, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(packed_tiny_moe, broken)
    tensors = load_file(broken / "model.safetensors")
    del tensors[MISSING]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    server = SglangServer(broken, tmp_path / "run", ["--skip-server-warmup"], timeout_s=400)
    with pytest.raises(ServerStartError) as failed:
        with server:
            pass
    assert MISSING in str(failed.value) or MISSING in server.log_path.read_text()
    assert not server.alive()


def test_bad_plan_entry_is_refused_naming_the_module(packed_tiny_moe):
    """A modules entry with an unknown format: the plugin's config refuses it, naming the module."""
    from mpq_serving.errors import MPQError
    from mpq_serving.integrations.sglang.config import MpqConfig

    qc = json.loads((packed_tiny_moe / "config.json").read_text())["quantization_config"]
    qc["modules"]["model.layers.0.self_attn.q_proj"]["format"] = "int3"
    with pytest.raises(MPQError, match=r"model\.layers\.0\.self_attn\.q_proj"):
        MpqConfig.from_config(qc)
