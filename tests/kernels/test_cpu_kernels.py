"""CPU kernels against `F.linear(x, dequantize(q).to(x.dtype))`, and the chooser's picks and reasons.

Inputs are fresh random each run (the seed is in every failure message).

Tolerance, relative to the largest reference output max|y|: every kernel computes the products
exactly and accumulates in float32; what differs from the reference is where it rounds.  The
reference rounds each weight to x's dtype and the output once; the exact-dequant kernels round the
same weights and differ only in accumulation order (act-order permutes the sum); torch's int4pack /
int8pack round the group scales (and int4 zero terms) to bf16 instead of the weights, and the output
once.  With u the unit roundoff (2^-8 bf16, 2^-11 fp16), rounding an output moves it by <= u|y|, and
rounding the weights (or a group's scale) moves an output by about u|y| as well (independent
roundings add like a random walk, and a shared per-row scale is exactly u|y|), so two roundings on
each side give |kernel - reference| <= 4u max|y|.  (The adversarial worst case, u max(|x| @ |W|^T)
per rounding, is ~5x looser here and would hide real bugs.)  float32 differs by accumulation order
only: 1e-5.  Measured worst case over 25 seeds: 7.8e-3 = 2u for bf16 (int4pack / int8pack), 1.4e-6
for float32; the exact dequantizers are also checked bit for bit.
"""

from __future__ import annotations

import logging
import random

import pytest
import torch
import torch.nn.functional as F

from mpq_serving.formats import QuantizedTensor, QuantSpec, get_format
from mpq_serving.kernels import choose_kernel, dispatch, linear, workspace
from mpq_serving.kernels.cpu_fused import CPU_FUSED
from mpq_serving.kernels.cpu_fused_w8a8 import CPU_FUSED_W8A8
from mpq_serving.kernels.cpu_fused_build import unavailable
from mpq_serving.kernels.dispatch import registered_kernels
from mpq_serving.kernels.fast_dequant import dequantize
from mpq_serving.layers.linear import MixedPrecisionLinear

TOL = {torch.bfloat16: 4 * 2**-8, torch.float16: 4 * 2**-11, torch.float32: 1e-5}
INT_VIEW = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}

CASES = [  # format, spec fields, (out, in)
    ("fp8", {"granularity": "channel"}, (1536, 576)),
    ("fp8", {"granularity": "tensor"}, (576, 1536)),
    ("fp8", {"granularity": "block", "group_size": 64}, (200, 300)),  # ragged edge blocks
    ("mxfp8", {}, (1536, 576)),
    ("mxfp4", {}, (576, 1536)),
    ("int8", {}, (1536, 576)),
    ("gptq_int4", {"group_size": 32}, (1536, 576)),
    ("gptq_int4", {"group_size": 64, "symmetric": False, "act_order": True}, (1536, 576)),
    ("gptq_int4", {"group_size": 128, "symmetric": False, "checkpoint_format": "gptq_v2"}, (576, 1536)),
    ("gptq_int4", {"group_size": -1}, (1536, 576)),
    ("awq_int4", {"group_size": 64}, (1536, 576)),
    ("awq_int4", {"group_size": 128}, (576, 1536)),
    ("awq_int4", {"group_size": -1, "symmetric": True}, (192, 576)),
    ("ct_int4", {"group_size": 32, "symmetric": False}, (1536, 576)),
    ("ct_int4", {"group_size": 128}, (576, 1536)),
    ("ct_int4", {"group_size": -1, "symmetric": False}, (48, 100)),  # ragged last word, group 100
    ("bf16", {}, (576, 576)),
    ("fp16", {}, (192, 576)),
    ("fp32", {}, (64, 96)),
]
CASE_IDS = [f"{f}-{'-'.join(f'{k}={v}' for k, v in kw.items())}-{o}x{i}" for f, kw, (o, i) in CASES]


@pytest.fixture
def seed() -> int:
    s = random.randrange(2**31)
    torch.manual_seed(s)
    return s


def quantized(fmt: str, fields: dict, shape: tuple[int, int]) -> QuantizedTensor:
    return get_format(fmt).quantize(torch.randn(shape) * 0.05, QuantSpec(fmt, **fields))


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref.double()).abs().max() / ref.double().abs().max())


@pytest.mark.parametrize(("fmt", "fields", "shape"), CASES, ids=CASE_IDS)
def test_fast_dequantize_is_bit_exact(fmt, fields, shape, seed):
    q = quantized(fmt, fields, shape)
    reference = get_format(fmt).dequantize(q)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        w, perm = dequantize(q, dtype)
        if perm is not None:
            w = w[:, torch.argsort(perm)]
        expected = reference.to(dtype)
        assert torch.equal(w.view(INT_VIEW[dtype]), expected.view(INT_VIEW[dtype])), f"{dtype}, seed {seed}"


