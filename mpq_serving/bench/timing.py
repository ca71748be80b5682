"""Timing one callable and measuring the device's copy bandwidth, on CUDA or CPU.

CUDA: `triton.testing.do_bench` (CUDA events, L2 flushed between runs, median).  CPU: the median of
repeated wall-clock runs after a warm-up (torch.utils.benchmark's blocked autorange).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.utils.benchmark as tbench


def time_call(fn: Callable[[], object], device: torch.device, min_run_s: float = 0.2) -> float:
    """Median seconds per call of fn."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3
    fn()
    return tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_run_s
    ).median


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting the read and the write (the roofline's peak)."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    seconds = time_call(lambda: dst.copy_(src), device)
    return 2 * nbytes / seconds
