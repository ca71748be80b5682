"""A user sees one line naming the problem, never a traceback, unless they ask with --debug."""

from __future__ import annotations

import subprocess
import sys


def mpq(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mpq_serving.cli.main", *args], capture_output=True, text=True, timeout=300)


def test_an_unexpected_error_is_one_line_and_the_traceback_needs_debug(tmp_path):
    (tmp_path / "dense").mkdir()
    (tmp_path / "dense" / "config.json").write_text("{}")
    plain = mpq("model", "upcycle", str(tmp_path / "dense"), "-o", str(tmp_path / "moe"))
    assert plain.returncode == 1
    assert "Traceback" not in plain.stderr and "╭" not in plain.stderr
    assert plain.stderr.startswith("error: ") and "--debug" in plain.stderr
    debug = mpq("--debug", "model", "upcycle", str(tmp_path / "dense"), "-o", str(tmp_path / "moe"))
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_a_bad_plan_names_the_file_in_one_line(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("mixed_precision:\n  default: [unclosed\n")
    result = mpq("plan", "validate", str(plan), "--model", str(tmp_path))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert str(plan) in result.stderr
