"""The fused dequantize-GEMM against each format's torch reference (`Format.matmul`: float32 dequantize
+ matmul, with the format's own activation quantization for W8A8 / MX activations), in the interpreter.

Fresh random weights and activations each run (the seed is in every failure message); the output (and
the split-K workspace) are NaN-filled before the launch, so any tile the kernel fails to write fails.

Tolerance relative to max|y| (as in tests/kernels/test_cpu_kernels.py): bf16 rounds the weight tile and
the output once each, 4u = 2^-6; float32 differs from the reference by accumulation order only.
"""

from __future__ import annotations

import pytest
import torch

from mpq_serving.errors import FormatError
from mpq_serving.formats import QuantSpec, get_format
from mpq_serving.kernels.triton.gemm import choose_split_k, dequant_matmul
from mpq_serving.kernels.triton.operands import operand_for

TOL = {torch.bfloat16: 4 * 2**-8, torch.float32: 2e-5}

CASES = [  # format, spec fields, (out, in): shapes off the 32-wide interpreter tiles where the format allows
    ("gptq_int4", {"group_size": 32}, (64, 128)),
    ("gptq_int4", {"group_size": 32, "symmetric": False, "act_order": True}, (48, 96)),
    ("gptq_int4", {"group_size": 24, "symmetric": False, "checkpoint_format": "gptq_v2"}, (40, 72)),
    ("gptq_int4", {"group_size": -1}, (40, 72)),
    ("awq_int4", {"group_size": 32}, (64, 128)),
    ("awq_int4", {"group_size": 24}, (40, 72)),
    ("awq_int4", {"group_size": -1, "symmetric": True}, (40, 72)),
    ("fp8", {"granularity": "channel"}, (40, 72)),
    ("fp8", {"granularity": "tensor"}, (64, 128)),
    ("fp8", {"granularity": "block", "group_size": 32}, (40, 72)),  # ragged edge blocks
    ("fp8", {"activation": "fp8"}, (40, 72)),
    ("int8", {}, (40, 72)),
    ("int8", {"activation": "int8"}, (64, 128)),
    ("mxfp4", {}, (40, 96)),
    ("mxfp4", {"activation": "mxfp8"}, (64, 128)),
    ("mxfp8", {}, (40, 96)),
    ("bf16", {}, (40, 72)),
]
IDS = [f"{f}-{'-'.join(f'{k}={v}' for k, v in kw.items())}-{o}x{i}" for f, kw, (o, i) in CASES]


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref.float()).abs().max() / ref.float().abs().max())


@pytest.mark.parametrize(("fmt", "fields", "shape"), CASES, ids=IDS)
def test_fused_kernel_matches_the_format_reference(fmt, fields, shape, seed, device, on):
    q = get_format(fmt).quantize(torch.randn(shape) * 0.05, QuantSpec(fmt, **fields))
    op = operand_for(on(q))
    n, k = shape
    for dtype in (torch.bfloat16, torch.float32):
        for m, split in ((1, None), (5, 1), (33, 1)):  # decode split-K, decode one split, prefill tiles
            x = torch.randn(m, k).to(dtype)
            ref = get_format(fmt).matmul(x.to(torch.float32), q)
            out = torch.full((m, n), float("nan"), dtype=dtype, device=device)
            split = split or choose_split_k(m, n, k, device)
            workspace = torch.full((split, m, n), float("nan"), device=device) if split > 1 else None
            y = dequant_matmul(x.to(device), op, out, split_k=split, workspace=workspace)
            assert y is out and not torch.isnan(y).any(), f"unwritten outputs, {dtype} M={m}, seed {seed}"
            err = rel_err(y.cpu(), ref)
            assert err <= TOL[dtype], f"{dtype} M={m} split {split}: {err:.2e}, seed {seed}"


def test_decode_splits_k_and_the_splits_sum_to_the_single_pass(seed):
    q = get_format("gptq_int4").quantize(torch.randn(32, 256), QuantSpec("gptq_int4", group_size=64))
    op = operand_for(q)
    assert choose_split_k(1, 32, 256, torch.device("cpu")) > 1
    x = torch.randn(3, 256)
    whole = dequant_matmul(x, op, variant="decode", split_k=1)
    for split in (2, 4, 8):
        y = dequant_matmul(x, op, variant="decode", split_k=split, workspace=torch.full((split, 3, 32), float("nan")))
        assert rel_err(y, whole) <= 1e-5, f"split {split}, seed {seed}"


def test_prefill_variant_serves_few_rows_too(seed):
    q = get_format("mxfp4").quantize(torch.randn(40, 64), QuantSpec("mxfp4"))
    x = torch.randn(2, 64, dtype=torch.bfloat16)
    y = dequant_matmul(x, operand_for(q), torch.full((2, 40), float("nan"), dtype=torch.bfloat16), variant="prefill")
    assert rel_err(y, get_format("mxfp4").matmul(x.float(), q)) <= TOL[torch.bfloat16], f"seed {seed}"


def test_wrong_activation_width_names_the_weight():
    q = get_format("int8").quantize(torch.randn(8, 16), QuantSpec("int8"))
    with pytest.raises(FormatError, match="in_features 16"):
        dequant_matmul(torch.randn(2, 17), operand_for(q))


def test_formats_without_a_kernel_are_refused_by_name():
    q = get_format("ct_int4").quantize(torch.randn(8, 32), QuantSpec("ct_int4", group_size=32))
    with pytest.raises(FormatError, match="ct_int4: no Triton kernel"):
        operand_for(q)


def test_e4m3_nan_codes_are_refused_so_the_dispatch_falls_back():
    q = get_format("fp8").quantize(torch.randn(8, 16), QuantSpec("fp8"))
    q.tensors["weight"].view(torch.uint8)[3, 5] = 0x7F
    with pytest.raises(FormatError, match="E4M3 NaN codes"):
        operand_for(q)
