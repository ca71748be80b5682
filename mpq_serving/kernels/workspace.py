"""Per-thread scratch buffers that the dequantizing kernels reuse from call to call.

A freshly allocated tensor of tens of MB is a fresh mmap (glibc hands blocks over its 32 MB mmap
ceiling back to the OS on free), so every call page-faults it in again: on this VM a new 4096x4096
bf16 weight costs 19 ms of page faults against 1.2 ms to write a reused one, more than the
dequantization itself.  So each named slot keeps one byte buffer per thread and device, grown to
the largest request.  Kernels work on `row_chunks` of a weight (about CHUNK_ELEMENTS weights), which
bounds the buffers to ~10 MB in all and keeps a chunk's intermediates in cache between passes (a
4096x4096 fp8 weight dequantizes twice as fast in 256-row chunks as in one piece).  A slot's tensor
is overwritten by the next call that asks for the slot: use it before then (F.linear's weight), and
copy it where it must outlive the call (autograd saving it for backward).
"""

from __future__ import annotations

import threading

import torch

CHUNK_ELEMENTS = 1 << 20
CHUNK_MULTIPLE = 64  # chunks start on a multiple of 64 rows: int4 zero points pack 8 outputs per word

_local = threading.local()


def row_chunks(out_features: int, in_features: int) -> list[slice]:
    """Output-row ranges of about CHUNK_ELEMENTS weights each (one range for a small weight)."""
    step = max(CHUNK_MULTIPLE, CHUNK_ELEMENTS // in_features // CHUNK_MULTIPLE * CHUNK_MULTIPLE)
    return [slice(r, min(r + step, out_features)) for r in range(0, out_features, step)]


def scratch(slot: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialized contiguous tensor backed by this thread's buffer for `slot`."""
    buffers: dict[tuple[str, torch.device], torch.Tensor] = _local.__dict__.setdefault("buffers", {})
    numel = 1
    for d in shape:
        numel *= d
    nbytes = numel * dtype.itemsize
    key = (slot, torch.device(device))
    buf = buffers.get(key)
    if buf is None or buf.numel() < nbytes:
        buf = buffers[key] = torch.empty(nbytes, dtype=torch.uint8, device=device)
    return buf[:nbytes].view(dtype).view(shape)
