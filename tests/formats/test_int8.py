"""int8 format: against compressed-tensors and against numpy references built here.

Documented deviation under test: compressed-tensors derives scale = amax / 127.5 (codes use [-128, 127]);
we use amax / 127 (codes in [-127, 127] whenever the scale is a normal float32).  Given the same scale,
both produce the same bytes, and their decompressor reads our tensors back to exactly our dequant.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from compressed_tensors.compressors.naive_quantized.base import NaiveQuantizationCompressor
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme, initialize_module_for_quantization
from compressed_tensors.quantization.lifecycle.forward import quantize as ct_quantize
from compressed_tensors.quantization.utils import calculate_qparams
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpq_serving.errors import FormatError
from mpq_serving.formats import QuantSpec, get_format

INT8 = get_format("int8")
SPEC = QuantSpec("int8")
W8A8 = QuantSpec("int8", activation="int8")
F32_MAX = float(np.finfo(np.float32).max)
BIG = float(np.nextafter(np.float32(F32_MAX), np.float32(0)))  # largest weight int8 accepts
F32_TINY = float(np.finfo(np.float32).tiny)
F32_EPS = np.float32(np.finfo(np.float32).eps)
EDGE = [0.0, -0.0, 1e-40, -1e-40, 1.4e-45, BIG, -BIG, F32_TINY, 127.0, -127.0, 0.5, -0.5, 1.5]
NAME = "model.layers.7.self_attn.o_proj.weight"
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ARGS = QuantizationArgs(num_bits=8, type="int", strategy="channel", symmetric=True)
SCHEME = QuantizationScheme(targets=["Linear"], weights=ARGS)


def ref_scale(amax: np.ndarray) -> np.ndarray:
    s = (amax.astype(np.float32) / np.float32(127)).astype(np.float32)
    return np.where(s == 0, F32_EPS, s).astype(np.float32)


def ref_quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row scale amax/127 and codes rint(w / s) (numpy rint: half to even) in the int8 range, float32."""
    s = ref_scale(np.abs(w).max(axis=1, keepdims=True))
    return np.clip(np.rint(w / s), -128, 127).astype(np.int8), s


@st.composite
def weights(draw: st.DrawFn, max_out: int = 24, max_in: int = 96) -> torch.Tensor:
    """float32 [out, in]: log-uniform magnitudes over up to 40 decades, zero rows, edge values."""
    out, inp = draw(st.integers(1, max_out)), draw(st.integers(1, max_in))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lo, span = draw(st.integers(-45, 38)), draw(st.integers(0, 40))
    exps = rng.integers(lo, min(lo + span, 38), endpoint=True, size=(out, inp))
    w = np.clip(rng.standard_normal((out, inp)) * 10.0**exps, -BIG, BIG).astype(np.float32)
    for r in draw(st.lists(st.integers(0, out - 1), max_size=2)):
        w[r] = 0
    for idx, val in draw(st.lists(st.tuples(st.integers(0, out * inp - 1), st.sampled_from(EDGE)), max_size=6)):
        w.flat[idx] = val
    return torch.from_numpy(w)


# --- against compressed-tensors ----------------------------------------------------------------------


def test_scale_shape_matches_compressed_tensors_initialize() -> None:
    layer = torch.nn.Linear(300, 37, bias=False)
    initialize_module_for_quantization(layer, SCHEME)
    assert INT8.layout(SPEC, (37, 300)) == {
        "weight": ((37, 300), torch.int8),
        "weight_scale": (tuple(layer.weight_scale.shape), torch.float32),
    }


@SETTINGS
@given(w=weights())
def test_compressed_tensors_quantizes_with_our_scale_to_our_bytes(w: torch.Tensor) -> None:
    """Same scale in, same bytes out: the rounding (round half to even) and clamp agree exactly."""
    q = INT8.quantize(w, SPEC)
    zp = torch.zeros_like(q.tensors["weight_scale"], dtype=torch.int8)
    theirs = ct_quantize(w, q.tensors["weight_scale"], zp, ARGS, dtype=torch.int8)
    assert torch.equal(theirs, q.tensors["weight"])


