"""gptq_int4: bytes against a packer written here from the documented layout, and dequant against
GPTQModel's and AutoGPTQ's own unpack code (copied below).

The reference quantizer and packer here use numpy float16 / uint32 and strided slicing, not the
reshape-and-shift code under test: scales are the smallest float16 >= amax/7 (symmetric) or
>= (hi - lo)/15 (asymmetric, zero = rint(-lo/scale)), codes rint(clip(w/scale + zero - 8, -8, 7)) + 8.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpq_serving.errors import FormatError
from mpq_serving.formats import QuantSpec, get_format
from mpq_serving.formats.int4_packing import Int4Parts, to_int32

GPTQ = get_format("gptq_int4")
NAME = "model.layers.7.mlp.down_proj.weight"
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
F16_TINY = np.float16(2.0**-24)  # smallest positive float16 subnormal
EDGE = (0.0, -0.0, 65504.0, -65504.0, 1e-40, -1e-40, 6e-8, 1.0, -1.0, 0.5)
KINDS = ("normal", "uniform", "constant_rows", "zeros", "edge", "positive", "negative", "outlier")
MAGNITUDES = (1e-40, 1e-30, 1e-6, 1e-2, 1.0, 300.0, 65504.0)


# --- GPTQModel 7.7.0, gptqmodel/nn_modules/qlinear/__init__.py: `_torch_right_shift` (CPU path),
# `BaseQuantLinear.dequantize_weight` and `_dequantize_from_codes`, copied verbatim and trimmed to
# the non-planar 2/4/8-bit, num_itr == 1 path (the planar / 3-bit / num_itr > 1 branches are cut).
t = torch


def _torch_right_shift(values: t.Tensor, shifts: int | t.Tensor) -> t.Tensor:
    return t.bitwise_right_shift(values, shifts)


def gptqmodel_dequantize_weight(self, num_itr: int = 1):
    self._init_wf_unsqueeze_buffers()
    if self.bits in [2, 4, 8]:
        zeros = _torch_right_shift(
            t.unsqueeze(self.qzeros, 2).expand(-1, -1, self.pack_factor),
            self.wf_unsqueeze_zero  # self.wf.unsqueeze(0),
        ).to(self.dequant_dtype)
        zeros = t.bitwise_and(zeros, self.maxq).reshape(self.qzeros.shape[0], -1)
        zeros = zeros[:, :self.scales.shape[1]]

        weight = t.bitwise_and(
            _torch_right_shift(
                t.unsqueeze(self.qweight, 1).expand(-1, self.pack_factor, -1),
                self.wf_unsqueeze_neg_one  # self.wf.unsqueeze(-1)
            ).to(self.dequant_dtype),
            self.maxq
        )
    weight = weight.reshape(weight.shape[0] * weight.shape[1], weight.shape[2])

    return self._dequantize_from_codes(weight, zeros, num_itr=num_itr)


def gptqmodel_dequantize_from_codes(self, weight: t.Tensor, zeros: t.Tensor, num_itr: int = 1):
    if weight.shape[0] > self.in_features:
        weight = weight[:self.in_features]
    if num_itr == 1:
        weights = self.scales[self.g_idx.long()] * (weight - zeros[self.g_idx.long()])
    return weights
# --- end of GPTQModel code.


class GPTQModelTorchLinear:
    """The attributes GPTQModel's TorchQuantLinear (4-bit, int32 words) gives the code above."""

    bits, maxq, pack_factor, dequant_dtype = 4, 15, 8, torch.int8
    dequantize_weight = gptqmodel_dequantize_weight
    _dequantize_from_codes = gptqmodel_dequantize_from_codes

    def __init__(self, tensors: dict[str, torch.Tensor], in_features: int, checkpoint_format: str):
        self.qweight, self.g_idx, self.in_features = tensors["qweight"], tensors["g_idx"], in_features
        self.scales = tensors["scales"].float()  # float32 so the reference product is exact, like ours
        self.qzeros = tensors["qzeros"].clone()
        if checkpoint_format == "gptq":
            # gptqmodel/utils/model.py `convert_gptq_v1_to_v2_format_module`, bits == 4, int32 (verbatim):
            self.qzeros.data += 0b00010001000100010001000100010001

    def _init_wf_unsqueeze_buffers(self) -> None:
        # BaseQuantLinear._init_wf_unsqueeze_buffers for bits in [2, 4, 8], pack_dtype_bits 32.
        wf = t.tensor(list(range(0, 32, self.bits)), dtype=t.int32).unsqueeze(0)
        self.wf_unsqueeze_zero = wf.unsqueeze(0)
        self.wf_unsqueeze_neg_one = wf.unsqueeze(-1)


