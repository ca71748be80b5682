"""One place that picks the matmul for a packed weight, by format, device and shape.

Kernels register here with a `can_run(q, x) -> (ok, reason)` check and are tried in priority
order; the fallback is the format's float32 torch reference (`Format.matmul`).  Engine kernels,
Triton on GPU and torch's CPU weight-only kernels plug in the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..formats import QuantizedTensor, get_format

MatmulFn = Callable[[torch.Tensor, QuantizedTensor], torch.Tensor]


@dataclass(frozen=True)
class Kernel:
    name: str
    can_run: Callable[[QuantizedTensor, torch.Tensor], tuple[bool, str]]
    run: MatmulFn


_KERNELS: list[Kernel] = []


def register_kernel(kernel: Kernel, priority_first: bool = True) -> None:
    _KERNELS.insert(0, kernel) if priority_first else _KERNELS.append(kernel)


def choose_kernel(q: QuantizedTensor, x: torch.Tensor) -> tuple[MatmulFn, str]:
    """The first registered kernel that can run (q, x), else the format's torch reference; and why."""
    reasons = []
    for kernel in _KERNELS:
        ok, reason = kernel.can_run(q, x)
        if ok:
            return kernel.run, kernel.name
        reasons.append(f"{kernel.name}: {reason}")
    fmt = get_format(q.format)
    return fmt.matmul, "torch reference" + (f" ({'; '.join(reasons)})" if reasons else "")


def linear(x: torch.Tensor, q: QuantizedTensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`x @ W^T + b` for a packed W."""
    fn, _ = choose_kernel(q, x)
    y = fn(x, q)
    return y if bias is None else y + bias.to(y.dtype)
