"""Outputs never replace a user's files, land atomically, and get the permissions of the user's umask."""

from __future__ import annotations

import json
import os
import stat

import pytest

from mpq_serving.outputs import (
    MARKER_FILE,
    OutputExistsError,
    check_output_folder,
    output_file,
    output_folder,
)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_folder_is_renamed_into_place_with_its_marker(tmp_path):
    out = tmp_path / "model"
    with output_folder(out, "model") as tmp:
        (tmp / "config.json").write_text("{}")
        assert not out.exists()
    assert (out / "config.json").is_file()
    assert json.loads((out / MARKER_FILE).read_text())["kind"] == "model"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), output_folder(tmp_path / "model", "model") as tmp:
        (tmp / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_an_empty_folder_is_filled(tmp_path):
    (tmp_path / "empty").mkdir()
    with output_folder(tmp_path / "empty", "model") as tmp:
        (tmp / "x").write_text("x")
    assert (tmp_path / "empty" / "x").is_file()


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_of_unrelated_files_is_never_touched(tmp_path, overwrite):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "sub").mkdir()
    with pytest.raises(OutputExistsError, match="not empty|not an mpq-serving output"), \
            output_folder(tmp_path, "mpq-checkpoint", overwrite=overwrite):
        pytest.fail("the block must not run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "sub"]
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_only_a_previous_output_of_the_same_kind_is_replaced(tmp_path):
    out = tmp_path / "packed"
    with output_folder(out, "mpq-checkpoint") as tmp:
        (tmp / "old").write_text("old")
    with pytest.raises(OutputExistsError, match="pass --overwrite"), output_folder(out, "mpq-checkpoint"):
        pass
    with pytest.raises(OutputExistsError, match="only a previous report output, and .* is a mpq-checkpoint output"), \
            output_folder(out, "report", overwrite=True):
        pass
    with output_folder(out, "mpq-checkpoint", overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == [MARKER_FILE, "new"]
    assert [p.name for p in tmp_path.iterdir()] == ["packed"]


def test_a_file_or_an_input_is_not_an_output_folder(tmp_path):
    (tmp_path / "plan.yaml").write_text("x")
    with pytest.raises(OutputExistsError, match="is an existing file"):
        check_output_folder(tmp_path / "plan.yaml", "model")
    with pytest.raises(OutputExistsError, match="parent .* is a file"):
        check_output_folder(tmp_path / "plan.yaml" / "out", "model")
    base = tmp_path / "base"
    with output_folder(base, "mpq-checkpoint") as tmp:
        (tmp / "w").write_text("w")
    for target in (base, tmp_path):  # the input itself, or a folder holding it
        with pytest.raises(OutputExistsError, match="would replace the input"):
            check_output_folder(target, "mpq-checkpoint", overwrite=True, inputs=[base])


def test_a_concurrent_writer_is_reported_and_kept(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(OutputExistsError, match="someone else"), output_folder(out, "model") as tmp:
        (tmp / "mine").write_text("a")
        out.mkdir()
        (out / "theirs").write_text("b")
    assert [p.name for p in out.iterdir()] == ["theirs"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_permissions_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        with output_folder(tmp_path / "model", "model") as tmp:
            (tmp / "sub").mkdir()
            (tmp / "sub" / "weights").write_bytes(b"w")
        with output_file(tmp_path / "plan.json", "plan file") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "model") == 0o777 & ~umask
    assert _mode(tmp_path / "model" / "sub") == 0o777 & ~umask
    assert _mode(tmp_path / "model" / "sub" / "weights") == 0o666 & ~umask
    assert _mode(tmp_path / "plan.json") == 0o666 & ~umask


def test_a_file_is_replaced_only_when_asked_and_recognised(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text("my notes")
    with pytest.raises(OutputExistsError, match="already exists: pass --overwrite"), output_file(path, "plan file"):
        pass
    is_plan = lambda p: p.read_text().startswith("{")  # noqa: E731
    with pytest.raises(OutputExistsError, match="not one"), output_file(path, "plan file", overwrite=True, recognise=is_plan):
        pass
    assert path.read_text() == "my notes"
    path.write_text("{}")
    with output_file(path, "plan file", overwrite=True, recognise=is_plan) as tmp:
        tmp.write_text('{"default": "fp8"}')
    assert path.read_text() == '{"default": "fp8"}'
    with pytest.raises(RuntimeError), output_file(path, "plan file", overwrite=True) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == '{"default": "fp8"}'
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]
    with pytest.raises(OutputExistsError, match="is an existing folder"), output_file(tmp_path, "plan file"):
        pass
