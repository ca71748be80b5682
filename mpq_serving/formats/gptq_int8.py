"""GPTQ int8: GPTQ's layout with 4 codes per int32 (GPTQModel `bits: 8`, vLLM's gptq 8-bit).

The published mixed "Int4-Int8" releases give some modules 8 bits through GPTQModel's `dynamic`
overrides; those modules are this format.  Everything but the width is `gptq_int4.py`'s.
"""

from __future__ import annotations

from .gptq_int4 import GPTQInt4
from .registry import register_format


@register_format
class GPTQInt8(GPTQInt4):
    """Int8 weights, 4 per int32 along the input dim, fp16 scales, packed zeros and g_idx."""

    name = "gptq_int8"
    aliases = ("gptq-int8",)
    bits = 8
