"""GPTQ on one weight: lower output error than round-to-nearest, act-order g_idx, the tools' layouts."""

from __future__ import annotations

import pytest
import torch

from mpq_serving.formats import QuantSpec, get_format
from mpq_serving.quantize.gptq import gptq_quantize
from mpq_serving.quantize.hessian import HessianAccumulator
from quantize_data import correlated_inputs, output_error


@pytest.fixture(scope="module")
def layer():
    x = correlated_inputs()
    w = torch.randn(128, 256, generator=torch.Generator().manual_seed(1)) * 0.02
    acc = HessianAccumulator(256)
    for chunk in x.split(500):  # batching must not matter: a running mean
        acc.add(chunk)
    return x, w, acc.value()


def test_hessian_is_batch_independent(layer):
    x, _, h = layer
    torch.testing.assert_close(h, (2 * x.double().t() @ x.double() / x.shape[0]).float(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("spec", [
    QuantSpec("gptq_int4", group_size=32),
    QuantSpec("gptq_int4", group_size=64, act_order=True),
    QuantSpec("gptq_int4", group_size=-1, symmetric=False),
    QuantSpec("awq_int4", group_size=64),
    QuantSpec("ct_int4", group_size=128),
    QuantSpec("int8"),
], ids=lambda s: s.describe())
def test_gptq_beats_round_to_nearest(layer, spec):
    x, w, h = layer
    fmt = get_format(spec.format)
    rtn = fmt.dequantize(fmt.quantize(w, spec))
    q = gptq_quantize(w, h, spec).qtensor
    assert set(q.tensors) == set(fmt.layout(fmt.normalize(spec), tuple(w.shape)))
    gptq = fmt.dequantize(q)
    assert output_error(x, w, gptq) < 0.9 * output_error(x, w, rtn)


def test_act_order_g_idx_follows_the_hessian_order_and_round_trips(layer):
    x, w, h = layer
    spec = QuantSpec("gptq_int4", group_size=32, act_order=True)
    result = gptq_quantize(w, h, spec)
    q = result.qtensor
    perm = torch.argsort(torch.diag(h), descending=True)
    assert torch.equal(result.perm, perm)
    g_idx = q.tensors["g_idx"].long()
    assert torch.equal(g_idx[perm], torch.arange(256) // 32)  # g_idx[perm[k]] = k // group_size
    assert not torch.all(g_idx[1:] >= g_idx[:-1])  # really permuted: not monotonic
    fmt = get_format("gptq_int4")
    # Reading the stored tensors back (as from a checkpoint) gives the same weight, and re-packing the
    # unpacked parts gives the same bytes.
    again = fmt.from_tensors({k: v.clone() for k, v in q.tensors.items()}, spec, tuple(w.shape))
    assert torch.equal(fmt.dequantize(again), fmt.dequantize(q))
    repacked = fmt.pack(fmt.unpack(again), spec)
    for name, tensor in q.tensors.items():
        assert torch.equal(repacked.tensors[name], tensor), name


def test_gptq_v1_asymmetric_zeros_stay_encodable(layer):
    """GPTQ v1 stores zero - 1: every zero the column grid picks must be >= 1 (see formats/gptq_int4.py)."""
    _, w, h = layer
    spec = QuantSpec("gptq_int4", group_size=32, symmetric=False)
    q = gptq_quantize(w + 0.05, h, spec).qtensor  # all-positive weights push zeros toward 0
    assert int(get_format("gptq_int4").unpack(q).zeros.min()) >= 1


def test_dead_input_columns_are_zeroed(layer):
    x, w, _ = layer
    x = x.clone()
    x[:, 10] = 0
    h = HessianAccumulator(256)
    h.add(x)
    deq = get_format("gptq_int4").dequantize(gptq_quantize(w, h.value(), QuantSpec("gptq_int4", group_size=32)).qtensor)
    assert torch.all(deq[:, 10] == 0)


def test_static_groups_act_order_keeps_contiguous_groups(layer):
    """GPTQModel static_groups: Hessian visiting order, but g_idx is the plain i // group_size (vLLM loads it)."""
    x, w, h = layer
    spec = QuantSpec("gptq_int4", group_size=32, act_order=True)
    q = gptq_quantize(w, h, spec, static_groups=True).qtensor
    assert q.spec.act_order is False
    assert torch.equal(q.tensors["g_idx"].long(), torch.arange(256) // 32)
    fmt = get_format("gptq_int4")
    rtn = fmt.dequantize(fmt.quantize(w, QuantSpec("gptq_int4", group_size=32)))
    assert output_error(x, w, fmt.dequantize(q)) < 0.9 * output_error(x, w, rtn)
