"""Fixtures shared by the vLLM engine tests: packed checkpoints built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
MIXED_PLAN = REPO / "configs" / "smollm2_mixed.yaml"


@pytest.fixture(scope="session")
def packed_smollm2_mixed(smollm2_dir, tmp_path_factory) -> Path:
    """SmolLM2 packed with configs/smollm2_mixed.yaml: fp8, mxfp4, gptq_int4, awq_int4, int8, bf16 layers."""
    from mpq_serving.loaders.pack import pack
    from mpq_serving.plan import load_plan

    return pack(load_plan(MIXED_PLAN), tmp_path_factory.mktemp("packed") / "smollm2-mixed", smollm2_dir, progress=False)
