"""compressed-tensors W8A16 `pack-quantized` int8: llm-compressor's W8A16 preset (int8, group 128).

Everything but the width is `ct_int4.py`'s: 4 codes q + 128 per int32 along the input dim, scales per
group, zero points (asymmetric) packed along the output dim, `weight_shape`.  Not to be confused with
`int8`, whose plain `weight` int8 tensor is compressed-tensors' `int-quantized` (W8A8) layout.
"""

from __future__ import annotations

from .ct_int4 import CTInt4
from .registry import register_format


@register_format
class CTInt8(CTInt4):
    """Int8 weights packed 4 per int32 along the input dim, compressed-tensors naming."""

    name = "ct_int8"
    aliases = ("pack_quantized_int8",)  # not "w8a16": that names `int8` (weight-only) in plans
    bits = 8
