"""Per-format matmul kernels and the dispatch point that chooses among them."""

from .dispatch import Kernel, choose_kernel, linear, register_kernel

__all__ = ["Kernel", "choose_kernel", "linear", "register_kernel"]
