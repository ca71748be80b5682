"""Row-wise stacking of fused parts (q/k/v, gate/up): which layouts stack, and that stacking is exact."""

from __future__ import annotations

import pytest
import torch

from mpq_serving.formats import QuantSpec, get_format
from mpq_serving.formats.row_concat import group_stackable, stack_rows, stackable_rows
from mpq_serving.integrations.common.fused_linear import FusedMixedLinear

STACKABLE = [QuantSpec("fp8", granularity="channel"), QuantSpec("mxfp8"), QuantSpec("mxfp4"), QuantSpec("int8"),
             QuantSpec("int8", activation="int8"), QuantSpec("bf16")]
NOT_STACKABLE = [QuantSpec("fp8", granularity="tensor"), QuantSpec("fp8", granularity="block", group_size=128),
                 QuantSpec("gptq_int4", group_size=64), QuantSpec("awq_int4", group_size=64),
                 QuantSpec("ct_int4", group_size=64, symmetric=False)]
ROWS = (192, 64, 64)  # q, k, v of a GQA layer


def parts(spec: QuantSpec, rows=ROWS, in_f: int = 256):
    fmt = get_format(spec.format)
    return [fmt.quantize(torch.randn(r, in_f) * 0.05, spec) for r in rows]


@pytest.mark.parametrize("spec", STACKABLE, ids=lambda s: s.describe())
def test_stacked_parts_dequantize_and_multiply_as_the_parts(spec):
    qs = parts(spec)
    stacked = stack_rows(qs)
    fmt = get_format(spec.format)
    assert stacked.shape == (sum(ROWS), 256)
    assert torch.equal(fmt.dequantize(stacked), torch.cat([fmt.dequantize(q) for q in qs]))
    fused = FusedMixedLinear(qs)
    assert len(fused.parts) == 1
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    separate = torch.cat([FusedMixedLinear([q])(x) for q in qs], dim=-1)
    assert torch.equal(fused(x), separate)  # every kernel computes each output row on its own


@pytest.mark.parametrize("spec", NOT_STACKABLE, ids=lambda s: s.describe())
def test_layouts_without_one_row_per_output_stay_parts(spec):
    qs = parts(spec)
    assert not stackable_rows(qs)
    assert len(FusedMixedLinear(qs).parts) == len(qs)
    with pytest.raises(ValueError, match="cannot stack"):
        stack_rows(qs)


def test_only_consecutive_parts_of_one_spec_stack_and_the_order_is_kept():
    fp8, mx = QuantSpec("fp8", granularity="channel"), QuantSpec("mxfp4")
    q, k = parts(fp8, (64, 32))
    (v,) = parts(mx, (32,))
    groups = group_stackable([q, k, v])
    assert [g.shape for g in groups] == [(96, 256), (32, 256)]
    assert [g.spec.format for g in groups] == ["fp8", "mxfp4"]
    other_in = get_format("mxfp4").quantize(torch.randn(32, 128), mx)
    assert len(group_stackable([v, other_in])) == 2  # different in_features
