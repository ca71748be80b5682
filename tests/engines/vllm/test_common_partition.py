"""Tensor-parallel slicing of packed tensors (integrations/common), checked per format without a server.

Each rank's slice of the packed tensors must dequantize to exactly that rank's slice of the full
weight — for column-parallel (out) and row-parallel (in) splits — and a wrong shape must be refused
naming the checkpoint tensor.
"""

from __future__ import annotations

import pytest
import torch

from mpq_serving.errors import CheckpointError
from mpq_serving.formats import QuantSpec, get_format
from mpq_serving.integrations.common import ModuleEntry, PartCollector

SPECS = [QuantSpec("fp8", granularity="channel"), QuantSpec("fp8", granularity="tensor"), QuantSpec("mxfp4"),
         QuantSpec("mxfp8"), QuantSpec("gptq_int4", group_size=64), QuantSpec("awq_int4", group_size=64),
         QuantSpec("int8"), QuantSpec("bf16")]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
@pytest.mark.parametrize("split", ["out", "in"])
def test_each_rank_dequantizes_to_its_slice(spec, split):
    fmt = get_format(spec.format)
    weight = torch.randn(256, 512, generator=torch.Generator().manual_seed(0))
    q = fmt.quantize(weight, spec, name="w")
    full = fmt.dequantize(q)
    entry = ModuleEntry("model.layers.0.mlp.up_proj", fmt.normalize(spec), (256, 512))
    for rank in range(2):
        collector = PartCollector({0: entry}, split, rank, 2)
        for suffix, tensor in q.tensors.items():
            collector.add(0, suffix, tensor)
        part = fmt.dequantize(collector.finish()[0])
        expected = full.chunk(2, dim=0 if split == "out" else 1)[rank]
        torch.testing.assert_close(part, expected, rtol=0, atol=0)


def test_mis_shaped_and_missing_tensors_are_named():
    spec = QuantSpec("gptq_int4", group_size=64)
    q = get_format("gptq_int4").quantize(torch.randn(128, 256), spec)
    entry = ModuleEntry("model.layers.3.mlp.down_proj", get_format("gptq_int4").normalize(spec), (128, 256))
    collector = PartCollector({0: entry})
    with pytest.raises(CheckpointError, match=r"model\.layers\.3\.mlp\.down_proj\.scales: shape"):
        collector.add(0, "scales", q.tensors["scales"][:-1])
    collector.add(0, "qweight", q.tensors["qweight"])
    with pytest.raises(CheckpointError, match=r"model\.layers\.3\.mlp\.down_proj\.qzeros"):
        collector.finish()
