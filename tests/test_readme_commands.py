"""Every `mpq` command the README shows is a command `mpq` accepts as written (its subcommands, options
and values parse), and the quick ones run as written on SmolLM2; the README's Python snippet is run in
tests/loaders/test_smollm2_mixed.py and the install / demo scripts by CI itself."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from mpq_serving.cli.main import app

REPO = Path(__file__).resolve().parents[1]
PLACEHOLDERS = {"PLAN": "configs/smollm2_mixed.yaml", "DIR": ".", "MODEL": "smollm2", "OUT": "out/x"}


def readme_commands() -> list[str]:
    """The `mpq ...` lines of the README's bash blocks (comments cut, continuation lines joined)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            command = line.split(" # ")[0].split("  #")[0].strip()
            if re.match(r"^(\.venv-\w+/bin/)?mpq ", command):
                lines.append(re.sub(r"^\.venv-\w+/bin/", "", command))
    return lines


def _parse(args: list[str]) -> list[str]:
    """Parse like `mpq` would, without running; returns the command path. (Typer carries its own copy
    of click, so groups are told by `resolve_command`, not by isinstance.)"""
    command = typer.main.get_command(app)
    path = []
    while True:
        ctx = command.make_context("mpq", list(args), resilient_parsing=False)
        if not hasattr(command, "resolve_command"):
            return path
        name, command, args = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        path.append(name)


COMMANDS = readme_commands()


def test_the_readme_shows_commands() -> None:
    assert len(COMMANDS) > 20
    assert any(c.startswith("mpq serve packed/ --engine hf") for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command: str) -> None:
    args = [PLACEHOLDERS.get(a, a) for a in shlex.split(command)[1:]]
    try:
        path = _parse(args)
    except Exception as e:  # noqa: BLE001 - typer's click UsageError / BadParameter
        pytest.fail(f"`{command}`: {getattr(e, 'format_message', e.__str__)()}")
    assert path, f"`{command}` names no command"


QUICK = [c for c in COMMANDS if re.match(r"mpq plan (validate|show|avg-bits|convert) ", c)]


@pytest.mark.slow
@pytest.mark.parametrize("command", QUICK)
def test_quick_readme_command_runs_as_written(command: str, smollm2_dir, tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "smollm2_mixed.yaml").write_bytes((REPO / "configs" / "smollm2_mixed.yaml").read_bytes())
    args = [{"DIR": str(smollm2_dir)}.get(a, PLACEHOLDERS.get(a, a)) for a in shlex.split(command)[1:]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"`{command}` failed: {result.output}"