@SETTINGS
@given(w=weights())
def test_scale_differs_from_compressed_tensors_only_by_127_vs_127p5(w: torch.Tensor) -> None:
    """The one deliberate deviation, pinned: theirs is amax/127.5, ours amax/127 (a zero scale → eps in both)."""
    theirs, _ = calculate_qparams(w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True), ARGS)
    amax = w.abs().amax(dim=1, keepdim=True)

    def floored(scale: torch.Tensor) -> torch.Tensor:
        return torch.where(scale == 0, torch.finfo(torch.float32).eps, scale)

    assert torch.equal(theirs, floored(amax / 127.5))
    assert torch.equal(INT8.quantize(w, SPEC).tensors["weight_scale"], floored(amax / 127))


@SETTINGS
@given(w=weights())
def test_compressed_tensors_decompresses_ours_to_our_dequant(w: torch.Tensor) -> None:
    q = INT8.quantize(w, SPEC)
    theirs = NaiveQuantizationCompressor.decompress(dict(q.tensors), SCHEME)["weight"]
    assert theirs.dtype == torch.float32 and torch.equal(theirs, INT8.dequantize(q))


@SETTINGS
@given(w=weights())
def test_compressed_tensors_checkpoint_loads_to_their_dequant(w: torch.Tensor) -> None:
    """Their own checkpoint (scale amax/127.5, codes may reach -128) reads back exactly as they read it."""
    scale, zp = calculate_qparams(w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True), ARGS)
    theirs = NaiveQuantizationCompressor.compress({"weight": w, "weight_scale": scale, "weight_zero_point": zp}, SCHEME)
    q = INT8.from_tensors(dict(theirs), SPEC, tuple(w.shape), name=NAME)
    assert torch.equal(INT8.dequantize(q), NaiveQuantizationCompressor.decompress(dict(theirs), SCHEME)["weight"])


def test_compressed_tensors_checkpoint_with_bf16_scales_and_minus_128() -> None:
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    w[3, 5] = -255.0  # their scale 255/127.5 = 2 exactly; -127.5 rounds (half to even) to -128
    scale, zp = calculate_qparams(w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True), ARGS)
    theirs = NaiveQuantizationCompressor.compress({"weight": w, "weight_scale": scale, "weight_zero_point": zp}, SCHEME)
    assert theirs["weight"][3, 5] == -128
    tensors = {"weight": theirs["weight"], "weight_scale": theirs["weight_scale"].to(torch.bfloat16)}
    q = INT8.from_tensors(tensors, SPEC, (16, 64), name=NAME)
    assert torch.equal(INT8.dequantize(q), tensors["weight"].float() * tensors["weight_scale"].float())


# --- against the numpy references ---------------------------------------------------------------------


@SETTINGS
@given(w=weights())
def test_quantize_matches_numpy_reference(w: torch.Tensor) -> None:
    q = INT8.quantize(w, SPEC)
    codes, s = ref_quantize(w.numpy())
    np.testing.assert_array_equal(q.tensors["weight"].numpy(), codes)
    np.testing.assert_array_equal(q.tensors["weight_scale"].numpy(), s)


@SETTINGS
@given(w=weights())
def test_dequantize_matches_reference(w: torch.Tensor) -> None:
    q = INT8.quantize(w, SPEC)
    # code × scale is exact in float64 (8 × 24 significant bits); one rounding to float32, as in ours.
    expected = q.tensors["weight"].numpy().astype(np.float64) * q.tensors["weight_scale"].numpy().astype(np.float64)
    np.testing.assert_array_equal(INT8.dequantize(q).numpy(), expected.astype(np.float32))


@SETTINGS
@given(w=weights())
def test_codes_symmetric_where_scale_is_normal(w: torch.Tensor) -> None:
    """-w gives the negated codes and -128 never appears, except in rows with a subnormal float32 scale."""
    q, neg = INT8.quantize(w, SPEC), INT8.quantize(-w, SPEC)
    normal = (q.tensors["weight_scale"] >= F32_TINY).expand(q.shape)
    assert torch.equal(neg.tensors["weight_scale"], q.tensors["weight_scale"])
    assert torch.equal(neg.tensors["weight"][normal], -q.tensors["weight"][normal])
    assert torch.all(q.tensors["weight"][normal] >= -127)


