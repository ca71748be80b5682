"""What every `mpq plan <strategy>` command promises, checked through the CLI on one tiny MoE model:
the same seed gives the same plan (each computed from scratch), the plan passes `mpq plan validate`,
and bad input (ratios out of range, an impossible budget, an unknown format) is refused with an error
naming the culprit before anything is written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mpq_serving.cli.main import app
from mpq_serving.models.tiny import build_tiny

runner = CliRunner()
pytestmark = pytest.mark.slow  # needs SmolLM2's tokenizer for the calibration text


@pytest.fixture(scope="module")
def moe(smollm2_dir: Path, tmp_path_factory) -> Path:
    """A tiny Mixtral (8 experts) carrying SmolLM2's tokenizer (built after SmolLM2 is prepared)."""
    return build_tiny("mixtral", tmp_path_factory.mktemp("contract") / "mixtral", seed=3)


def _calibrated(out: Path) -> list[str]:
    return ["--nsamples", "2", "--seq-len", "32", "-o", str(out)]


# command -> argv after the model; targets near 15 bits because the tiny model's bf16 lm_head (protected)
# holds most of its parameters
COMMANDS: dict[str, Any] = {
    "random": lambda out: ["--mxfp4-ratio", "0.5", "--bf16-ratio", "0.2", "--seed", "7", "-o", str(out)],
    "alpha-hill": lambda out: ["--target-avg-bits", "15.5", "--ppl-threshold", "100", "--step-size", "0.5",
                               "--max-tokens", "128", "--seq-len", "64", "--no-progress", "-o",
                               str(out.with_suffix(".config.json")), "--output-plan", str(out)],
    "genetic": lambda out: ["--ga-pop", "6", "--ga-gen", "3", "--seed", "7", "--threshold", "1e9",
                            "--edge-threshold", "1e9", *_calibrated(out)],  # no layer forced to A8: the GA decides
    "mutual-info": lambda out: ["--target-avg-bits", "15.5", "--n-groups", "3", "--seed", "7", *_calibrated(out)],
    "budget": lambda out: ["--target-avg-bits", "15", "--formats", "bf16,fp8,gptq_int4,mxfp4", "--seed", "7",
                           "--sensitivity-cache", str(out.with_suffix(".cache.json")), *_calibrated(out)],
}


def _without_timings(value: Any) -> Any:
    """The plan minus what measures the machine rather than the search (wall-clock seconds, cache hits)
    or names this run's own files (the budget's history rows name the plan written)."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items()
                if "seconds" not in k and k not in ("sensitivity_from_cache", "sensitivity_cache", "plan")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


@pytest.mark.parametrize("command", list(COMMANDS))
def test_same_seed_same_plan_and_the_plan_validates(command: str, moe: Path, tmp_path: Path) -> None:
    plans = []
    for run in ("a", "b"):
        out = tmp_path / f"{run}.json"
        result = runner.invoke(app, ["plan", command, str(moe), *COMMANDS[command](out)])
        assert result.exit_code == 0, result.output
        check = runner.invoke(app, ["plan", "validate", str(out), "--model", str(moe)])
        assert check.exit_code == 0, check.output
        plans.append(json.loads(out.read_text()))
    assert plans[0]["summary"]["strategy"] == command
    assert _without_timings(plans[0]) == _without_timings(plans[1])


BAD = [
    ("random", ["--mxfp4-ratio", "1.5"], "--mxfp4-ratio"),
    ("random", ["--bf16-ratio", "-0.1"], "--bf16-ratio"),
    ("random", ["--mxfp4-ratio", "0.7", "--bf16-ratio", "0.6"], "must be <= 1"),
    ("alpha-hill", ["--target-avg-bits", "1", "--output-plan", "{out}"], "target"),
    ("alpha-hill", ["--ppl-threshold", "-1", "--output-plan", "{out}"], "threshold"),
    ("genetic", ["--target-compression", "1.5"], "target"),
    ("mutual-info", ["--target-avg-bits", "1"], "target"),
    ("mutual-info", ["--formats", "bf16,nvfp5"], "nvfp5"),
    ("budget", ["--target-avg-bits", "1"], "below"),
    ("budget", ["--target-avg-bits", "15", "--formats", "bf16,nvfp5"], "nvfp5"),
]


@pytest.mark.parametrize(("command", "args", "message"), BAD, ids=[f"{c} {' '.join(a)}" for c, a, _ in BAD])
def test_bad_input_is_refused_with_a_clear_error(command: str, args: list[str], message: str, moe: Path,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    result = runner.invoke(app, ["plan", command, str(moe), "-o", str(out),
                                 *[a.replace("{out}", str(out)) for a in args]])
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert not out.exists()
