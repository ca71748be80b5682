"""Run the embedded OpenAI-compatible server with uvicorn: blocking (`mpq serve`) or on a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .app import DEFAULT_MAX_NUM_SEQS, DEFAULT_MAX_WAITING, create_app


def run_server(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    model_name: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
    max_waiting: int = DEFAULT_MAX_WAITING,
) -> None:
    """Serve until interrupted (Ctrl-C); the model answers as `model_name` under http://host:port/v1."""
    app = create_app(model, tokenizer, model_name, max_num_seqs, max_waiting)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


@contextmanager
def serve_in_background(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    model_name: str,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    startup_timeout: float = 30.0,
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
    max_waiting: int = DEFAULT_MAX_WAITING,
) -> Iterator[str]:
    """Serve from a daemon thread while the block runs and yield the base URL (ending in /v1).

    For tests and in-process evaluation; port 0 lets the OS pick a free port, so parallel runs
    never collide.
    """
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(model, tokenizer, model_name, max_num_seqs, max_waiting),
            host=host,
            port=port,
            log_level=log_level,
        )
    )
    thread = threading.Thread(target=server.run, name=f"mpq-server-{model_name}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server for {model_name!r} did not start on {host}:{port}")
        time.sleep(0.01)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound_port}/v1"
    finally:
        server.should_exit = True
        thread.join()
