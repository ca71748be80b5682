"""NVFP4: our bytes are compressed-tensors' own (their qparams, their compressor), and our float32 dequantization
is their `_dequantize` in float32, bit for bit."""

from __future__ import annotations

import pytest
import torch
from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
from compressed_tensors.quantization import QuantizationScheme
from compressed_tensors.quantization.lifecycle.forward_helpers import _dequantize
from compressed_tensors.quantization.quant_scheme import NVFP4A16
from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam

from mpq_serving.errors import FormatError
from mpq_serving.formats import QuantSpec, get_format

NVFP4 = get_format("nvfp4")
SCHEME = QuantizationScheme(targets=["Linear"], **NVFP4A16)
NAME = "model.layers.2.mlp.up_proj.weight"


def theirs(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """llm-compressor's path: global scale from the tensor's min / max, group qparams, the NVFP4 compressor."""
    global_scale = generate_gparam(w.amin(), w.amax()).reshape(1)
    g = w.reshape(w.shape[0], -1, 16)
    scale, _ = calculate_qparams(g.amin(-1), g.amax(-1), SCHEME.weights, global_scale=global_scale)
    out = NVFP4PackedCompressor.compress({"weight": w, "weight_scale": scale, "weight_global_scale": global_scale},
                                         SCHEME)
    return {k: out[k] for k in ("weight_packed", "weight_scale", "weight_global_scale")}


WEIGHTS = {
    "normal": lambda: torch.randn(32, 64),
    "wide-range": lambda: torch.randn(16, 128) * torch.logspace(-6, 2, 128),
    "zero-groups": lambda: torch.cat([torch.zeros(8, 32), torch.randn(8, 32)], dim=1),
    "ties": lambda: torch.tensor([[0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0] * 2] * 4) * torch.tensor([[1.0], [-1.0], [0.5], [2.0]]),
    "bf16": lambda: torch.randn(24, 48).to(torch.bfloat16),
}


@pytest.mark.parametrize("kind", sorted(WEIGHTS))
def test_bytes_equal_compressed_tensors(kind):
    torch.manual_seed(0)
    w = WEIGHTS[kind]()
    ours = NVFP4.quantize(w, QuantSpec("nvfp4"), name=NAME)
    ref = theirs(w)
    assert {k: (tuple(v.shape), v.dtype) for k, v in ours.tensors.items()} == NVFP4.layout(ours.spec, ours.shape)
    for key, t in ref.items():
        assert t.dtype == ours.tensors[key].dtype, key
        assert torch.equal(t.reshape(-1).view(torch.uint8), ours.tensors[key].reshape(-1).view(torch.uint8)), key


@pytest.mark.parametrize("kind", sorted(WEIGHTS))
def test_dequantize_equals_theirs_in_float32(kind):
    torch.manual_seed(1)
    w = WEIGHTS[kind]()
    q = NVFP4.quantize(w, QuantSpec("nvfp4"), name=NAME)
    t = q.tensors
    out_f, in_f = q.shape
    codes = unpack_fp4_from_uint8(t["weight_packed"], out_f, in_f, dtype=torch.float32).reshape(out_f, -1, 16)
    ref = _dequantize(codes, t["weight_scale"].to(torch.float32).unsqueeze(-1), dtype=torch.float32,
                      global_scale=t["weight_global_scale"]).reshape(out_f, in_f)
    ours = NVFP4.dequantize(q)
    assert torch.equal(ours, ref)
    # error: half an E2M1 step (at most one effective scale, between 4 and 6) unless the E4M3 scale rounded
    # down far enough (tiny groups, subnormal scales) that the value saturates at ±6 scales
    effective = (t["weight_scale"].float() / t["weight_global_scale"]).repeat_interleave(16, dim=1)
    saturated = (w.float().abs() - 6 * effective).clamp(min=0)
    assert ((ours - w.float()).abs() <= effective + saturated + 1e-30).all()


def test_shapes_and_specs_are_checked_naming_the_weight():
    with pytest.raises(FormatError, match=f"{NAME}: nvfp4 needs in_features divisible by 16"):
        NVFP4.quantize(torch.randn(4, 40), QuantSpec("nvfp4"), name=NAME)
    with pytest.raises(FormatError, match="group size is fixed at 16"):
        NVFP4.normalize(QuantSpec("nvfp4", group_size=32))
    with pytest.raises(FormatError, match="weight-only"):
        NVFP4.normalize(QuantSpec("nvfp4", activation="nvfp4"))
    q = NVFP4.quantize(torch.randn(8, 32), QuantSpec("nvfp4"))
    assert NVFP4.bits_per_weight(q.spec, (8, 32)) == pytest.approx(4 + 8 / 16 + 32 / (8 * 32))
    loaded = NVFP4.from_tensors({**q.tensors, "weight_global_scale": q.tensors["weight_global_scale"].reshape(())},
                                q.spec, q.shape)
    assert torch.equal(NVFP4.dequantize(loaded), NVFP4.dequantize(q))
