"""MXFP8: exact against an independent OCP reference and compressed-tensors' `mxfp8-quantized` bytes.

The reference shares no code with mpq_serving: E4M3 values come from the bit fields (bias 7,
S.1111.111 is NaN), E8M0 is 2.0 ** (e - 127) in Python floats, rounding is a nearest-value search.
"""

from __future__ import annotations

import bisect
import math

import numpy as np
import pytest
import torch
from compressed_tensors.compressors.mxfp8.base import MXFP8QuantizationCompressor
from compressed_tensors.quantization import QuantizationScheme
from compressed_tensors.quantization.quant_scheme import MXFP8A16
from compressed_tensors.quantization.utils.helpers import calculate_qparams
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mpq_serving.errors import FormatError
from mpq_serving.formats import QuantSpec, get_format

FMT = get_format("mxfp8")
SPEC = QuantSpec("mxfp8")
F32_MAX = float(np.finfo(np.float32).max)
CT_SCHEME = QuantizationScheme(targets=["Linear"], **MXFP8A16)


def e4m3(byte: int) -> float:
    sign, exp, man = byte >> 7, (byte >> 3) & 0xF, byte & 0x7
    if exp == 0xF and man == 0x7:
        return math.nan
    mag = man / 8 * 2.0**-6 if exp == 0 else (1 + man / 8) * 2.0 ** (exp - 7)
    return -mag if sign else mag


E4M3 = [e4m3(b) for b in range(256)]
POSITIVE = E4M3[:127]  # bytes 0x00..0x7E, increasing, 0 .. 448


def e8m0(e: int) -> float:
    return math.nan if e == 255 else 2.0 ** (e - 127)


def ref_byte(v: float) -> int:
    """Nearest E4M3 byte to v (element units), ties to the even byte (even mantissa), saturating at ±448."""
    mag = min(abs(v), 448.0)
    i = bisect.bisect_left(POSITIVE, mag)
    cands = [b for b in (i - 1, i) if 0 <= b < 127]
    byte = min(cands, key=lambda b: (abs(POSITIVE[b] - mag), b % 2))
    return byte | (0x80 if math.copysign(1.0, v) < 0 else 0)


def ref_quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OCP: X = floor(log2(amax)) - 8 clamped to [-127, 127], zero block → e=0."""
    out, n = w.shape
    elems = np.zeros((out, n), np.uint8)
    exps = np.zeros((out, n // 32), np.uint8)
    for r in range(out):
        for b in range(n // 32):
            block = [float(v) for v in w[r, 32 * b : 32 * b + 32]]
            amax = max(abs(v) for v in block)
            e = 0 if amax == 0 else min(max(math.floor(math.log2(amax)) - 8 + 127, 0), 254)
            exps[r, b] = e
            for i, v in enumerate(block):
                elems[r, 32 * b + i] = ref_byte(v / 2.0 ** (e - 127))
    return elems, exps


def ref_dequant(elems: np.ndarray, exps: np.ndarray) -> np.ndarray:
    out, n = elems.shape
    return np.array([[E4M3[int(elems[r, c])] * e8m0(int(exps[r, c // 32])) for c in range(n)] for r in range(out)])


def ours(w: np.ndarray | torch.Tensor, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    q = FMT.quantize(torch.as_tensor(w), SPEC, **kw)
    return q.tensors["weight"].view(torch.uint8), q.tensors["weight_scale"]


def assert_same_floats(a: torch.Tensor, b: np.ndarray | torch.Tensor) -> None:
    """Exactly equal as float32; the reference's float64 only differs there by overflowing to inf (e=254)."""
    torch.testing.assert_close(a, torch.as_tensor(b).float(), rtol=0, atol=0, equal_nan=True)


@st.composite
def weights(draw: st.DrawFn) -> np.ndarray:
    """Any float32 (hypothesis favours 0, ±max, subnormals), or blocks spread over the whole exponent range."""
    out, blocks = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    if draw(st.booleans()):
        elems = st.floats(width=32, allow_nan=False, allow_infinity=False)
        return draw(arrays(np.float32, (out, 32 * blocks), elements=elems))
    base = draw(arrays(np.float32, (out, blocks, 32), elements=st.floats(-8, 8, width=32)))
    shift = draw(arrays(np.int32, (out, blocks, 1), elements=st.integers(-150, 124)))
    return (base.astype(np.float64) * np.exp2(shift)).astype(np.float32).reshape(out, 32 * blocks)


