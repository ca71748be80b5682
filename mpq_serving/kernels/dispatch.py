"""One place that picks the matmul for a packed weight, by format, device, dtype and shape.

A `Kernel` says whether it can run `(q, x)` and why not (`can_run`, called when a choice is made),
optionally turns the packed tensors into the form it computes from (`prepare`, run once per layer),
and computes `x @ W^T` from that state (`run`).  Kernels are tried in registration order (see
`kernels/__init__.py`), after the Triton GPU kernel (`kernels/triton`, CUDA only); the last resort
is the format's float32 torch reference (`Format.matmul`).
Kernels always see x as 2-D [rows, in]; `linear` flattens and restores the leading dims.

Choosing happens once per layer, not per call (as vLLM's `process_weights_after_loading`): a
`KernelCache` owned by each layer remembers the choice per (activation dtype, device, row bucket) —
buckets split at every kernel's declared `max_rows`, the only way a choice depends on the batch — and
a call then only checks the packed tensors are unchanged and runs.  Prepared states live in the same
cache, so a layer repacks once, on its first call.  A state is rebuilt when any packed tensor is
replaced, moved, cast or modified in place
(tensor identity, device, dtype, shape and version counter), which is all the invalidation a
`model.to(...)` or `load_state_dict` needs; tensors created under `torch.inference_mode` have no
version counter, so an in-place edit of those needs `layer.kernel_cache.clear()`.  `linear(x, q)`
without a cache prepares per call.
`prepare` may raise `Unsupported` for a reason only the data shows (e.g. an act-order g_idx whose
groups are not uniform); the chooser then moves on to the next kernel, and a cache remembers that.
"""

from __future__ import annotations

import bisect
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..formats import QuantizedTensor, get_format

logger = logging.getLogger(__name__)

CanRunFn = Callable[[QuantizedTensor, torch.Tensor], tuple[bool, str]]
PrepareFn = Callable[[QuantizedTensor], Any]
RunFn = Callable[[torch.Tensor, QuantizedTensor, Any], torch.Tensor]


class Unsupported(Exception):
    """Raised by `Kernel.prepare` when the packed data (not its spec) rules the kernel out."""


@dataclass(frozen=True)
class Kernel:
    """`run(x [rows, in], q, state) -> y [rows, out]`, with `state = prepare(q)` (None without prepare)."""

    name: str
    can_run: CanRunFn
    run: RunFn
    prepare: PrepareFn | None = None
    max_rows: int | None = None  # past this many rows the next kernel is faster (the chooser skips it)


@dataclass(frozen=True)
class Choice:
    """The kernel picked for one call, its prepared state, and why (including what was skipped)."""

    kernel: Kernel
    state: Any
    reason: str
    skipped: tuple[str, ...] = ()

    def describe(self) -> str:
        text = f"{self.kernel.name} ({self.reason})" if self.reason else self.kernel.name
        return text + (f"; skipped {'; '.join(self.skipped)}" if self.skipped else "")


def _reference_run(x: torch.Tensor, q: QuantizedTensor, state: Any) -> torch.Tensor:
    return get_format(q.format).matmul(x, q)


REFERENCE = Kernel("torch reference", lambda q, x: (True, "float32 reference of the format"), _reference_run)

_KERNELS: list[Kernel] = []


def register_kernel(kernel: Kernel, priority_first: bool = False) -> None:
    """Append a kernel (tried after those registered before it), or put it first."""
    _KERNELS.insert(0, kernel) if priority_first else _KERNELS.append(kernel)
    _row_limits.cache_clear()


@functools.cache
def _row_limits() -> tuple[int, ...]:
    return tuple(sorted({k.max_rows for k in registered_kernels() if k.max_rows is not None}))


def row_bucket(rows: int) -> int:
    """Which side of every kernel's `max_rows` a call falls on: calls in one bucket get the same kernel."""
    return bisect.bisect_left(_row_limits(), rows)


def registered_kernels() -> tuple[Kernel, ...]:
    return (*_gpu_kernels(), *_KERNELS, REFERENCE)


@functools.cache
def _gpu_kernels() -> tuple[Kernel, ...]:
    """The Triton kernel, tried first: off CUDA it declines with the reason and imports no Triton.

    Imported here, on first use, because `kernels/triton` itself imports this module.
    """
    from .triton.dispatch_kernel import TRITON_LINEAR

    return (TRITON_LINEAR,)


Signature = tuple[tuple[object, ...], ...]


