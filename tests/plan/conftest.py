"""Fixtures: tiny model folders with Llama and MoE weight names."""

from __future__ import annotations

from pathlib import Path

import pytest
from plan_model_folder import tiny_tensors, write_model


@pytest.fixture
def dense_dir(tmp_path: Path) -> Path:
    return write_model(tmp_path / "dense", tiny_tensors())


@pytest.fixture
def moe_dir(tmp_path: Path) -> Path:
    return write_model(tmp_path / "moe", tiny_tensors(moe=True))