# --- exact against the independent reference ---------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(weights())
def test_quantize_and_dequantize_match_reference(w: np.ndarray) -> None:
    elems, exps = ours(w)
    ref_elems, ref_exps = ref_quantize(w)
    assert np.array_equal(exps.numpy(), ref_exps)
    assert np.array_equal(elems.numpy(), ref_elems)
    assert_same_floats(FMT.dequantize(FMT.quantize(torch.from_numpy(w), SPEC)), ref_dequant(ref_elems, ref_exps))


def test_every_stored_byte_dequantizes_as_reference() -> None:
    elems = torch.arange(256, dtype=torch.int32).to(torch.uint8).reshape(8, 32)
    for e in (0, 1, 9, 100, 127, 200, 246, 247, 254, 255):
        exps = torch.full((8, 1), e, dtype=torch.uint8)
        q = FMT.from_tensors({"weight": elems.view(torch.float8_e4m3fn), "weight_scale": exps}, SPEC, (8, 32))
        assert_same_floats(FMT.dequantize(q), ref_dequant(elems.numpy(), exps.numpy()))


def test_ocp_ties_to_even_and_saturation() -> None:
    # amax 500 → X = floor(log2 500) - 8 = 0: element units are the values themselves.
    vals = [
        500.0,
        464.0,
        449.0,
        440.0,
        432.0,
        424.0,
        17.0,
        19.0,
        1.0625,
        1.1875,
        2.0**-10,
        3 * 2.0**-10,
        2.0**-11,
        -1e-30,
    ]
    want = [448.0, 448.0, 448.0, 448.0, 448.0, 416.0, 16.0, 20.0, 1.0, 1.25, 0.0, 2.0**-8, 0.0, -0.0]
    for shift in (0, -30, 100):
        w = torch.tensor([vals + [0.0] * 18], dtype=torch.float64) * 2.0**shift
        q = FMT.quantize(w.float(), SPEC)
        assert q.tensors["weight_scale"].item() == 127 + shift
        got = FMT.dequantize(q)[0, : len(vals)] / 2.0**shift
        assert got.tolist() == want
        assert torch.signbit(got).tolist() == [math.copysign(1, v) < 0 for v in want]


def test_edge_blocks() -> None:
    rows = [
        [0.0] * 32,
        [F32_MAX, -F32_MAX] + [1.0] * 30,  # X = 127 - 8
        [1e-40] * 32,  # subnormal: X clamps to -127, 1e-40 * 2^127 ≈ 0.017 still survives as E4M3
        [1.2 * 2.0**126] + [1e-40] * 31,  # one huge, many tiny: the tiny ones flush to 0
    ]
    w = torch.tensor(rows, dtype=torch.float32)
    q = FMT.quantize(w, SPEC)
    assert q.tensors["weight_scale"][:, 0].tolist() == [0, 246, 0, 245]
    deq = FMT.dequantize(q)
    assert torch.equal(deq[0], torch.zeros(32))
    assert deq[1, 0].item() == 448 * 2.0**119 and deq[1, 1].item() == -448 * 2.0**119
    assert (deq[2] > 0).all() and torch.equal(deq[3, 1:], torch.zeros(31))
    assert_same_floats(deq, ref_dequant(*ref_quantize(w.numpy())))


@settings(max_examples=100, deadline=None)
@given(weights())
def test_requantizing_the_dequant_reproduces_the_bytes(w: np.ndarray) -> None:
    q = FMT.quantize(torch.from_numpy(w), SPEC)
    again = FMT.quantize(FMT.dequantize(q), SPEC)
    assert torch.equal(q.tensors["weight"].view(torch.uint8), again.tensors["weight"].view(torch.uint8))
    assert torch.equal(q.tensors["weight_scale"], again.tensors["weight_scale"])


# --- compressed-tensors ---------------------------------------------------------------------------


