"""Alpha-Hill estimator and seed 001's two-stage threshold search (fake perplexity: fast and exact)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mpq_serving.errors import MPQError
from mpq_serving.formats import QuantSpec
from mpq_serving.plan import load_plan
from mpq_serving.plan.bits import average_bits
from mpq_serving.plan.model_weights import LinearWeight, linear_weights
from mpq_serving.plan.resolve import resolve
from mpq_serving.plan.validate import validate_plan
from mpq_serving.search.alpha_hill import alpha_hill, esd, hill_alpha, model_alphas
from mpq_serving.search.alpha_hill_search import (
    SearchParams,
    plot_alphas,
    quantizable,
    run_alpha_hill,
    two_stage_search,
)
from mpq_serving.search.common import SearchRecord


def _power_law(n: int, alpha: float, seed: int = 0) -> torch.Tensor:
    """Samples of p(x) ∝ x^-alpha, x >= 1 (inverse CDF)."""
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (1 - u) ** (-1 / (alpha - 1))


@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.5])
def test_hill_recovers_the_exponent_of_power_law_samples(alpha: float) -> None:
    est = hill_alpha(_power_law(20_000, alpha))
    # the MLE's standard error is (alpha - 1) / sqrt(k), k = 10_000 here: 4 sigma at most
    assert est.alpha == pytest.approx(alpha, abs=4 * (alpha - 1) / math.sqrt(est.k))
    assert est.k == 10_000 and est.ks_distance < 0.02


def test_matrix_with_known_spectrum() -> None:
    """W = U diag(s) Vᵀ with s² on power-law quantiles: both eigenvalue routes find that spectrum's alpha."""
    n, alpha = 512, 3.0
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    eigs = (1 - q) ** (-1 / (alpha - 1))
    gen = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(768, n, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    w = (u * eigs.sqrt()) @ v.T  # [768, 512]: WᵀW has exactly `eigs` as eigenvalues
    assert torch.allclose(esd(w), eigs.sort().values, rtol=1e-9)
    expected = hill_alpha(eigs).alpha
    assert alpha_hill(w).alpha == pytest.approx(expected, rel=1e-9)
    assert alpha_hill(w.T.float(), method="svd").alpha == pytest.approx(expected, rel=1e-3)
    assert expected == pytest.approx(alpha, abs=0.1)


def test_estimator_refuses_degenerate_input() -> None:
    with pytest.raises(MPQError, match="layer.x: only 0 non-zero"):
        alpha_hill(torch.zeros(64, 64), name="layer.x")
    with pytest.raises(MPQError, match="NaN"):
        alpha_hill(torch.full((8, 8), math.nan))
    with pytest.raises(MPQError, match="flat"):
        hill_alpha(torch.ones(16))
    with pytest.raises(MPQError, match="unknown eigenvalue method 'qr'"):
        esd(torch.ones(4, 4), method="qr")  # type: ignore[arg-type]


def _weights(n: int) -> list[LinearWeight]:
    return [LinearWeight(f"model.layers.{i}.mlp.up_proj", (64, 64), "mlp") for i in range(n)]


def _fake_ppl(cost: dict[str, float]):
    """PPL 10 · (1 + Σ cost per layer): mxfp4 costs 1x the layer's cost, mxfp8 0.1x; calls are logged."""
    calls: list[dict[str, QuantSpec]] = []

    def evaluate(assignment):
        calls.append(dict(assignment))
        return 10 * (1 + sum(cost[n] * (1.0 if s.format == "mxfp4" else 0.1) for n, s in assignment.items()))

    return evaluate, calls


def test_two_stages_follow_descending_alpha_and_stop_on_the_ppl_bound() -> None:
    weights = _weights(8)
    alphas = {w.name: 5.0 - 0.5 * i for i, w in enumerate(weights)}  # 5.0, 4.5, ..., 1.5
    evaluate, calls = _fake_ppl({w.name: 0.02 for w in weights})
    result = two_stage_search(weights, alphas, evaluate, SearchParams(0.075, 4.25, 0.5))
    # stage 1 measures k layers mxfp4 (alpha >= 5.0, 4.5, ...) with the other 8 - k at mxfp8:
    # +3.4%, +5.2%, +7.0%, then +8.8% > 7.5% is rejected and the threshold stays at 4.0
    mx4 = [h for h in result.history if h["stage"] == "mxfp4"]
    assert [h["layers"] for h in mx4] == [1, 2, 3, 4] and [h["accepted"] for h in mx4] == [True] * 3 + [False]
    assert [h["ppl_rise"] for h in mx4] == pytest.approx([0.034, 0.052, 0.070, 0.088])
    assert all(h["rest"] == "mxfp8" for h in mx4)
    assert result.stages[0].threshold == 4.0 and "ppl rise" in result.stages[0].stop_reason
    # stage 2 starts at the largest alpha left (3.5), the layers below its threshold in bf16: all 5 fit
    mx8 = [h for h in result.history if h["stage"] == "mxfp8"]
    assert mx8[0]["threshold"] == 3.5 and [h["layers"] for h in mx8] == [1, 2, 3, 4, 5]
    assert all(h["rest"] == "bf16" for h in mx8) and not mx8[-1]["evaluated"]  # = stage 1's last plan
    assert result.stages[1].threshold == 1.5 and "smallest alpha" in result.stages[1].stop_reason
    assert {n for n, s in result.assignment.items() if s.format == "mxfp4"} == {w.name for w in weights[:3]}
    assert {n for n, s in result.assignment.items() if s.format == "mxfp8"} == {w.name for w in weights[3:]}
    assert result.ppl == pytest.approx(10 * (1 + 0.06 + 0.01)) and result.avg_bits == (3 * 4.25 + 5 * 8.25) / 8
    assert len(calls) == 1 + 4 + 4  # baseline, one evaluation per new plan
    assert result.history[0]["stage"] == "baseline" and result.baseline_ppl == 10
    assert result.history[-1]["stage"] == "final" and result.history[-1]["ppl"] == result.ppl


def test_stage_one_stops_once_the_target_is_met_with_the_rest_at_mxfp8() -> None:
    weights = _weights(4)
    alphas = {w.name: 4.0 - i for i, w in enumerate(weights)}
    evaluate, _ = _fake_ppl({w.name: 0.001 for w in weights})
    result = two_stage_search(weights, alphas, evaluate, SearchParams(0.5, 6.0, 1.0))
    # stage 1: 1, 2, 3 layers mxfp4 with the rest at mxfp8 give 7.25, 6.25, 5.25 bits: stops at 3
    mx4 = [h for h in result.history if h["stage"] == "mxfp4"]
    assert [h["avg_bits"] for h in mx4] == [7.25, 6.25, 5.25]
    assert "with the rest at mxfp8" in result.stages[0].stop_reason
    # stage 2 then gives the last layer mxfp8 (it was bf16 between the stages)
    assert "target reached" in result.stages[1].stop_reason and result.avg_bits == 5.25
    assert [result.assignment[w.name].format for w in weights] == ["mxfp4"] * 3 + ["mxfp8"]


def test_a_target_above_all_mxfp8_keeps_the_lowest_alphas_in_bf16() -> None:
    weights = _weights(4)
    alphas = {w.name: 4.0 - i for i, w in enumerate(weights)}
    evaluate, _ = _fake_ppl({w.name: 0.001 for w in weights})
    result = two_stage_search(weights, alphas, evaluate, SearchParams(0.5, 10.2, 1.0))
    assert result.stages[0].stop_reason.startswith("skipped") and result.stages[0].threshold is None
    # mxfp8 for 1, 2, 3 layers: 14.0625, 12.125, 10.1875 avg bits; stops at 3
    assert result.avg_bits == pytest.approx(10.1875) and "target reached" in result.stages[1].stop_reason
    assert [result.assignment.get(w.name, QuantSpec("bf16")).format for w in weights] == ["mxfp8"] * 3 + ["bf16"]


def test_steps_that_add_no_layer_reuse_the_measurement() -> None:
    weights = _weights(2)
    alphas = {weights[0].name: 3.0, weights[1].name: 1.0}
    evaluate, calls = _fake_ppl({w.name: 0.0 for w in weights})
    result = two_stage_search(weights, alphas, evaluate, SearchParams(0.1, 4.25, 0.5))
    mx4 = [h for h in result.history if h["stage"] == "mxfp4"]
    assert [h["evaluated"] for h in mx4] == [True, False, False, False, True]
    assert len(calls) == 3 and result.stages[0].threshold == 1.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ppl_threshold": -0.1}, "--ppl-threshold must be >= 0"),
    ({"step_size": 0}, "--step-size must be > 0"),
    ({"step_size": -0.5}, "--step-size must be > 0"),
    ({"target_avg_bits": 0}, "--target-avg-bits must be > 0"),
    ({"ppl_threshold": math.nan}, "--ppl-threshold must be a finite number"),
])
def test_bad_parameters_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(MPQError, match=message):
        SearchParams(**kwargs)


