"""Shared fixtures. Models that take seconds to build are built once per session (or once per cache)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

# Triton decides "compile or interpret" when a kernel module is first imported, and any test module (or a
# library such as transformers probing for Triton) may import it first: so the core suite, which has no
# GPU, turns the interpreter on here, before anything is collected. Engine environments (vLLM / SGLang)
# keep Triton as their engine expects; the kernel tests do not run there.
_ENGINE_ENV = any(importlib.util.find_spec(name) is not None for name in ("vllm", "sglang"))
if not _ENGINE_ENV and os.environ.get("MPQ_TRITON_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The bf16 SmolLM2 folder in the cache ($MPQ_CACHE_DIR); built on first use (~40 s), then reused."""
    from mpq_serving.models.smollm2 import prepare_smollm2

    return prepare_smollm2(progress=False)
