"""GPTQ int3: GPTQ's layout with 32 codes in 3 int32 words (GPTQModel `bits: 3`).

Codes form one little-endian bit stream per 32 (see `gptq_int4.py` for the stream and for GPTQModel's
v1 zero offsets at this width).  Everything else is `gptq_int4.py`'s.
"""

from __future__ import annotations

from .gptq_int4 import GPTQInt4
from .registry import register_format


@register_format
class GPTQInt3(GPTQInt4):
    """Int3 weights, 32 per 3 int32 words along the input dim, fp16 scales, packed zeros and g_idx."""

    name = "gptq_int3"
    aliases = ("gptq-int3",)
    bits = 3