def test_unreachable_target_is_refused_before_any_evaluation() -> None:
    weights = [*_weights(2), LinearWeight("lm_head", (64, 64), "lm_head")]
    evaluate, calls = _fake_ppl({})
    with pytest.raises(MPQError, match=r"below the lowest average this search can reach, 8\.1667 .*1 protected"):
        two_stage_search(weights, {w.name: 2.0 for w in weights[:2]}, evaluate, SearchParams(0.1, 6.0, 0.5))
    assert calls == []


@pytest.fixture(scope="module")
def tiny_mixtral(tmp_path_factory) -> Path:
    from mpq_serving.models.tiny import build_tiny

    return build_tiny("mixtral", tmp_path_factory.mktemp("tiny") / "mixtral", seed=0)


def test_alphas_cover_every_expert_and_skip_routers(tiny_mixtral: Path) -> None:
    weights = linear_weights(tiny_mixtral)
    alphas = model_alphas(tiny_mixtral, quantizable(weights), progress=False)
    assert sum(".experts." in n for n in alphas) == 2 * 8 * 3
    assert not any(n.endswith(".gate") or n == "lm_head" for n in alphas)
    assert all(1 < a.alpha < 10 for a in alphas.values())
    again = model_alphas(tiny_mixtral, quantizable(weights), progress=False, workers=1)
    # Reproducible up to LAPACK's summation order, which may follow the thread count of the run.
    assert again.keys() == alphas.keys()
    assert all(again[n].alpha == pytest.approx(alphas[n].alpha, rel=1e-9) for n in alphas)