INT4_PACK, INT8_PACK = "int4pack (torch tinygemm)", "int8pack (torch W8A16)"
FAST, PLAIN, REFERENCE = "fast exact dequantize + F.linear", "dequantize + F.linear", "torch reference"
FUSED = CPU_FUSED.name
# The other two are the float32 dequantize itself: comparing them with it would take most of the time.
FAST_KERNELS = [k for k in registered_kernels() if k.name not in (PLAIN, REFERENCE)]
# x's leading dims per dtype; float16 GEMMs run a slow generic path on this CPU, so fewer of them.
LEADS = {torch.bfloat16: ((1,), (37,), (2, 5)), torch.float16: ((2, 5),), torch.float32: ((1,), (37,), (2, 5))}


@pytest.mark.parametrize(("fmt", "fields", "shape"), CASES, ids=CASE_IDS)
def test_every_applicable_kernel_matches_the_dequantized_reference(fmt, fields, shape, seed, monkeypatch):
    q = quantized(fmt, fields, shape)
    reference_w = get_format(fmt).dequantize(q)
    for dtype, leads in LEADS.items():
        for lead in leads:
            x = torch.randn(*lead, shape[1], dtype=dtype)
            ref = F.linear(x, reference_w.to(dtype))
            rows = x.reshape(-1, shape[1])
            ran = []
            for kernel in FAST_KERNELS:
                if not kernel.can_run(q, rows)[0]:
                    continue
                y = kernel.run(rows, q, None if kernel.prepare is None else kernel.prepare(q)).reshape(ref.shape)
                assert y.dtype == dtype
                err = rel_err(y, ref)
                assert err <= TOL[dtype], f"{kernel.name}, {dtype}, x {tuple(x.shape)}: {err:.2e}, seed {seed}"
                ran.append(kernel.name)
            assert FAST in ran
            with monkeypatch.context() as m:  # several chunks of 64 rows (and a ragged last one)
                m.setattr(workspace, "CHUNK_ELEMENTS", 1)
                y = linear(x, q)
            assert rel_err(y, ref) <= TOL[dtype], f"chunked, {dtype}, x {tuple(x.shape)}, seed {seed}"
            if fmt in ("gptq_int4", "awq_int4", "ct_int4") and dtype == torch.bfloat16 and shape[1] % 32 == 0:
                assert INT4_PACK in ran
        y = linear(x, q)  # the dispatch, without a cache; the 3-D shape comes back
        assert y.shape == ref.shape and rel_err(y, ref) <= TOL[dtype], f"seed {seed}"


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """A copy of `t` whose data starts one element past a 64-byte boundary, as a tensor read from a
    safetensors file may (the format places tensors at any offset)."""
    buf = torch.empty(t.numel() + 128, dtype=t.dtype)
    start = (-buf.data_ptr()) % 64 // t.element_size() + 1
    return buf[start:start + t.numel()].view(t.shape).copy_(t)


@pytest.mark.parametrize(("fmt", "fields", "shape"), [c for c in CASES if c[0] in ("int8", "gptq_int4", "awq_int4")][:4])
def test_fast_kernels_take_misaligned_operands(fmt, fields, shape, seed):
    q = quantized(fmt, fields, shape)
    reference_w = get_format(fmt).dequantize(q)
    q.tensors.update({name: misaligned(t) for name, t in q.tensors.items()})
    x = misaligned(torch.randn(13, shape[1], dtype=torch.bfloat16))
    ref = F.linear(x, reference_w.to(torch.bfloat16))
    ran = []
    for kernel in FAST_KERNELS:
        if kernel.can_run(q, x)[0]:  # torch's int8pack used to segfault here on a misaligned weight or x
            y = kernel.run(x, q, None if kernel.prepare is None else kernel.prepare(q))
            assert rel_err(y, ref) <= TOL[torch.bfloat16], f"{kernel.name}, seed {seed}"
            ran.append(kernel.name)
    assert (INT8_PACK if fmt == "int8" else INT4_PACK) in ran  # the torch kernels with alignment needs ran


