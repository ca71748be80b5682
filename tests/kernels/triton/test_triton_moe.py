"""The grouped mixed-format MoE kernel against a per-expert float32 reference (formats' dequantize +
matmul), in the interpreter: experts in seven formats in one layer, NaN-filled intermediate buffers,
fresh random routing each run (seed in every failure message), and a fixed number of launches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mpq_serving.formats import QuantSpec, get_format
from mpq_serving.kernels.triton import moe
from mpq_serving.kernels.triton.moe import align_pairs, build_grouped_experts, grouped_moe

SPECS = [
    QuantSpec("gptq_int4", group_size=32, act_order=True),
    QuantSpec("awq_int4", group_size=32),
    QuantSpec("fp8"),
    QuantSpec("int8"),
    QuantSpec("mxfp4"),
    QuantSpec("mxfp8"),
    QuantSpec("bf16"),
]
EXPERTS, HIDDEN, INTER, TOP_K = 9, 64, 96, 3
# Relative to max|y|.  bf16 rounds in a chain: gate / up weights and outputs, act * up, down weight and
# output, the weighted top-k sum: about twice the roundings of one linear, so twice its 4u.
TOL = {torch.bfloat16: 8 * 2**-8, torch.float32: 2e-5}


def reference(x, idx, weights, dequantized):
    out = torch.zeros(x.shape[0], HIDDEN)
    for t in range(x.shape[0]):
        for j in range(TOP_K):
            gate, up, down = dequantized[idx[t, j]]
            out[t] += weights[t, j] * ((F.silu(x[t] @ gate.t()) * (x[t] @ up.t())) @ down.t())
    return out


@pytest.fixture
def layer(seed, on):
    experts, dequantized = [], []
    for e in range(EXPERTS):
        spec = SPECS[e % len(SPECS)]
        fmt = get_format(spec.format)
        triple = tuple(fmt.quantize(torch.randn(*s) / 8, spec) for s in ((INTER, HIDDEN), (INTER, HIDDEN), (HIDDEN, INTER)))
        experts.append(triple)
        dequantized.append(tuple(fmt.dequantize(q) for q in triple))
    return build_grouped_experts([tuple(on(q) for q in triple) for triple in experts]), dequantized


@pytest.mark.parametrize("tokens", [1, 5, 33])
def test_mixed_experts_match_the_per_expert_reference(tokens, layer, seed, monkeypatch, device):
    grouped, dequantized = layer
    launches = []
    real_launch = moe._launch
    monkeypatch.setattr(moe, "_launch", lambda *a: (launches.append(a[1].fmt), real_launch(*a)))
    x = torch.randn(tokens, HIDDEN)
    weights, idx = torch.randn(tokens, EXPERTS).softmax(-1).topk(TOP_K)
    for dtype in (torch.float32, torch.bfloat16):
        ref = reference(x.to(dtype).float(), idx, weights, dequantized)
        launches.clear()
        y = grouped_moe(x.to(dtype).to(device), idx.to(device), weights.to(device), grouped, F.silu,
                        fill=float("nan")).cpu()
        assert not torch.isnan(y).any(), f"a routed row was never written, {dtype}, seed {seed}"
        err = float((y.float() - ref).abs().max() / ref.abs().max())
        assert err <= TOL[dtype], f"{tokens} tokens, {dtype}: {err:.2e}, seed {seed}"
        assert len(launches) == 3 * len(SPECS), "one launch per projection and format group, none per expert"


def test_experts_with_no_tokens_and_a_group_with_none_routed(layer, seed, device):
    grouped, dequantized = layer
    x = torch.randn(4, HIDDEN)
    idx = torch.tensor([[0, 7, 0], [7, 0, 7], [0, 0, 7], [7, 7, 7]])  # experts 0 and 7: both gptq
    weights = torch.rand(4, TOP_K)
    y = grouped_moe(x.to(device), idx.to(device), weights.to(device), grouped, F.silu, fill=float("nan")).cpu()
    ref = reference(x, idx, weights, dequantized)
    assert float((y - ref).abs().max() / ref.abs().max()) <= TOL[torch.float32], f"seed {seed}"


def test_alignment_places_every_pair_once_in_its_experts_blocks(seed):
    num, block = 5, 4
    local = torch.randint(0, num + 1, (37,))  # num: pairs of another group
    sorted_ids, block_expert = align_pairs(local, num, block)
    placed = sorted_ids[sorted_ids < local.numel()].long()
    assert sorted(placed.tolist()) == (local < num).nonzero().flatten().tolist(), f"seed {seed}"
    experts_of_rows = block_expert.long().repeat_interleave(block)
    valid = sorted_ids < local.numel()
    assert torch.equal(experts_of_rows[valid], local[sorted_ids[valid].long()]), f"seed {seed}"


def test_ids_of_experts_on_other_ranks_contribute_nothing(layer, seed, device):
    grouped, dequantized = layer
    x = torch.randn(5, HIDDEN)
    weights, idx = torch.randn(5, EXPERTS).softmax(-1).topk(TOP_K)
    remote = idx.clone()
    remote[:, 1] = -1  # expert parallel: the second choice lives elsewhere
    y = grouped_moe(x.to(device), remote.to(device), weights.to(device), grouped, F.silu, fill=float("nan")).cpu()
    kept = weights.clone()
    kept[:, 1] = 0
    ref = reference(x, idx, kept, dequantized)
    assert float((y - ref).abs().max() / ref.abs().max()) <= TOL[torch.float32], f"seed {seed}"
