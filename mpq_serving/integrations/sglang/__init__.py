"""SGLang plugin: `mpq` as a quantization method of SGLang (entry point group `sglang.srt.plugins`).

- `plugin.register` — run by SGLang in every process: adds `mpq` to its quantization registry and CLI.
- `config.MpqConfig` — reads a packed checkpoint's `quantization_config`, picks a method per layer.
- `linear_method.MpqLinearMethod` — a (fused) linear layer whose parts may each have a format.
- `moe_method.MpqFusedMoEMethod` — one FusedMoE layer whose experts may each have a format.
- `cpu_support/` — what SGLang's CPU path needs on machines without AMX / a CPU sgl-kernel build.
"""
