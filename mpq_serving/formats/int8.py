"""INT8 symmetric per-channel weights (compressed-tensors `int-quantized` / `naive-quantized` layout).

q = round(clamp(w / scale, -128, 127)): compressed-tensors' `round_to_quantized_type_args` exactly
(division in float32, clamp to the int8 range, then torch.round, i.e. round half to even).

One deliberate difference from compressed-tensors 0.20: their `calculate_qparams` uses
scale = amax / 127.5 (half the width of [-128, 127]), so a row's negative maximum lands on -128.
We use scale = amax / 127, the convention of vLLM's `dynamic_scaled_int8_quant` and SmoothQuant, so codes
are symmetric in [-127, 127] and w and -w quantize to negated codes.  (The -128 clamp bound is
reached only when the scale is a subnormal float32, row amax < 127 * 2^-126, whose rounding can push
|w / scale| past 127.5.)  Given the same scale both produce the same bytes, their decompressor reads
our tensors back to exactly our dequant, and their checkpoints load as they are (-128 codes included).
An all-zero row gets scale float32 eps (their rule), so its dequant is exact zeros.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..errors import FormatError
from .base import Format, TensorLayout, check_finite
from .registry import register_format
from .spec import QuantizedTensor, QuantSpec

INT8_MAX = 127.0
INT8_MIN = -128.0


def scale_from_amax(amax: torch.Tensor) -> torch.Tensor:
    """amax / 127 in float32; exact zeros become float32 eps, as compressed-tensors does.

    Only exact zeros are replaced (not clamped to a floor) so tiny non-zero scales stay as computed.
    """
    scale = amax.to(torch.float32) / INT8_MAX
    eps = torch.tensor(torch.finfo(torch.float32).eps, dtype=torch.float32, device=scale.device)
    return torch.where(scale == 0, eps, scale)


def to_int8(normalized: torch.Tensor) -> torch.Tensor:
    """Clamp, then round half to even, then cast (the cast alone would truncate toward zero)."""
    return torch.round(normalized.clamp(INT8_MIN, INT8_MAX)).to(torch.int8)


@register_format
class INT8(Format):
    """Symmetric per-channel int8; W8A8 (dynamic per-token int8 activations) when `activation == "int8"`."""

    name = "int8"
    tensor_names = ("weight", "weight_scale")
    aliases = ("w8a16",)

    def normalize(self, spec: QuantSpec) -> QuantSpec:
        spec = spec.with_defaults(granularity="channel", symmetric=True, group_size=-1)
        if spec.granularity != "channel":
            raise FormatError(
                f"{self.name}: only per-channel scales are supported, got granularity {spec.granularity!r}"
            )
        if spec.group_size != -1:
            raise FormatError(
                f"{self.name}: only per-channel scales (group_size -1) are supported, got group_size {spec.group_size}"
            )
        if spec.symmetric is False:
            raise FormatError(f"{self.name}: only symmetric quantization is supported ({spec.describe()})")
        activation = spec.activation.lower() if spec.activation else None
        if activation not in (None, "int8"):
            raise FormatError(
                f"{self.name}: activation {spec.activation!r} is not supported with int8 weights; "
                f"use 'int8' (W8A8) or none (weight-only)"
            )
        return replace(spec, activation=activation)

    def check_shape(self, spec: QuantSpec, shape: tuple[int, int], name: str = "weight") -> None:
        super().check_shape(spec, shape, name)
        if min(shape) <= 0:
            raise FormatError(f"{name}: {self.name} needs a non-empty weight, got shape {tuple(shape)}")

    def layout(self, spec: QuantSpec, shape: tuple[int, int]) -> TensorLayout:
        out, inp = shape
        return {"weight": ((out, inp), torch.int8), "weight_scale": ((out, 1), torch.float32)}

    def quantize(self, weight: torch.Tensor, spec: QuantSpec, name: str = "weight") -> QuantizedTensor:
        spec = self.normalize(spec)
        shape = tuple(weight.shape)
        self.check_shape(spec, shape, name)
        if not weight.is_floating_point():
            raise FormatError(f"{name}: {self.name} quantizes a float weight, got dtype {weight.dtype}")
        check_finite(weight, name)
        w = weight.detach().to(torch.float32)
        scale = scale_from_amax(w.abs().amax(dim=1, keepdim=True))
        overflow = torch.isinf(scale * INT8_MAX).flatten().nonzero()
        if overflow.numel():
            # Only |w| = float32 max itself does this (amax/127 rounds up); fp8's ×448 never does.
            raise FormatError(
                f"{name}: row {overflow[0].item()} reaches the float32 limit (|w| = 3.4e38); "
                f"its {self.name} dequantization (127 × scale) would overflow to inf"
            )
        return QuantizedTensor(spec, shape, {"weight": to_int8(w / scale).contiguous(), "weight_scale": scale})

    def dequantize(self, q: QuantizedTensor) -> torch.Tensor:
        return q.tensors["weight"].to(torch.float32) * q.tensors["weight_scale"].to(torch.float32)

    def matmul(self, x: torch.Tensor, q: QuantizedTensor) -> torch.Tensor:
        """W8A8: each row of x to int8 (scale amax/127), exact integer matmul, then × x_scale × w_scale.

        The integer products are accumulated in float64, exact while |sum| < 2^53 (any in_features
        below 2^39), i.e. the same value as an int32-accumulating kernel; the rescale is float64.
        vLLM's kernel multiplies x by 127/amax instead of dividing by the scale, so its activation
        codes can differ from these by one where the two roundings straddle a half.
        """
        if q.spec.activation != "int8":
            return super().matmul(x, q)
        rows = x.reshape(-1, x.shape[-1]).to(torch.float32)
        x_scale = scale_from_amax(rows.abs().amax(dim=1, keepdim=True))
        acc = to_int8(rows / x_scale).to(torch.float64) @ q.tensors["weight"].to(torch.float64).t()
        y = acc * x_scale.to(torch.float64) * q.tensors["weight_scale"].to(torch.float64).t()
        return y.reshape(*x.shape[:-1], q.shape[0]).to(x.dtype)