def test_ties_round_to_even() -> None:
    w = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -2.5, 126.5, -3.5]])  # scale is exactly 1
    q = INT8.quantize(w, SPEC)
    assert q.tensors["weight_scale"].item() == 1.0
    assert q.tensors["weight"].tolist() == [[127, 0, 2, 2, 0, -2, 126, -4]]


@SETTINGS
@given(w=weights())
def test_round_trip_error_within_half_a_step(w: torch.Tensor) -> None:
    """|dequant - w| ≤ s/2, plus float32 slack; the clamp term is only non-zero where a subnormal
    float32 scale rounded down far enough that |w / s| exceeds 127."""
    q = INT8.quantize(w, SPEC)
    wd, deq = w.double().numpy(), INT8.dequantize(q).double().numpy()
    s = q.tensors["weight_scale"].double().numpy()
    clamp = np.maximum(np.abs(wd) - 127 * s, 0)
    assert np.all(np.abs(deq - wd) <= s * (0.5 + 2.0**-16) + clamp + np.abs(wd) * 2.0**-22 + 2.0**-149)


@SETTINGS
@given(w=weights())
def test_requantize_reproduces_bytes(w: torch.Tensor) -> None:
    """Exact where the scale is a normal float32; the scale may move by one ulp (fl(fl(127·s)/127) ≠ s)."""
    q = INT8.quantize(w, SPEC)
    again = INT8.quantize(INT8.dequantize(q), SPEC)
    s0, s1 = q.tensors["weight_scale"], again.tensors["weight_scale"]
    normal = (s0 >= F32_TINY).expand(q.shape)
    assert torch.equal(again.tensors["weight"][normal], q.tensors["weight"][normal])
    ok = s0 >= F32_TINY
    assert torch.all((s1 - s0).abs()[ok] <= torch.from_numpy(np.spacing(s0.numpy()))[ok])


def test_all_zero_rows_give_exact_zeros() -> None:
    w = torch.zeros(4, 33)
    w[1] = torch.randn(33)
    q = INT8.quantize(w, SPEC)
    assert q.tensors["weight_scale"][0].item() == torch.finfo(torch.float32).eps
    deq = INT8.dequantize(q)
    assert torch.equal(deq[[0, 2, 3]], torch.zeros(3, 33))


def test_extremes_are_symmetric() -> None:
    w = torch.tensor([[BIG, -BIG, 1e30], [1e-40, -1e-40, 0.0]])
    q = INT8.quantize(w, SPEC)
    assert q.tensors["weight"][:, :2].tolist() == [[127, -127], [127, -127]]
    assert torch.isfinite(INT8.dequantize(q)).all()


def test_float32_max_refused_because_dequant_would_overflow() -> None:
    """fl(max/127) rounds up, so 127 × scale is inf.  (compressed-tensors stores this row's -max as
    -128 × (max/127.5) and reads it back as -inf.)"""
    with pytest.raises(FormatError, match=NAME.replace(".", r"\.") + ".*row 1.*overflow"):
        INT8.quantize(torch.tensor([[1.0, 2.0], [-F32_MAX, 0.0]]), SPEC, name=NAME)


# --- refusals ----------------------------------------------------------------------------------------


@SETTINGS
@given(
    w=weights(max_out=8, max_in=40), bad=st.sampled_from([math.nan, math.inf, -math.inf]), where=st.integers(0, 10**6)
)
def test_nan_inf_refused_naming_the_tensor(w: torch.Tensor, bad: float, where: int) -> None:
    w.view(-1)[where % w.numel()] = bad
    with pytest.raises(FormatError, match=NAME.replace(".", r"\.")):
        INT8.quantize(w, SPEC, name=NAME)


