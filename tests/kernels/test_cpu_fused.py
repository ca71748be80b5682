"""The fused fp8 / MX / int8 CPU GEMV against each format's reference, and its build's fallbacks.

Against the exact product (float64, the format's float32 dequantized weight): the kernel's products
are exact and its sums float32; the bf16 path rounds each weight to bf16 at most once (per-block float
scales; per-row and power-of-two scales not at all) and the output once, so each output is within
2 unit roundoffs of x's dtype times sum_k |x_k w_k| (a bound that holds for every shape, including the
one-row, short-K cases where cancellation makes a bound relative to max|y| meaningless).
"""

from __future__ import annotations

import random

import pytest
import torch

from mpq_serving.formats import QuantSpec, get_format
from mpq_serving.kernels import choose_kernel, cpu_fused_build
from mpq_serving.kernels.cpu_fused import CPU_FUSED, MAX_ROWS, SCALE_EACH, SCALE_POW2, SCALE_ROW
from mpq_serving.kernels.cpu_fused_w8a8 import CPU_FUSED_W8A8

TOL = {torch.bfloat16: 2 * 2**-8, torch.float16: 2 * 2**-11, torch.float32: 1e-6}

needs_kernel = pytest.mark.skipif(bool(cpu_fused_build.unavailable()), reason=cpu_fused_build.unavailable() or "")

SPECS = {
    "fp8-tensor": QuantSpec("fp8", granularity="tensor"),
    "fp8-channel": QuantSpec("fp8", granularity="channel"),
    "fp8-block128": QuantSpec("fp8", granularity="block", group_size=128),
    "fp8-block64": QuantSpec("fp8", granularity="block", group_size=64),
    "mxfp8": QuantSpec("mxfp8"),
    "mxfp4": QuantSpec("mxfp4"),
    "int8": QuantSpec("int8"),
}
# (out, in): odd row counts (a last block of fewer than 4 rows), in not a multiple of 32 (the scalar
# tail; fp8 only, MX needs multiples of 32), one chunk, several chunks and a ragged last chunk.
SHAPES = [(1, 64), (7, 96), (33, 200), (130, 1056), (64, 2080), (16, 4112)]
ROWS = (1, 2, 3, 4, 5, 15, 16, 17, 33, 64)


@pytest.fixture
def seed() -> int:
    s = random.randrange(2**31)
    torch.manual_seed(s)
    return s


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref.double()).abs().max() / ref.double().abs().max())


