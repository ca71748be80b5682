"""Numeric formats, one module each, registered by name on import."""

from . import (  # noqa: F401  (registration)
    awq_int4,
    ct_int4,
    ct_int8,
    fp8,
    gptq_int2,
    gptq_int3,
    gptq_int4,
    gptq_int8,
    int8,
    mxfp4,
    mxfp8,
    nvfp4,
    passthrough,
)
from .base import Format
from .registry import canonical_name, format_names, get_format, register_format
from .spec import BF16, QuantizedTensor, QuantSpec

__all__ = [
    "BF16",
    "Format",
    "QuantSpec",
    "QuantizedTensor",
    "canonical_name",
    "format_names",
    "get_format",
    "register_format",
]