@pytest.mark.parametrize(
    ("fmt", "fields", "shape", "dtype", "rows", "expected", "skip_reason"),
    [
        ("gptq_int4", {"group_size": 128}, (576, 1536), torch.bfloat16, 1, INT4_PACK, None),
        ("gptq_int4", {"group_size": 64, "act_order": True}, (1536, 576), torch.bfloat16, 37, INT4_PACK, None),
        ("awq_int4", {"group_size": -1}, (1536, 576), torch.bfloat16, 1, INT4_PACK, None),
        ("ct_int4", {"group_size": 32}, (192, 576), torch.bfloat16, 8, INT4_PACK, None),
        ("gptq_int4", {"group_size": 128}, (576, 1536), torch.bfloat16, 65, FAST, "65 rows > 64"),
        ("gptq_int4", {"group_size": 128}, (576, 1536), torch.float32, 1, FAST, "only bf16 is vectorized"),
        ("gptq_int4", {"group_size": 16}, (192, 576), torch.bfloat16, 1, FAST, "group size 16 is not a multiple of 32"),
        ("awq_int4", {"group_size": 32}, (8, 64), torch.bfloat16, 1, FAST, "out_features 8 is not a multiple of 16"),
        ("int8", {}, (1536, 576), torch.bfloat16, 1, INT8_PACK, None),
        ("int8", {}, (1536, 576), torch.bfloat16, 37, FUSED, "37 rows > 4"),
        ("int8", {}, (1536, 576), torch.float16, 1, FUSED, "only bf16 is vectorized"),
        ("fp8", {}, (1536, 576), torch.bfloat16, 1, FUSED, None),
        ("mxfp4", {}, (1536, 576), torch.bfloat16, 1, FUSED, None),
        ("mxfp8", {}, (1536, 576), torch.float32, 128, FUSED, None),
        ("mxfp8", {}, (1536, 576), torch.bfloat16, 129, FAST, "129 rows > 128"),
        ("int8", {"activation": "int8"}, (192, 576), torch.bfloat16, 1, CPU_FUSED_W8A8.name, None),
        ("mxfp8", {"activation": "mxfp8"}, (192, 576), torch.bfloat16, 1, REFERENCE, "activations are quantized"),
    ],
)
def test_chooser_picks_the_fast_kernel_or_says_why_not(fmt, fields, shape, dtype, rows, expected, skip_reason, seed):
    if expected in (FUSED, CPU_FUSED_W8A8.name) and unavailable():
        expected, skip_reason = (FAST, unavailable()) if expected == FUSED else (REFERENCE, unavailable())  # no AVX-512 or no compiler here: the reason is reported
    q = quantized(fmt, fields, shape)
    choice = choose_kernel(q, torch.randn(rows, shape[1], dtype=dtype))
    assert choice.kernel.name == expected, f"{choice.describe()}, seed {seed}"
    if skip_reason:
        assert skip_reason in choice.describe()


def test_data_dependent_declines_fall_back_with_a_reason(seed):
    # Act-order groups of unequal size: neither torch's int4pack nor the sorted dequantizer can use them.
    g_idx = torch.tensor([0] * 40 + [1] * 24)[torch.randperm(64)]
    q = get_format("gptq_int4").quantize(torch.randn(32, 64), QuantSpec("gptq_int4", group_size=32), g_idx=g_idx)
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    choice = choose_kernel(q, x)
    assert choice.kernel.name == PLAIN
    assert choice.describe().count("act-order g_idx groups are not all of in/groups columns") == 2
    assert rel_err(linear(x, q), F.linear(x, get_format("gptq_int4").dequantize(q).to(x.dtype))) <= TOL[x.dtype]

    # An fp8 NaN code (0x7f) breaks the float16 shortcut.
    q = quantized("fp8", {}, (64, 96))
    q.tensors["weight"].view(torch.uint8)[3, 5] = 0x7F
    choice = choose_kernel(q, torch.randn(1, 96, dtype=torch.bfloat16))
    assert choice.kernel.name == PLAIN and "weight holds E4M3 NaN codes" in choice.describe()


def test_layer_prepares_once_and_rebuilds_when_a_buffer_changes(seed):
    q = quantized("gptq_int4", {"group_size": 64, "act_order": True}, (192, 576))
    bias = torch.randn(192)
    layer = MixedPrecisionLinear(q, bias)
    x = torch.randn(2, 5, 576, dtype=torch.bfloat16)

    def expected() -> torch.Tensor:
        w = get_format("gptq_int4").dequantize(layer.qtensor).to(x.dtype)
        return F.linear(x, w) + bias.to(x.dtype)

    assert rel_err(layer(x), expected()) <= TOL[x.dtype]
    state = layer.kernel_cache._states[INT4_PACK][1]
    layer(x)
    assert layer.kernel_cache._states[INT4_PACK][1] is state  # prepared once

    layer.scales.mul_(2)  # in place: same storage, new version
    assert rel_err(layer(x), expected()) <= TOL[x.dtype]
    assert layer.kernel_cache._states[INT4_PACK][1] is not state

    layer.scales = layer.scales / 4  # a new tensor
    assert rel_err(layer(x), expected()) <= TOL[x.dtype]
    assert rel_err(linear(x, layer.qtensor, bias), layer(x)) == 0  # uncached dispatch: same kernel, same result


def test_choice_is_logged_once_per_format(monkeypatch, caplog, seed):
    monkeypatch.setattr(dispatch, "_LOGGED", set())
    layer = MixedPrecisionLinear(quantized("ct_int4", {"group_size": 32, "symmetric": False}, (192, 576)))
    with caplog.at_level(logging.INFO, logger="mpq_serving.kernels.dispatch"):
        for _ in range(3):
            layer(torch.randn(1, 576, dtype=torch.bfloat16))
    (record,) = caplog.records
    assert "ct_int4 g32 asym" in record.getMessage() and INT4_PACK in record.getMessage()
    assert "torch int4pack, group 32" in record.getMessage()