def bounded_err(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> float:
    """max |y - x w^T| / (|x| |w|^T), elementwise, all in float64."""
    x, w = x.double(), w.double()
    return float(((y.double() - x @ w.T).abs() / (x.abs() @ w.abs().T).clamp_min(1e-300)).max())


@needs_kernel
@pytest.mark.parametrize("name", SPECS)
def test_fused_kernel_matches_the_format_reference(name, seed):
    spec = SPECS[name]
    fmt = get_format(spec.format)
    for out_f, in_f in SHAPES:
        if spec.format.startswith("mx") and in_f % 32:
            continue
        q = fmt.quantize(torch.randn(out_f, in_f) * 0.05, spec)
        state = CPU_FUSED.prepare(q)
        reference = fmt.dequantize(q)
        for rows in ROWS:
            for dtype in (torch.bfloat16, torch.float32, torch.float16):
                if dtype == torch.float16 and rows not in (1, 17):
                    continue
                wide = torch.randn(rows, 2 * in_f, dtype=dtype)
                x = wide[:, ::2]  # not contiguous
                assert CPU_FUSED.can_run(q, x)[0]
                y = CPU_FUSED.run(x, q, state)
                assert y.dtype == dtype and y.shape == (rows, out_f)
                err = bounded_err(y, x, reference)
                assert err <= TOL[dtype], f"{name} {out_f}x{in_f}, {rows} rows {dtype}: {err:.2e}, seed {seed}"


@pytest.mark.skipif(not cpu_fused_build.has_bf16(), reason="no AVX512-BF16 path here")
def test_w8a8_matches_the_format_reference(seed):
    """Same activation codes as the reference's float64 matmul; integer sums exact in float32 at these sizes."""
    fmt = get_format("int8")
    for out_f, in_f in SHAPES:
        q = fmt.quantize(torch.randn(out_f, in_f) * 0.05, QuantSpec("int8", activation="int8"))
        state = CPU_FUSED_W8A8.prepare(q)
        for rows in (1, 3, 17, 64, 200):
            for dtype in (torch.bfloat16, torch.float32):
                x = torch.randn(rows, 2 * in_f, dtype=dtype)[:, ::2]
                y, ref = CPU_FUSED_W8A8.run(x, q, state), fmt.matmul(x, q)
                assert y.dtype == dtype
                # the reference rounds its float64 result once into dtype: half a unit either way
                err = rel_err(y, ref)
                assert err <= (2**-8 if dtype == torch.bfloat16 else 1e-6), f"{out_f}x{in_f} {rows} {dtype}: {err:.2e}, seed {seed}"


@needs_kernel
def test_scale_modes_are_chosen_by_what_is_exact(seed):
    """Per-row scales go after the sum; MX power-of-two scales into the exponent unless a product would
    leave bfloat16's normal range, then (as for fp8 blocks) per weight -- each still matching the reference."""
    w = torch.randn(64, 256) * 0.05
    cases = {
        "fp8-channel": (get_format("fp8").quantize(w, SPECS["fp8-channel"]), SCALE_ROW),
        "fp8-block128": (get_format("fp8").quantize(w, SPECS["fp8-block128"]), SCALE_EACH),
        "mxfp4": (get_format("mxfp4").quantize(w, SPECS["mxfp4"]), SCALE_POW2),
    }
    tiny = get_format("mxfp8").quantize(w, SPECS["mxfp8"])
    tiny.tensors["weight_scale"][5, 2] = 2  # E8M0 2^-125: the smallest codes times it are bf16 subnormals
    cases["mxfp8-tiny-scale"] = (tiny, SCALE_EACH)
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    for name, (q, mode) in cases.items():
        state = CPU_FUSED.prepare(q)
        assert state.scale_mode == mode, name
        err = bounded_err(CPU_FUSED.run(x, q, state), x, get_format(q.format).dequantize(q))
        assert err <= TOL[x.dtype], f"{name}, seed {seed}"


@needs_kernel
def test_chosen_up_to_max_rows_then_exact_dequantization(seed):
    q = get_format("mxfp4").quantize(torch.randn(64, 128), SPECS["mxfp4"])
    assert choose_kernel(q, torch.randn(MAX_ROWS, 128, dtype=torch.bfloat16)).kernel is CPU_FUSED
    choice = choose_kernel(q, torch.randn(MAX_ROWS + 1, 128, dtype=torch.bfloat16))
    assert choice.kernel is not CPU_FUSED and f"{MAX_ROWS + 1} rows > {MAX_ROWS}" in choice.describe()


@needs_kernel
def test_grad_and_block_splitting_decline_with_reasons(seed):
    q = get_format("fp8").quantize(torch.randn(16, 96), QuantSpec("fp8", granularity="block", group_size=8))
    with pytest.raises(Exception, match="scale blocks of 8 columns split a 16-lane vector"):
        CPU_FUSED.prepare(q)
    x = torch.randn(1, 96, requires_grad=True)
    ok, why = CPU_FUSED.can_run(get_format("fp8").quantize(torch.randn(16, 96), SPECS["fp8-channel"]), x)
    assert not ok and "requires grad" in why


def test_a_failed_build_falls_back_with_its_reason(tmp_path, monkeypatch):
    """A compiler that fails: nothing is left in the cache, the reason names the failure, and the
    chooser runs the exact-dequantization kernel and says why."""
    monkeypatch.setenv(cpu_fused_build.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("CC", "false")
    library, why = cpu_fused_build._load.__wrapped__()
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        assert library is None and "needs AVX-512" in why
        return
    assert library is None and why.startswith("build failed: false ")
    assert list(tmp_path.iterdir()) == []  # no half-written library

    from mpq_serving.kernels import cpu_fused

    monkeypatch.setattr(cpu_fused, "unavailable", lambda: why)
    q = get_format("mxfp8").quantize(torch.randn(32, 64), SPECS["mxfp8"])
    choice = choose_kernel(q, torch.randn(1, 64, dtype=torch.bfloat16))
    assert choice.kernel is not CPU_FUSED and why in choice.describe()


@needs_kernel
def test_the_build_is_cached_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv(cpu_fused_build.CACHE_ENV, str(tmp_path))
    library, why = cpu_fused_build._load.__wrapped__()
    assert library is not None and why == ""
    (built,) = tmp_path.iterdir()
    stamp = built.stat().st_mtime_ns
    assert cpu_fused_build._load.__wrapped__()[0] is not None
    assert built.stat().st_mtime_ns == stamp  # loaded, not rebuilt
