"""Fixtures shared by the SGLang engine tests: packed checkpoints built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # SGLang's CPU engine for the in-process layer tests too (servers get it from SglangServer). Set before
    # any test module imports SGLang: its modules read it at import time.
    os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
    from mpq_serving.integrations.sglang.cpu_support import startup

    startup.install()

REPO = Path(__file__).resolve().parents[3]
MIXED_PLAN = REPO / "configs" / "smollm2_mixed.yaml"

#: A tiny Qwen3-MoE plan whose experts inside every layer have five formats (and attention two).
TINY_MOE_PLAN = {"mixed_precision": {
    "default": {"format": "mxfp8"},
    "weight_mapping": {
        r"re:model\.layers\.\d+\.mlp\.experts\.[01]\..*": {"format": "fp8", "granularity": "channel"},
        r"re:model\.layers\.\d+\.mlp\.experts\.[23]\..*": "mxfp4",
        r"re:model\.layers\.\d+\.mlp\.experts\.[45]\..*": {"format": "gptq_int4", "group_size": 64},
        r"re:model\.layers\.\d+\.mlp\.experts\.6\..*": {"format": "awq_int4", "group_size": 64},
        r"re:model\.layers\.\d+\.mlp\.experts\.7\..*": "int8",
        r"re:model\.layers\.\d+\.self_attn\.o_proj": "bf16",
    },
}}


@pytest.fixture(scope="session")
def packed_smollm2_mixed(smollm2_dir, tmp_path_factory) -> Path:
    """SmolLM2 packed with configs/smollm2_mixed.yaml: fp8, mxfp4, gptq_int4, awq_int4, int8, bf16 layers."""
    from mpq_serving.loaders.pack import pack
    from mpq_serving.plan import load_plan

    return pack(load_plan(MIXED_PLAN), tmp_path_factory.mktemp("packed") / "smollm2-mixed", smollm2_dir, progress=False)


@pytest.fixture(scope="session")
def packed_tiny_moe(smollm2_dir, tmp_path_factory) -> Path:
    """A random tiny Qwen3-MoE (8 experts, top 2) packed with TINY_MOE_PLAN; SmolLM2's tokenizer."""
    from mpq_serving.loaders.pack import pack
    from mpq_serving.models.tiny import build_tiny
    from mpq_serving.plan.io import plan_from_dict

    tmp = tmp_path_factory.mktemp("tiny-moe")
    base = build_tiny("qwen3-moe", tmp / "base")  # after smollm2_dir: its tokenizer is copied in
    return pack(plan_from_dict(TINY_MOE_PLAN), tmp / "packed", base, progress=False)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """The HF reference computed here shares the cores with the SGLang server (which also runs one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
