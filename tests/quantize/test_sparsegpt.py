"""SparseGPT: exact sparsity, the 2:4 pattern, combined with int4, and better than magnitude pruning."""

from __future__ import annotations

import pytest
import torch

from mpq_serving.errors import MPQError
from mpq_serving.formats import QuantSpec, get_format
from mpq_serving.quantize.hessian import HessianAccumulator
from mpq_serving.quantize.sparsegpt import parse_pattern, sparsegpt_quantize

from quantize_data import correlated_inputs, output_error


@pytest.fixture(scope="module")
def layer():
    x = correlated_inputs()
    w = torch.randn(128, 256, generator=torch.Generator().manual_seed(2)) * 0.02
    acc = HessianAccumulator(256)
    acc.add(x)
    return x, w, acc.value()


def test_unstructured_sparsity_is_exact(layer):
    _, w, h = layer
    q = sparsegpt_quantize(w, h, QuantSpec("bf16"), sparsity=0.5).qtensor
    assert float((q.tensors["weight"] == 0).float().mean()) == 0.5


def test_two_four_pattern(layer):
    _, w, h = layer
    for spec in (QuantSpec("bf16"), QuantSpec("gptq_int4", group_size=64)):
        q = sparsegpt_quantize(w, h, spec, pattern="2:4").qtensor
        deq = get_format(spec.format).dequantize(q)
        zeros_per_four = (deq.reshape(128, -1, 4) == 0).sum(-1)
        assert int(zeros_per_four.min()) >= 2, spec.describe()


def test_sparsity_combines_with_int4_and_keeps_the_zeros(layer):
    x, w, h = layer
    spec = QuantSpec("gptq_int4", group_size=64)
    deq = get_format("gptq_int4").dequantize(sparsegpt_quantize(w, h, spec, sparsity=0.5).qtensor)
    assert float((deq == 0).float().mean()) >= 0.5


def test_compensation_beats_magnitude_pruning(layer):
    x, w, h = layer
    pruned = get_format("bf16").dequantize(sparsegpt_quantize(w, h, QuantSpec("bf16"), sparsity=0.5).qtensor)
    magnitude = w.clone()
    magnitude.view(-1)[w.abs().flatten().argsort()[: w.numel() // 2]] = 0
    assert output_error(x, w, pruned) < 0.7 * output_error(x, w, magnitude)


def test_bad_patterns_are_refused():
    assert parse_pattern("2:4") == (2, 4)
    for bad in ("4:2", "x", "2-4"):
        with pytest.raises(MPQError):
            parse_pattern(bad)
