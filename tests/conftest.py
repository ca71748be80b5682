"""Shared fixtures. Models that take seconds to build are built once per session (or once per cache)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The bf16 SmolLM2 folder in the cache ($MPQ_CACHE_DIR); built on first use (~40 s), then reused."""
    from mpq_serving.models.smollm2 import prepare_smollm2

    return prepare_smollm2(progress=False)
