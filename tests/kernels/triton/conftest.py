"""Triton kernels run in Triton's NumPy interpreter here: no GPU in CI.

TRITON_INTERPRET must be set before `@triton.jit` decorates the kernels (Triton decides compile or
interpret then), so it is set when pytest loads this file, before the test modules import the kernels.
Nothing outside kernels/triton imports Triton, so other tests in the same process are unaffected.
"""

from __future__ import annotations

import os
import random

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def seed() -> int:
    """A fresh seed per test (printed in every failure message), so each run tries new inputs."""
    s = random.randrange(2**31)
    torch.manual_seed(s)
    return s


@pytest.fixture(autouse=True)
def _interpreted() -> None:
    from triton.runtime.interpreter import InterpretedFunction

    from mpq_serving.kernels.triton import gemm

    assert isinstance(gemm._dequant_gemm, InterpretedFunction), (
        "the Triton kernels were defined before TRITON_INTERPRET=1 was set; run these tests in their own process"
    )
