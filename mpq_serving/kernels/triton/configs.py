"""Autotune candidates for the Triton kernels: a handful on a GPU, exactly one under the interpreter.

Triton's autotuner times every candidate on the first call per key (shape bucket, dtypes); with one
candidate it times nothing, which is what the interpreter needs (it has no clock worth timing).
Decode (M <= 16) streams the weight once with split-K over many small-N programs, the regime where
only memory bandwidth matters; prefill uses the usual square-ish tiles with more stages.
"""

from __future__ import annotations

import triton

from .runtime import interpreting

DECODE_BLOCK_M = 16  # tl.dot's smallest M; decode batches are padded (masked) up to it
DECODE_MAX_M = 16


def decode_configs() -> list[triton.Config]:
    if interpreting():
        return [triton.Config({"BLOCK_M": DECODE_BLOCK_M, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4)]
    return [
        triton.Config({"BLOCK_M": DECODE_BLOCK_M, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bn, bk, w, s in (
            (32, 128, 4, 4), (64, 128, 4, 4), (64, 256, 4, 3), (128, 128, 4, 3), (32, 256, 4, 4), (128, 64, 4, 4),
        )
    ]


def prefill_configs() -> list[triton.Config]:
    if interpreting():
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in (
            (64, 64, 64, 4, 4), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4), (128, 128, 64, 8, 3),
            (32, 64, 128, 4, 4), (128, 128, 32, 8, 4),
        )
    ]


def moe_configs() -> list[triton.Config]:
    """BLOCK_M is chosen by the host (the token-to-expert alignment depends on it); N / K tiles are tuned."""
    if interpreting():
        return [triton.Config({"BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4)]
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bn, bk, w, s in ((64, 128, 4, 4), (128, 64, 4, 4), (64, 64, 4, 3), (128, 128, 8, 3))
    ]
