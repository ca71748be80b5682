"""MXFP4 (OCP MX v1.0): E2M1 elements, one E8M0 scale per 32 inputs; compressed-tensors `mxfp4-pack-quantized`.

Stored as `weight_packed` uint8 [out, in/2] and `weight_scale` uint8 [out, in/32] (biased E8M0).
An E2M1 code is sign<<3 | magnitude index into (0, 0.5, 1, 1.5, 2, 3, 4, 6); byte j of a row holds
element 2j in its low nibble and element 2j+1 in its high nibble (compressed-tensors'
`pack_fp4_to_uint8`).  openai/gpt-oss `*_blocks` / `*_scales` use the same codes, nibble order and
scale bytes, so `from_gpt_oss` only reshapes.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import FormatError
from .mx_common import BLOCK_SIZE, MXFormat
from .registry import register_format
from .spec import QuantizedTensor, QuantSpec

E2M1_MAX = 6.0
# code → value; codes 8..15 are the negatives (8 is -0.0, which a tiny negative weight rounds to).
_E2M1_VALUES = torch.tensor(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=torch.float32
)


def e2m1_encode(scaled: torch.Tensor) -> torch.Tensor:
    """Element units → E2M1 codes (uint8, one per value): RNE, saturating at ±6, sign of zero kept."""
    mag = scaled.abs().clamp(max=E2M1_MAX)
    # E2M1 spacing is 0.5 below 2, 1 in [2, 4), 2 in [4, 6]; torch.round is half-to-even on the grid
    # index, which is the mantissa parity, so this is OCP's round-to-nearest-even.
    step = torch.where(mag < 2, 0.5, torch.where(mag < 4, 1.0, 2.0))
    value = torch.round(mag / step) * step
    index = torch.where(value < 2, value * 2, torch.where(value < 4, value + 2, value / 2 + 4))
    return index.to(torch.uint8) | (torch.signbit(scaled).to(torch.uint8) << 3)


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    """E2M1 codes → float32 values."""
    return _E2M1_VALUES.to(codes.device)[codes.long()]


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """[out, in] 4-bit codes → [out, in/2] bytes, element 2j in the low nibble (`pack_fp4_to_uint8`)."""
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def unpack_nibbles(stored: torch.Tensor) -> torch.Tensor:
    return torch.stack((stored & 0x0F, stored >> 4), dim=-1).reshape(stored.shape[0], -1)


@register_format
class MXFP4(MXFormat):
    name = "mxfp4"
    aliases = ("mxfp4_e2m1",)
    tensor_names = ("weight_packed", "weight_scale")
    emax_elem: ClassVar[int] = 2  # floor(log2(6))
    elements_key: ClassVar[str] = "weight_packed"

    def _encode(self, scaled: torch.Tensor) -> torch.Tensor:
        return e2m1_encode(scaled)

    def _decode(self, elements: torch.Tensor) -> torch.Tensor:
        return e2m1_decode(elements)

    def _pack(self, elements: torch.Tensor) -> torch.Tensor:
        return pack_nibbles(elements)

    def _unpack(self, stored: torch.Tensor) -> torch.Tensor:
        return unpack_nibbles(stored)

    def _elements_layout(self, shape: tuple[int, int]) -> tuple[tuple[int, ...], torch.dtype]:
        return (shape[0], shape[1] // 2), torch.uint8


def from_gpt_oss(blocks: torch.Tensor, scales: torch.Tensor, name: str = "weight") -> QuantizedTensor:
    """One gpt-oss MXFP4 weight (`blocks` uint8 [out, in/32, 16], `scales` uint8 [out, in/32]) → mxfp4.

    gpt-oss (and transformers' `convert_moe_packed_tensors`) decode byte j of a block as element 2j
    (low nibble) and 2j+1 (high nibble) through the same sign-magnitude E2M1 table, with scale
    2^(s-127): the bytes are ours already, so this only reshapes, it never dequantizes.
    """
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise FormatError(f"{name}: gpt-oss MXFP4 blocks and scales are uint8, got {blocks.dtype} and {scales.dtype}")
    if blocks.dim() != 3 or blocks.shape[-1] != BLOCK_SIZE // 2 or tuple(scales.shape) != tuple(blocks.shape[:-1]):
        raise FormatError(
            f"{name}: gpt-oss MXFP4 wants blocks [out, in/32, 16] and scales [out, in/32], "
            f"got {tuple(blocks.shape)} and {tuple(scales.shape)}"
        )
    out, groups, _ = blocks.shape
    return QuantizedTensor(
        QuantSpec("mxfp4", group_size=BLOCK_SIZE),
        (out, groups * BLOCK_SIZE),
        {
            "weight_packed": blocks.reshape(out, groups * BLOCK_SIZE // 2).contiguous(),
            "weight_scale": scales.contiguous(),
        },
    )


def from_gpt_oss_experts(blocks: torch.Tensor, scales: torch.Tensor, name: str = "weight") -> list[QuantizedTensor]:
    """A gpt-oss expert stack (`blocks` [experts, out, in/32, 16], `scales` [experts, out, in/32]) → one per expert."""
    if blocks.dim() != 4 or scales.dim() != 3 or blocks.shape[0] != scales.shape[0]:
        raise FormatError(
            f"{name}: gpt-oss expert MXFP4 wants blocks [experts, out, in/32, 16] and scales [experts, out, in/32], "
            f"got {tuple(blocks.shape)} and {tuple(scales.shape)}"
        )
    return [from_gpt_oss(b, s, f"{name}[{e}]") for e, (b, s) in enumerate(zip(blocks, scales, strict=True))]
