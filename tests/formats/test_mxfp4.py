"""MXFP4: exact against an independent OCP reference, compressed-tensors' bytes, transformers' gpt-oss dequant.

The reference below shares no code with mpq_serving: the E2M1 table is written out, E8M0 is
2.0 ** (e - 127) in Python floats, and rounding is a brute-force nearest-value search.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from compressed_tensors.compressors.mxfp4.base import MXFP4PackedCompressor
from compressed_tensors.quantization import QuantizationScheme
from compressed_tensors.quantization.quant_scheme import MXFP4A16
from compressed_tensors.quantization.utils.helpers import calculate_qparams
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from transformers.integrations.mxfp4 import convert_moe_packed_tensors

from mpq_serving.errors import FormatError
from mpq_serving.formats import QuantSpec, get_format
from mpq_serving.formats.mxfp4 import from_gpt_oss, from_gpt_oss_experts

FMT = get_format("mxfp4")
SPEC = QuantSpec("mxfp4")
E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]  # magnitude by 3-bit code (OCP MX v1.0, E2M1)
F32_MAX = float(np.finfo(np.float32).max)
CT_SCHEME = QuantizationScheme(targets=["Linear"], **MXFP4A16)


def e8m0(e: int) -> float:
    return math.nan if e == 255 else 2.0 ** (e - 127)


def ref_code(v: float) -> int:
    """Nearest E2M1 code to v (element units), ties to the even code, saturating at ±6, sign of zero kept."""
    mag = min(abs(v), 6.0)
    code = min(range(8), key=lambda c: (abs(E2M1[c] - mag), c % 2))
    return code | (8 if math.copysign(1.0, v) < 0 else 0)


def ref_quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OCP: X = floor(log2(amax)) - 2 clamped to [-127, 127], zero block → e=0; packed low nibble first."""
    out, n = w.shape
    codes = np.zeros((out, n), np.uint8)
    exps = np.zeros((out, n // 32), np.uint8)
    for r in range(out):
        for b in range(n // 32):
            block = [float(v) for v in w[r, 32 * b : 32 * b + 32]]
            amax = max(abs(v) for v in block)
            e = 0 if amax == 0 else min(max(math.floor(math.log2(amax)) - 2 + 127, 0), 254)
            exps[r, b] = e
            for i, v in enumerate(block):
                codes[r, 32 * b + i] = ref_code(v / 2.0 ** (e - 127))
    return codes[:, 0::2] | (codes[:, 1::2] << 4), exps


def ref_dequant(packed: np.ndarray, exps: np.ndarray) -> np.ndarray:
    out, half = packed.shape
    w = np.zeros((out, 2 * half), np.float64)
    for r in range(out):
        for j in range(half):
            for k, nib in enumerate((int(packed[r, j]) & 0xF, int(packed[r, j]) >> 4)):
                col = 2 * j + k
                v = E2M1[nib & 7] * e8m0(int(exps[r, col // 32]))
                w[r, col] = -v if nib & 8 else v
    return w


def ours(w: np.ndarray | torch.Tensor, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    q = FMT.quantize(torch.as_tensor(w), SPEC, **kw)
    return q.tensors["weight_packed"], q.tensors["weight_scale"]


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
    packed, exps = ours(w)
    ref_packed, ref_exps = ref_quantize(w)
    assert np.array_equal(exps.numpy(), ref_exps)
    assert np.array_equal(packed.numpy(), ref_packed)
    assert_same_floats(FMT.dequantize(FMT.quantize(torch.from_numpy(w), SPEC)), ref_dequant(ref_packed, ref_exps))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 4).flatmap(
        lambda out: st.tuples(
            arrays(np.uint8, (out, 32)),
            arrays(np.uint8, (out, 2), elements=st.sampled_from([0, 1, 100, 127, 200, 254, 255]) | st.integers(0, 255)),
        )
    )
)
def test_any_stored_bytes_dequantize_as_reference(stored: tuple[np.ndarray, np.ndarray]) -> None:
    packed, exps = stored
    q = FMT.from_tensors(
        {"weight_packed": torch.from_numpy(packed), "weight_scale": torch.from_numpy(exps)}, SPEC, (packed.shape[0], 64)
    )
    assert_same_floats(FMT.dequantize(q), ref_dequant(packed, exps))  # e=255 is NaN for the whole block


def test_ocp_ties_to_even_and_saturation() -> None:
    # amax 7.9 → X = floor(log2 7.9) - 2 = 0: element units are the values themselves.
    vals = [7.9, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.5, -0.25, -5.0, 0.26, 2.6, 5.01, -7.0, -1e-30]
    want = [6.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, -0.0, -4.0, 0.5, 3.0, 6.0, -6.0, -0.0]
    for shift in (0, -20, 100):  # same codes at any scale, only e moves
        w = torch.tensor([(vals + [0.0] * 16)], dtype=torch.float64) * 2.0**shift
        q = FMT.quantize(w.float(), SPEC)
        assert q.tensors["weight_scale"].item() == 127 + shift
        got = FMT.dequantize(q)[0, :16] / 2.0**shift
        assert got.tolist() == want
        assert torch.signbit(got).tolist() == [math.copysign(1, v) < 0 for v in want]


def test_edge_blocks() -> None:
    rows = [
        [0.0] * 32,  # all zero → e=0, dequant exactly 0
        [F32_MAX] + [-F32_MAX] + [1.0] * 30,  # X = 127 - 2: no overflow
        [1e-40] * 32,  # subnormal: X clamps to -127 (e=0), 1e-40 * 2^127 ≈ 0.017 rounds to 0
        [1.2 * 2.0**126] + [1e-40] * 31,  # one huge, many tiny: X = 124, the tiny ones flush to 0
        [2.0**-125] + [2.0**-127] * 31,  # e=0 still represents these exactly
    ]
    w = torch.tensor(rows, dtype=torch.float32)
    q = FMT.quantize(w, SPEC)
    assert q.tensors["weight_scale"][:, 0].tolist() == [0, 252, 0, 251, 0]
    deq = FMT.dequantize(q)
    assert torch.equal(deq[0], torch.zeros(32)) and torch.equal(deq[2], torch.zeros(32))
    assert deq[1, 0].item() == 1.5 * 2.0**127 and deq[1, 1].item() == -1.5 * 2.0**127
    assert deq[3, 0].item() == 4.0 * 2.0**124 and torch.equal(deq[3, 1:], torch.zeros(31))
    assert deq[4, 0].item() == 2.0**-125 and torch.equal(deq[4, 1:], torch.full((31,), 2.0**-127))
    assert_same_floats(deq, ref_dequant(*ref_quantize(w.numpy())))


@settings(max_examples=100, deadline=None)
@given(weights())
def test_requantizing_the_dequant_reproduces_the_bytes(w: np.ndarray) -> None:
    q = FMT.quantize(torch.from_numpy(w), SPEC)
    again = FMT.quantize(FMT.dequantize(q), SPEC)
    assert all(torch.equal(q.tensors[k], again.tensors[k]) for k in q.tensors)


# --- compressed-tensors ---------------------------------------------------------------------------


def ct_compress(w: torch.Tensor, scale: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """compressed-tensors' MXFP4 compressor; without `scale`, its own observer math picks the scales."""
    if scale is None:
        g = w.unflatten(-1, (-1, 32))
        scale, _ = calculate_qparams(g.amin(-1), g.amax(-1), CT_SCHEME.weights)
    zp = torch.zeros_like(scale)
    return MXFP4PackedCompressor.compress({"weight": w, "weight_scale": scale, "weight_zero_point": zp}, CT_SCHEME)


def ct_decompress(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return MXFP4PackedCompressor.decompress({"weight_packed": packed, "weight_scale": scale}, CT_SCHEME)["weight"]


def ct_sign_of_zero(w: torch.Tensor, packed: torch.Tensor, exps: torch.Tensor) -> torch.Tensor:
    """Our bytes as compressed-tensors writes them: it drops the sign where w / scale is exactly -0.0.

    That is an input -0.0 or a float32 quotient that underflows (torch.sign(-0.0) is 0); a tiny negative
    that rounds to zero keeps its sign in both.  We keep IEEE's sign everywhere, as OCP rounding does.
    """
    scaled = w.float() / torch.exp2(exps.double() - 127).float().repeat_interleave(32, 1)
    negzero = ((scaled == 0) & scaled.signbit()).to(torch.uint8) << 3
    return packed & ~(negzero[:, 0::2] | (negzero[:, 1::2] << 4))


@settings(max_examples=60, deadline=None)
@given(weights())
def test_packing_equals_compressed_tensors_for_the_same_scales(w: np.ndarray) -> None:
    wt = torch.from_numpy(w)
    packed, exps = ours(wt)
    ct = ct_compress(wt, torch.exp2(exps.double() - 127).float())
    assert torch.equal(ct["weight_packed"], ct_sign_of_zero(wt, packed, exps))
    assert torch.equal(ct["weight_scale"], exps)


def test_compressed_tensors_drops_the_sign_of_exact_negative_zero_quotients() -> None:
    w = torch.tensor([[-0.0, -1e-3, -1e-40, 1.0] + [0.0] * 28, [2.0**100, -1e-40] + [0.0] * 30])
    packed, exps = ours(w)
    ct = ct_compress(w)
    assert packed[:, 0].tolist() == [
        8 | (8 << 4),
        6 | (8 << 4),
    ]  # row 0: -0.0 input, -0 from a tiny negative; row 1: 4, -0 from an underflowing quotient
    assert ct["weight_packed"][:, 0].tolist() == [0 | (8 << 4), 6 | (0 << 4)]
    assert torch.equal(ct["weight_packed"], ct_sign_of_zero(w, packed, exps))
    assert torch.equal(
        ct_decompress(ct["weight_packed"], ct["weight_scale"]).float(), FMT.dequantize(FMT.quantize(w, SPEC))
    )


def test_compressed_tensors_scale_rule_is_ocp_plus_one_from_significand_1_75() -> None:
    g = torch.Generator().manual_seed(1)
    sig = torch.tensor([1.0, 1.25, 1.5, 1.7499999, 1.75, 1.8, 1.9999999] * 6)
    amax = sig * torch.exp2(torch.randint(-100, 100, sig.shape, generator=g).float())
    w = torch.randn(len(sig), 32, generator=g).clamp(-1, 1) * amax[:, None] * 0.99
    w[:, 7] = amax
    ct = ct_compress(w)
    ocp_packed, ocp_exps = ours(w)
    bump = (sig >= 1.75)[:, None]
    assert torch.equal(ct["weight_scale"].int(), ocp_exps.int() + bump.int())
    same = ~bump[:, 0]
    assert torch.equal(ct["weight_packed"][same], ocp_packed[same])
    ct_packed, ct_exps = ours(w, scale_rule="compressed-tensors")  # reproduces compressed-tensors byte for byte
    assert torch.equal(ct["weight_packed"], ct_packed) and torch.equal(ct["weight_scale"], ct_exps)


@settings(max_examples=40, deadline=None)
@given(weights())
def test_compressed_tensors_rule_reproduces_their_bytes(w: np.ndarray) -> None:
    wt = torch.from_numpy(w)
    amax = wt.abs().amax()
    # compressed-tensors overflows its power-of-two rounding to inf at amax >= 1.75 * 2^127 (writes garbage).
    if amax >= 1.75 * 2.0**127:
        return
    ct = ct_compress(wt)
    packed, exps = ours(wt, scale_rule="compressed-tensors")
    assert torch.equal(ct["weight_scale"], exps)
    assert torch.equal(ct["weight_packed"], ct_sign_of_zero(wt, packed, exps))


def test_bytes_cross_load_both_ways() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(67, 96, generator=g) * torch.exp2(
        torch.randint(-30, 30, (67, 3), generator=g).float()
    ).repeat_interleave(32, 1)
    q = FMT.quantize(w, SPEC)
    deq = FMT.dequantize(q)
    # compressed-tensors decompresses to bf16, which holds every value here exactly.
    theirs = ct_decompress(q.tensors["weight_packed"], q.tensors["weight_scale"])
    assert theirs.dtype == torch.bfloat16 and torch.equal(theirs.float(), deq)
    ct = ct_compress(w.to(torch.bfloat16))
    loaded = FMT.from_tensors(ct, SPEC, (67, 96), name="layer.weight")
    assert torch.equal(FMT.dequantize(loaded), ct_decompress(ct["weight_packed"], ct["weight_scale"]).float())


# --- gpt-oss ----------------------------------------------------------------------------------------


def test_gpt_oss_bytes_dequantize_like_transformers() -> None:
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 5, 4, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(0, 255, (3, 5, 4), dtype=torch.uint8, generator=g)
    scales[0, 0] = torch.tensor([0, 1, 253, 254], dtype=torch.uint8)
    theirs = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)  # [experts, in, out]
    qs = from_gpt_oss_experts(blocks, scales, "experts.gate_up_proj")
    assert [q.shape for q in qs] == [(5, 128)] * 3
    mine = torch.stack([FMT.dequantize(q) for q in qs])
    assert torch.equal(mine, theirs.transpose(1, 2)) and torch.equal(mine.signbit(), theirs.transpose(1, 2).signbit())
    # pure repacking: the stored bytes are the gpt-oss bytes
    assert torch.equal(qs[1].tensors["weight_packed"], blocks[1].reshape(5, 64))
    assert torch.equal(qs[1].tensors["weight_scale"], scales[1])


def test_gpt_oss_bad_tensors_name_the_weight() -> None:
    with pytest.raises(FormatError, match="mlp.down_proj"):
        from_gpt_oss(torch.zeros(4, 2, 8, dtype=torch.uint8), torch.zeros(4, 2, dtype=torch.uint8), "mlp.down_proj")
    with pytest.raises(FormatError, match="mlp.down_proj"):
        from_gpt_oss(torch.zeros(4, 2, 16, dtype=torch.uint8), torch.zeros(4, 2), "mlp.down_proj")
    with pytest.raises(FormatError, match="experts.down_proj"):
        from_gpt_oss_experts(
            torch.zeros(2, 4, 2, 16, dtype=torch.uint8), torch.zeros(3, 4, 2, dtype=torch.uint8), "experts.down_proj"
        )


# --- interface ------------------------------------------------------------------------------------


def test_layout_bits_registry_and_refusals() -> None:
    assert get_format("MXFP4_E2M1") is FMT
    assert FMT.layout(SPEC, (8, 64)) == {
        "weight_packed": ((8, 32), torch.uint8),
        "weight_scale": ((8, 2), torch.uint8),
    }
    assert FMT.bits_per_weight(SPEC, (8, 64)) == 4.25
    assert FMT.normalize(SPEC).group_size == 32
    with pytest.raises(FormatError, match="block size"):
        FMT.quantize(torch.ones(2, 48), SPEC, "layers.0.mlp.up_proj")
    with pytest.raises(FormatError, match="layers.0.mlp.up_proj"):
        FMT.quantize(torch.ones(2, 48), SPEC, "layers.0.mlp.up_proj")
    with pytest.raises(FormatError, match="32"):
        FMT.quantize(torch.ones(2, 64), QuantSpec("mxfp4", group_size=16))
    with pytest.raises(FormatError, match="symmetric"):
        FMT.normalize(QuantSpec("mxfp4", symmetric=False))
    with pytest.raises(FormatError, match="float weight"):
        FMT.quantize(torch.ones(2, 64, dtype=torch.int32), SPEC)
    with pytest.raises(FormatError, match="scale rule"):
        FMT.quantize(torch.ones(2, 64), SPEC, scale_rule="round-up")
    with pytest.raises(FormatError, match="activation"):
        FMT.normalize(QuantSpec("mxfp4", activation="int8"))
    for bad in (float("nan"), float("inf"), -float("inf")):
        w = torch.ones(2, 64)
        w[1, 40] = bad
        with pytest.raises(FormatError, match=r"layers\.3\.self_attn\.o_proj.*NaN or Inf"):
            FMT.quantize(w, SPEC, "layers.3.self_attn.o_proj")
    with pytest.raises(FormatError, match="weight_scale"):
        FMT.from_tensors(
            {"weight_packed": torch.zeros(2, 32, dtype=torch.uint8), "weight_scale": torch.zeros(2, 2)}, SPEC, (2, 64)
        )


def test_mx_activation_matmul_quantizes_x_per_32() -> None:
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(5, 64, generator=g), torch.randn(3, 64, generator=g, dtype=torch.float64).to(torch.bfloat16)
    q = FMT.quantize(w, QuantSpec("mxfp4", activation="MXFP4_E2M1"))
    assert q.spec.activation == "mxfp4"
    xq = FMT.fake_quantize(x)
    assert_same_floats(xq, ref_dequant(*ref_quantize(x.float().numpy())))
    y = FMT.matmul(x, q)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, (xq @ FMT.dequantize(q).t()).to(torch.bfloat16))
    assert not torch.equal(y, FMT.matmul(x, FMT.quantize(w, SPEC)))  # weight-only differs
    with pytest.raises(FormatError, match="activation"):
        FMT.fake_quantize(torch.tensor([[float("nan")] * 32]))
