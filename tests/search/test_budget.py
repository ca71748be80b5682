"""`mpq plan budget`: the exact solver, the budget it keeps, its errors, and the sensitivity it optimizes."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mpq_serving.cli.main import app
from mpq_serving.errors import MPQError
from mpq_serving.formats import QuantSpec
from mpq_serving.models.tiny import build_tiny
from mpq_serving.plan import resolve
from mpq_serving.plan.bits import average_bits
from mpq_serving.plan.model_weights import linear_weights
from mpq_serving.plan.validate import validate_plan
from mpq_serving.search.budget import (
    build_problem,
    pareto_front,
    parse_formats,
    solution_plan,
    solve,
    solve_choices,
)
from mpq_serving.search.common import SearchRecord
from mpq_serving.search.sensitivity import (
    CalibrationModel,
    CalibrationSettings,
    SensitivityTable,
    collect_statistics,
    compute_sensitivities,
    measured_change,
    quantization_error,
    reference_logprobs,
    scored_weights,
    statistics_parts,
)

runner = CliRunner()
FORMATS = ["bf16", "fp8", "gptq_int4", "mxfp4"]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return build_tiny("llama", tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="module")
def mixtral_dir(tmp_path_factory) -> Path:
    return build_tiny("mixtral", tmp_path_factory.mktemp("tiny") / "mixtral")


def fake_table(model: Path, seed: int = 0) -> SensitivityTable:
    """Costs that fall with bits, with random sizes per weight, as real sensitivities do."""
    rng = random.Random(seed)
    kl, linear = {}, {}
    for w in linear_weights(model):
        scale = rng.uniform(0.1, 10.0)
        kl[w.name] = {"bf16": 0.0, "fp8": 0.01 * scale * rng.uniform(0.5, 1.5),
                      "gptq_int4": scale * rng.uniform(0.5, 1.5), "mxfp4": scale * rng.uniform(0.5, 1.5)}
        linear[w.name] = {f: 0.1 * v * rng.uniform(-1, 1) for f, v in kl[w.name].items()}
    return SensitivityTable({"formats": FORMATS}, kl, linear)


def test_solver_matches_brute_force_on_a_hand_checkable_instance():
    rng = random.Random(3)
    costs = [[rng.uniform(0, 10) for _ in range(3)] for _ in range(6)]
    bits = [[rng.choice([4, 8, 16]) * rng.randint(1, 5) for _ in range(3)] for _ in range(6)]
    low, high = sum(min(b) for b in bits), sum(max(b) for b in bits)
    assert solve_choices(costs, bits, low - 1) is None
    for budget in [low, *range(low + 1, high, 7), high]:
        feasible = [c for c in itertools.product(range(3), repeat=6)
                    if sum(bits[i][k] for i, k in enumerate(c)) <= budget]
        best = min(sum(costs[i][k] for i, k in enumerate(c)) for c in feasible)
        choice = solve_choices(costs, bits, budget)
        assert sum(bits[i][k] for i, k in enumerate(choice)) <= budget
        assert sum(costs[i][k] for i, k in enumerate(choice)) == pytest.approx(best, abs=1e-9)


def test_budget_plan_keeps_the_budget_and_is_valid(llama_dir):
    weights = linear_weights(llama_dir)
    problem = build_problem(weights, fake_table(llama_dir), FORMATS, 128)
    low, high = problem.bits_range()  # the untied bf16 lm_head holds most of the tiny model's parameters
    for target in (low, low + 0.1 * (high - low), low + 0.5 * (high - low)):
        solution = solve(problem, target)
        plan = solution_plan(solution, weights, SearchRecord("budget", {}))
        bits = average_bits(weights, resolve(plan, [w.name for w in weights])).avg_bits
        assert bits <= target
        assert bits == pytest.approx(solution.avg_bits)
        assert validate_plan(plan, llama_dir) == []
    front = pareto_front(problem, 8)
    assert [s.avg_bits for s in front] == sorted(s.avg_bits for s in front)
    assert all(a.predicted_loss >= b.predicted_loss for a, b in itertools.pairwise(front))


def test_impossible_budget_names_the_achievable_range(llama_dir):
    weights = linear_weights(llama_dir)
    problem = build_problem(weights, fake_table(llama_dir), FORMATS, 128)
    low, high = problem.bits_range()
    with pytest.raises(MPQError, match=rf"achievable: {low:.4f} to {high:.4f}"):
        solve(problem, low - 0.01)


def test_protected_weights_stay_bf16_and_count_in_the_budget(mixtral_dir):
    weights = linear_weights(mixtral_dir)
    table = fake_table(mixtral_dir)
    problem = build_problem(weights, table, FORMATS, 128)
    protected = [w for w in weights if w.category in ("lm_head", "router")]
    assert problem.fixed_bits == sum(16 * w.numel for w in protected)
    assert not set(problem.names) & {w.name for w in protected}
    plan = solution_plan(solve(problem, problem.bits_range()[0] + 0.5), weights, SearchRecord("budget", {}))
    resolved = resolve(plan, [w.name for w in weights])
    assert {resolved[w.name].spec.format for w in protected} == {"bf16"}


def test_unknown_format_is_an_error_naming_it():
    assert parse_formats("bf16, FP8,fp8,gptq_int4") == ["bf16", "fp8", "gptq_int4"]
    with pytest.raises(MPQError, match="unknown format 'fp5'"):
        parse_formats("bf16,fp5")


def test_cli_refuses_unknown_format_and_impossible_budget_before_calibrating(tmp_path, llama_dir):
    result = runner.invoke(app, ["plan", "budget", str(llama_dir), "--target-avg-bits", "5",
                                 "--formats", "bf16,int3", "-o", str(tmp_path / "p.json")])
    assert result.exit_code == 1 and "unknown format 'int3'" in result.output
    result = runner.invoke(app, ["plan", "budget", str(llama_dir), "--target-avg-bits", "5",
                                 "--sensitivity", "hessian", "-o", str(tmp_path / "p.json")])
    assert result.exit_code == 1 and "--sensitivity 'hessian'" in result.output


def test_objective_picks_the_cost(llama_dir):
    weights = linear_weights(llama_dir)
    table = fake_table(llama_dir)
    for objective in ("kl", "nll"):
        problem = build_problem(weights, table, FORMATS, 128, objective)
        option = problem.options[0][-1]
        expected = table.kl[problem.names[0]][option.format]
        if objective == "nll":
            expected += table.linear[problem.names[0]][option.format]
        assert option.cost == expected
    with pytest.raises(MPQError, match="--objective 'ppl'"):
        build_problem(weights, table, FORMATS, 128, "ppl")


def test_fisher_estimates_track_measured_kl_and_loss(llama_dir):
    """The estimates the search optimizes against the quantities they stand for, on a few weights."""
    tokens = torch.randint(0, 49152, (4, 48), generator=torch.Generator().manual_seed(0))
    calib = CalibrationModel(llama_dir, progress=False)
    names = ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj", "model.layers.1.mlp.up_proj"]
    weights = [w for w in calib.weights if w.name in names]
    stats = collect_statistics(calib, weights, tokens, batch_size=4, seed=0, progress=False)
    reference = reference_logprobs(calib, tokens, 4)
    positions = 4 * 47
    for name in names:
        error = quantization_error(calib.modules[name].weight, QuantSpec("mxfp4"), name)
        kl, loss = measured_change(calib, tokens, reference, 4, {name: QuantSpec("mxfp4")})
        predicted_kl = stats[name].quadratic(error) / positions
        predicted_loss = predicted_kl + stats[name].linear(error) / positions
        assert 1 / 3 < predicted_kl / kl < 3, name  # sampled labels: a noisy estimate
        assert abs(predicted_loss - loss) < 0.5 * abs(loss) + kl, name  # second order on random weights


def test_expert_costs_carry_router_usage(mixtral_dir):
    tokens = torch.randint(0, 49152, (2, 32), generator=torch.Generator().manual_seed(1))
    table = compute_sensitivities(mixtral_dir, ["mxfp4"], CalibrationSettings(nsamples=2, seq_len=32), tokens,
                                  progress=False)
    experts = [n for n in table.kl if ".experts." in n]
    assert len(experts) == 2 * 8 * 3 and set(table.usage) == set(experts)
    per_layer = sum(table.usage[f"model.layers.0.block_sparse_moe.experts.{e}.w1"] for e in range(8))
    assert per_layer == pytest.approx(2.0)  # top-2: every position counted by two experts
    unused = [n for n in experts if table.usage[n] == 0]
    assert all(table.kl[n]["mxfp4"] == 0 and table.linear[n]["mxfp4"] == 0 for n in unused)


@pytest.mark.slow
def test_cli_writes_a_valid_plan_reuses_its_cache_and_writes_the_front(tmp_path, smollm2_dir, tmp_path_factory):
    model = build_tiny("llama", tmp_path_factory.mktemp("tok") / "llama")  # has SmolLM2's tokenizer now
    args = ["plan", "budget", str(model), "--formats", "bf16,fp8,mxfp4", "--nsamples", "2", "--seq-len", "32"]
    first = runner.invoke(app, [*args, "--target-avg-bits", "15.6", "-o", str(tmp_path / "b6.json")])
    assert first.exit_code == 0, first.output
    assert runner.invoke(app, ["plan", "validate", str(tmp_path / "b6.json"), "--model", str(model)]).exit_code == 0
    second = runner.invoke(app, [*args, "--target-avg-bits", "15.8", "--pareto", "--pareto-points", "4",
                                 "-o", str(tmp_path / "b10.json")])
    assert second.exit_code == 0, second.output
    assert "sensitivities: cached" in second.output
    summary = json.loads((tmp_path / "b10.json").read_text())["summary"]
    assert summary["avg_bits"] <= 15.8 and summary["strategy"] == "budget" and summary["seed"] == 0
    front = json.loads((tmp_path / "b10.pareto" / "front.json").read_text())
    assert len(front) >= 2 and all(Path(row["plan"]).is_file() for row in front)
    assert (tmp_path / "b10.pareto" / "front.csv").read_text().startswith("target_avg_bits,avg_bits,predicted_loss")


def test_statistics_in_parts_give_the_one_pass_table(mixtral_dir):
    """Bounded memory (--stats-gib) changes how many sets of passes run, not the table."""
    tokens = torch.randint(0, 49152, (2, 24), generator=torch.Generator().manual_seed(2))
    whole = compute_sensitivities(mixtral_dir, ["mxfp4", "fp8"], CalibrationSettings(nsamples=2, seq_len=24),
                                  tokens, progress=False)
    parts = compute_sensitivities(mixtral_dir, ["mxfp4", "fp8"],
                                  CalibrationSettings(nsamples=2, seq_len=24, stats_gib=0.001), tokens, progress=False)
    assert len(statistics_parts(scored_weights(linear_weights(mixtral_dir)), 0.001)) > 3
    for name in whole.kl:
        assert parts.kl[name] == pytest.approx(whole.kl[name], rel=1e-5, abs=1e-12), name
        assert parts.linear[name] == pytest.approx(whole.linear[name], rel=1e-5, abs=1e-12), name
    assert parts.usage == whole.usage
