"""awq_int4: bytes against a packer written here, against AutoAWQ's own pack loop, and dequant
against AutoAWQ's own unpack code (both copied below).

The reference quantizer here uses numpy float16 and strided slicing: scales are the smallest
float16 >= (hi - lo)/15 with zero rint(-lo/scale) (asymmetric, AWQ's default) or >= amax/7 with
zero 8 (symmetric), codes rint(clip(w/scale + zero - 8, -8, 7)) + 8.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from autoawq_gemv import autoawq_gemv_from_linear
from hypothesis import strategies as st


from mpq_serving.errors import FormatError
from mpq_serving.formats import QuantSpec, get_format
from mpq_serving.formats.int4_packing import Int4Parts

AWQ = get_format("awq_int4")
NAME = "model.layers.2.self_attn.o_proj.weight"
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # nibble i of a word holds output column 8c + ORDER[i]
F16_TINY = np.float16(2.0**-24)
EDGE = (0.0, -0.0, 65504.0, -65504.0, 1e-40, -1e-40, 6e-8, 1.0, -1.0, 0.5)
KINDS = ("normal", "uniform", "constant_rows", "zeros", "edge", "positive", "negative", "outlier")
MAGNITUDES = (1e-40, 1e-30, 1e-6, 1e-2, 1.0, 300.0, 65504.0)


# --- AutoAWQ 0.2.9, awq/utils/packing_utils.py: AWQ_REVERSE_ORDER, unpack_awq, reverse_awq_order,
# dequantize_gemm (verbatim).
AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]


def unpack_awq(qweight: torch.Tensor, qzeros: torch.Tensor, bits: int):
    shifts = torch.arange(0, 32, bits, device=qzeros.device)

    # unpacking columnwise
    iweights = torch.bitwise_right_shift(qweight[:, :, None], shifts[None, None, :]).to(
        torch.int8  # smallest dtype available
    )
    iweights = iweights.view(iweights.shape[0], -1)

    # unpacking columnwise
    if qzeros is not None:
        izeros = torch.bitwise_right_shift(qzeros[:, :, None], shifts[None, None, :]).to(
            torch.int8  # smallest dtype available
        )
        izeros = izeros.view(izeros.shape[0], -1)
    else:
        izeros = qzeros

    return iweights, izeros


def reverse_awq_order(iweights: torch.Tensor, izeros: torch.Tensor, bits: int):
    reverse_order_tensor = torch.arange(
        iweights.shape[-1],
        dtype=torch.int32,
        device=izeros.device,
    )
    reverse_order_tensor = reverse_order_tensor.view(-1, 32 // bits)
    reverse_order_tensor = reverse_order_tensor[:, AWQ_REVERSE_ORDER]
    reverse_order_tensor = reverse_order_tensor.view(-1)

    if izeros is not None:
        izeros = izeros[:, reverse_order_tensor]
    iweights = iweights[:, reverse_order_tensor]

    return iweights, izeros


def dequantize_gemm(qweight, qzeros, scales, bits, group_size):
    # Unpack the qweight and qzeros tensors
    iweight, izeros = unpack_awq(qweight, qzeros, bits)
    # Reverse the order of the iweight and izeros tensors
    iweight, izeros = reverse_awq_order(iweight, izeros, bits)

    # overflow checks
    iweight = torch.bitwise_and(iweight, (2**bits) - 1)
    izeros = torch.bitwise_and(izeros, (2**bits) - 1)

    # fp16 weights
    scales = scales.repeat_interleave(group_size, dim=0)
    izeros = izeros.repeat_interleave(group_size, dim=0)
    iweight = (iweight - izeros) * scales

    return iweight
# --- end of AutoAWQ packing_utils code.


def autoawq_pack(intweight: torch.Tensor, zeros: torch.Tensor, w_bit: int = 4):
    """AutoAWQ 0.2.9 awq/modules/linear/gemm.py `WQLinear_GEMM.from_linear`, the packing loops
    verbatim (`awq_linear.` attributes made arguments; intweight [in, out], zeros [groups, out])."""
    pack_num = 32 // w_bit
    qweight = torch.zeros(
        (intweight.shape[0], intweight.shape[1] // 32 * w_bit),
        dtype=torch.int32,
        device=intweight.device,
    )

    for col in range(intweight.shape[1] // pack_num):
        if w_bit == 4:
            order_map = [0, 2, 4, 6, 1, 3, 5, 7]
        else:
            raise NotImplementedError("Only 4-bit are supported for now.")
        for i in range(pack_num):
            qweight_col = intweight[:, col * pack_num + order_map[i]]
            qweight[:, col] |= qweight_col << (i * w_bit)

    zeros = zeros.to(dtype=torch.int32)
    qzeros = torch.zeros(
        (zeros.shape[0], zeros.shape[1] // 32 * w_bit),
        dtype=torch.int32,
        device=zeros.device,
    )

    for col in range(zeros.shape[1] // pack_num):
        if w_bit == 4:
            order_map = [0, 2, 4, 6, 1, 3, 5, 7]
        else:
            raise NotImplementedError("Only 4-bit are supported for now.")
        for i in range(pack_num):
            qzero_col = zeros[:, col * pack_num + order_map[i]]
            qzeros[:, col] |= qzero_col << (i * w_bit)
    return qweight, qzeros




@pytest.mark.parametrize("group_size, in_f", [(32, 96), (32, 1056), (64, 256), (128, 384), (128, 2048)])
@pytest.mark.parametrize("symmetric", [False, True])
def test_gemv_layout_written_by_autoawq_reads_as_the_same_gemm_bytes(group_size, in_f, symmetric):
    torch.manual_seed(group_size + in_f)
    w = torch.randn(16, in_f) * torch.logspace(-2, 0, in_f)
    spec = QuantSpec("awq_int4", group_size=group_size, symmetric=symmetric)
    gemm = AWQ.quantize(w, spec, name=NAME)
    parts = AWQ.unpack(gemm)
    # AutoAWQ rounds (w + zero*scale) / scale: hand it the dequantized weight so its codes are ours
    scales, zeros = parts.scales.to(torch.float16), parts.zeros
    stored = autoawq_gemv_from_linear(AWQ.dequantize(gemm).to(torch.float16), scales, zeros.to(torch.float16),
                                      group_size)
    gemv_spec = QuantSpec("awq_int4", group_size=group_size, symmetric=symmetric, checkpoint_format="awq_gemv")
    assert {k: (tuple(v.shape), v.dtype) for k, v in stored.items()} == AWQ.layout(gemv_spec, (16, in_f))
    read = AWQ.from_tensors(stored, gemv_spec, (16, in_f), name=NAME)
    assert read.spec.checkpoint_format != "awq_gemv"
    assert all(torch.equal(read.tensors[k], gemm.tensors[k]) for k in gemm.tensors)


def test_gemv_group_sizes_autoawq_cannot_write_are_refused():
    with pytest.raises(FormatError, match="GEMV layout has group sizes 32, 64 or >= 128"):
        AWQ.check_shape(QuantSpec("awq_int4", group_size=16, checkpoint_format="awq_gemv"), (16, 64), NAME)


# ---------------------------------------------------------------- independent references


def ceil_f16(x: np.ndarray) -> np.ndarray:
    x = np.maximum(np.asarray(x, dtype=np.float64), float(F16_TINY))
    f = x.astype(np.float16)
    return np.where(f.astype(np.float64) < x, np.nextafter(f, np.float16(np.inf)), f)


def ref_qparams(w: np.ndarray, group: int, sym: bool):
    out_f, in_f = w.shape
    g = w.astype(np.float64).reshape(out_f, in_f // group, group)
    hi, lo = np.maximum(g.max(axis=2), 0.0), np.minimum(g.min(axis=2), 0.0)
    if sym:
        scales = ceil_f16(np.maximum(hi, -lo) / 7)
        return scales, np.full(scales.shape, 8, np.int64)
    scales = ceil_f16((hi - lo) / 15)
    return scales, np.clip(np.rint(-lo / scales.astype(np.float64)), 0, 15).astype(np.int64)


def ref_codes(w: np.ndarray, scales: np.ndarray, zeros: np.ndarray, group: int) -> np.ndarray:
    s = np.repeat(scales.astype(np.float32), group, axis=1)
    z = np.repeat((zeros - 8).astype(np.float32), group, axis=1)
    return (np.rint(np.clip(w.astype(np.float32) / s + z, -8, 7)) + 8).astype(np.int64)


def ref_pack_awq(values: np.ndarray) -> np.ndarray:
    """Pack [rows, out] along out: nibble i of word c holds column 8c + ORDER[i]."""
    v = values.astype(np.uint32)
    words = np.zeros((v.shape[0], v.shape[1] // 8), np.uint32)
    for i, col in enumerate(ORDER):
        words |= v[:, col::8] << np.uint32(4 * i)
    return words.view(np.int32)


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
    return torch.from_numpy(np.clip(w, -4e5, 4e5).astype(np.float32))


@st.composite
def cases(draw, out_multiple: int = 8):
    group_size = draw(st.sampled_from([32, 64, 128, -1]))
    in_f = draw(st.integers(1, 100)) if group_size == -1 else draw(st.integers(1, 3)) * group_size
    out_f = draw(st.integers(1, 32 // out_multiple * 2)) * out_multiple
    spec = QuantSpec("awq_int4", group_size=group_size, symmetric=draw(st.booleans()))
    return spec, draw(weights(out_f, in_f))


def group_of(spec: QuantSpec, in_f: int) -> int:
    return in_f if spec.group_size == -1 else spec.group_size


# ---------------------------------------------------------------- tests


@SETTINGS
@given(cases())
def test_bytes_match_reference_packer_and_error_is_within_half_a_step(case):
    spec, w = case
    q = AWQ.quantize(w, spec, name=NAME)
    out_f, in_f = w.shape
    group = group_of(spec, in_f)
    assert {k: (tuple(v.shape), v.dtype) for k, v in q.tensors.items()} == AWQ.layout(spec, (out_f, in_f))
    scales, zeros = ref_qparams(w.numpy(), group, spec.symmetric)
    codes = ref_codes(w.numpy(), scales, zeros, group)
    np.testing.assert_array_equal(q.tensors["scales"].numpy(), scales.T)
    np.testing.assert_array_equal(q.tensors["qweight"].numpy(), ref_pack_awq(codes.T))
    np.testing.assert_array_equal(q.tensors["qzeros"].numpy(), ref_pack_awq(zeros.T))

    step = torch.from_numpy(np.repeat(scales.astype(np.float64), group, axis=1))
    assert ((AWQ.dequantize(q).double() - w.double()).abs() <= step / 2 * (1 + 2**-20)).all()


@SETTINGS
@given(cases(out_multiple=32))  # from_linear sizes qweight as out // 32 * 4 words: it needs out % 32 == 0
def test_packing_equals_autoawq_from_linear_and_dequant_equals_dequantize_gemm(case):
    spec, w = case
    q = AWQ.quantize(w, spec, name=NAME)
    parts = AWQ.unpack(q)
    qweight, qzeros = autoawq_pack(parts.codes.t().contiguous(), parts.zeros.t().contiguous())
    assert torch.equal(q.tensors["qweight"], qweight) and torch.equal(q.tensors["qzeros"], qzeros)
    group = group_of(spec, w.shape[1])
    ref = dequantize_gemm(q.tensors["qweight"], q.tensors["qzeros"], q.tensors["scales"].float(), 4, group)
    assert torch.equal(AWQ.dequantize(q), ref.t())


@SETTINGS
@given(cases())
def test_requantizing_the_dequantized_weight_gives_identical_bytes(case):
    spec, w = case
    q = AWQ.quantize(w, spec, name=NAME)
    deq = AWQ.dequantize(q)
    parts = AWQ.unpack(q)
    codes = ref_codes(deq.numpy(), parts.scales.numpy(), parts.zeros.numpy(), group_of(spec, w.shape[1]))
    again = AWQ.pack(Int4Parts(torch.from_numpy(codes).to(torch.int32), parts.scales, parts.zeros), spec)
    for key in q.tensors:
        assert torch.equal(again.tensors[key], q.tensors[key]), key
    # Symmetric amax/7 is a fixed point while the scales are normal float16 (within 2**-10 of amax/7,
    # so amax lands on code 7); subnormal scales are too coarse for that.
    if spec.symmetric and (parts.scales >= torch.finfo(torch.float16).tiny).all():
        requant = AWQ.quantize(deq, spec, name=NAME)
        for key in q.tensors:
            assert torch.equal(requant.tensors[key], q.tensors[key]), key


def test_interleaved_nibble_order_by_hand():
    """Output columns 0..7 holding codes 0..7: nibble i holds column ORDER[i], so the word reads 0x75316420."""
    parts = Int4Parts(
        codes=torch.arange(8, dtype=torch.int32).repeat(2, 1).t().contiguous(),  # [out 8, in 2]: row o = o
        scales=torch.ones(8, 1, dtype=torch.float16),
        zeros=torch.tensor([[3], [1], [4], [1], [5], [9 - 1], [2], [6]], dtype=torch.int32),
    )
    q = AWQ.pack(parts, QuantSpec("awq_int4", group_size=-1))
    assert (q.tensors["qweight"] == 0x75316420).all()
    # zeros by column 0..7 = 3,1,4,1,5,8,2,6 -> nibbles (ORDER) 3,4,5,2,1,1,8,6 -> 0x68112543 read high to low
    assert q.tensors["qzeros"].item() == 0x68112543


def test_zero_point_is_the_default_like_autoawq():
    assert AWQ.normalize(QuantSpec("awq_int4")).symmetric is False
    assert AWQ.normalize(QuantSpec("awq_int4")).group_size == 128
    assert AWQ.normalize(QuantSpec("awq_int4", symmetric=True)).symmetric is True
    w = torch.rand(8, 128) + 0.25  # no negative value: AWQ's zeros stored as is, so 0 is fine
    q = AWQ.quantize(w, QuantSpec("awq_int4"))
    assert (AWQ.unpack(q).zeros == 0).all() and (q.tensors["qzeros"] == 0).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weight_names_the_tensor(bad):
    w = torch.randn(16, 128)
    w[0, 5] = bad
    with pytest.raises(FormatError, match=NAME.replace(".", r"\.") + r".*NaN or Inf"):
        AWQ.quantize(w, QuantSpec("awq_int4"), name=NAME)


def test_shape_errors_name_the_tensor_and_group_size():
    with pytest.raises(FormatError, match=r"o_proj.*not divisible by the awq_int4 group size 64"):
        AWQ.quantize(torch.randn(16, 96), QuantSpec("awq_int4", group_size=64), name=NAME)
    with pytest.raises(FormatError, match=r"o_proj.*out_features 20"):
        AWQ.quantize(torch.randn(20, 128), QuantSpec("awq_int4"), name=NAME)


def test_layout_bits_per_weight_aliases_and_from_tensors():
    spec = QuantSpec("awq_int4")
    assert AWQ.layout(spec, (576, 1536)) == {
        "qweight": ((1536, 72), torch.int32),
        "qzeros": ((12, 72), torch.int32),
        "scales": ((12, 576), torch.float16),
    }
    assert AWQ.bits_per_weight(spec, (4096, 4096)) == 4 + (16 + 4) / 128
    assert get_format("awq") is AWQ and get_format("AWQ-int4") is AWQ
    w = torch.randn(32, 256)
    q = AWQ.quantize(w, spec)
    back = AWQ.from_tensors(dict(q.tensors), spec, (32, 256), name=NAME)
    assert torch.equal(AWQ.dequantize(back), AWQ.dequantize(q))
    with pytest.raises(FormatError, match="qweight"):
        AWQ.from_tensors(dict(q.tensors, qweight=q.tensors["qweight"].t()), spec, (32, 256), name=NAME)
