"""Tiny random models for the quantizer tests (built once per module; SmolLM2's tokenizer is copied in)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpq_serving.models.tiny import build_tiny


@pytest.fixture(scope="session")
def tiny_llama(smollm2_dir, tmp_path_factory) -> Path:
    return build_tiny("llama", tmp_path_factory.mktemp("quantize") / "llama")


@pytest.fixture(scope="session")
def tiny_qwen3_moe(smollm2_dir, tmp_path_factory) -> Path:
    return build_tiny("qwen3-moe", tmp_path_factory.mktemp("quantize") / "qwen3-moe")
