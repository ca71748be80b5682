"""Tiny random models with SmolLM2's tokenizer, packed under a plan that uses every format once."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent
TINY_PLAN = HERE / "tiny_mixed_plan.yaml"
SMOLLM2_CT_PLAN = HERE.parents[1] / "configs" / "smollm2_ct.yaml"


@pytest.fixture(scope="session")
def tiny_llama(smollm2_dir, tmp_path_factory) -> Path:
    from mpq_serving.models.tiny import build_tiny

    return build_tiny("llama", tmp_path_factory.mktemp("export") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_mixtral(smollm2_dir, tmp_path_factory) -> Path:
    from mpq_serving.models.tiny import build_tiny

    return build_tiny("mixtral", tmp_path_factory.mktemp("export") / "tiny-mixtral")


@pytest.fixture(scope="session")
def tiny_packed(tiny_llama, tmp_path_factory) -> Path:
    from mpq_serving.loaders.pack import pack
    from mpq_serving.plan import load_plan

    return pack(load_plan(TINY_PLAN), tmp_path_factory.mktemp("export") / "tiny-packed", tiny_llama, progress=False)
