"""fp8 (E4M3) format: bit-for-bit against compressed-tensors and against references built here.

The references in this file do not use torch's float8 cast: E4M3 values come from the bit fields
(sign, 4-bit exponent with bias 7, 3-bit mantissa) and rounding is nearest-value search with
ties to the even code, computed in numpy.
"""

from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
import torch
from compressed_tensors.compressors.naive_quantized.base import (
    NaiveQuantizationCompressor,
)
from compressed_tensors.quantization import (
    QuantizationArgs,
    QuantizationScheme,
    initialize_module_for_quantization,
)
from compressed_tensors.quantization.lifecycle.forward import quantize as ct_quantize
from compressed_tensors.quantization.utils import (
    calculate_qparams,
    maybe_pad_tensor_for_block_quant,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpq_serving.errors import FormatError
from mpq_serving.formats import QuantSpec, get_format

FP8 = get_format("fp8")
F32_MAX = float(np.finfo(np.float32).max)
F32_TINY = float(np.finfo(np.float32).tiny)  # smallest normal float32, 2^-126
F32_EPS = np.float32(np.finfo(np.float32).eps)
EDGE = [0.0, -0.0, 1e-40, -1e-40, 1.4e-45, F32_MAX, -F32_MAX, F32_TINY, 448.0, -448.0, 1.0, -1.0]
NAME = "model.layers.3.mlp.down_proj.weight"
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def e4m3_value(code: int) -> float:
    """The value of one E4M3FN byte from its bit fields (no Inf; S.1111.111 is NaN)."""
    sign = -1.0 if code & 0x80 else 1.0
    exp, man = (code >> 3) & 0xF, code & 0x7
    if exp == 0xF and man == 0x7:
        return math.nan
    if exp == 0:
        return sign * (man / 8) * 2.0 ** (1 - 7)
    return sign * (1 + man / 8) * 2.0 ** (exp - 7)


E4M3 = np.array([e4m3_value(c) for c in range(256)])
POSITIVE = E4M3[:127]  # codes 0x00..0x7E: increasing from 0 to 448


def ref_fp8_codes(v: np.ndarray) -> np.ndarray:
    """Nearest E4M3 code to each float32 value (saturating at ±448), ties to the even code.

    -0.0 maps to +0 (0x00), as compressed-tensors stores it (it adds a zero zero-point).
    """
    v = v + np.float32(0)
    mag = np.minimum(np.abs(v.astype(np.float64)), 448.0)
    hi = np.minimum(np.searchsorted(POSITIVE, mag, side="left"), 126)
    lo = np.maximum(hi - 1, 0)
    d_lo, d_hi = mag - POSITIVE[lo], POSITIVE[hi] - mag
    code = np.where(d_lo < d_hi, lo, np.where(d_hi < d_lo, hi, np.where(lo % 2 == 0, lo, hi)))
    return (code | (np.signbit(v).astype(np.int64) << 7)).astype(np.uint8)


def ref_scale(amax: np.ndarray) -> np.ndarray:
    s = (amax.astype(np.float32) / np.float32(448)).astype(np.float32)
    return np.where(s == 0, F32_EPS, s).astype(np.float32)


def ref_block_scales(w: np.ndarray, b: int) -> np.ndarray:
    out, inp = w.shape
    s = np.zeros((-(-out // b), -(-inp // b)), dtype=np.float32)
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            s[i, j] = np.abs(w[i * b : (i + 1) * b, j * b : (j + 1) * b]).max()
    return ref_scale(s)


def ref_expand(s: np.ndarray, b: int, shape: tuple[int, int]) -> np.ndarray:
    rows, cols = np.arange(shape[0]) // b, np.arange(shape[1]) // b
    return s[rows[:, None], cols[None, :]]


def ref_full_scale(w: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """Per-element scale, derived here from the weight alone."""
    if spec.granularity == "tensor":
        return np.broadcast_to(ref_scale(np.abs(w).max(keepdims=True)), w.shape)
    if spec.granularity == "channel":
        return np.broadcast_to(ref_scale(np.abs(w).max(axis=1, keepdims=True)), w.shape)
    return ref_expand(ref_block_scales(w, spec.group_size), spec.group_size, w.shape)


def codes(t: torch.Tensor) -> np.ndarray:
    return t.view(torch.uint8).numpy()


def scale_key(spec: QuantSpec) -> str:
    return "weight_scale_inv" if spec.granularity == "block" else "weight_scale"


@st.composite
def weights(draw: st.DrawFn, max_out: int = 24, max_in: int = 96) -> torch.Tensor:
    """float32 [out, in]: log-uniform magnitudes over up to 40 decades, zero rows, edge values."""
    out, inp = draw(st.integers(1, max_out)), draw(st.integers(1, max_in))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lo, span = draw(st.integers(-45, 38)), draw(st.integers(0, 40))
    exps = rng.integers(lo, min(lo + span, 38), endpoint=True, size=(out, inp))
    w = np.clip(rng.standard_normal((out, inp)) * 10.0**exps, -F32_MAX, F32_MAX).astype(np.float32)
    for r in draw(st.lists(st.integers(0, out - 1), max_size=2)):
        w[r] = 0
    for idx, val in draw(st.lists(st.tuples(st.integers(0, out * inp - 1), st.sampled_from(EDGE)), max_size=6)):
        w.flat[idx] = val
    return torch.from_numpy(w)


specs = st.one_of(
    st.just(QuantSpec("fp8", granularity="tensor")),
    st.just(QuantSpec("fp8")),
    st.builds(lambda b: QuantSpec("fp8", granularity="block", group_size=b), st.sampled_from([1, 7, 16, 32])),
)


# --- the E4M3 table itself ---------------------------------------------------------------------------


def test_bit_field_table_matches_torch_float8() -> None:
    from_torch = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).to(torch.float64).numpy()
    np.testing.assert_array_equal(from_torch, E4M3)  # NaN positions compare equal too
    assert POSITIVE[-1] == 448.0 and np.all(np.diff(POSITIVE) > 0)


def test_cast_rounds_midpoints_to_even_and_saturates() -> None:
    """Every midpoint between adjacent E4M3 values, and values beyond 448, round as the reference says."""
    mids = (POSITIVE[:-1] + POSITIVE[1:]) / 2
    v = np.concatenate([mids, -mids, POSITIVE, [500.0, 1e30, -1e30, 1e-30, -1e-30]]).astype(np.float32)
    assert np.all(v[: len(mids)].astype(np.float64) == mids)  # midpoints are exact in float32
    ours = codes(torch.from_numpy(v).clamp(-448, 448).to(torch.float8_e4m3fn))
    np.testing.assert_array_equal(ours, ref_fp8_codes(v))


# --- against compressed-tensors ----------------------------------------------------------------------


def ct_args(spec: QuantSpec) -> QuantizationArgs:
    extra = {"block_structure": [spec.group_size] * 2} if spec.granularity == "block" else {}
    return QuantizationArgs(num_bits=8, type="float", strategy=spec.granularity, symmetric=True, **extra)


def ct_compress(w: torch.Tensor, spec: QuantSpec) -> dict[str, torch.Tensor]:
    """compressed-tensors' own scale (calculate_qparams) and compressor, on min/max observed here."""
    args = ct_args(spec)
    if spec.granularity == "tensor":
        lo, hi = torch.aminmax(w)
    elif spec.granularity == "channel":
        lo, hi = w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True)
    else:
        b = spec.group_size
        padded = maybe_pad_tensor_for_block_quant(w, (b, b))
        blocks = padded.reshape(padded.shape[0] // b, b, padded.shape[1] // b, b)
        lo, hi = blocks.amin(dim=(1, 3)), blocks.amax(dim=(1, 3))
    scale, zp = calculate_qparams(lo, hi, args)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    return NaiveQuantizationCompressor.compress({"weight": w, "weight_scale": scale, "weight_zero_point": zp}, scheme)


@pytest.mark.parametrize(
    "spec", [QuantSpec("fp8", granularity="tensor"), QuantSpec("fp8"), QuantSpec("fp8", granularity="block")]
)
def test_scale_shapes_match_compressed_tensors_initialize(spec: QuantSpec) -> None:
    spec = FP8.normalize(spec)
    layer = torch.nn.Linear(300, 37, bias=False)  # 37 x 300: ragged against 128 in both dims
    initialize_module_for_quantization(layer, QuantizationScheme(targets=["Linear"], weights=ct_args(spec)))
    layout = FP8.layout(spec, (37, 300))
    assert layout[scale_key(spec)][0] == tuple(layer.weight_scale.shape)
    assert layout["weight"] == ((37, 300), torch.float8_e4m3fn)


@SETTINGS
@given(w=weights(), spec=specs)
def test_bytes_and_scales_equal_compressed_tensors(w: torch.Tensor, spec: QuantSpec) -> None:
    q = FP8.quantize(w, spec)
    theirs = ct_compress(w, q.spec)
    np.testing.assert_array_equal(codes(q.tensors["weight"]), codes(theirs["weight"]))
    ours_scale = q.tensors[scale_key(q.spec)]
    assert torch.equal(ours_scale, theirs["weight_scale"].reshape(ours_scale.shape))


@SETTINGS
@given(w=weights(), spec=specs)
def test_compressed_tensors_decompresses_ours_to_our_dequant(w: torch.Tensor, spec: QuantSpec) -> None:
    q = FP8.quantize(w, spec)
    scheme = QuantizationScheme(targets=["Linear"], weights=ct_args(q.spec))
    state = {"weight": q.tensors["weight"], "weight_scale": q.tensors[scale_key(q.spec)]}
    theirs = NaiveQuantizationCompressor.decompress(state, scheme)["weight"]
    assert theirs.dtype == torch.float32
    assert torch.equal(theirs, FP8.dequantize(q))


# --- against the references built here ---------------------------------------------------------------


@SETTINGS
@given(w=weights(), spec=specs)
def test_quantize_matches_reference(w: torch.Tensor, spec: QuantSpec) -> None:
    q = FP8.quantize(w, spec)
    wn = w.numpy()
    s = ref_full_scale(wn, q.spec)
    np.testing.assert_array_equal(codes(q.tensors["weight"]), ref_fp8_codes(wn / s))
    stored = q.tensors[scale_key(q.spec)].numpy()
    if q.spec.granularity == "block":
        np.testing.assert_array_equal(stored, ref_block_scales(wn, q.spec.group_size))
    else:
        np.testing.assert_array_equal(np.broadcast_to(stored, wn.shape), s)


@SETTINGS
@given(w=weights(), spec=specs)
def test_dequantize_matches_bit_field_reference(w: torch.Tensor, spec: QuantSpec) -> None:
    q = FP8.quantize(w, spec)
    stored = q.tensors[scale_key(q.spec)].numpy().astype(np.float64)
    if q.spec.granularity == "block":
        s = ref_expand(stored, q.spec.group_size, q.shape)
    else:
        s = np.broadcast_to(stored, q.shape)
    # value × scale is exact in float64 (4 × 24 significant bits); one rounding to float32, as in ours.
    expected = (E4M3[codes(q.tensors["weight"])] * s).astype(np.float32)
    np.testing.assert_array_equal(FP8.dequantize(q).numpy(), expected)


@SETTINGS
@given(w=weights(), spec=specs)
def test_round_trip_error_bound(w: torch.Tensor, spec: QuantSpec) -> None:
    """|dequant - w| ≤ 2^-4 |w| (3-bit mantissa) + 2^-10 s (subnormal step / 2), plus float32 slack.

    The clamp term is only non-zero where a subnormal float32 scale rounded down by more than the
    E4M3 step, so that |w / s| exceeds 448.
    """
    q = FP8.quantize(w, spec)
    wd, deq = w.double().numpy(), FP8.dequantize(q).double().numpy()
    s = ref_full_scale(w.numpy(), q.spec).astype(np.float64)
    clamp = np.maximum(np.abs(wd) - 448 * s, 0)
    bound = np.abs(wd) * (2.0**-4 + 2.0**-20) + 2.0**-10 * s + clamp + 2.0**-149
    assert np.all(np.abs(deq - wd) <= bound)


@SETTINGS
@given(w=weights(), spec=specs)
def test_requantize_reproduces_bytes(w: torch.Tensor, spec: QuantSpec) -> None:
    """quantize(dequantize(q)) gives the same bytes wherever the scale is a normal float32.

    Up to the sign of zero: a tiny negative weight is stored as -0 (0x80, as compressed-tensors
    does), which dequantizes to -0.0 and is requantized to +0 (0x00); both decode to 0.
    The scale itself may move by one ulp: fl(fl(448·s)/448) is not always s.  Subnormal scales
    (row amax below ~5e-36) lose precision in the dequantized product, so they are excluded.
    """
    q = FP8.quantize(w, spec)
    again = FP8.quantize(FP8.dequantize(q), q.spec)
    normal = ref_full_scale(w.numpy(), q.spec) >= F32_TINY
    first, second = codes(q.tensors["weight"]).copy(), codes(again.tensors["weight"])
    first[first == 0x80] = 0
    np.testing.assert_array_equal(second[normal], first[normal])
    s0, s1 = q.tensors[scale_key(q.spec)].numpy(), again.tensors[scale_key(q.spec)].numpy()
    ok = s0 >= F32_TINY
    assert np.all(np.abs(s1[ok] - s0[ok]) <= np.spacing(s0[ok]))


def test_all_zero_weight_gives_exact_zeros() -> None:
    for spec in (QuantSpec("fp8", granularity="tensor"), QuantSpec("fp8"), QuantSpec("fp8", granularity="block")):
        q = FP8.quantize(torch.zeros(3, 130), spec)
        scale = q.tensors[scale_key(q.spec)]
        assert torch.all(scale == torch.finfo(torch.float32).eps)  # compressed-tensors' zero-scale rule
        assert torch.equal(FP8.dequantize(q), torch.zeros(3, 130))


def test_max_values_land_on_448() -> None:
    w = torch.tensor([[F32_MAX, -F32_MAX, 1.0], [448.0, -448.0, 0.0]])
    q = FP8.quantize(w, QuantSpec("fp8"))
    deq = FP8.dequantize(q)
    assert q.tensors["weight"].float()[:, :2].abs().eq(448).all()
    assert torch.isfinite(deq).all() and torch.equal(deq[1], w[1])


# --- refusals ----------------------------------------------------------------------------------------


@SETTINGS
@given(
    w=weights(max_out=8, max_in=40),
    spec=specs,
    bad=st.sampled_from([math.nan, math.inf, -math.inf]),
    where=st.integers(0, 10**6),
)
def test_nan_inf_refused_naming_the_tensor(w: torch.Tensor, spec: QuantSpec, bad: float, where: int) -> None:
    w.view(-1)[where % w.numel()] = bad
    with pytest.raises(FormatError, match=NAME.replace(".", r"\.")):
        FP8.quantize(w, spec, name=NAME)


@pytest.mark.parametrize("shape", [(16,), (2, 3, 4), (0, 16), (16, 0)])
def test_bad_shapes_refused_naming_the_tensor(shape: tuple[int, ...]) -> None:
    with pytest.raises(FormatError, match=NAME.replace(".", r"\.")):
        FP8.quantize(torch.ones(shape), QuantSpec("fp8"), name=NAME)


def test_integer_weight_refused() -> None:
    with pytest.raises(FormatError, match="dtype"):
        FP8.quantize(torch.ones(2, 2, dtype=torch.int8), QuantSpec("fp8"), name=NAME)


@pytest.mark.parametrize(
    "spec, message",
    [
        (QuantSpec("fp8", granularity="group"), "granularity"),  # type: ignore[arg-type]
        (QuantSpec("fp8", group_size=128), "block"),
        (QuantSpec("fp8", granularity="tensor", group_size=-1), "block"),
        (QuantSpec("fp8", granularity="block", group_size=-1), "positive"),
        (QuantSpec("fp8", symmetric=False), "symmetric"),
        (QuantSpec("fp8", activation="int8"), "activation"),
    ],
)
def test_bad_specs_refused(spec: QuantSpec, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        FP8.normalize(spec)


def test_normalize_defaults() -> None:
    assert FP8.normalize(QuantSpec("fp8")).granularity == "channel"
    assert FP8.normalize(QuantSpec("fp8", granularity="channel", group_size=-1)).group_size is None
    assert FP8.normalize(QuantSpec("fp8", granularity="block")).group_size == 128
    assert FP8.normalize(QuantSpec("fp8", activation="FP8_E4M3")).activation == "fp8"
    assert get_format("fp8_e4m3") is FP8


# --- size and layout ---------------------------------------------------------------------------------


@pytest.mark.parametrize("out, inp", [(1, 1), (7, 64), (37, 300), (4096, 11008), (129, 257)])
def test_bits_per_weight(out: int, inp: int) -> None:
    def exact(bits: Fraction) -> float:
        return float(bits / (out * inp))

    assert FP8.bits_per_weight(QuantSpec("fp8"), (out, inp)) == exact(Fraction(8 * out * inp + 32 * out))
    assert FP8.bits_per_weight(QuantSpec("fp8", granularity="tensor"), (out, inp)) == exact(
        Fraction(8 * out * inp + 32)
    )
    blocks = math.ceil(out / 128) * math.ceil(inp / 128)
    assert FP8.bits_per_weight(QuantSpec("fp8", granularity="block"), (out, inp)) == exact(
        Fraction(8 * out * inp + 32 * blocks)
    )
    if inp & (inp - 1) == 0:  # 32/in exact: the channel formula holds to the last bit
        assert FP8.bits_per_weight(QuantSpec("fp8"), (out, inp)) == 8 + 32 / inp


@SETTINGS
@given(w=weights(), spec=specs)
def test_quantized_tensors_match_layout(w: torch.Tensor, spec: QuantSpec) -> None:
    q = FP8.quantize(w, spec)
    layout = FP8.layout(q.spec, q.shape)
    assert {k: (tuple(t.shape), t.dtype) for k, t in q.tensors.items()} == layout
    assert FP8.bits_per_weight(q.spec, q.shape) == float(Fraction(q.nbytes() * 8, w.numel()))


# --- loading checkpoint tensors ----------------------------------------------------------------------


def test_from_tensors_accepts_compressed_tensors_checkpoint_with_bf16_scales() -> None:
    w = torch.randn(37, 300, dtype=torch.bfloat16)
    theirs = ct_compress(w.float(), FP8.normalize(QuantSpec("fp8")))
    tensors = {"weight": theirs["weight"], "weight_scale": theirs["weight_scale"].to(torch.bfloat16)}
    q = FP8.from_tensors(tensors, QuantSpec("fp8"), (37, 300), name=NAME)
    expected = tensors["weight"].float() * tensors["weight_scale"].float()
    assert torch.equal(FP8.dequantize(q), expected)


def test_from_tensors_accepts_scalar_per_tensor_scale_and_ct_block_name() -> None:
    w = torch.randn(37, 300)
    q = FP8.quantize(w, QuantSpec("fp8", granularity="tensor"))
    scalar = {"weight": q.tensors["weight"], "weight_scale": q.tensors["weight_scale"].reshape(())}
    loaded = FP8.from_tensors(scalar, q.spec, q.shape)
    assert torch.equal(FP8.dequantize(loaded), FP8.dequantize(q))

    spec = FP8.normalize(QuantSpec("fp8", granularity="block"))
    theirs = ct_compress(w, spec)  # compressed-tensors FP8_BLOCK: `weight_scale`, not `weight_scale_inv`
    loaded = FP8.from_tensors(dict(theirs), spec, (37, 300))
    assert torch.equal(FP8.dequantize(loaded), FP8.dequantize(FP8.quantize(w, spec)))


def test_from_tensors_wrong_shape_names_the_tensor() -> None:
    q = FP8.quantize(torch.randn(8, 16), QuantSpec("fp8"))
    with pytest.raises(FormatError, match=NAME.replace(".", r"\.") + r"\.weight_scale"):
        FP8.from_tensors({"weight": q.tensors["weight"], "weight_scale": torch.ones(8)}, q.spec, (8, 16), name=NAME)


# --- matmul ------------------------------------------------------------------------------------------


def ref_w8a8(x: np.ndarray, q_codes: np.ndarray, w_scale: np.ndarray,
             group: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """float64 y and |x|@|W|^T from x quantized here (amax/448) and W decoded from its bytes.

    x is scaled per row, or per row and per `group` columns (block weights: DeepSeek-V3's per-token-group rule).
    """
    xd = np.zeros(x.shape, dtype=np.float64)
    step = group or x.shape[1]
    for start in range(0, x.shape[1], step):
        part = x[:, start:start + step]
        xs = ref_scale(np.abs(part).max(axis=1, keepdims=True)).astype(np.float64)
        xd[:, start:start + step] = E4M3[ref_fp8_codes(part / xs.astype(np.float32))] * xs
    wd = E4M3[q_codes] * w_scale
    return xd @ wd.T, np.abs(xd) @ np.abs(wd).T


@SETTINGS
@given(w=weights(max_out=16, max_in=64), spec=specs, tokens=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_w8a8_matmul_matches_float64_reference(w: torch.Tensor, spec: QuantSpec, tokens: int, seed: int) -> None:
    w = w.clamp(-1e18, 1e18)  # keep x·W inside float32 range so the comparison is about rounding, not overflow
    q = FP8.quantize(w, replace(spec, activation="fp8"))
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((tokens, w.shape[1])) * 10.0 ** rng.integers(-3, 4, size=(tokens, 1))).astype(np.float32)
    if tokens > 3:
        x[0] = 0  # an all-zero token must give an all-zero output row
    stored = q.tensors[scale_key(q.spec)].numpy().astype(np.float64)
    s = ref_expand(stored, q.spec.group_size, q.shape) if q.spec.granularity == "block" else stored
    group = q.spec.group_size if q.spec.granularity == "block" else None
    ref, mag = ref_w8a8(x, codes(q.tensors["weight"]), s, group)
    y = FP8.matmul(torch.from_numpy(x), q).double().numpy()
    assert np.all(np.abs(y - ref) <= 2.0**-24 * np.abs(ref) + 2.0**-40 * mag + 2.0**-149)
    if tokens > 3:
        assert np.all(y[0] == 0)


def test_w8a8_activation_quantization_matches_compressed_tensors_fp8_dynamic() -> None:
    """Our per-token activation rounding is compressed-tensors' FP8_DYNAMIC token strategy."""
    x = torch.randn(1, 5, 300) * torch.logspace(-3, 3, 5).reshape(1, 5, 1)
    args = QuantizationArgs(num_bits=8, type="float", strategy="token", symmetric=True, dynamic=True)
    xs, zp = calculate_qparams(x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True), args)
    xq = ct_quantize(x, xs, zp, args, dtype=torch.float8_e4m3fn)
    q = FP8.quantize(torch.randn(37, 300), QuantSpec("fp8", activation="fp8"))
    w64 = q.tensors["weight"].double() * q.tensors["weight_scale"].double()
    expected = ((xq.double() * xs.double()) @ w64.t()).float()
    assert torch.equal(FP8.matmul(x, q), expected)


def test_weight_only_matmul_is_float32_dequant_matmul() -> None:
    x, w = torch.randn(2, 3, 64), torch.randn(16, 64)
    q = FP8.quantize(w, QuantSpec("fp8", granularity="block", group_size=32))
    assert q.spec.activation is None
    assert torch.equal(FP8.matmul(x, q), x @ FP8.dequantize(q).t())
    w8a8 = FP8.matmul(x, FP8.quantize(w, QuantSpec("fp8", granularity="block", group_size=32, activation="fp8")))
    assert w8a8.shape == (2, 3, 16) and not torch.equal(w8a8, FP8.matmul(x, q))  # x really is quantized


# --- declared activation schemes: static input_scale, per-group with block weights ---------------------------


def static_q(w: torch.Tensor, input_scale: float, granularity: str = "channel"):
    """A static-activation fp8 weight as AutoFP8 / llm-compressor store it: codes, scales, a calibrated input_scale."""
    q = FP8.quantize(w, QuantSpec("fp8", granularity=granularity))
    tensors = {**q.tensors, "input_scale": torch.tensor(input_scale)}  # 0-d, as AutoFP8 writes it
    return FP8.from_tensors(tensors, QuantSpec("fp8", granularity=granularity, activation="fp8_static"), q.shape)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_static_activations_use_the_stored_input_scale(granularity: str) -> None:
    torch.manual_seed(0)
    w = torch.randn(24, 40)
    q = static_q(w, 0.015625, granularity)
    assert FP8.layout(q.spec, q.shape)["input_scale"] == ((1,), torch.float32)
    x = torch.randn(5, 40) * 3
    x[1, 7] = 1e4  # beyond 448 × input_scale: a static scale saturates where a dynamic one would not
    xs = 0.015625
    xd = E4M3[ref_fp8_codes(x.numpy() / np.float32(xs))] * xs
    wd = E4M3[codes(q.tensors["weight"])] * q.tensors["weight_scale"].double().numpy()
    ref = xd @ wd.T
    y = FP8.matmul(x, q).double().numpy()
    assert np.allclose(y, ref, rtol=2.0**-23, atol=1e-30)
    assert xd[1, 7] == 448 * xs
    dynamic = FP8.matmul(x, replace(q, spec=replace(q.spec, activation="fp8"))).double().numpy()
    assert not np.allclose(dynamic, ref)  # the declared scheme is what runs, not another one


def test_static_activations_cannot_come_from_rounding_a_weight() -> None:
    with pytest.raises(FormatError, match="input_scale calibrated on activations"):
        FP8.quantize(torch.randn(8, 16), QuantSpec("fp8", activation="fp8_static"))
    with pytest.raises(FormatError, match="block weights take dynamic per-group activations"):
        FP8.normalize(QuantSpec("fp8", granularity="block", activation="fp8_static"))


def test_block_weights_quantize_activations_per_token_group() -> None:
    """DeepSeek-V3's rule: one scale per token and per 128 columns, so a large value in one group leaves
    the other groups' resolution alone (a per-token scale would flush their small values)."""
    torch.manual_seed(1)
    w = torch.randn(16, 256)
    q = FP8.quantize(w, QuantSpec("fp8", granularity="block", group_size=128, activation="fp8"))
    x = torch.randn(2, 256) * 1e-3
    x[:, 0] = 1e3
    deq = FP8.fake_quantize_activations(x, q)
    second = x[:, 128:].double()
    assert torch.allclose(deq[:, 128:], second, rtol=2.0**-3)  # ~3 mantissa bits kept in the quiet group
    per_token = FP8.fake_quantize_activations(x, replace(q, spec=replace(q.spec, granularity="channel")))
    assert (per_token[:, 128:] == 0).float().mean() > 0.5  # what per-token scaling would have done
