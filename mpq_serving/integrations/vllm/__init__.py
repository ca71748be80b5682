"""vLLM plugin: `quant_method: "mpq"` (packed mixed checkpoints) as a vLLM quantization method.

Installed through the `vllm.general_plugins` entry point (`mpq = mpq_serving.integrations.vllm:register`),
which vLLM calls in every process it starts; `register` adds the "mpq" config to vLLM's registry.
Then `python -m vllm.entrypoints.openai.api_server --model PACKED_DIR` serves the plan (config.json's
quantization_config selects it; `--quantization mpq` also works).

- config.py: `MpqConfig` — per layer, vLLM's own method where vLLM has a kernel for that layer's
  format (native.py), ours otherwise; the choice is logged once per format with the reason.
- linear_method.py: `MpqLinearMethod` — any mix of formats in one (fused) linear.
- moe_method.py: `MpqMoEMethod` — experts of one layer in different formats, grouped by format.
"""

from __future__ import annotations


def register() -> None:
    """Entry point (group `vllm.general_plugins`): register quantization method "mpq" with vLLM."""
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS, register_quantization_config

    from .config import MpqConfig

    if "mpq" not in QUANTIZATION_METHODS or not getattr(MpqConfig, "_registered", False):
        register_quantization_config("mpq")(MpqConfig)
        MpqConfig._registered = True
