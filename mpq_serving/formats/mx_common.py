"""Shared OCP Microscaling (MX v1.0) machinery: 32-element blocks along the input dim, E8M0 scales.

An MX weight stores, per block of 32 contiguous input elements, one E8M0 byte `e` (the scale is
2^(e-127); e=255 is NaN) and 32 elements in a narrow float format (E2M1 for mxfp4, E4M3 for
mxfp8).  The subclasses only say how elements are rounded, stored and read back; the scale
choice, shape checks, dequantization and simulated activation quantization live here so that
both formats follow one rule.

Scale rule (`"ocp"`, the default): shared exponent X = floor(log2(amax)) - emax_elem, clamped to
E8M0's [-127, 127]; an all-zero block gets e=0 (X=-127), which is also what OCP's clamp and
compressed-tensors give, so its dequant is exactly 0.  Elements are x / 2^X rounded to nearest
even, saturating, with the sign of zero kept (a tiny negative stores -0).

`"compressed-tensors"` reproduces compressed-tensors 0.20's `generate_mx_scales` (for mxfp4 and
mxfp8 alike): amax is first rounded up to the next power of two when its significand is >= 1.75,
so X is one larger than OCP's for those blocks and identical otherwise.  Its bytes then equal ours
except that it writes +0 where x / 2^X is exactly -0.0 (an input -0.0, or an underflowing quotient).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import replace
from typing import ClassVar, Literal, cast

import torch

from ..errors import FormatError
from .base import Format, TensorLayout, check_finite
from .registry import canonical_name, get_format
from .spec import QuantizedTensor, QuantSpec

BLOCK_SIZE = 32
E8M0_BIAS = 127
E8M0_NAN = 255
MX_ACTIVATIONS = ("mxfp4", "mxfp8")

ScaleRule = Literal["ocp", "compressed-tensors"]

# 2^(e-127) for every E8M0 byte, and its reciprocal 2^(127-e).  Built in float64 and cast, so even
# 2^-127 (a float32 subnormal) is exact; 255 is NaN in both, so a NaN scale poisons its block.
_EXPONENTS = torch.arange(256, dtype=torch.float64) - E8M0_BIAS
_E8M0_VALUES = torch.exp2(_EXPONENTS).to(torch.float32)
_E8M0_RECIPROCALS = torch.exp2(-_EXPONENTS).to(torch.float32)
_E8M0_VALUES[E8M0_NAN] = float("nan")
_E8M0_RECIPROCALS[E8M0_NAN] = float("nan")


def e8m0_to_float(e: torch.Tensor) -> torch.Tensor:
    """Biased E8M0 bytes → float32 scales 2^(e-127) (NaN for 255), exact for every byte."""
    return _E8M0_VALUES.to(e.device)[e.long()]


def shared_exponent(amax: torch.Tensor, emax_elem: int, rule: ScaleRule = "ocp") -> torch.Tensor:
    """Biased E8M0 byte per block from the block's max |x| (float32, finite, >= 0).

    frexp gives floor(log2(amax)) exactly, subnormals included, where log2 rounds near powers of two.
    """
    significand, exponent = torch.frexp(amax)  # amax = significand * 2^exponent, significand in [0.5, 1)
    unbiased = exponent - 1 - emax_elem
    if rule == "compressed-tensors":
        unbiased = unbiased + (significand >= 0.875).to(unbiased.dtype)  # amax >= 1.75 * 2^floor(log2 amax)
    elif rule != "ocp":
        raise FormatError(f"unknown MX scale rule {rule!r}; expected 'ocp' or 'compressed-tensors'")
    biased = torch.where(amax > 0, unbiased + E8M0_BIAS, 0)
    return biased.clamp(0, E8M0_NAN - 1).to(torch.uint8)


class MXFormat(Format):
    """An OCP MX format: subclasses define the element encoding and the stored tensor names."""

    emax_elem: ClassVar[int]
    elements_key: ClassVar[str]

    @abstractmethod
    def _encode(self, scaled: torch.Tensor) -> torch.Tensor:
        """Round values in element units (RNE, saturating) to the element payload, one per value."""

    @abstractmethod
    def _decode(self, elements: torch.Tensor) -> torch.Tensor:
        """Element payload → float32 element values."""

    @abstractmethod
    def _elements_layout(self, shape: tuple[int, int]) -> tuple[tuple[int, ...], torch.dtype]:
        """Shape and dtype of the stored elements tensor for a weight of this shape."""

    def _pack(self, elements: torch.Tensor) -> torch.Tensor:
        """Element payload [out, in] → the stored elements tensor."""
        return elements

    def _unpack(self, stored: torch.Tensor) -> torch.Tensor:
        """The stored elements tensor → element payload [out, in]."""
        return stored

    def normalize(self, spec: QuantSpec) -> QuantSpec:
        spec = spec.with_defaults(group_size=BLOCK_SIZE, symmetric=True)
        if spec.group_size != BLOCK_SIZE:
            raise FormatError(
                f"{self.name}: the OCP MX block size is fixed at {BLOCK_SIZE}, got group size {spec.group_size}"
            )
        if not spec.symmetric:
            raise FormatError(f"{self.name}: MX formats are symmetric (E8M0 scale, no zero point)")
        if spec.activation is not None:
            activation = canonical_name(spec.activation)
            if activation not in MX_ACTIVATIONS:
                raise FormatError(
                    f"{self.name}: activation {spec.activation!r} is not simulated; "
                    f"expected one of {', '.join(MX_ACTIVATIONS)}"
                )
            if activation != spec.activation:
                spec = replace(spec, activation=activation)
        return spec

    def check_shape(self, spec: QuantSpec, shape: tuple[int, int], name: str = "weight") -> None:
        super().check_shape(spec, shape, name)
        if min(shape) <= 0:
            raise FormatError(f"{name}: {self.name} needs a non-empty weight, got shape {tuple(shape)}")
        if shape[1] % BLOCK_SIZE:
            raise FormatError(
                f"{name}: in_features {shape[1]} is not a multiple of the {self.name} block size {BLOCK_SIZE}; "
                f"keep this weight in another format (e.g. bf16)"
            )

    def layout(self, spec: QuantSpec, shape: tuple[int, int]) -> TensorLayout:
        self.check_shape(spec, shape)
        out, n = shape
        return {
            self.elements_key: self._elements_layout((out, n)),
            "weight_scale": ((out, n // BLOCK_SIZE), torch.uint8),
        }

    def quantize(
        self, weight: torch.Tensor, spec: QuantSpec, name: str = "weight", *, scale_rule: ScaleRule = "ocp"
    ) -> QuantizedTensor:
        """Quantize with the OCP scale rule, or compressed-tensors' to reproduce its bytes exactly."""
        spec = self.normalize(spec)
        shape = tuple(weight.shape)
        self.check_shape(spec, shape, name)
        if not weight.is_floating_point():
            raise FormatError(f"{name}: {self.name} quantizes a float weight, got dtype {weight.dtype}")
        w = weight.detach().to(torch.float32)
        check_finite(w, name)
        exps, elements = self._quantize_blocks(w.reshape(shape[0], -1, BLOCK_SIZE), scale_rule)
        return QuantizedTensor(
            spec,
            shape,
            {self.elements_key: self._pack(elements.reshape(shape)).contiguous(), "weight_scale": exps.contiguous()},
        )

    def dequantize(self, q: QuantizedTensor) -> torch.Tensor:
        out, n = q.shape
        values = self._decode(self._unpack(q.tensors[self.elements_key])).reshape(out, -1, BLOCK_SIZE)
        return (values * e8m0_to_float(q.tensors["weight_scale"]).unsqueeze(-1)).reshape(out, n)

    def fake_quantize(self, x: torch.Tensor, name: str = "activation") -> torch.Tensor:
        """Quantize-dequantize x per 32 along its last dim (float32): simulated MX activations."""
        if x.shape[-1] % BLOCK_SIZE:
            raise FormatError(f"{name}: last dim {x.shape[-1]} is not a multiple of the {self.name} block size")
        x32 = x.detach().to(torch.float32)
        check_finite(x32, name)
        exps, elements = self._quantize_blocks(x32.reshape(*x.shape[:-1], -1, BLOCK_SIZE), "ocp")
        return (self._decode(elements) * e8m0_to_float(exps).unsqueeze(-1)).reshape(x.shape)

    def matmul(self, x: torch.Tensor, q: QuantizedTensor) -> torch.Tensor:
        """`y = x @ W^T`, with x quantize-dequantized first when the spec names an MX activation."""
        if q.spec.activation is None:
            return super().matmul(x, q)
        act = cast(MXFormat, get_format(q.spec.activation))
        y = act.fake_quantize(x) @ self.dequantize(q).t()
        return y.to(x.dtype)

    def _quantize_blocks(self, blocks: torch.Tensor, rule: ScaleRule) -> tuple[torch.Tensor, torch.Tensor]:
        """[..., 32] float32 blocks → (E8M0 bytes [...], element payload [..., 32])."""
        exps = shared_exponent(blocks.abs().amax(-1), self.emax_elem, rule)
        # Multiplying by the exact power-of-two reciprocal is the exact division by the scale.
        scaled = blocks * _E8M0_RECIPROCALS.to(blocks.device)[exps.long()].unsqueeze(-1)
        return exps, self._encode(scaled)
