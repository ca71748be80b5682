"""When the Triton kernels may run, and why not: importable Triton, a CUDA tensor, or a forced interpreter.

Importing this module never imports Triton, so the CPU paths pay nothing for it.  Triton decides at
decoration time whether `@triton.jit` compiles for a GPU or runs in its NumPy interpreter
(`TRITON_INTERPRET=1`), so the kernel modules are imported only once a Triton path is actually chosen.

Environment:
* `MPQ_TRITON=0` turns the Triton kernels off everywhere (the dispatch then says so);
* `MPQ_TRITON=force` also runs them on CPU tensors, which only works under `TRITON_INTERPRET=1`
  (how CI checks them without a GPU; far too slow for serving).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

ENV_SWITCH = "MPQ_TRITON"


def interpreting() -> bool:
    """True when Triton runs kernels in its NumPy interpreter instead of compiling them."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def unavailable_reason(device: torch.device) -> str | None:
    """None when the Triton kernels can run for tensors on `device`; else why not."""
    switch = os.environ.get(ENV_SWITCH, "").lower()
    if switch == "0":
        return f"{ENV_SWITCH}=0"
    if not triton_importable():
        return "triton is not installed"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and switch == "force":
        return None if interpreting() else f"{ENV_SWITCH}=force on CPU needs TRITON_INTERPRET=1"
    return f"tensors on {device.type}: Triton runs on CUDA (or on CPU with {ENV_SWITCH}=force and TRITON_INTERPRET=1)"


def native_fp8(device: torch.device) -> bool:
    """Whether tensor cores multiply E4M3 directly (compute capability 8.9: Ada, Hopper and later).

    Under the interpreter NumPy does the dot, so the native path runs (and is tested) there too.
    """
    if device.type != "cuda":
        return interpreting()
    return torch.cuda.get_device_capability(device) >= (8, 9)


def multiprocessors(device: torch.device) -> int:
    """SM count: how many programs a decode launch needs to keep every SM streaming weights."""
    if device.type != "cuda":
        return 4  # the interpreter: a few split-K programs, so the split path is exercised
    return torch.cuda.get_device_properties(device).multi_processor_count
