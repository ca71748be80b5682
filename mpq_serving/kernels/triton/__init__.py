"""Triton GPU kernels: fused dequantize-GEMM per format and a grouped mixed-format MoE kernel.

`runtime` says whether they can run (CUDA, or forced under `TRITON_INTERPRET=1`) without importing
Triton; `operands` describes packed weights for them; `dequant` decodes each format's bytes in-kernel;
`gemm` is the linear kernel (decode split-K and prefill tiles); `moe` the grouped expert kernel;
`dispatch_kernel` plugs the linear kernel into `kernels.dispatch`.  Import the kernel modules only
after the runtime check: Triton fixes compile-vs-interpret when the kernels are defined.
"""