@pytest.mark.parametrize("shape", [(16,), (2, 3, 4), (0, 16), (16, 0)])
def test_bad_shapes_refused_naming_the_tensor(shape: tuple[int, ...]) -> None:
    with pytest.raises(FormatError, match=NAME.replace(".", r"\.")):
        INT8.quantize(torch.ones(shape), SPEC, name=NAME)


def test_integer_weight_refused() -> None:
    with pytest.raises(FormatError, match="dtype"):
        INT8.quantize(torch.ones(2, 2, dtype=torch.int8), SPEC, name=NAME)


@pytest.mark.parametrize(
    "spec, message",
    [
        (QuantSpec("int8", granularity="tensor"), "per-channel"),
        (QuantSpec("int8", group_size=128), "group_size"),
        (QuantSpec("int8", symmetric=False), "symmetric"),
        (QuantSpec("int8", activation="fp8"), "activation"),
    ],
)
def test_bad_specs_refused(spec: QuantSpec, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        INT8.normalize(spec)


def test_normalize_and_alias() -> None:
    spec = INT8.normalize(QuantSpec("int8", activation="INT8"))
    assert (spec.granularity, spec.group_size, spec.symmetric, spec.activation) == ("channel", -1, True, "int8")
    assert get_format("w8a16") is INT8


def test_from_tensors_wrong_shape_names_the_tensor() -> None:
    q = INT8.quantize(torch.randn(8, 16), SPEC)
    with pytest.raises(FormatError, match=NAME.replace(".", r"\.") + r"\.weight_scale"):
        INT8.from_tensors({"weight": q.tensors["weight"], "weight_scale": torch.ones(8)}, SPEC, (8, 16), name=NAME)


# --- size --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("out, inp", [(1, 1), (7, 64), (37, 300), (4096, 11008)])
def test_bits_per_weight(out: int, inp: int) -> None:
    assert INT8.bits_per_weight(SPEC, (out, inp)) == float(Fraction(8 * out * inp + 32 * out, out * inp))
    if inp & (inp - 1) == 0:
        assert INT8.bits_per_weight(SPEC, (out, inp)) == 8 + 32 / inp
    q = INT8.quantize(torch.randn(min(out, 64), inp), SPEC)
    assert q.nbytes() * 8 == 8 * q.shape[0] * inp + 32 * q.shape[0]


# --- matmul ------------------------------------------------------------------------------------------


@SETTINGS
@given(w=weights(max_out=16, max_in=64), tokens=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_w8a8_matmul_equals_integer_reference(w: torch.Tensor, tokens: int, seed: int) -> None:
    """x and W quantized independently here; int64 matmul; then × x_scale × w_scale in float64."""
    w = w.clamp(-1e18, 1e18)  # keep y inside float32 range: the comparison is about rounding
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((tokens, w.shape[1])) * 10.0 ** rng.integers(-3, 4, size=(tokens, 1))).astype(np.float32)
    if tokens > 3:
        x[0] = 0
    xq, xs = ref_quantize(x)
    wq, ws = ref_quantize(w.numpy())
    acc = xq.astype(np.int64) @ wq.astype(np.int64).T
    expected = (acc.astype(np.float64) * xs.astype(np.float64) * ws.astype(np.float64).T).astype(np.float32)
    y = INT8.matmul(torch.from_numpy(x), INT8.quantize(w, W8A8))
    np.testing.assert_array_equal(y.numpy(), expected)


def test_matmul_batched_shapes_and_weight_only_path() -> None:
    x, w = torch.randn(2, 3, 64), torch.randn(16, 64)
    q = INT8.quantize(w, SPEC)
    assert torch.equal(INT8.matmul(x, q), x @ INT8.dequantize(q).t())
    y = INT8.matmul(x, INT8.quantize(w, W8A8))
    assert y.shape == (2, 3, 16) and not torch.equal(y, INT8.matmul(x, q))  # x really is quantized
    assert torch.allclose(y, x @ w.t(), rtol=0.05, atol=0.05 * float((x.abs() @ w.abs().t()).max()))
