"""Plain-torch stand-ins for the `sgl_kernel` ops SGLang's CPU path calls on a machine without AMX.

Loaded as the module `sgl_kernel` by `startup` (only when SGLANG_USE_CPU_ENGINE=1 and no real
sgl-kernel is installed).  SGLang imports many names from sgl_kernel at module level but, without
AMX, calls only a few of them; those few are implemented here, each tested against its definition
(the Triton or C++ kernel it replaces, restated in torch) in tests/engines/sglang/test_cpu_support.py.
Any other name resolves to a function that raises, naming the op, if SGLang ever calls it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def assign_req_to_token_pool_cpu(req_pool_indices: torch.Tensor, req_to_token: torch.Tensor,
                                 start_offset: torch.Tensor, end_offset: torch.Tensor,
                                 out_cache_loc: torch.Tensor, pool_len: int) -> None:
    """Write each request's new KV-cache slots into its row of the request → token table.

    Request i (row `req_pool_indices[i]`) gets positions [start_offset[i], end_offset[i]) filled with
    the next end-start entries of `out_cache_loc`, which lists all requests' slots back to back.
    """
    lengths = (end_offset - start_offset).tolist()
    rows, starts = req_pool_indices.tolist(), start_offset.tolist()
    taken = 0
    for row, start, n in zip(rows, starts, lengths):
        req_to_token[row, start:start + n] = out_cache_loc[taken:taken + n].to(req_to_token.dtype)
        taken += n


def __getattr__(name: str) -> Callable[..., None]:
    """Names SGLang imports but never calls on this path: importable, and loud if called."""
    if name.startswith("__"):
        raise AttributeError(name)

    def missing(*args, **kwargs):
        raise NotImplementedError(
            f"sgl_kernel.{name} has no plain-torch stand-in in "
            "mpq_serving.integrations.sglang.cpu_support.sgl_kernel_torch; SGLang called it on this path")

    missing.__name__ = name
    return missing
