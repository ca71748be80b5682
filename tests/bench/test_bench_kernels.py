"""`mpq bench kernels` on CPU (small shapes): it times the dispatch's own kernels, measures the copy
bandwidth in the same run, and writes one JSON row per shape, format and batch (plus the MoE layer)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from mpq_serving.cli.main import app


def test_bench_kernels_writes_a_row_per_shape_format_and_batch(tmp_path):
    path = tmp_path / "kernels.json"
    result = CliRunner().invoke(
        app, ["bench", "kernels", "--device", "cpu", "--small", "--formats", "int8,mxfp4", "--batches", "1,5",
              "--json", str(path)],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(path.read_text())
    assert data["peak_copy_gbps"] > 0
    rows = data["rows"]
    linear = {(r["shape"], r["format"], r["batch"]) for r in rows if not r["shape"].startswith("moe")}
    shapes = {"512x512", "512x1792", "1792x512"}
    assert linear == {(s, f, b) for s in shapes for f in ("bf16", "int8", "mxfp4") for b in (1, 5)}
    assert {r["batch"] for r in rows if r["shape"].startswith("moe 8x top-2")} == {1, 5}
    for r in rows:
        assert r["time_us"] > 0 and r["gbps"] > 0 and r["pct_peak"] > 0 and r["speedup_vs_bf16"] > 0
        assert abs(r["gbps"] - r["bytes_moved"] / r["time_us"] / 1e3) < 1e-6 * r["gbps"]
        assert abs(r["x_roofline"] * r["pct_peak"] - 100) < 1e-6
    int8_batch1 = next(r for r in rows if r["format"] == "int8" and r["batch"] == 1)
    assert int8_batch1["kernel"] == "int8pack (torch W8A16)"  # the CPU dispatch's pick, not the reference
    assert "Kernels on cpu" in result.output and "wrote" in result.output


def test_unknown_format_is_named():
    result = CliRunner().invoke(app, ["bench", "kernels", "--device", "cpu", "--formats", "int3", "--no-moe"])
    assert result.exit_code == 1 and "int3" in result.output
