"""Seed 002's genetic search: GA operators, convergence, the compression target, reproducibility, plans."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mpq_serving.cli.main import app
from mpq_serving.models.tiny import build_tiny
from mpq_serving.plan import plan_to_json_dict, resolve, save_plan
from mpq_serving.plan.validate import validate_plan
from mpq_serving.search.genetic import (
    GAConfig,
    a8_probability,
    compression,
    evolve,
    genetic_search,
    make_fitness,
    make_repair,
    mutate,
    plot_convergence,
    thresholds,
    tournament_select,
    two_point_crossover,
    uniform_crossover,
)
from mpq_serving.search.smoothquant import smooth_scales

runner = CliRunner()
NO_FORCING = {"threshold": 1e9, "edge_threshold": 1e9}


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny("llama", tmp_path_factory.mktemp("ga") / "llama")


def tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 49152, (4, 16), generator=torch.Generator().manual_seed(seed))


def toy_problem(n: int = 12, seed: int = 1):
    rng = np.random.default_rng(seed)
    mse_a8 = rng.uniform(0.01, 0.02, n)
    mse_a4 = mse_a8 * rng.uniform(1.2, 4.0, n)
    numel = rng.integers(1, 10, n).astype(np.float64)
    return mse_a4, mse_a8, numel


# ---------------------------------------------------------------------------------------------- operators

def test_tournament_picks_the_fittest_contender():
    fitness = np.array([0.0, 5.0, 1.0, 2.0])
    rng = np.random.default_rng(0)
    assert tournament_select(fitness, 64, rng) == 1  # 64 draws from 4 cover the best
    picks = [tournament_select(fitness, 2, rng) for _ in range(400)]
    assert picks.count(1) > picks.count(0)  # selection pressure towards the fit


def test_elitism_keeps_the_best_so_far():
    mse_a4, mse_a8, numel = toy_problem(40)
    fit = make_fitness(mse_a4, mse_a8, numel, 0.75)
    result = evolve(fit, np.full(40, 0.5), np.zeros(40, bool), GAConfig(population=8, generations=15, seed=3),
                    progress=False)
    best = [h["best_fitness"] for h in result.history]
    assert all(b2 >= b1 for b1, b2 in itertools.pairwise(best))
    assert result.fitness == best[-1] == pytest.approx(float(fit(result.best[None])[0]), rel=1e-12)


def test_crossover_children_mix_the_parents():
    rng = np.random.default_rng(0)
    a, b = np.zeros(50, bool), np.ones(50, bool)
    for cross in (two_point_crossover, uniform_crossover):
        c, d = cross(a, b, rng)
        assert (c == ~d).all()  # every gene went to exactly one child
    c, _ = two_point_crossover(a, b, rng)
    taken = np.flatnonzero(c)
    assert len(taken) == 0 or (np.diff(taken) == 1).all()  # one contiguous segment from b
    c, _ = uniform_crossover(a, b, rng)
    assert 0 < c.sum() < 50


def test_mutation_is_biased_by_sensitivity_and_spares_forced_genes():
    rng = np.random.default_rng(0)
    sensitivity = np.array([10.0, 0.5, 2.5, 1.0])
    prob = a8_probability(sensitivity, np.full(4, 2.5))
    assert prob[2] == 0.5 and prob[0] > 0.75 and prob[1] < 0.2
    forced = np.array([False, False, False, True])
    draws = np.stack([mutate(np.zeros(4, bool), 1.0, prob, forced, rng) for _ in range(2000)])
    assert abs(draws[:, 0].mean() - prob[0]) < 0.05 and abs(draws[:, 1].mean() - prob[1]) < 0.05
    assert draws[:, 3].all()
    assert not mutate(np.zeros(4, bool), 0.0, prob, np.zeros(4, bool), rng).any()  # rate 0: unchanged


def test_edge_layers_get_the_edge_threshold():
    names = [f"model.layers.{i}.mlp.up_proj" for i in range(4)] + ["model.norm_proj"]
    assert thresholds(names, 2.5, 1.5).tolist() == [1.5, 2.5, 2.5, 1.5, 2.5]


# ---------------------------------------------------------------------------------------------- search

def test_converges_to_the_exact_optimum_of_a_toy_problem():
    mse_a4, mse_a8, numel = toy_problem(12)
    fit = make_fitness(mse_a4, mse_a8, numel, 0.75)
    every = np.array(list(itertools.product([False, True], repeat=12)))
    optimum = fit(every).max()
    result = evolve(fit, a8_probability(mse_a4 / mse_a8, np.full(12, 2.5)), np.zeros(12, bool),
                    GAConfig(population=30, generations=25, seed=0), progress=False)
    assert result.fitness == pytest.approx(optimum, rel=1e-9)
    assert result.history[-1]["best_fitness"] > result.history[0]["best_fitness"]


@pytest.mark.parametrize("target", [0.55, 0.75, 0.9])
def test_compression_target_is_respected(target):
    mse_a4, mse_a8, numel = toy_problem(60, seed=2)
    forced = np.zeros(60, bool)
    forced[:3] = True
    repair = make_repair(mse_a4, mse_a8, numel, forced, target)
    result = evolve(make_fitness(mse_a4, mse_a8, numel, target), np.full(60, 0.5), forced,
                    GAConfig(population=20, generations=20, target_compression=target, seed=1), repair, progress=False)
    assert compression(result.best[None], numel)[0] <= target + 1e-12
    assert result.best[:3].all()
    assert compression(repair(np.ones(60, bool))[None], numel)[0] <= target + 1e-12  # even all-A8 gets repaired


def test_same_seed_same_result_other_seed_other_start():
    mse_a4, mse_a8, numel = toy_problem(80)
    fit = make_fitness(mse_a4, mse_a8, numel, 0.75)
    run = lambda seed: evolve(fit, np.full(80, 0.5), np.zeros(80, bool), GAConfig(population=10, generations=5, seed=seed),
                              progress=False)
    a, b, c = run(7), run(7), run(8)
    assert (a.best == b.best).all() and a.history == b.history
    assert a.history[0] != c.history[0]


def test_smoothing_keeps_the_product_and_tames_outlier_channels():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 32, generator=gen)
    x[:, 3] *= 50  # an outlier channel
    w = torch.randn(16, 32, generator=gen)
    s = smooth_scales(x.abs().amax(0), w, 0.5)
    torch.testing.assert_close((x / s) @ (w * s).t(), x @ w.t(), rtol=1e-4, atol=1e-3)
    ratio = lambda t: float(t.abs().amax(0).max() / t.abs().amax(0).median())
    assert ratio(x / s) < ratio(x) / 3
    with pytest.raises(ValueError, match="alpha"):
        smooth_scales(x.abs().amax(0), w, 1.5)


def test_plan_on_a_tiny_model_is_valid_reproducible_and_within_target(tiny_llama, tmp_path):
    config = GAConfig(population=8, generations=4, target_compression=0.7, seed=5)
    plan = genetic_search(tiny_llama, tokens(), config, smooth_alpha=0.5, progress=False, **NO_FORCING)
    again = genetic_search(tiny_llama, tokens(), config, smooth_alpha=0.5, progress=False, **NO_FORCING)
    strip = lambda p: {**plan_to_json_dict(p), "summary": {k: v for k, v in p.summary.items() if k != "search_seconds"}}
    assert json.dumps(strip(plan), sort_keys=True) == json.dumps(strip(again), sort_keys=True)
    assert plan.summary["compression"] <= 0.7 and plan.summary["seed"] == 5
    assert len(plan.summary["history"]) == 5 and plan.summary["smooth_alpha"] == 0.5
    path = save_plan(plan, tmp_path / "ga.json")
    assert validate_plan(plan, tiny_llama) == []
    names = list(plan.summary["layers"])
    specs = resolve(plan, names)
    for name in names:  # aq carries the activation choice; weights are all W4
        bits = plan.summary["layers"][name]["a_bits"]
        assert specs[name].spec.format == "mxfp4"
        assert specs[name].spec.activation == ("mxfp8" if bits == 8 else "mxfp4")
    assert plot_convergence(plan.summary["history"], tmp_path / "curve.png").stat().st_size > 1000
    assert path.is_file()


def test_moe_experts_get_their_own_genes(tmp_path):
    model = build_tiny("qwen3-moe", tmp_path / "moe")
    plan = genetic_search(model, tokens(), GAConfig(population=6, generations=2, target_compression=0.8),
                          progress=False, **NO_FORCING)
    assert validate_plan(plan, model) == []
    experts = [n for n in plan.summary["layers"] if ".experts." in n]
    assert len(experts) == 2 * 8 * 3


# ---------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, match", [
    ({"target_compression": 0.3}, "target-compression"),
    ({"target_compression": 1.2}, "target-compression"),
    ({"population": 1}, "ga-pop"),
    ({"generations": 0}, "ga-gen"),
])
def test_bad_config_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GAConfig(**kwargs)


def test_target_below_the_forced_layers_is_refused(tiny_llama):
    with pytest.raises(ValueError, match=r"forced to A8.*raise the target"):
        genetic_search(tiny_llama, tokens(), GAConfig(target_compression=0.6), threshold=0.0, edge_threshold=0.0,
                       progress=False)


def test_cli_names_the_bad_option(tiny_llama, tmp_path):
    result = runner.invoke(app, ["plan", "genetic", str(tiny_llama), "--target-compression", "2", "-o",
                                 str(tmp_path / "p.json")])
    assert result.exit_code == 1
    assert "--target-compression" in result.output


@pytest.mark.slow
def test_cli_writes_plan_and_curve(smollm2_dir, tmp_path):
    model = build_tiny("llama", tmp_path / "llama")  # carries SmolLM2's tokenizer once it is prepared
    out = tmp_path / "plan.json"
    result = runner.invoke(app, ["plan", "genetic", str(model), "--ga-pop", "6", "--ga_gen", "2", "--nsamples", "2",
                                 "--seq-len", "16", "--threshold", "1e9", "--edge-threshold", "1e9", "--seed", "3",
                                 "-o", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())["summary"]
    assert summary["strategy"] == "genetic" and summary["parameters"]["ga_pop"] == 6 and summary["seed"] == 3
    assert (tmp_path / "plan_convergence.png").is_file()
    assert runner.invoke(app, ["plan", "validate", str(out), "--model", str(model)]).exit_code == 0