def _signature(q: QuantizedTensor) -> Signature:
    """What a prepared state depends on: each packed tensor's identity, placement and version."""
    return tuple(
        (k, t.data_ptr(), t.device, t.dtype, tuple(t.shape), None if t.is_inference() else t._version)
        for k, t in q.tensors.items()
    )


ChoiceKey = tuple[torch.dtype, torch.device, int]


def _call_signature(q: QuantizedTensor) -> Signature:
    """The per-call check that the packed tensors are unchanged: storage and version (a new device, dtype
    or shape is a new storage), about 1 µs for a layer's few tensors."""
    return tuple([(t.data_ptr(), None if t.is_inference() else t._version) for t in q.tensors.values()])


class KernelCache:
    """One layer's kernel choices (per dtype, device and row bucket) and prepared states (per kernel);
    both are remade when the packed tensors change."""

    def __init__(self) -> None:
        self._states: dict[str, tuple[Signature, Any, Unsupported | None]] = {}
        self._choices: dict[ChoiceKey, Choice] = {}
        self._signature: Signature | None = None

    def choose(self, q: QuantizedTensor, x: torch.Tensor) -> tuple[Choice, bool]:
        """The layer's kernel for x [rows, in], chosen on the first call of its kind; (choice, newly chosen)."""
        sig = _call_signature(q)
        if sig != self._signature:
            self._choices.clear()
            self._signature = sig
        key = (x.dtype, x.device, row_bucket(x.shape[0]))
        choice = self._choices.get(key)
        if choice is not None:
            return choice, False
        choice = choose_kernel(q, x, self)
        self._choices[key] = choice
        return choice, True

    def prepare(self, kernel: Kernel, q: QuantizedTensor) -> Any:
        """The kernel's state for q, prepared on first use; re-raises a cached `Unsupported`."""
        if kernel.prepare is None:
            return None
        sig = _signature(q)
        hit = self._states.get(kernel.name)
        if hit is None or hit[0] != sig:
            try:
                hit = (sig, kernel.prepare(q), None)
            except Unsupported as e:
                hit = (sig, None, e)
            self._states[kernel.name] = hit
        if hit[2] is not None:
            raise hit[2]
        return hit[1]

    def clear(self) -> None:
        self._states.clear()
        self._choices.clear()
        self._signature = None


def _prepare_uncached(kernel: Kernel, q: QuantizedTensor) -> Any:
    return None if kernel.prepare is None else kernel.prepare(q)


def choose_kernel(q: QuantizedTensor, x: torch.Tensor, cache: KernelCache | None = None) -> Choice:
    """The first kernel that can run (q, x [rows, in]) and prepare q, with its state and the reasons."""
    skipped = []
    for kernel in registered_kernels():
        if kernel.max_rows is not None and x.shape[0] > kernel.max_rows:
            skipped.append(f"{kernel.name}: {x.shape[0]} rows > {kernel.max_rows}: the next kernel is faster")
            continue
        ok, reason = kernel.can_run(q, x)
        if not ok:
            skipped.append(f"{kernel.name}: {reason}")
            continue
        try:
            state = cache.prepare(kernel, q) if cache is not None else _prepare_uncached(kernel, q)
        except Unsupported as e:
            skipped.append(f"{kernel.name}: {e}")
            continue
        return Choice(kernel, state, reason, tuple(skipped))
    raise AssertionError("unreachable: the torch reference always runs")


_LOGGED: set[tuple[str, str, str, str]] = set()


def _log_choice(q: QuantizedTensor, x: torch.Tensor, choice: Choice) -> None:
    """INFO once per (format spec, activation dtype, device, kernel): which kernel runs it and why."""
    key = (q.spec.describe(), str(x.dtype), x.device.type, choice.kernel.name)
    if key not in _LOGGED:
        _LOGGED.add(key)
        logger.info("%s with %s activations on %s: %s", key[0], x.dtype, x.device.type, choice.describe())


def linear(
    x: torch.Tensor, q: QuantizedTensor, bias: torch.Tensor | None = None, cache: KernelCache | None = None
) -> torch.Tensor:
    """`x @ W^T + b` for a packed W; `cache` (one per layer) keeps prepared states across calls."""
    rows = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
    if cache is None:
        choice, new = choose_kernel(q, rows), True
    else:
        choice, new = cache.choose(q, rows)
    if new:
        _log_choice(q, rows, choice)
    y = choice.kernel.run(rows, q, choice.state)
    if x.dim() != 2:
        y = y.reshape(*x.shape[:-1], y.shape[-1])
    return y if bias is None else y + bias.to(y.dtype)
