"""NVFP4: E2M1 elements, one FP8 E4M3 scale per 16 inputs, one float32 global scale per weight.

The format of NVIDIA's FP4 releases, as compressed-tensors 0.20 writes it (`nvfp4-pack-quantized`,
llm-compressor's NVFP4A16 preset):

* `weight_packed`       uint8 [out, in/2]: E2M1 codes, element 2j in the low nibble (as mxfp4);
* `weight_scale`        float8_e4m3fn [out, in/16]: the group scale times the global scale;
* `weight_global_scale` float32 [1]: 448 · 6 / amax of the whole weight.

w = e2m1 · (weight_scale / weight_global_scale), the division in float32, as compressed-tensors'
`_dequantize` computes it; so their float32 decompression equals ours bit for bit.  Quantization
follows their `generate_gparam` / `calculate_qparams` / `_quantize`: group scale amax/6 times the
global scale, clamped to ±448 and cast to E4M3, a zero scale replaced by E4M3's eps (0.125); codes
x / (scale / global) rounded to nearest even, saturating at ±6, the sign of a value rounding to zero kept.

NVFP4 activations (the W4A4 preset) are refused by the readers: they are not simulated here.
ModelOpt's naming (`weight`, `weight_scale`, `weight_scale_2` = 1 / global scale) is not read: its
dequantization multiplies by `weight_scale_2`, which no float32 global scale reproduces exactly.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..errors import FormatError
from .base import Format, TensorLayout, check_finite
from .mxfp4 import E2M1_MAX, e2m1_decode, e2m1_encode, pack_nibbles, unpack_nibbles
from .registry import register_format
from .spec import QuantizedTensor, QuantSpec

GROUP_SIZE = 16
SCALE_DTYPE = torch.float8_e4m3fn
SCALE_MAX = 448.0
SCALE_EPS = 0.125  # torch.finfo(float8_e4m3fn).eps: compressed-tensors' stand-in for a zero scale


@register_format
class NVFP4(Format):
    """E2M1 weights with E4M3 scales per 16 inputs and a float32 global scale (weight-only)."""

    name = "nvfp4"
    aliases = ("nvfp4a16",)
    tensor_names = ("weight_packed", "weight_scale", "weight_global_scale")

    def normalize(self, spec: QuantSpec) -> QuantSpec:
        spec = spec.with_defaults(group_size=GROUP_SIZE, symmetric=True)
        if spec.group_size != GROUP_SIZE:
            raise FormatError(f"{self.name}: the group size is fixed at {GROUP_SIZE}, got {spec.group_size}")
        if not spec.symmetric:
            raise FormatError(f"{self.name}: E2M1 is symmetric; asymmetric ({spec.describe()}) is not supported")
        if spec.activation is not None:
            raise FormatError(f"{self.name}: activation {spec.activation!r} is not supported; NVFP4 runs "
                              "weight-only here (NVFP4A16)")
        return replace(spec, granularity=None)

    def check_shape(self, spec: QuantSpec, shape: tuple[int, int], name: str = "weight") -> None:
        super().check_shape(spec, shape, name)
        if shape[1] % GROUP_SIZE or min(shape) <= 0:
            raise FormatError(f"{name}: {self.name} needs in_features divisible by {GROUP_SIZE}, "
                              f"got shape {tuple(shape)}")

    def layout(self, spec: QuantSpec, shape: tuple[int, int]) -> TensorLayout:
        out_f, in_f = shape
        return {
            "weight_packed": ((out_f, in_f // 2), torch.uint8),
            "weight_scale": ((out_f, in_f // GROUP_SIZE), SCALE_DTYPE),
            "weight_global_scale": ((1,), torch.float32),
        }

    def quantize(self, weight: torch.Tensor, spec: QuantSpec, name: str = "weight") -> QuantizedTensor:
        spec = self.normalize(spec)
        shape = tuple(weight.shape)
        self.check_shape(spec, shape, name)
        if not weight.is_floating_point():
            raise FormatError(f"{name}: {self.name} quantizes a float weight, got dtype {weight.dtype}")
        check_finite(weight, name)
        # amax / 6 and the global scale are computed in the weight's own float dtype, as compressed-tensors'
        # observers and qparams do (a bf16 model gets bf16-rounded intermediates), the rest in float32.
        w = weight.detach() if weight.dtype in (torch.float16, torch.bfloat16, torch.float32) else weight.float()
        amax = w.abs().amax().clamp(min=torch.finfo(w.dtype).tiny).reshape(1)
        global_scale = (SCALE_MAX * E2M1_MAX / amax).to(torch.float32)
        global_scale = torch.where(torch.isfinite(global_scale), global_scale, torch.ones_like(global_scale))
        groups = w.reshape(shape[0], -1, GROUP_SIZE)
        local = global_scale * (groups.abs().amax(dim=-1) / E2M1_MAX)
        scale = local.clamp(-SCALE_MAX, SCALE_MAX).to(SCALE_DTYPE)
        scale = torch.where(scale.to(torch.float32) == 0, torch.tensor(SCALE_EPS).to(SCALE_DTYPE), scale)
        effective = scale.to(torch.float32) / global_scale
        codes = e2m1_encode(groups.to(torch.float32) / effective.unsqueeze(-1)).reshape(shape)
        tensors = {"weight_packed": pack_nibbles(codes).contiguous(), "weight_scale": scale.contiguous(),
                   "weight_global_scale": global_scale.contiguous()}
        return QuantizedTensor(spec, shape, tensors)

    def dequantize(self, q: QuantizedTensor) -> torch.Tensor:
        out_f, in_f = q.shape
        values = e2m1_decode(unpack_nibbles(q.tensors["weight_packed"])).reshape(out_f, -1, GROUP_SIZE)
        global_scale = q.tensors["weight_global_scale"].to(torch.float32).reshape(1)
        effective = q.tensors["weight_scale"].to(torch.float32) / global_scale
        return (values * effective.unsqueeze(-1)).reshape(out_f, in_f)

    def from_tensors(
        self, tensors: dict[str, torch.Tensor], spec: QuantSpec, shape: tuple[int, int], name: str = "weight"
    ) -> QuantizedTensor:
        """Also accept a 0-d global scale."""
        tensors = dict(tensors)
        g = tensors.get("weight_global_scale")
        if g is not None and g.dim() == 0:
            tensors["weight_global_scale"] = g.reshape(1)
        return super().from_tensors(tensors, spec, shape, name)
