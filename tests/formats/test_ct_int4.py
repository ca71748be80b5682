"""ct_int4: byte for byte against compressed-tensors' own PackedQuantizationCompressor / pack_to_int32
(installed), against a packer written here, and reading tensors made entirely by compressed-tensors.

Reference scales here: the smallest bfloat16 >= amax/7 (symmetric) or >= (hi - lo)/15 with zero
rint(-lo/scale) (asymmetric), found through float32 bit patterns in numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from compressed_tensors.quantization.utils import calculate_qparams
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mpq_serving.formats.ct_int4  # noqa: F401  (registers ct_int4 until formats/__init__ imports it)
from mpq_serving.errors import FormatError
from mpq_serving.formats import QuantSpec, get_format
from mpq_serving.formats.int4_packing import Int4Parts

CT = get_format("ct_int4")
NAME = "model.layers.11.mlp.gate_proj.weight"
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BIG = 1e38  # bf16 scales hold weights this large; 7 * scale must stay below float32's max
EDGE = (0.0, -0.0, BIG, -BIG, 65504.0, 1e-40, -1e-40, 6e-8, 1.0, -1.0, 0.5)
KINDS = ("normal", "uniform", "constant_rows", "zeros", "edge", "positive", "negative", "outlier")
MAGNITUDES = (1e-40, 1e-30, 1e-6, 1e-2, 1.0, 300.0, 1e30)


def ceil_bf16(x: np.ndarray) -> np.ndarray:
    """Smallest bfloat16 >= x, as float64: bfloat16 is the top 16 bits of a float32."""
    x = np.maximum(np.asarray(x, dtype=np.float64), 2.0**-133)  # smallest bf16 subnormal
    bits = (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint32)
    down = (bits << 16).view(np.float32).astype(np.float64)
    return np.where(down < x, ((bits + 1) << 16).view(np.float32), down.astype(np.float32)).astype(np.float64)


def ref_scales_zeros(w: np.ndarray, group: int, sym: bool):
    out_f, in_f = w.shape
    g = w.astype(np.float64).reshape(out_f, in_f // group, group)
    hi, lo = np.maximum(g.max(axis=2), 0.0), np.minimum(g.min(axis=2), 0.0)
    if sym:
        scales = ceil_bf16(np.maximum(hi, -lo) / 7)
        return scales, np.full(scales.shape, 8, np.int64)
    scales = ceil_bf16((hi - lo) / 15)
    return scales, np.clip(np.rint(-lo / scales), 0, 15).astype(np.int64)


def ref_pack_cols(values: np.ndarray) -> np.ndarray:
    """Pack [rows, n] along n, zero-padded to a multiple of 8: nibble j of word c holds column 8c + j."""
    v = values.astype(np.uint32)
    v = np.pad(v, ((0, 0), (0, -v.shape[1] % 8)))
    words = np.zeros((v.shape[0], v.shape[1] // 8), np.uint32)
    for j in range(8):
        words |= v[:, j::8] << np.uint32(4 * j)
    return words.view(np.int32)


def ct_scheme(spec: QuantSpec) -> QuantizationScheme:
    channel = spec.group_size == -1
    args = QuantizationArgs(
        num_bits=4, type="int", symmetric=spec.symmetric,
        strategy="channel" if channel else "group", group_size=None if channel else spec.group_size,
    )
    return QuantizationScheme(targets=["Linear"], weights=args)


@st.composite
def weights(draw, out_f: int, in_f: int) -> torch.Tensor:
    kind = draw(st.sampled_from(KINDS))
    mag = draw(st.sampled_from(MAGNITUDES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (out_f, in_f)
    if kind == "normal":
        w = rng.standard_normal(shape) * mag
    elif kind == "uniform":
        w = rng.uniform(-mag, mag, shape)
    elif kind == "constant_rows":
        w = np.repeat(rng.standard_normal((out_f, 1)) * mag, in_f, axis=1)
    elif kind == "zeros":
        w = np.zeros(shape)
    elif kind == "edge":
        w = rng.choice(np.array(EDGE), shape)
    elif kind == "positive":
        w = np.abs(rng.standard_normal(shape)) * mag
    elif kind == "negative":
        w = -np.abs(rng.standard_normal(shape)) * mag
    else:
        w = rng.standard_normal(shape) * mag
        w[rng.integers(out_f), rng.integers(in_f)] = 50 * mag
    return torch.from_numpy(np.clip(w, -BIG, BIG).astype(np.float32))


@st.composite
def cases(draw):
    group_size = draw(st.sampled_from([32, 64, 128, -1]))
    in_f = draw(st.integers(1, 100)) if group_size == -1 else draw(st.integers(1, 3)) * group_size
    out_f = draw(st.integers(1, 40))  # zero points pad a ragged last word, like pack_to_int32
    spec = QuantSpec("ct_int4", group_size=group_size, symmetric=draw(st.booleans()))
    return spec, draw(weights(out_f, in_f))


def group_of(spec: QuantSpec, in_f: int) -> int:
    return in_f if spec.group_size == -1 else spec.group_size


@SETTINGS
@given(cases())
def test_bytes_equal_compressed_tensors_compressor(case):
    spec, w = case
    q = CT.quantize(w, spec, name=NAME)
    out_f, in_f = w.shape
    assert {k: (tuple(v.shape), v.dtype) for k, v in q.tensors.items()} == CT.layout(spec, (out_f, in_f))
    scales, zeros = ref_scales_zeros(w.numpy(), group_of(spec, in_f), spec.symmetric)
    np.testing.assert_array_equal(q.tensors["weight_scale"].float().numpy(), scales.astype(np.float32))

    state = {"weight": w, "weight_scale": q.tensors["weight_scale"]}
    if not spec.symmetric:
        state["weight_zero_point"] = torch.from_numpy(zeros - 8).to(torch.int8)
    theirs = PackedQuantizationCompressor.compress(state, ct_scheme(spec))
    assert sorted(theirs) == sorted(q.tensors)
    for key, value in theirs.items():
        assert value.dtype == q.tensors[key].dtype and torch.equal(value, q.tensors[key]), key

    if not spec.symmetric:  # zero points: z + 8 packed along the output dim
        np.testing.assert_array_equal(q.tensors["weight_zero_point"].numpy(), ref_pack_cols(zeros.T).T)
    deq = CT.dequantize(q)
    # compressed-tensors 0.20 `unpack_from_int32` cannot read a zero point of one packed row (out <= 8):
    # it views the transposed [groups, 1] words as bytes, which needs stride(-1) == 1.
    if spec.symmetric or out_f > 8:
        decompressed = PackedQuantizationCompressor.decompress(theirs, ct_scheme(spec))["weight"]
        assert torch.equal(decompressed, deq.to(decompressed.dtype))
    step = torch.from_numpy(np.repeat(scales, group_of(spec, in_f), axis=1))
    assert ((deq.double() - w.double()).abs() <= step / 2 * (1 + 2**-20)).all()


@SETTINGS
@given(cases())
def test_packed_weight_equals_pack_to_int32_and_a_packer_written_here(case):
    spec, w = case
    q = CT.quantize(w, spec, name=NAME)
    codes = CT.unpack(q).codes
    assert torch.equal(q.tensors["weight_packed"], pack_to_int32((codes - 8).to(torch.int8), 4))
    np.testing.assert_array_equal(q.tensors["weight_packed"].numpy(), ref_pack_cols(codes.numpy()))
    unpacked = unpack_from_int32(q.tensors["weight_packed"], 4, torch.Size(w.shape))
    assert torch.equal(unpacked.to(torch.int32) + 8, codes)


@SETTINGS
@given(cases())
def test_requantizing_the_dequantized_weight_gives_identical_bytes(case):
    spec, w = case
    q = CT.quantize(w, spec, name=NAME)
    deq = CT.dequantize(q)
    parts = CT.unpack(q)
    s = parts.scales.float().repeat_interleave(group_of(spec, w.shape[1]), dim=1)
    z = (parts.zeros - 8).float().repeat_interleave(group_of(spec, w.shape[1]), dim=1)
    codes = (torch.round(torch.clamp(deq / s + z, -8, 7)) + 8).to(torch.int32)
    again = CT.pack(Int4Parts(codes, parts.scales, parts.zeros), spec)
    for key in q.tensors:
        assert torch.equal(again.tensors[key], q.tensors[key]), key
    if spec.symmetric and (parts.scales >= torch.finfo(torch.bfloat16).tiny).all():
        requant = CT.quantize(deq, spec, name=NAME)  # amax/7 with normal scales is a fixed point
        for key in q.tensors:
            assert torch.equal(requant.tensors[key], q.tensors[key]), key


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group_size", [32, 128, -1])
def test_reads_tensors_made_by_compressed_tensors(sym, group_size):
    """llm-compressor's path: calculate_qparams (scale amax/7.5, codes down to -8), then compress."""
    torch.manual_seed(group_size + sym)
    w = torch.randn(48, 256)
    spec = QuantSpec("ct_int4", group_size=group_size, symmetric=sym)
    group = 256 if group_size == -1 else group_size
    grouped = w.view(48, 256 // group, group)
    scheme = ct_scheme(spec)
    scale, zp = calculate_qparams(grouped.amin(dim=-1), grouped.amax(dim=-1), scheme.weights)
    state = {"weight": w, "weight_scale": scale}
    if not sym:
        state["weight_zero_point"] = zp
    compressed = PackedQuantizationCompressor.compress(state, scheme)
    q = CT.from_tensors(dict(compressed), spec, (48, 256), name=NAME)
    reference = PackedQuantizationCompressor.decompress(compressed, scheme)["weight"]
    assert torch.equal(CT.dequantize(q), reference)
    assert CT.unpack(q).codes.min() == 0  # their scale rule does reach code -8


def test_layout_bits_per_weight_and_aliases():
    sym = QuantSpec("ct_int4")
    assert CT.layout(sym, (576, 1536)) == {
        "weight_packed": ((576, 192), torch.int32),
        "weight_scale": ((576, 12), torch.bfloat16),
        "weight_shape": ((2,), torch.int64),
    }
    assert CT.layout(QuantSpec("ct_int4", symmetric=False, group_size=-1), (20, 36)) == {
        "weight_packed": ((20, 5), torch.int32),
        "weight_scale": ((20, 1), torch.bfloat16),
        "weight_zero_point": ((3, 1), torch.int32),
        "weight_shape": ((2,), torch.int64),
    }
    assert CT.bits_per_weight(sym, (4096, 4096)) == 4 + 16 / 128 + 128 / 4096**2
    assert get_format("w4a16") is CT and get_format("pack_quantized") is CT


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weight_names_the_tensor(bad):
    w = torch.randn(16, 128)
    w[9, 0] = bad
    with pytest.raises(FormatError, match=NAME.replace(".", r"\.") + r".*NaN or Inf"):
        CT.quantize(w, QuantSpec("ct_int4"), name=NAME)


def test_errors_name_the_tensor():
    with pytest.raises(FormatError, match=r"gate_proj.*not divisible by the ct_int4 group size 128"):
        CT.quantize(torch.randn(16, 320), QuantSpec("ct_int4"), name=NAME)
    with pytest.raises(FormatError, match=r"gate_proj.*overflow float32"):
        CT.quantize(torch.full((8, 32), torch.finfo(torch.float32).max), QuantSpec("ct_int4", group_size=32), name=NAME)
    q = CT.quantize(torch.randn(16, 128), QuantSpec("ct_int4"))
    wrong = dict(q.tensors, weight_shape=torch.tensor([16, 120]))
    with pytest.raises(FormatError, match="weight_shape"):
        CT.dequantize(CT.from_tensors(wrong, QuantSpec("ct_int4"), (16, 128), name=NAME))
