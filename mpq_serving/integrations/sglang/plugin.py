"""Entry point (`sglang.srt.plugins`: `mpq`): make `mpq` a quantization method in this SGLang process.

SGLang calls general plugins early in every process it starts (launcher, scheduler, detokenizer), so
the registry entries below exist wherever a model is built.  Importing SGLang's quantization package
here is safe: the plugin runs after SGLang itself is importable.
"""

from __future__ import annotations

from ...packed_config import QUANT_METHOD


def register() -> None:
    """Add `mpq` to SGLang's quantization registries (all devices, incl. CPU) and `--quantization` choices."""
    from sglang.srt.arg_groups import choices
    from sglang.srt.layers import quantization

    from .config import MpqConfig

    for registry in (quantization.BASE_QUANTIZATION_METHODS, quantization.QUANTIZATION_METHODS,
                     quantization.CPU_QUANTIZATION_METHODS):
        registry[QUANT_METHOD] = MpqConfig
    if QUANT_METHOD not in choices.QUANTIZATION_CHOICES:
        choices.add_quantization_method_choices([QUANT_METHOD])