def test_plan_on_a_tiny_moe_with_a_fake_perplexity(tiny_mixtral: Path, tmp_path: Path) -> None:
    """The whole strategy on real weights and alphas; PPL faked as a function of the assignment."""
    weights = linear_weights(tiny_mixtral)

    def make_evaluator():
        return lambda a: 20 * (1 + 0.002 * sum(s.format == "mxfp4" for s in a.values())
                               + 0.0002 * sum(s.format == "mxfp8" for s in a.values()))

    def run() -> tuple:
        record = SearchRecord("alpha-hill", {"test": True})
        return run_alpha_hill(tiny_mixtral, SearchParams(0.05, 14.9, 0.05), make_evaluator, record, progress=False)

    outcome = run()
    plan, result = outcome.plan, outcome.result
    assert validate_plan(plan, tiny_mixtral) == []
    resolved = resolve(plan, [w.name for w in weights])
    assert average_bits(weights, resolved).avg_bits == pytest.approx(result.avg_bits)
    assert resolved["lm_head"].spec.format == "bf16"
    assert resolved["model.layers.0.block_sparse_moe.gate"].spec.format == "bf16"
    assert {s.format for s in result.assignment.values()} == {"mxfp4", "mxfp8"}  # both stages ran
    mx4 = {n for n, s in result.assignment.items() if s.format == "mxfp4"}
    assert min(outcome.alphas[n].alpha for n in mx4) >= result.stages[0].threshold
    assert max(outcome.alphas[n].alpha for n in outcome.alphas if n not in mx4) < result.stages[0].threshold
    summary = plan.summary
    assert summary["mxfp4_threshold"] == result.stages[0].threshold and summary["history"] == result.history
    assert {"baseline", "mxfp4"} <= {h["stage"] for h in summary["history"]}

    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(outcome.config))
    config = json.loads(config_path.read_text())
    assert all("alpha_hill" in rule for rule in config["overrides"])
    assert config["search_summary"]["history"] == json.loads(json.dumps(result.history))
    assert validate_plan(load_plan(config_path), tiny_mixtral) == []  # the config is itself a plan
    assert plot_alphas(outcome, tmp_path / "alpha.png").stat().st_size > 10_000

    again = run()  # deterministic: same assignment, same history
    assert again.result.assignment == result.assignment and again.result.history == result.history


@pytest.mark.slow
def test_swapping_evaluator_equals_loading_the_plan(smollm2_dir: Path, tmp_path: Path) -> None:
    """The search's PPL is the written plan's PPL: swapped layers == `load_model(plan)`, experts included."""
    from transformers import AutoTokenizer

    from mpq_serving.eval.perplexity import perplexity
    from mpq_serving.eval.text import load_text
    from mpq_serving.formats import BF16
    from mpq_serving.loaders.hf_model import load_model
    from mpq_serving.models.tiny import build_tiny
    from mpq_serving.search.alpha_hill_search import PerplexityEvaluator
    from mpq_serving.search.common import plan_from_assignment

    tiny_mixtral = build_tiny("mixtral", tmp_path / "mixtral", seed=1)  # built after SmolLM2: has its tokenizer
    names = [w.name for w in quantizable(linear_weights(tiny_mixtral))]
    assignment = {n: QuantSpec("mxfp4" if i % 3 == 0 else "mxfp8") for i, n in enumerate(names) if i % 3 != 2}
    evaluate = PerplexityEvaluator(tiny_mixtral, max_tokens=200, seq_len=64, progress=False)
    first = evaluate(assignment)
    evaluate({names[0]: QuantSpec("mxfp8")})  # swap most layers back, then forth again
    assert evaluate(assignment) == first

    plan = plan_from_assignment(assignment, BF16, SearchRecord("test", {}))
    model = load_model(plan, tiny_mixtral, progress=False)
    text = load_text("wiki_calib")
    expected = perplexity(model, AutoTokenizer.from_pretrained(tiny_mixtral), text, seq_len=64, max_tokens=200,
                          progress=False).ppl
    assert first == expected
