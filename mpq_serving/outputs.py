"""Where every command writes: never over a user's files, always atomically, with the user's permissions.

Every folder or file an `mpq` command writes goes through `output_folder` / `output_file`:

- an existing non-empty target is refused unless the caller passes `overwrite=True` (`--overwrite`), and
  even then only a previous output *of the same kind* is replaced — a folder recognised by the marker file
  it carries (`.mpq-output.json`), a file by its kind's recogniser (a plan parses as a plan, a GGUF starts
  with its magic).  A folder the command reads from (base model, source checkpoints) is never a target;
- the new output is written into a hidden temporary sibling and renamed into place at the end, so Ctrl-C
  or SIGTERM at any point leaves either the old output or the new one, and no temporary left behind;
- the result has the permissions a plain `mkdir` / `open` gives under the user's umask (`mkdtemp` and
  `mkstemp` create owner-only ones, which an engine running as another user could not read).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import MPQError

MARKER_FILE = ".mpq-output.json"
_TEMP_TAG = ".mpq-tmp-"


class OutputExistsError(MPQError):
    """The output path holds something that is not ours to replace."""


def marker_kind(folder: Path) -> str | None:
    """The kind recorded in a folder's marker, or None when the folder carries no (readable) marker."""
    try:
        data = json.loads((Path(folder) / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("kind") if isinstance(data, dict) else None


def check_output_folder(out: str | Path, kind: str, *, overwrite: bool = False, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Refuse `out` unless it is absent, empty, or (with `overwrite`) a previous `kind` output; return it resolved.

    Call it before any long work, so a refusal costs nothing; `output_folder` calls it again.
    """
    out = Path(out).expanduser().resolve()
    for inp in inputs:
        if inp is None:
            continue
        inp = Path(inp).expanduser().resolve()
        if out == inp or out in inp.parents:
            raise OutputExistsError(f"output {out} would replace the input {inp} this command reads from: choose another -o")
    if not out.exists():
        if out.parent.exists() and not out.parent.is_dir():
            raise OutputExistsError(f"output {out}: its parent {out.parent} is a file, not a folder")
        return out
    if not out.is_dir():
        raise OutputExistsError(f"output {out} is an existing file, not a folder: choose another -o")
    if not any(out.iterdir()):
        return out
    found = marker_kind(out)
    if not overwrite:
        hint = " (a previous output: pass --overwrite to replace it)" if found == kind else ""
        raise OutputExistsError(f"output folder {out} already exists and is not empty{hint}: choose another -o")
    if found != kind:
        what = f"a {found} output" if found else "not an mpq-serving output (no " + MARKER_FILE + ")"
        raise OutputExistsError(f"--overwrite replaces only a previous {kind} output, and {out} is {what}: "
                                "refusing to touch it; remove it yourself or choose another -o")
    return out


@contextmanager
def output_folder(out: str | Path, kind: str, *, overwrite: bool = False,
                  inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Yield a temporary sibling of `out` to write into; put it in place of `out` only if the block succeeds."""
    out = check_output_folder(out, kind, overwrite=overwrite, inputs=list(inputs))
    out.parent.mkdir(parents=True, exist_ok=True)
    with _signals_raise():
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{_TEMP_TAG}", dir=out.parent))
        try:
            yield tmp
            (tmp / MARKER_FILE).write_text(json.dumps({"kind": kind, "written_by": "mpq-serving"}) + "\n", encoding="utf-8")
            _apply_umask(tmp)
            with _signals_deferred():
                _swap_in(tmp, out, kind, overwrite)
        finally:
            with _signals_deferred():
                shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def output_file(path: str | Path, kind: str, *, overwrite: bool = False,
                recognise: Callable[[Path], bool] | None = None,
                inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Yield a temporary file beside `path`; rename it onto `path` only if the block succeeds.

    An existing `path` is replaced only with `overwrite` and only if `recognise(path)` says it is a `kind`.
    """
    path = check_output_file(path, kind, overwrite=overwrite, recognise=recognise, inputs=inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _signals_raise():
        fd, name = tempfile.mkstemp(prefix=f".{path.name}{_TEMP_TAG}", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            tmp.chmod(0o666 & ~_umask())
            with _signals_deferred():
                os.replace(tmp, path)
        finally:
            with _signals_deferred():
                tmp.unlink(missing_ok=True)


def check_output_file(path: str | Path, kind: str, *, overwrite: bool = False,
                      recognise: Callable[[Path], bool] | None = None,
                      inputs: Iterable[str | Path | None] = ()) -> Path:
    """Refuse `path` unless it is absent or (with `overwrite`) a file `recognise` accepts; return it resolved."""
    path = Path(path).expanduser().resolve()
    for inp in inputs:
        if inp is not None and path == Path(inp).expanduser().resolve():
            raise OutputExistsError(f"output {path} is the input this command reads from: choose another -o")
    if path.is_dir():
        raise OutputExistsError(f"output {path} is an existing folder, not a file: choose another -o")
    if path.exists():
        if not overwrite:
            raise OutputExistsError(f"output file {path} already exists: pass --overwrite to replace it, or choose another -o")
        if recognise is not None and not recognise(path):
            raise OutputExistsError(f"--overwrite replaces only a previous {kind}, and {path} is not one: refusing to touch it")
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputExistsError(f"output {path}: its parent {path.parent} is a file, not a folder")
    return path


def write_text_output(path: str | Path, text: str, kind: str, *, overwrite: bool = False,
                      recognise: Callable[[Path], bool] | None = None) -> Path:
    """`output_file` for a small text file written in one go."""
    with output_file(path, kind, overwrite=overwrite, recognise=recognise) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _swap_in(tmp: Path, out: Path, kind: str, overwrite: bool) -> None:
    """Rename `tmp` to `out`; an existing `out` (empty, or our own previous output) is moved aside first."""
    if not out.exists():
        try:
            tmp.rename(out)
        except OSError as err:
            raise OutputExistsError(f"output folder {out} was filled by someone else while being written") from err
        return
    try:
        check_output_folder(out, kind, overwrite=overwrite)  # still ours to replace: nobody filled it meanwhile
    except OutputExistsError as err:
        raise OutputExistsError(f"output folder {out} was filled by someone else while being written") from err
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}{_TEMP_TAG}old-", dir=out.parent))
    old.rmdir()
    out.rename(old)
    try:
        tmp.rename(out)
    except OSError as err:
        old.rename(out)
        raise OutputExistsError(f"output folder {out} was filled by someone else while being written") from err
    shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _apply_umask(folder: Path) -> None:
    mask = _umask()
    folder.chmod(0o777 & ~mask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


class Terminated(KeyboardInterrupt):
    """SIGTERM while writing an output: unwinds exactly as Ctrl-C does (temporary removed, the CLI says
    "Aborted!" and exits 1, no traceback)."""


@contextmanager
def _signals_raise() -> Iterator[None]:
    """Make SIGTERM raise (its default kills the process before any cleanup); main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise Terminated(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT / SIGTERM during a few renames, so an interrupt lands before or after them, never between."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
