"""Seed 003's mutual-information search: the estimator, the clustering, the exact allocation, plans."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mpq_serving.cli.main import app
from mpq_serving.errors import UnknownFormatError
from mpq_serving.models.tiny import build_tiny
from mpq_serving.plan import plan_to_json_dict, resolve
from mpq_serving.plan.bits import average_bits
from mpq_serving.plan.model_weights import linear_weights
from mpq_serving.plan.validate import validate_plan
from mpq_serving.search.mutual_info import (
    MIConfig,
    affinity_from_mi,
    allocate,
    gaussian_mi,
    mi_matrix,
    mutual_info_search,
    principal_channels,
    spectral_clusters,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny("llama", tmp_path_factory.mktemp("mi") / "llama")


def tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 49152, (4, 32), generator=torch.Generator().manual_seed(seed))


def plan_bits(plan, model: Path) -> float:
    weights = linear_weights(model)
    return average_bits(weights, resolve(plan, [w.name for w in weights])).avg_bits


# ---------------------------------------------------------------------------------------------- estimator

@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_gaussian_mi_of_correlated_gaussians(rho):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40_000, 1, generator=gen, dtype=torch.float64)
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(40_000, 1, generator=gen, dtype=torch.float64)
    assert gaussian_mi(x, y) == pytest.approx(-0.5 * math.log(1 - rho**2), abs=0.005)


def test_gaussian_mi_adds_over_independent_channel_pairs_and_ignores_mixing():
    gen = torch.Generator().manual_seed(1)
    t = 40_000
    x = torch.randn(t, 2, generator=gen)
    rhos = torch.tensor([0.8, 0.6])
    y = rhos * x + (1 - rhos**2).sqrt() * torch.randn(t, 2, generator=gen)
    expected = float(-0.5 * torch.log(1 - rhos**2).sum())
    mix = torch.tensor([[2.0, 1.0], [0.5, -3.0]])  # MI is invariant to invertible maps of either side
    assert gaussian_mi(x, y) == pytest.approx(expected, abs=0.01)
    assert gaussian_mi(x @ mix, y) == pytest.approx(expected, abs=0.01)


def test_principal_channels_are_orthonormal_and_padded_for_low_rank():
    gen = torch.Generator().manual_seed(2)
    y = torch.randn(500, 3, generator=gen) @ torch.randn(3, 40, generator=gen)  # rank 3
    z = principal_channels(y, 6)
    assert z.shape == (500, 6)
    torch.testing.assert_close(z[:, :3].t() @ z[:, :3], torch.eye(3), atol=1e-4, rtol=0)
    assert z[:, 3:].abs().max() == 0
    wide = torch.randn(300, 200, generator=gen)  # randomized SVD path, seeded
    torch.testing.assert_close(principal_channels(wide, 4, seed=1), principal_channels(wide, 4, seed=1))


def test_gaussian_mi_refuses_unaligned_tokens():
    with pytest.raises(ValueError, match="same tokens"):
        gaussian_mi(torch.randn(10, 2), torch.randn(11, 2))


# ---------------------------------------------------------------------------------------------- clustering

def test_clustering_recovers_planted_groups():
    gen = torch.Generator().manual_seed(3)
    t, k, groups, per_group = 2000, 4, 3, 5
    latent = [torch.randn(t, k, generator=gen) for _ in range(groups)]
    planted = np.array([g for g in range(groups) for _ in range(per_group)])
    order = torch.randperm(len(planted), generator=gen).numpy()
    planted = planted[order]
    outputs = [latent[g] @ torch.randn(k, 24, generator=gen) + 0.3 * torch.randn(t, 24, generator=gen) for g in planted]
    mi = mi_matrix(torch.stack([principal_channels(y, k) for y in outputs]))
    labels = spectral_clusters(affinity_from_mi(mi, k), groups)
    pairs = set(zip(planted.tolist(), labels.tolist()))
    assert len(pairs) == groups  # a bijection between planted and found groups
    inside = mi[torch.tensor(planted[:, None] == planted[None, :])]
    assert inside.min() > 5 * mi[torch.tensor(planted[:, None] != planted[None, :])].max()


def test_clustering_refuses_bad_input():
    with pytest.raises(ValueError, match="n-groups"):
        spectral_clusters(torch.eye(3), 4)
    with pytest.raises(ValueError, match="symmetric"):
        spectral_clusters(torch.tensor([[1.0, 0.2], [0.5, 1.0]]), 2)


# ---------------------------------------------------------------------------------------------- allocation

def test_allocation_is_exact_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        bits = rng.uniform(1, 10, (5, 4))
        cost = rng.uniform(0, 1, (5, 4))
        bits[rng.random((5, 4)) < 0.15] = np.inf
        bits[:, 0] = rng.uniform(0.5, 1, 5)  # one always-allowed cheap option per group
        budget = rng.uniform(bits[:, 0].sum(), bits[np.isfinite(bits)].max() * 5)
        best = min((sum(cost[g, c] for g, c in enumerate(ch)), ch) for ch in itertools.product(range(4), repeat=5)
                   if sum(bits[g, c] for g, c in enumerate(ch)) <= budget)
        alloc = allocate(bits, cost, budget)
        assert alloc.cost == pytest.approx(best[0], abs=1e-12) and alloc.bits <= budget
        assert all(b1 < b2 and c1 > c2 for (b1, c1, _), (b2, c2, _) in itertools.pairwise(alloc.front))


def test_allocation_refuses_an_impossible_budget():
    with pytest.raises(ValueError, match="infeasible"):
        allocate(np.array([[4.0, 8.0]]), np.array([[1.0, 0.0]]), 3.0)


# ---------------------------------------------------------------------------------------------- search

@pytest.mark.parametrize("target", [15.55, 15.8])
def test_plan_meets_the_target_and_is_valid(tiny_llama, target):
    plan = mutual_info_search(tiny_llama, tokens(), MIConfig(target, n_groups=3), progress=False)
    assert validate_plan(plan, tiny_llama) == []
    bits = plan_bits(plan, tiny_llama)
    assert bits <= target and bits == pytest.approx(plan.summary["avg_bits"])
    groups = plan.summary["groups"]
    assert len(groups) == 3 and sum(len(g["layers"]) for g in groups) == 14
    specs = resolve(plan, [n for g in groups for n in g["layers"]])
    for g in groups:  # one format per group
        assert {specs[n].spec.format for n in g["layers"]} == {g["format"]}
    front = plan.summary["history"]
    assert front[-1]["avg_bits"] == pytest.approx(bits) and all(h["avg_bits"] <= target for h in front)


def test_more_bits_never_cost_more(tiny_llama):
    low = mutual_info_search(tiny_llama, tokens(), MIConfig(15.5, n_groups=4), progress=False)
    high = mutual_info_search(tiny_llama, tokens(), MIConfig(16.0, n_groups=4), progress=False)
    assert high.summary["cost"] == 0.0 and low.summary["cost"] > 0.0  # 16 bits: every group bf16
    assert plan_bits(high, tiny_llama) == 16.0


def test_same_seed_same_plan(tiny_llama):
    run = lambda: mutual_info_search(tiny_llama, tokens(), MIConfig(15.6, n_groups=3, seed=4), progress=False)
    a, b = run(), run()
    strip = lambda p: {**plan_to_json_dict(p), "summary": {k: v for k, v in p.summary.items() if k != "search_seconds"}}
    assert json.dumps(strip(a), sort_keys=True) == json.dumps(strip(b), sort_keys=True)
    assert a.summary["seed"] == 4


def test_moe_experts_are_grouped_and_assigned(tmp_path):
    model = build_tiny("mixtral", tmp_path / "moe")
    plan = mutual_info_search(model, tokens()[:2, :16], MIConfig(15.6, n_groups=3, formats=("bf16", "int8", "mxfp4")),
                              progress=False)
    assert validate_plan(plan, model) == []
    layers = [n for g in plan.summary["groups"] for n in g["layers"]]
    assert sum(".experts." in n for n in layers) == 2 * 8 * 3
    assert plan_bits(plan, model) <= 15.6


# ---------------------------------------------------------------------------------------------- bad input

def test_unknown_format_is_named():
    with pytest.raises(UnknownFormatError, match="int3"):
        MIConfig(4.0, formats=("bf16", "int3"))


@pytest.mark.parametrize("kwargs, match", [
    ({"target_avg_bits": 0.0}, "target-avg-bits"),
    ({"target_avg_bits": 4.0, "n_groups": 0}, "n-groups"),
    ({"target_avg_bits": 4.0, "formats": ()}, "formats"),
])
def test_bad_config_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MIConfig(**kwargs)


def test_impossible_budget_and_too_many_groups_are_refused(tiny_llama):
    with pytest.raises(ValueError, match=r"impossible .* least reachable is 15\.4"):
        mutual_info_search(tiny_llama, tokens(), MIConfig(4.0, n_groups=2), progress=False)
    with pytest.raises(ValueError, match="n-groups 99 exceeds the 14"):
        mutual_info_search(tiny_llama, tokens(), MIConfig(15.6, n_groups=99), progress=False)


def test_cli_names_the_unknown_format(tiny_llama, tmp_path):
    result = runner.invoke(app, ["plan", "mutual-info", str(tiny_llama), "--formats", "bf16,nf4", "-o",
                                 str(tmp_path / "p.json")])
    assert result.exit_code == 1 and "nf4" in result.output


@pytest.mark.slow
def test_cli_writes_a_valid_plan(smollm2_dir, tmp_path):
    model = build_tiny("llama", tmp_path / "llama")  # carries SmolLM2's tokenizer once it is prepared
    out = tmp_path / "plan.json"
    result = runner.invoke(app, ["plan", "mutual-info", str(model), "--target-avg-bits", "15.6", "--n_groups", "3",
                                 "--nsamples", "4", "--seq-len", "16", "-o", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())["summary"]
    assert summary["strategy"] == "mutual-info" and summary["parameters"]["n_groups"] == 3
    assert runner.invoke(app, ["plan", "validate", str(out), "--model", str(model)]).exit_code == 0
