"""Triton kernels run in Triton's NumPy interpreter here: no GPU in CI.

TRITON_INTERPRET must be set before `@triton.jit` decorates the kernels (Triton decides compile or
interpret then), so it is set when pytest loads this file, before the test modules import the kernels.
Nothing outside kernels/triton imports Triton, so other tests in the same process are unaffected.
On a GPU box, `MPQ_TRITON_TEST_DEVICE=cuda` runs the same tests on the compiled kernels instead
(launch/gpu_bench.sh does, before timing them).
"""

from __future__ import annotations

import os
import random

DEVICE = os.environ.get("MPQ_TRITON_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def seed() -> int:
    """A fresh seed per test (printed in every failure message), so each run tries new inputs."""
    s = random.randrange(2**31)
    torch.manual_seed(s)
    return s


@pytest.fixture
def device() -> torch.device:
    return torch.device(DEVICE)


@pytest.fixture
def on(device: torch.device):
    """Move a QuantizedTensor's packed tensors to the test device."""
    from mpq_serving.formats import QuantizedTensor

    return lambda q: QuantizedTensor(q.spec, q.shape, {k: t.to(device) for k, t in q.tensors.items()})


@pytest.fixture(autouse=True)
def _interpreted() -> None:
    if DEVICE != "cpu":
        return
    from triton.runtime.interpreter import InterpretedFunction

    from mpq_serving.kernels.triton import gemm

    assert isinstance(gemm._dequant_gemm, InterpretedFunction), (
        "the Triton kernels were defined before TRITON_INTERPRET=1 was set; run these tests in their own process"
    )