def ct_compress(w: torch.Tensor, scale: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """compressed-tensors' MXFP8 compressor with the zero point its initializer registers."""
    if scale is None:
        g = w.unflatten(-1, (-1, 32))
        scale, _ = calculate_qparams(g.amin(-1), g.amax(-1), CT_SCHEME.weights)
    zp = torch.zeros_like(scale)
    return MXFP8QuantizationCompressor.compress(
        {"weight": w, "weight_scale": scale, "weight_zero_point": zp}, CT_SCHEME
    )


def ct_decompress(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return MXFP8QuantizationCompressor.decompress({"weight": weight, "weight_scale": scale}, CT_SCHEME)["weight"]


def ct_sign_of_zero(w: torch.Tensor, elems: torch.Tensor, exps: torch.Tensor) -> torch.Tensor:
    """Our bytes as compressed-tensors writes them: its `+ zero_point` turns an exact -0.0 quotient into +0.

    That is an input -0.0 or a float32 quotient that underflows; a tiny negative that rounds to zero
    keeps its sign in both.  We keep IEEE's sign everywhere, as OCP rounding does.
    """
    scaled = w.float() / torch.exp2(exps.double() - 127).float().repeat_interleave(32, 1)
    return torch.where((scaled == 0) & scaled.signbit(), 0, elems).to(torch.uint8)


@settings(max_examples=60, deadline=None)
@given(weights())
def test_bytes_equal_compressed_tensors_for_the_same_scales(w: np.ndarray) -> None:
    wt = torch.from_numpy(w)
    elems, exps = ours(wt)
    ct = ct_compress(wt, torch.exp2(exps.double() - 127).float())
    assert ct["weight"].dtype == torch.float8_e4m3fn
    assert torch.equal(ct["weight"].view(torch.uint8), ct_sign_of_zero(wt, elems, exps))
    assert torch.equal(ct["weight_scale"], exps)


def test_compressed_tensors_scale_rule_is_ocp_plus_one_from_significand_1_75() -> None:
    g = torch.Generator().manual_seed(1)
    sig = torch.tensor([1.0, 1.25, 1.5, 1.7499999, 1.75, 1.8, 1.9999999] * 6)
    amax = sig * torch.exp2(torch.randint(-100, 100, sig.shape, generator=g).float())
    w = torch.randn(len(sig), 32, generator=g).clamp(-1, 1) * amax[:, None] * 0.99
    w[:, 7] = amax
    ct = ct_compress(w)
    elems, exps = ours(w)
    bump = (sig >= 1.75)[:, None]
    assert torch.equal(ct["weight_scale"].int(), exps.int() + bump.int())
    same = ~bump[:, 0]
    assert torch.equal(ct["weight"].view(torch.uint8)[same], elems[same])
    ct_elems, ct_exps = ours(w, scale_rule="compressed-tensors")
    assert torch.equal(ct["weight"].view(torch.uint8), ct_elems) and torch.equal(ct["weight_scale"], ct_exps)


@settings(max_examples=40, deadline=None)
@given(weights())
def test_compressed_tensors_rule_reproduces_their_bytes(w: np.ndarray) -> None:
    wt = torch.from_numpy(w)
    # compressed-tensors overflows its power-of-two rounding to inf at amax >= 1.75 * 2^127 (writes garbage).
    if wt.abs().amax() >= 1.75 * 2.0**127:
        return
    ct = ct_compress(wt)
    elems, exps = ours(wt, scale_rule="compressed-tensors")
    assert torch.equal(ct["weight_scale"], exps)
    assert torch.equal(ct["weight"].view(torch.uint8), ct_sign_of_zero(wt, elems, exps))


def test_compressed_tensors_rule_is_not_idempotent_for_e4m3() -> None:
    # amax significand in [1.6875, 1.75): no bump, the max element rounds up to 448 = 1.75 * 2^8, whose
    # requantization then bumps the exponent.  OCP's rule has no such drift.
    w = torch.tensor([[1.7] + [0.01] * 31])
    q = FMT.quantize(w, SPEC, scale_rule="compressed-tensors")
    again = FMT.quantize(FMT.dequantize(q), SPEC, scale_rule="compressed-tensors")
    assert again.tensors["weight_scale"].item() == q.tensors["weight_scale"].item() + 1
    ct_again = ct_compress(FMT.dequantize(q))
    assert torch.equal(ct_again["weight_scale"], again.tensors["weight_scale"])


def test_bytes_cross_load_both_ways() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(67, 96, generator=g) * torch.exp2(
        torch.randint(-30, 30, (67, 3), generator=g).float()
    ).repeat_interleave(32, 1)
    q = FMT.quantize(w, SPEC)
    deq = FMT.dequantize(q)
    # compressed-tensors decompresses to bf16: exact for E4M3 × 2^(e-127) with e >= 10 (bf16 normals).
    theirs = ct_decompress(q.tensors["weight"], q.tensors["weight_scale"])
    assert theirs.dtype == torch.bfloat16 and torch.equal(theirs.float(), deq)
    ct = ct_compress(w.to(torch.bfloat16))
    loaded = FMT.from_tensors(ct, SPEC, (67, 96), name="layer.weight")
    assert torch.equal(FMT.dequantize(loaded), ct_decompress(ct["weight"], ct["weight_scale"]).float())


def test_tiny_scales_round_in_compressed_tensors_bf16_decompress() -> None:
    # With e < 10 the exact product is below bf16's normal range: their bf16 output is our float32 rounded.
    elems = torch.arange(0, 127, dtype=torch.uint8)[:96].reshape(3, 32)
    exps = torch.tensor([[0], [5], [9]], dtype=torch.uint8)
    q = FMT.from_tensors({"weight": elems.view(torch.float8_e4m3fn), "weight_scale": exps}, SPEC, (3, 32))
    theirs = ct_decompress(q.tensors["weight"], q.tensors["weight_scale"])
    assert torch.equal(theirs, FMT.dequantize(q).to(torch.bfloat16))


# --- interface ------------------------------------------------------------------------------------


def test_layout_bits_registry_and_refusals() -> None:
    assert get_format("mxfp8_E4M3") is FMT
    assert FMT.layout(SPEC, (8, 64)) == {
        "weight": ((8, 64), torch.float8_e4m3fn),
        "weight_scale": ((8, 2), torch.uint8),
    }
    assert FMT.bits_per_weight(SPEC, (8, 64)) == 8.25
    with pytest.raises(FormatError, match=r"layers\.0\.mlp\.up_proj.*block size"):
        FMT.quantize(torch.ones(2, 40), SPEC, "layers.0.mlp.up_proj")
    with pytest.raises(FormatError, match="32"):
        FMT.quantize(torch.ones(2, 64), QuantSpec("mxfp8", group_size=128))
    with pytest.raises(FormatError, match="activation"):
        FMT.normalize(QuantSpec("mxfp8", activation="fp8"))
    for bad in (float("nan"), float("inf"), -float("inf")):
        w = torch.ones(2, 64)
        w[0, 3] = bad
        with pytest.raises(FormatError, match=r"layers\.3\.self_attn\.o_proj.*NaN or Inf"):
            FMT.quantize(w, SPEC, "layers.3.self_attn.o_proj")
    with pytest.raises(FormatError, match="weight_scale"):
        FMT.from_tensors(
            {
                "weight": torch.zeros(2, 64, dtype=torch.float8_e4m3fn),
                "weight_scale": torch.zeros(2, 1, dtype=torch.uint8),
            },
            SPEC,
            (2, 64),
        )


def test_mx_activation_matmul_quantizes_x_per_32() -> None:
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(5, 64, generator=g), torch.randn(2, 3, 64, generator=g)
    q = FMT.quantize(w, QuantSpec("mxfp8", activation="mxfp8"))
    xq = FMT.fake_quantize(x)
    assert_same_floats(xq.reshape(6, 64), ref_dequant(*ref_quantize(x.reshape(6, 64).numpy())))
    y = FMT.matmul(x, q)
    assert torch.equal(y, xq @ FMT.dequantize(q).t())
    # W8A4: the mxfp4 activation path is the mxfp4 format's own fake quantization
    q4 = FMT.quantize(w, QuantSpec("mxfp8", activation="mxfp4"))
    assert torch.equal(FMT.matmul(x, q4), get_format("mxfp4").fake_quantize(x) @ FMT.dequantize(q4).t())
    with pytest.raises(FormatError, match="activation"):
        FMT.fake_quantize(torch.ones(2, 40))
