"""`mpq pack -o` never destroys what it did not write, and an interrupt leaves the old output whole."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest
from tiny_hf import save_tiny
from typer.testing import CliRunner

from mpq_serving.cli.main import app
from mpq_serving.errors import PlanError
from mpq_serving.loaders.pack import pack
from mpq_serving.outputs import MARKER_FILE, OutputExistsError
from mpq_serving.plan import load_plan, plan_from_dict

runner = CliRunner()
INT8 = {"default": {"wq": "int8"}}


@pytest.fixture
def llama(tmp_path):
    return save_tiny("llama", tmp_path / "llama")


@pytest.fixture
def plan_file(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("mixed_precision:\n  default: int8\n")
    return path


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_pack_onto_a_folder_of_unrelated_files_is_refused(tmp_path, llama, plan_file):
    user = tmp_path / "models"
    user.mkdir()
    (user / "README.txt").write_text("my models")
    for extra in ([], ["--overwrite"]):
        result = runner.invoke(app, ["pack", str(plan_file), "--model", str(llama), "-o", str(user), *extra])
        assert result.exit_code == 1, result.output
        assert "error:" in result.output and str(user) in result.output
        assert "Traceback" not in result.output
    assert _snapshot(user) == {user.joinpath("README.txt").relative_to(user): b"my models"}


def test_pack_onto_the_current_folder_is_refused(tmp_path, llama, plan_file, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "main.py").write_text("print('hi')")
    monkeypatch.chdir(project)
    result = runner.invoke(app, ["pack", str(plan_file), "--model", str(llama), "-o", "."])
    assert result.exit_code == 1 and "not empty" in result.output, result.output
    assert [p.name for p in project.iterdir()] == ["main.py"]


def test_pack_onto_a_file_is_refused(tmp_path, llama, plan_file):
    result = runner.invoke(app, ["pack", str(plan_file), "--model", str(llama), "-o", str(plan_file)])
    assert result.exit_code == 1 and "is an existing file" in result.output, result.output
    assert load_plan(plan_file).default.wq == "int8"


def test_pack_onto_its_own_base_model_is_refused_even_with_overwrite(llama, plan_file):
    before = _snapshot(llama)
    result = runner.invoke(app, ["pack", str(plan_file), "--model", str(llama), "-o", str(llama), "--overwrite"])
    assert result.exit_code == 1 and "would replace the input" in result.output, result.output
    assert _snapshot(llama) == before


def test_overwrite_replaces_a_previous_pack(tmp_path, llama):
    out = pack(plan_from_dict(INT8), tmp_path / "packed", llama, progress=False)
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        pack(plan_from_dict({"default": {"wq": "fp8"}}), out, llama, progress=False)
    pack(plan_from_dict({"default": {"wq": "fp8"}}), out, llama, progress=False, overwrite=True)
    assert '"fp8"' in (out / "config.json").read_text()
    assert (out / MARKER_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama", "packed"]


_INTERRUPTED_PACK = textwrap.dedent("""
    import sys, time
    from mpq_serving.loaders import pack as packing
    from mpq_serving.plan import plan_from_dict

    add = packing.ShardWriter.add
    def slow_add(self, name, tensor):
        add(self, name, tensor)
        print("writing", flush=True)
        time.sleep(60)
    packing.ShardWriter.add = slow_add
    packing.pack(plan_from_dict({"default": {"wq": "fp8"}}), sys.argv[2], sys.argv[1], progress=False, overwrite=True)
""")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_pack_keeps_the_old_output_and_leaves_no_temporary(tmp_path, llama, signum):
    out = pack(plan_from_dict(INT8), tmp_path / "packed", llama, progress=False)
    before = _snapshot(out)
    proc = subprocess.Popen([sys.executable, "-c", _INTERRUPTED_PACK, str(llama), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing", proc.stderr.read()
    assert any(p.name.startswith(".packed") for p in tmp_path.iterdir())  # the new one is being written
    proc.send_signal(signum)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama", "packed"]


def test_an_alias_bomb_plan_is_refused_within_a_second(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\nmixed_precision:\n  default: *a9\n")
    start = time.perf_counter()
    with pytest.raises(PlanError, match="aliases expand to more than"):
        load_plan(bomb)
    assert time.perf_counter() - start < 1.0
    result = runner.invoke(app, ["plan", "validate", str(bomb)])
    assert result.exit_code != 0 and "Traceback" not in result.output
