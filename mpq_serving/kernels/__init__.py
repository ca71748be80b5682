"""Per-format matmul kernels and the dispatch point that chooses among them."""

from .dispatch import Kernel, choose_kernel, linear, register_kernel
from . import dequant_linear  # noqa: F401,E402  (registers itself)

__all__ = ["Kernel", "choose_kernel", "linear", "register_kernel"]
