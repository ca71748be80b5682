"""Per-format matmul kernels and the dispatch point that chooses among them.

The registration order below is the priority order: torch's packed CPU kernels first (fastest for
a few rows in bf16), the fused fp8 / MX / int8 GEMVs (decode-sized batches), then exact
dequantization into the activation dtype, then the plain float32 dequantize, and finally (in
`dispatch`) each format's torch reference.
"""

from .cpu_fused import CPU_FUSED
from .cpu_fused_w8a8 import CPU_FUSED_W8A8
from .dequant_linear import DEQUANT_LINEAR
from .dispatch import Choice, Kernel, KernelCache, Unsupported, choose_kernel, linear, register_kernel
from .fast_dequant import FAST_DEQUANT
from .int4_pack import INT4_PACK
from .int8_pack import INT8_PACK

for _kernel in (INT4_PACK, INT8_PACK, CPU_FUSED, CPU_FUSED_W8A8, FAST_DEQUANT, DEQUANT_LINEAR):
    register_kernel(_kernel)

__all__ = ["Choice", "Kernel", "KernelCache", "Unsupported", "choose_kernel", "linear", "register_kernel"]