# --- AutoGPTQ 0.7.1, auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py, `QuantLinear.forward` torch
# fallback for bits in [2, 4, 8] (verbatim apart from `self.` -> arguments; it ignores g_idx and
# reads v1 zeros per nibble: (nibble + 1) & 15).
def autogptq_dequant(qweight, qzeros, scales, wf, bits, group_size):
    zeros = torch.bitwise_right_shift(
        torch.unsqueeze(qzeros, 2).expand(-1, -1, 32 // bits),
        wf.unsqueeze(0),
    ).to(torch.int16 if bits == 8 else torch.int8)

    zeros = zeros + 1
    zeros = torch.bitwise_and(
        zeros, (2**bits) - 1
    )  # NOTE: It appears that casting here after the `zeros = zeros + 1` is important.

    zeros = zeros.reshape(-1, 1, zeros.shape[1] * zeros.shape[2])

    scales = scales  # noqa: PLW0127  (verbatim: `scales = self.scales`)
    scales = scales.reshape(-1, 1, scales.shape[-1])

    weight = torch.bitwise_right_shift(
        torch.unsqueeze(qweight, 1).expand(-1, 32 // bits, -1),
        wf.unsqueeze(-1),
    ).to(torch.int16 if bits == 8 else torch.int8)
    weight = torch.bitwise_and(weight, (2**bits) - 1)
    weight = weight.reshape(-1, group_size, weight.shape[2])

    weight = scales * (weight - zeros)
    weight = weight.reshape(weight.shape[0] * weight.shape[1], weight.shape[2])
    return weight
# --- end of AutoGPTQ code.


# ---------------------------------------------------------------- independent references


def ceil_f16(x: np.ndarray) -> np.ndarray:
    """Smallest float16 >= x (numpy's double -> half cast rounds to nearest; step up if it went down)."""
    x = np.maximum(np.asarray(x, dtype=np.float64), float(F16_TINY))
    f = x.astype(np.float16)
    return np.where(f.astype(np.float64) < x, np.nextafter(f, np.float16(np.inf)), f)


def ref_qparams(w: np.ndarray, g_idx: np.ndarray, groups: int, sym: bool, min_zero: int):
    """Per (row, group) float16 scales and integer zeros, one group at a time."""
    out_f = w.shape[0]
    scales = np.zeros((out_f, groups), np.float16)
    zeros = np.zeros((out_f, groups), np.int64)
    for g in range(groups):
        cols = w[:, g_idx == g].astype(np.float64)
        hi = np.maximum(cols.max(axis=1, initial=0.0), 0.0)
        lo = np.minimum(cols.min(axis=1, initial=0.0), 0.0)
        if sym:
            scales[:, g], zeros[:, g] = ceil_f16(np.maximum(hi, -lo) / 7), 8
            continue
        s = ceil_f16((hi - lo) / 15)
        z = np.clip(np.rint(-lo / s.astype(np.float64)), 0, 15).astype(np.int64)
        shift = z < min_zero
        scales[:, g] = np.where(shift, ceil_f16(hi / 14), s)
        zeros[:, g] = np.where(shift, min_zero, z)
    return scales, zeros


def ref_codes(w: np.ndarray, scales: np.ndarray, zeros: np.ndarray, g_idx: np.ndarray) -> np.ndarray:
    s = scales.astype(np.float32)[:, g_idx]
    z = (zeros - 8).astype(np.float32)[:, g_idx]
    return (np.rint(np.clip(w.astype(np.float32) / s + z, -8, 7)) + 8).astype(np.int64)


def ref_pack_rows(values: np.ndarray) -> np.ndarray:
    """Pack along axis 0: nibble j (bits 4j..4j+3) of row r holds row 8r + j."""
    v = values.astype(np.uint32)
    words = np.zeros((v.shape[0] // 8, v.shape[1]), np.uint32)
    for j in range(8):
        words |= v[j::8] << np.uint32(4 * j)
    return words.view(np.int32)


def ref_gptq_tensors(w: np.ndarray, spec: QuantSpec, g_idx: np.ndarray) -> dict[str, np.ndarray]:
    groups = 1 if spec.group_size == -1 else w.shape[1] // spec.group_size
    v1 = spec.checkpoint_format == "gptq"
    scales, zeros = ref_qparams(w, g_idx, groups, spec.symmetric, 1 if v1 and not spec.symmetric else 0)
    codes = ref_codes(w, scales, zeros, g_idx)
    stored_zeros = zeros - 1 if v1 else zeros
    assert stored_zeros.min() >= 0
    return {
        "qweight": ref_pack_rows(codes.T),
        "qzeros": ref_pack_rows(stored_zeros).T,  # [out, G] packed along out -> [out/8, G] -> transpose
        "scales": scales.T,
        "g_idx": g_idx.astype(np.int32),
    }


@st.composite
def weights(draw, out_f: int, in_f: int) -> torch.Tensor:
    """Reproducible weight families: random, constant rows, all zeros, edge values, one-sided, outliers."""
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
def cases(draw, act_order: bool | None = None):
    group_size = draw(st.sampled_from([32, 64, 128, -1]))
    in_f = draw(st.integers(1, 24)) * 8 if group_size == -1 else draw(st.integers(1, 3)) * group_size
    out_f = draw(st.integers(1, 4)) * 8
    spec = QuantSpec(
        "gptq_int4",
        group_size=group_size,
        symmetric=draw(st.booleans()),
        act_order=draw(st.booleans()) if act_order is None else act_order,
        checkpoint_format=draw(st.sampled_from(["gptq", "gptq_v2"])),
    )
    return spec, draw(weights(out_f, in_f))


def act_order_g_idx(w: torch.Tensor, group_size: int) -> np.ndarray:
    """GPTQ's g_idx[perm[k]] = k // group_size, perm = columns by descending L2 norm (stable)."""
    in_f = w.shape[1]
    size = in_f if group_size == -1 else group_size
    norms = np.linalg.norm(w.numpy().astype(np.float64), axis=0)
    perm = sorted(range(in_f), key=lambda i: -norms[i])  # Python's sort is stable
    g_idx = np.zeros(in_f, np.int64)
    for k, col in enumerate(perm):
        g_idx[col] = k // size
    return g_idx


def np_tensors(q) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in q.tensors.items()}


# ---------------------------------------------------------------- tests


@SETTINGS
@given(cases(act_order=False))
def test_bytes_match_reference_packer_and_error_is_within_half_a_step(case):
    spec, w = case
    q = GPTQ.quantize(w, spec, name=NAME)
    out_f, in_f = w.shape
    assert {k: (tuple(v.shape), v.dtype) for k, v in q.tensors.items()} == GPTQ.layout(spec, (out_f, in_f))
    g_idx = np.arange(in_f) // (in_f if spec.group_size == -1 else spec.group_size)
    expected = ref_gptq_tensors(w.numpy(), spec, g_idx)
    got = np_tensors(q)
    for key in ("qweight", "qzeros", "scales", "g_idx"):
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)

    deq = GPTQ.dequantize(q).double()
    step = torch.from_numpy(expected["scales"].T.astype(np.float64)[:, g_idx])
    assert ((deq - w.double()).abs() <= step / 2 * (1 + 2**-20)).all()


@SETTINGS
@given(cases(act_order=True))
def test_act_order_groups_columns_by_descending_norm(case):
    spec, w = case
    q = GPTQ.quantize(w, spec, name=NAME)
    g_idx = act_order_g_idx(w, spec.group_size)
    np.testing.assert_array_equal(q.tensors["g_idx"].numpy(), g_idx)
    expected = ref_gptq_tensors(w.numpy(), spec, g_idx)
    for key in ("qweight", "qzeros", "scales"):
        np.testing.assert_array_equal(q.tensors[key].numpy(), expected[key], err_msg=key)


@SETTINGS
@given(cases())
def test_dequant_equals_gptqmodel_unpack(case):
    spec, w = case
    q = GPTQ.quantize(w, spec, name=NAME)
    ref = GPTQModelTorchLinear(q.tensors, w.shape[1], spec.checkpoint_format).dequantize_weight()
    assert torch.equal(GPTQ.dequantize(q), ref.t().contiguous())


@SETTINGS
@given(cases(act_order=False))
def test_v1_dequant_equals_autogptq_per_nibble_unpack(case):
    spec, w = case
    spec = QuantSpec(spec.format, group_size=spec.group_size, symmetric=spec.symmetric)  # v1
    q = GPTQ.quantize(w, spec, name=NAME)
    wf = torch.tensor(list(range(0, 32, 4)), dtype=torch.int32).unsqueeze(0)
    group = w.shape[1] if spec.group_size == -1 else spec.group_size
    ref = autogptq_dequant(q.tensors["qweight"], q.tensors["qzeros"], q.tensors["scales"].float(), wf, 4, group)
    assert torch.equal(GPTQ.dequantize(q), ref.t())


@SETTINGS
@given(cases())
def test_requantizing_the_dequantized_weight_gives_identical_bytes(case):
    spec, w = case
    q = GPTQ.quantize(w, spec, name=NAME)
    deq = GPTQ.dequantize(q)
    parts = GPTQ.unpack(q)
    g_idx = q.tensors["g_idx"]
    # Same scales and zeros: the codes come back exactly (always).
    codes = ref_codes(deq.numpy(), parts.scales.numpy(), parts.zeros.numpy(), g_idx.numpy().astype(np.int64))
    again = GPTQ.pack(Int4Parts(torch.from_numpy(codes).to(torch.int32), parts.scales, parts.zeros, g_idx), spec)
    for key in q.tensors:
        assert torch.equal(again.tensors[key], q.tensors[key]), key
    # Symmetric amax/7 is a fixed point while the scales are normal float16 (within 2**-10 of amax/7,
    # so amax lands on code 7); subnormal scales are too coarse for that.
    if spec.symmetric and (parts.scales >= torch.finfo(torch.float16).tiny).all():
        requant = GPTQ.quantize(deq, spec, name=NAME, g_idx=g_idx)
        for key in q.tensors:
            assert torch.equal(requant.tensors[key], q.tensors[key]), key


def test_v1_stores_zero_minus_one_and_v2_the_zero():
    w = torch.randn(16, 128)
    v1 = GPTQ.quantize(w, QuantSpec("gptq_int4", group_size=128))
    v2 = GPTQ.quantize(w, QuantSpec("gptq_int4", group_size=128, checkpoint_format="gptq_v2"))
    assert (v1.tensors["qzeros"] == 0x77777777).all()
    assert (v2.tensors["qzeros"] == np.int32(np.uint32(0x88888888).view(np.int32))).all()
    assert torch.equal(v1.tensors["qweight"], v2.tensors["qweight"])
    assert torch.equal(GPTQ.dequantize(v1), GPTQ.dequantize(v2))


def test_v1_asymmetric_never_stores_zero_zero():
    """A group with no negative value would get zero 0, stored as -1 in v1: it gets zero 1 instead."""
    w = torch.rand(8, 64) + 0.5  # all positive
    v2_spec = QuantSpec("gptq_int4", group_size=64, symmetric=False, checkpoint_format="gptq_v2")
    v2 = GPTQ.unpack(GPTQ.quantize(w, v2_spec))
    q1 = GPTQ.quantize(w, QuantSpec("gptq_int4", group_size=64, symmetric=False))
    v1 = GPTQ.unpack(q1)
    assert (v2.zeros == 0).all() and (v1.zeros == 1).all()
    assert (q1.tensors["qzeros"] == 0).all()  # zero - 1 in every nibble
    expected_scales = ceil_f16(w.amax(dim=1).double().numpy() / 14).astype(np.float32)[:, None]
    np.testing.assert_array_equal(v1.scales.float().numpy(), expected_scales)
    assert ((GPTQ.dequantize(q1) - w).abs() <= v1.scales.float() / 2).all()


def test_hand_built_act_order_g_idx_dequantizes_per_column_group():
    out_f, in_f, group = 8, 64, 32
    rng = np.random.default_rng(3)
    g_idx = rng.permutation(np.arange(in_f) // group)  # not monotonic
    codes = rng.integers(0, 16, (out_f, in_f))
    zeros = rng.integers(1, 16, (out_f, 2))
    scales = rng.uniform(0.01, 2, (out_f, 2)).astype(np.float16)
    tensors = {
        "qweight": torch.from_numpy(ref_pack_rows(codes.T)),
        "qzeros": torch.from_numpy(ref_pack_rows(zeros - 1).T.copy()),
        "scales": torch.from_numpy(scales.T.copy()),
        "g_idx": torch.from_numpy(g_idx.astype(np.int32)),
    }
    spec = QuantSpec("gptq_int4", group_size=group, act_order=True)
    deq = GPTQ.dequantize(GPTQ.from_tensors(tensors, spec, (out_f, in_f), name=NAME))
    for o in range(out_f):
        for i in range(in_f):
            g = g_idx[i]
            assert deq[o, i].item() == (int(codes[o, i]) - int(zeros[o, g])) * float(scales[o, g])


def test_explicit_perm_and_g_idx():
    w = torch.randn(16, 128)
    perm = torch.randperm(128, generator=torch.Generator().manual_seed(0))
    spec = QuantSpec("gptq_int4", group_size=32, act_order=True)
    q = GPTQ.quantize(w, spec, perm=perm)
    expected = torch.empty(128, dtype=torch.int32)
    expected[perm] = torch.arange(128, dtype=torch.int32) // 32
    assert torch.equal(q.tensors["g_idx"], expected)
    q2 = GPTQ.quantize(w, spec, g_idx=expected)
    assert all(torch.equal(q.tensors[k], q2.tensors[k]) for k in q.tensors)
    with pytest.raises(FormatError, match="perm"):
        GPTQ.quantize(w, spec, perm=torch.zeros(128, dtype=torch.int64))
    with pytest.raises(FormatError, match="g_idx"):
        GPTQ.quantize(w, spec, g_idx=torch.full((128,), 4))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weight_names_the_tensor(bad):
    w = torch.randn(16, 128)
    w[3, 77] = bad
    with pytest.raises(FormatError, match=NAME.replace(".", r"\.") + r".*NaN or Inf"):
        GPTQ.quantize(w, QuantSpec("gptq_int4"), name=NAME)


def test_shape_errors_name_the_tensor_and_group_size():
    with pytest.raises(FormatError, match=r"down_proj.*not divisible by the gptq_int4 group size 128"):
        GPTQ.quantize(torch.randn(16, 192), QuantSpec("gptq_int4"), name=NAME)
    with pytest.raises(FormatError, match=r"down_proj.*divisible by 8"):
        GPTQ.quantize(torch.randn(12, 128), QuantSpec("gptq_int4"), name=NAME)
    with pytest.raises(FormatError, match=r"down_proj.*divisible by 8"):
        GPTQ.quantize(torch.randn(16, 36), QuantSpec("gptq_int4", group_size=-1), name=NAME)
    with pytest.raises(FormatError, match="group_size"):
        GPTQ.quantize(torch.randn(16, 128), QuantSpec("gptq_int4", group_size=0), name=NAME)


def test_scale_overflow_is_a_format_error():
    w = torch.full((8, 32), 1e6)
    with pytest.raises(FormatError, match=NAME.replace(".", r"\.") + ".*float16"):
        GPTQ.quantize(w, QuantSpec("gptq_int4", group_size=32), name=NAME)


def test_layout_and_bits_per_weight():
    spec = QuantSpec("gptq_int4")
    assert GPTQ.bits_per_weight(spec, (4096, 4096)) == 4 + (16 + 4) / 128 + 32 / 4096
    assert GPTQ.bits_per_weight(QuantSpec("gptq_int4", group_size=-1), (64, 256)) == 4 + (16 + 4) / 256 + 32 / 64
    assert GPTQ.layout(spec, (576, 1536)) == {
        "qweight": ((192, 576), torch.int32),
        "qzeros": ((12, 72), torch.int32),
        "scales": ((12, 576), torch.float16),
        "g_idx": ((1536,), torch.int32),
    }
    assert get_format("gptq") is GPTQ and get_format("GPTQ-int4") is GPTQ
    assert GPTQ.normalize(QuantSpec("gptq_int4")).group_size == 128


def test_from_tensors_checks_shapes_and_round_trips():
    w = torch.randn(32, 256)
    spec = QuantSpec("gptq_int4", symmetric=False)
    q = GPTQ.quantize(w, spec)
    back = GPTQ.from_tensors(dict(q.tensors), spec, (32, 256), name=NAME)
    assert torch.equal(GPTQ.dequantize(back), GPTQ.dequantize(q))
    bad = dict(q.tensors, scales=q.tensors["scales"][:1])
    with pytest.raises(FormatError, match="scales"):
        GPTQ.from_tensors(bad, spec, (32, 256), name=NAME)


def test_bfloat16_input_and_matmul():
    w = torch.randn(64, 256, dtype=torch.bfloat16)
    q = GPTQ.quantize(w, QuantSpec("gptq_int4"))
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    ref = (x.float() @ GPTQ.dequantize(q).t()).to(torch.bfloat16)
    assert torch.equal(GPTQ.matmul(x, q), ref)


# ---------------------------------------------------------------- 2- and 8-bit GPTQ (gptq_int2, gptq_int8)

# gptqmodel/utils/model.py `convert_gptq_v1_to_v2_format_module`: the word added to v1 qzeros per width.
GPTQMODEL_V1_TO_V2 = {2: 0b01010101010101010101010101010101, 8: 0b00000001000000010000000100000001}


class GPTQModelWidth(GPTQModelTorchLinear):
    """TorchQuantLinear's attributes at another width (BaseQuantLinear: maxq 2**bits - 1, pack_factor
    32 // bits, int16 codes for 8 bits)."""

    def __init__(self, bits: int, tensors: dict[str, torch.Tensor], in_features: int, checkpoint_format: str):
        self.bits, self.maxq, self.pack_factor = bits, 2**bits - 1, 32 // bits
        self.dequant_dtype = torch.int16 if bits == 8 else torch.int8
        self.qweight, self.g_idx, self.in_features = tensors["qweight"], tensors["g_idx"], in_features
        self.scales = tensors["scales"].float()
        self.qzeros = tensors["qzeros"].clone()
        if checkpoint_format == "gptq":
            self.qzeros.data += GPTQMODEL_V1_TO_V2[bits]


@pytest.mark.parametrize("bits", [2, 8])
@pytest.mark.parametrize("group_size, symmetric, act_order, checkpoint_format", [
    (32, True, False, "gptq"), (32, False, False, "gptq"), (64, False, False, "gptq_v2"),
    (-1, True, False, "gptq"), (32, False, True, "gptq"), (32, True, True, "gptq_v2"),
])
def test_other_widths_dequantize_as_gptqmodel_and_autogptq_unpack(bits, group_size, symmetric, act_order,
                                                                 checkpoint_format):
    fmt = get_format(f"gptq_int{bits}")
    torch.manual_seed(bits)
    w = torch.randn(48, 128) * torch.logspace(-2, 1, 128)
    w[3] = 0.0
    w[5] = w[5].abs()  # a row with no negative values: asymmetric zero at its edge
    spec = QuantSpec(fmt.name, group_size=group_size, symmetric=symmetric, act_order=act_order,
                     checkpoint_format=checkpoint_format)
    q = fmt.quantize(w, spec, name=NAME)
    per_word = 32 // bits
    assert q.tensors["qweight"].shape == (128 // per_word, 48)
    assert q.tensors["qzeros"].shape == ((1 if group_size == -1 else 128 // group_size), 48 // per_word)
    assert {k: (tuple(v.shape), v.dtype) for k, v in q.tensors.items()} == fmt.layout(spec, (48, 128))

    ours = fmt.dequantize(q)
    theirs = GPTQModelWidth(bits, q.tensors, 128, checkpoint_format).dequantize_weight()
    assert torch.equal(ours, theirs.t().contiguous())
    if checkpoint_format == "gptq" and not act_order:  # AutoGPTQ's reader: v1, contiguous groups
        wf = torch.tensor(list(range(0, 32, bits)), dtype=torch.int32).unsqueeze(0)
        group = 128 if group_size == -1 else group_size
        ref = autogptq_dequant(q.tensors["qweight"], q.tensors["qzeros"], q.tensors["scales"].float(), wf, bits, group)
        assert torch.equal(ours, ref.t())

    g_idx = q.tensors["g_idx"].long()
    step = q.tensors["scales"].double().t()[:, g_idx]
    assert ((ours.double() - w.double()).abs() <= step / 2 * (1 + 2**-20)).all()


# ---------------------------------------------------------------- 3-bit GPTQ (gptq_int3)

# gptqmodel/nn_modules/qlinear/__init__.py `PackableQuantLinear`, bits == 3 branches (verbatim apart
# from `self.` -> arguments and numpy -> torch int64 in `pack`).
GPTQMODEL_WF_3BIT = torch.tensor(
    [
        [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 0],
        [0, 1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31],
        [0, 2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 0],
    ],
    dtype=torch.int32,
).reshape(1, 3, 12)
def gptqmodel_3bit_dequantize(qweight, qzeros, scales, g_idx):
    wf_unsqueeze_zero, wf_unsqueeze_neg_one = GPTQMODEL_WF_3BIT.unsqueeze(0), GPTQMODEL_WF_3BIT.unsqueeze(-1)
    zeros = qzeros.reshape(qzeros.shape[0], qzeros.shape[1] // 3, 3, 1).expand(-1, -1, -1, 12)
    zeros = zeros >> wf_unsqueeze_zero
    zeros[:, :, 0, 10] = (zeros[:, :, 0, 10] & 0x3) | ((zeros[:, :, 1, 0] << 2) & 0x4)
    zeros[:, :, 1, 11] = (zeros[:, :, 1, 11] & 0x1) | ((zeros[:, :, 2, 0] << 1) & 0x6)
    zeros = zeros & 0x7
    zeros = torch.cat([zeros[:, :, 0, :11], zeros[:, :, 1, 1:12], zeros[:, :, 2, 1:11]], dim=2).reshape(scales.shape)

    weight = qweight.reshape(qweight.shape[0] // 3, 3, 1, qweight.shape[1]).expand(-1, -1, 12, -1)
    weight = (weight >> wf_unsqueeze_neg_one) & 0x7
    weight[:, 0, 10] = (weight[:, 0, 10] & 0x3) | ((weight[:, 1, 0] << 2) & 0x4)
    weight[:, 1, 11] = (weight[:, 1, 11] & 0x1) | ((weight[:, 2, 0] << 1) & 0x6)
    weight = weight & 0x7
    weight = torch.cat([weight[:, 0, :11], weight[:, 1, 1:12], weight[:, 2, 1:11]], dim=1)
    weight = weight.reshape(weight.shape[0] * weight.shape[1], weight.shape[2])
    return scales[g_idx.long()] * (weight - zeros[g_idx.long()])


def gptqmodel_3bit_unpack_zeros(qzeros, shape):
    """The qzeros half of `dequantize_weight`'s bits == 3 branch (`shape` is scales.shape)."""
    wf_unsqueeze_zero = GPTQMODEL_WF_3BIT.unsqueeze(0)
    zeros = qzeros.reshape(qzeros.shape[0], qzeros.shape[1] // 3, 3, 1).expand(-1, -1, -1, 12)
    zeros = zeros >> wf_unsqueeze_zero
    zeros[:, :, 0, 10] = (zeros[:, :, 0, 10] & 0x3) | ((zeros[:, :, 1, 0] << 2) & 0x4)
    zeros[:, :, 1, 11] = (zeros[:, :, 1, 11] & 0x1) | ((zeros[:, :, 2, 0] << 1) & 0x6)
    zeros = zeros & 0x7
    return torch.cat([zeros[:, :, 0, :11], zeros[:, :, 1, 1:12], zeros[:, :, 2, 1:11]], dim=2).reshape(shape)


def gptqmodel_3bit_pack(int_weight):
    """`pack`'s qweight loop for bits == 3 over int_weight [in, out]."""
    qweight = torch.zeros((int_weight.shape[0] // 32 * 3, int_weight.shape[1]), dtype=torch.int64)
    i = 0
    row = 0
    while row < qweight.shape[0]:
        for j in range(i, i + 10):
            qweight[row] |= int_weight[j] << (3 * (j - i))
        i += 10
        qweight[row] |= int_weight[i] << 30
        row += 1
        qweight[row] |= (int_weight[i] >> 2) & 1
        i += 1
        for j in range(i, i + 10):
            qweight[row] |= int_weight[j] << (3 * (j - i) + 1)
        i += 10
        qweight[row] |= int_weight[i] << 31
        row += 1
        qweight[row] |= (int_weight[i] >> 1) & 0x3
        i += 1
        for j in range(i, i + 10):
            qweight[row] |= int_weight[j] << (3 * (j - i) + 2)
        i += 10
        row += 1
    return qweight
# --- end of GPTQModel code.


@pytest.mark.parametrize("group_size, symmetric, act_order, checkpoint_format", [
    (32, True, False, "gptq"), (32, False, False, "gptq"), (64, False, False, "gptq_v2"),
    (-1, True, False, "gptq"), (32, False, True, "gptq"), (32, True, True, "gptq_v2"),
])
def test_3_bit_dequantizes_as_gptqmodel(group_size, symmetric, act_order, checkpoint_format):
    fmt = get_format("gptq_int3")
    torch.manual_seed(3)
    w = torch.randn(64, 128) * torch.logspace(-2, 1, 128)
    w[3] = 0.0
    w[5] = w[5].abs()
    spec = QuantSpec("gptq_int3", group_size=group_size, symmetric=symmetric, act_order=act_order,
                     checkpoint_format=checkpoint_format)
    q = fmt.quantize(w, spec, name=NAME)
    groups = 1 if group_size == -1 else 128 // group_size
    assert {k: (tuple(v.shape), v.dtype) for k, v in q.tensors.items()} == fmt.layout(spec, (64, 128))
    assert q.tensors["qweight"].shape == (12, 64) and q.tensors["qzeros"].shape == (groups, 6)

    parts = fmt.unpack(q)
    their_qweight = gptqmodel_3bit_pack(parts.codes.t().to(torch.int64))
    assert torch.equal(q.tensors["qweight"], to_int32(their_qweight))

    qzeros = q.tensors["qzeros"].clone()
    if checkpoint_format == "gptq":  # GPTQModel 7.6 `_shift_gptq_qzeros`: unpack, + 1 per field mod 8, repack
        groups = qzeros.shape[0]
        fields = gptqmodel_3bit_unpack_zeros(qzeros, (groups, 64))
        qzeros = to_int32(gptqmodel_3bit_pack(((fields + 1) & 7).t().to(torch.int64)).t().contiguous())
    theirs = gptqmodel_3bit_dequantize(q.tensors["qweight"], qzeros, q.tensors["scales"].float(), q.tensors["g_idx"])
    ours = fmt.dequantize(q)
    assert torch.equal(ours, theirs.t().contiguous())
    g_idx = q.tensors["g_idx"].long()
    step = q.tensors["scales"].double().t()[:, g_idx]
    assert ((ours.double() - w.double()).abs() <= step / 2 * (1 + 2**-20)).all()


def test_3_bit_needs_multiples_of_32():
    with pytest.raises(FormatError, match="divisible by 32"):
        get_format("gptq_int3").quantize(torch.randn(48, 128), QuantSpec("gptq_int3", group_size=32))


def test_widths_differ_in_size_and_error():
    torch.manual_seed(0)
    w = torch.randn(64, 256)
    errors, sizes = [], []
    for bits in (2, 3, 4, 8):
        fmt = get_format(f"gptq_int{bits}")
        spec = QuantSpec(fmt.name, group_size=128)
        errors.append(float((fmt.dequantize(fmt.quantize(w, spec)) - w).pow(2).mean()))
        sizes.append(fmt.bits_per_weight(spec, (64, 256)))
    assert errors[0] > errors[1] > errors[2] > errors[3]
    assert sizes == pytest.approx([2 + (16 + 2) / 128 + 32 / 64, 3 + (16 + 3) / 128 + 32 / 64,
                                   4 + (16 + 4) / 128 + 32 / 64, 8 + (16 + 8) / 128 + 32 / 64])
