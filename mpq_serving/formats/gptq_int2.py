"""GPTQ int2: GPTQ's layout with 16 codes per int32 (GPTQModel `bits: 2`).

Everything but the width is `gptq_int4.py`'s.
"""

from __future__ import annotations

from .gptq_int4 import GPTQInt4
from .registry import register_format


@register_format
class GPTQInt2(GPTQInt4):
    """Int2 weights, 16 per int32 along the input dim, fp16 scales, packed zeros and g_idx."""

    name = "gptq_int2"
    aliases = ("gptq-int2",)
    bits = 2
