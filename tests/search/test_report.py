"""`mpq report`: one row per plan (bits, memory, PPL), report.md / report.json, and the two kinds of chart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mpq_serving.cli.main import app
from mpq_serving.models.tiny import build_tiny
from mpq_serving.plan.model_weights import linear_weights
from mpq_serving.search.common import write_plan
from mpq_serving.search.random_plan import RandomPlanConfig, random_plan
from mpq_serving.search.report import layer_grid, run_report

PNG = b"\x89PNG\r\n\x1a\n"


class CharTokenizer:
    """Enough of a tokenizer for `perplexity`: one id per character (tiny models have no tokenizer of their own)."""

    def __call__(self, text: str, add_special_tokens: bool = False, verbose: bool = False) -> dict:
        return {"input_ids": [ord(c) % 49152 for c in text]}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return build_tiny("llama", tmp_path_factory.mktemp("tiny") / "llama")


def plans(folder: Path, model: Path) -> list[Path]:
    uniform = folder / "uniform_fp8.json"
    uniform.write_text(json.dumps({"default": {"wq": "fp8"}}))
    seeded = write_plan(random_plan(model, RandomPlanConfig(mxfp4_ratio=0.5, bf16_ratio=0.2, weight_only=True)),
                        folder / "random.json")
    return [uniform, seeded]


def test_report_has_a_row_per_plan_and_the_charts(tmp_path, llama_dir):
    out = tmp_path / "report"
    written = run_report(plans(tmp_path, llama_dir), llama_dir, out, CharTokenizer(), seq_len=64, max_tokens=300,
                         progress=False)
    data = json.loads((out / "report.json").read_text())
    rows = {r["label"]: r for r in data["plans"]}
    assert set(rows) == {"bf16 (no plan)", "uniform_fp8", "random"}
    assert {r["strategy"] for r in rows.values()} == {"bf16", "uniform", "random"}
    assert rows["bf16 (no plan)"]["avg_bits"] == 16.0
    assert rows["uniform_fp8"]["avg_bits"] < rows["bf16 (no plan)"]["avg_bits"]
    assert rows["uniform_fp8"]["weight_memory_mib"] < rows["bf16 (no plan)"]["weight_memory_mib"]
    assert all(r["ppl"] > 1 for r in rows.values())
    assert {r["n_tokens"] for r in rows.values()} == {300 - 5}  # 5 windows of 64, each first token unscored
    assert rows["random"]["search_seconds"] is not None
    md = (out / "report.md").read_text()
    assert "| random | random |" in md and "ppl_vs_bits.png" in md
    pngs = [p for p in written if p.suffix == ".png"]
    assert {p.name for p in pngs} == {"ppl_vs_bits.png", "format_map_uniform_fp8.png", "format_map_random.png"}
    assert all(p.read_bytes().startswith(PNG) for p in pngs)


def test_format_map_grid_has_a_column_per_expert_projection(tmp_path):
    model = build_tiny("mixtral", tmp_path / "mixtral")
    weights = linear_weights(model)
    rows, columns, cells = layer_grid(weights, {w.name: "bf16" for w in weights})
    assert rows == ["layer 0", "layer 1", "other"]
    assert {"q_proj", "o_proj", "gate", "e0.w1", "e7.w3"} <= set(columns)
    assert len(columns) == 4 + 1 + 8 * 3 + 1  # attention, router, experts, lm_head
    assert cells[2].count(None) == len(columns) - 1  # `other` holds lm_head only


@pytest.mark.slow
def test_cli_report_on_a_model_with_a_tokenizer(tmp_path, smollm2_dir):
    model = build_tiny("llama", tmp_path / "llama")  # SmolLM2's tokenizer is copied in
    result = CliRunner().invoke(app, ["report", *map(str, plans(tmp_path, model)), "--model", str(model),
                                      "-o", str(tmp_path / "r"), "--max-tokens", "200", "--seq-len", "64"])
    assert result.exit_code == 0, result.output
    assert {"report.md", "report.json", "ppl_vs_bits.png"} <= {p.name for p in (tmp_path / "r").iterdir()}
