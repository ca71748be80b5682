"""FP8 E4M3 weights: per-tensor / per-channel (compressed-tensors) or 2-D block scales (DeepSeek-V3).

Quantization follows compressed-tensors 0.20 step for step so our bytes equal theirs:
scale = amax / 448 in float32, an all-zero group's scale becomes float32 eps (their
`calculate_qparams` rule; dequant still gives exact zeros), then `clamp(w / scale, ±448)` cast
to float8_e4m3fn (round to nearest, ties to even; -0.0 stored as +0 like theirs).  Deliberate
differences from compressed-tensors: the scale is always computed and stored in float32 (they use
the weight's dtype, e.g. bf16), dequantization is float32 whatever the stored scale dtype (theirs
returns the scale's dtype), and block scales are stored as `weight_scale_inv`, the name
DeepSeek-V3 / Qwen3-FP8 releases use.

Activations, as the releases declare them and vLLM / SGLang run them:
- `fp8` (dynamic): per token with per-tensor / per-channel weights; per token **and per group of the
  block's width** along in_features with block weights (DeepSeek-V3's `per_token_group_quant_fp8`,
  compressed-tensors' FP8_BLOCK preset `strategy: group, group_size: 128`).
- `fp8_static`: one calibrated per-tensor `input_scale` stored beside the weight (AutoFP8
  `activation_scheme: static`, compressed-tensors' FP8 preset).  It cannot be made by round-to-nearest
  from a float weight, so it only comes from a source checkpoint that stores one.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from ..errors import FormatError
from .base import Format, TensorLayout, check_finite
from .registry import register_format
from .spec import QuantizedTensor, QuantSpec

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
DEFAULT_BLOCK = 128
_GRANULARITIES = ("tensor", "channel", "block")
_ACTIVATIONS = {"fp8": "fp8", "fp8_e4m3": "fp8", "fp8_dynamic": "fp8", "fp8_static": "fp8_static"}


def scale_from_amax(amax: torch.Tensor) -> torch.Tensor:
    """amax / 448 in float32; exact zeros become float32 eps, as compressed-tensors does.

    Only exact zeros are replaced (not clamped to a floor) so tiny but non-zero scales stay
    bit-identical to compressed-tensors'.
    """
    scale = amax.to(torch.float32) / FP8_MAX
    eps = torch.tensor(torch.finfo(torch.float32).eps, dtype=torch.float32, device=scale.device)
    return torch.where(scale == 0, eps, scale)


def to_fp8(normalized: torch.Tensor) -> torch.Tensor:
    """Clamp to ±448 first: torch's cast does not saturate (out-of-range values become NaN).

    `+ 0.0` turns -0.0 into +0.0: compressed-tensors adds its (zero) zero point after dividing,
    so a -0.0 weight is stored as 0x00 there, and must be here to match byte for byte.
    """
    return (normalized + 0.0).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def _block_amax(w: torch.Tensor, block: int) -> torch.Tensor:
    """Per-(block × block) amax; ragged edge blocks are zero-padded, which leaves amax unchanged."""
    out, inp = w.shape
    rows, cols = math.ceil(out / block), math.ceil(inp / block)
    padded = F.pad(w.abs(), (0, cols * block - inp, 0, rows * block - out))
    return padded.reshape(rows, block, cols, block).amax(dim=(1, 3))


def _expand_blocks(scale: torch.Tensor, block: int, shape: tuple[int, int]) -> torch.Tensor:
    """Block scales [ceil(out/B), ceil(in/B)] → one scale per weight element [out, in]."""
    full = scale.repeat_interleave(block, dim=0).repeat_interleave(block, dim=1)
    return full[: shape[0], : shape[1]]


@register_format
class FP8(Format):
    """E4M3 weights with float32 scales; W8A8 when `spec.activation == "fp8"`, else W8A16."""

    name = "fp8"
    aliases = ("fp8_e4m3",)
    tensor_names = ("weight", "weight_scale", "weight_scale_inv", "input_scale")

    def normalize(self, spec: QuantSpec) -> QuantSpec:
        spec = spec.with_defaults(granularity="channel", symmetric=True)
        if spec.granularity not in _GRANULARITIES:
            raise FormatError(
                f"{self.name}: granularity {spec.granularity!r} is not one of {', '.join(_GRANULARITIES)}"
            )
        if spec.symmetric is False:
            raise FormatError(f"{self.name}: E4M3 is symmetric; asymmetric ({spec.describe()}) is not supported")
        if spec.granularity == "block":
            spec = spec.with_defaults(group_size=DEFAULT_BLOCK)
            if spec.group_size <= 0:
                raise FormatError(f"{self.name}: block size (group_size) must be positive, got {spec.group_size}")
        elif spec.group_size is not None and not (spec.group_size == -1 and spec.granularity == "channel"):
            raise FormatError(
                f"{self.name}: group_size {spec.group_size} needs granularity 'block' "
                f"(square block scales), not {spec.granularity!r}"
            )
        else:
            spec = replace(spec, group_size=None)
        activation = spec.activation.lower() if spec.activation else None
        if activation is not None and activation not in _ACTIVATIONS:
            raise FormatError(
                f"{self.name}: activation {spec.activation!r} is not supported with fp8 weights; "
                f"use 'fp8' (W8A8, dynamic), 'fp8_static' (W8A8 with a stored input_scale) or none (weight-only)"
            )
        activation = _ACTIVATIONS.get(activation)
        if activation == "fp8_static" and spec.granularity == "block":
            raise FormatError(
                f"{self.name}: static per-tensor activations with block weight scales ({spec.describe()}) are not a "
                "scheme vLLM or SGLang runs; block weights take dynamic per-group activations ('fp8')"
            )
        return replace(spec, activation=activation)

    def check_shape(self, spec: QuantSpec, shape: tuple[int, int], name: str = "weight") -> None:
        super().check_shape(spec, shape, name)
        if min(shape) <= 0:
            raise FormatError(f"{name}: {self.name} needs a non-empty weight, got shape {tuple(shape)}")

    def layout(self, spec: QuantSpec, shape: tuple[int, int]) -> TensorLayout:
        spec = self.normalize(spec)
        out, inp = shape
        if spec.granularity == "tensor":
            # compressed-tensors initialize_qparams allocates (1,) for a per-tensor scale.
            scale = ("weight_scale", (1,))
        elif spec.granularity == "channel":
            scale = ("weight_scale", (out, 1))
        else:
            b = spec.group_size
            scale = ("weight_scale_inv", (math.ceil(out / b), math.ceil(inp / b)))
        layout = {"weight": ((out, inp), FP8_DTYPE), scale[0]: (scale[1], torch.float32)}
        if spec.activation == "fp8_static":
            layout["input_scale"] = ((1,), torch.float32)
        return layout

    def quantize(self, weight: torch.Tensor, spec: QuantSpec, name: str = "weight") -> QuantizedTensor:
        spec = self.normalize(spec)
        shape = tuple(weight.shape)
        self.check_shape(spec, shape, name)
        if spec.activation == "fp8_static":
            raise FormatError(
                f"{name}: {spec.describe()} needs an input_scale calibrated on activations, which rounding the "
                "weight cannot give; take this module from a source checkpoint that stores one (AutoFP8 static, "
                "llm-compressor FP8), or use dynamic activations (aq: fp8)"
            )
        if not weight.is_floating_point():
            raise FormatError(f"{name}: {self.name} quantizes a float weight, got dtype {weight.dtype}")
        check_finite(weight, name)
        w = weight.detach().to(torch.float32)
        if spec.granularity == "tensor":
            scale = scale_from_amax(w.abs().amax().reshape(1))
            tensors = {"weight": to_fp8(w / scale), "weight_scale": scale}
        elif spec.granularity == "channel":
            scale = scale_from_amax(w.abs().amax(dim=1, keepdim=True))
            tensors = {"weight": to_fp8(w / scale), "weight_scale": scale}
        else:
            scale = scale_from_amax(_block_amax(w, spec.group_size))
            full = _expand_blocks(scale, spec.group_size, shape)
            tensors = {"weight": to_fp8(w / full), "weight_scale_inv": scale}
        return QuantizedTensor(spec, shape, {k: t.contiguous() for k, t in tensors.items()})

    def dequantize(self, q: QuantizedTensor) -> torch.Tensor:
        return q.tensors["weight"].to(torch.float32) * self._scales(q, torch.float32)

    def matmul(self, x: torch.Tensor, q: QuantizedTensor) -> torch.Tensor:
        """W8A8: x quantized to E4M3 as the spec declares (see the module docstring), then a float64 matmul.

        Every product of two E4M3 values is exact in float64, so this is the reference a fused
        FP8 GEMM with float32 accumulation should approach.
        """
        if q.spec.activation is None:
            return super().matmul(x, q)
        rows = x.reshape(-1, x.shape[-1]).to(torch.float32)
        x_deq = self.fake_quantize_activations(rows, q)
        w_deq = q.tensors["weight"].to(torch.float64) * self._scales(q, torch.float64)
        y = x_deq @ w_deq.t()
        return y.reshape(*x.shape[:-1], q.shape[0]).to(x.dtype)

    def fake_quantize_activations(self, rows: torch.Tensor, q: QuantizedTensor) -> torch.Tensor:
        """Float32 rows [M, in] quantized to E4M3 with the scales the spec declares, back in float64 (exact)."""
        if q.spec.activation == "fp8_static":
            scale = q.tensors["input_scale"].to(torch.float32).reshape(1, 1)
            return to_fp8(rows / scale).to(torch.float64) * scale.to(torch.float64)
        if q.spec.granularity == "block":
            group = q.spec.group_size
            m, k = rows.shape
            padded = F.pad(rows, (0, -k % group)).reshape(m, -1, group)
            scale = scale_from_amax(padded.abs().amax(dim=2, keepdim=True))
            deq = to_fp8(padded / scale).to(torch.float64) * scale.to(torch.float64)
            return deq.reshape(m, -1)[:, :k]
        scale = scale_from_amax(rows.abs().amax(dim=1, keepdim=True))
        return to_fp8(rows / scale).to(torch.float64) * scale.to(torch.float64)

    def from_tensors(
        self, tensors: dict[str, torch.Tensor], spec: QuantSpec, shape: tuple[int, int], name: str = "weight"
    ) -> QuantizedTensor:
        """Also accept the two spellings real checkpoints use besides ours.

        A 0-d per-tensor `weight_scale` or `input_scale` (AutoFP8; vLLM reshapes it to (1,) the same way), and a
        compressed-tensors FP8_BLOCK checkpoint's `weight_scale`, which holds what DeepSeek-V3
        calls `weight_scale_inv` (dequant = weight × scale per block in both).
        """
        spec = self.normalize(spec)
        tensors = dict(tensors)
        if spec.granularity == "tensor" and "weight_scale" in tensors and tensors["weight_scale"].dim() == 0:
            tensors["weight_scale"] = tensors["weight_scale"].reshape(1)
        if "input_scale" in tensors and tensors["input_scale"].dim() == 0:
            tensors["input_scale"] = tensors["input_scale"].reshape(1)
        if spec.granularity == "block" and "weight_scale_inv" not in tensors and "weight_scale" in tensors:
            tensors["weight_scale_inv"] = tensors.pop("weight_scale")
        return super().from_tensors(tensors, spec, shape, name)

    def _scales(self, q: QuantizedTensor, dtype: torch.dtype) -> torch.Tensor:
        """The stored scales in `dtype`, shaped to broadcast against the [out, in] weight."""
        if q.spec.granularity == "block":
            scale = q.tensors["weight_scale_inv"].to(dtype)
            return _expand_blocks(scale, q.spec.group_size, q.shape)
        return q.tensors["weight_scale"].to(dtype)
