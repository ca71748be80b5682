"""The dispatch point: Triton first for CUDA (here: forced onto CPU under the interpreter), declining with
the reason otherwise, and the layer's forward giving the reference result through it."""

from __future__ import annotations

import logging

import torch

from mpq_serving.formats import QuantSpec, get_format
from mpq_serving.kernels import KernelCache, choose_kernel, linear
from mpq_serving.layers.linear import MixedPrecisionLinear

TRITON = "triton dequant-GEMM"


def test_cpu_tensors_stay_on_the_cpu_kernels_and_say_why(monkeypatch):
    monkeypatch.delenv("MPQ_TRITON", raising=False)
    q = get_format("gptq_int4").quantize(torch.randn(64, 128), QuantSpec("gptq_int4", group_size=32))
    choice = choose_kernel(q, torch.randn(1, 128, dtype=torch.bfloat16))
    assert choice.kernel.name != TRITON
    assert f"{TRITON}: tensors on cpu: Triton runs on CUDA" in choice.describe()


def test_switch_off_is_reported(monkeypatch):
    monkeypatch.setenv("MPQ_TRITON", "0")
    q = get_format("fp8").quantize(torch.randn(64, 128), QuantSpec("fp8"))
    assert f"{TRITON}: MPQ_TRITON=0" in choose_kernel(q, torch.randn(1, 128)).describe()


def test_forced_triton_runs_the_layer_and_logs_its_choice_once(monkeypatch, caplog, seed):
    monkeypatch.setenv("MPQ_TRITON", "force")
    q = get_format("awq_int4").quantize(torch.randn(64, 128) * 0.05, QuantSpec("awq_int4", group_size=32))
    layer = MixedPrecisionLinear(q, bias=torch.randn(64))
    x = torch.randn(2, 3, 128)
    with caplog.at_level(logging.INFO, logger="mpq_serving.kernels.dispatch"):
        y = layer(x)
        layer(x)
    ref = x @ get_format("awq_int4").dequantize(q).t() + layer.bias
    assert y.shape == (2, 3, 64) and float((y - ref).abs().max() / ref.abs().max()) <= 2e-5, f"seed {seed}"
    messages = [r.getMessage() for r in caplog.records if TRITON in r.getMessage()]
    assert len(messages) == 1 and "decode split-K, M=6" in messages[0]


def test_forced_triton_declines_block_fp8_w8a8_and_the_reference_runs(monkeypatch, seed):
    monkeypatch.setenv("MPQ_TRITON", "force")
    spec = QuantSpec("fp8", granularity="block", group_size=32, activation="fp8")
    q = get_format("fp8").quantize(torch.randn(64, 128), spec)
    x = torch.randn(3, 128)
    choice = choose_kernel(q, x, KernelCache())
    assert choice.kernel.name != TRITON and "W8A8 fp8 with block scales" in choice.describe()
    assert torch.allclose(linear(x, q), get_format("fp8").matmul(x, q)), f"seed {seed}"


def test_mixed_experts_module_runs_as_grouped_launches_when_forced(monkeypatch, caplog, seed):
    from mpq_serving.kernels.triton.dispatch_kernel import grouped_experts_forward
    from mpq_serving.layers.moe import MixedPrecisionExpert, MixedPrecisionExperts

    specs = [QuantSpec("gptq_int4", group_size=32), QuantSpec("mxfp4"), QuantSpec("fp8"), QuantSpec("int8")]
    hidden, inter = 64, 96
    experts = []
    for e in range(6):
        spec = specs[e % len(specs)]
        fmt = get_format(spec.format)
        layers = [MixedPrecisionLinear(fmt.quantize(torch.randn(o, i) / 8, spec)) for o, i in
                  ((inter, hidden), (inter, hidden), (hidden, inter))]
        experts.append(MixedPrecisionExpert(*layers))
    module = MixedPrecisionExperts(experts, torch.nn.functional.silu)
    x = torch.randn(7, hidden)
    weights, idx = torch.randn(7, 6).softmax(-1).topk(2)
    monkeypatch.delenv("MPQ_TRITON", raising=False)
    assert grouped_experts_forward(module, x, idx, weights) is None  # CPU: the module's own loop
    monkeypatch.setenv("MPQ_TRITON", "force")
    with caplog.at_level(logging.INFO, logger="mpq_serving.kernels.dispatch"):
        y = grouped_experts_forward(module, x, idx, weights)
    monkeypatch.setenv("MPQ_TRITON", "0")
    ref = module(x, idx, weights)  # per-expert loop through the CPU kernels
    assert float((y - ref).abs().max() / ref.abs().max()) <= 1e-4, f"seed {seed}"
    assert any("Triton grouped MoE kernel" in r.getMessage() for r in caplog.records)
