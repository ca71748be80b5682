"""`mpq serve`: serve a model, a packed folder or a plan behind the OpenAI API."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from ..errors import MPQError
from .common import fail, resolve_model


class Engine(str, Enum):
    hf = "hf"
    vllm = "vllm"
    sglang = "sglang"


def serve(
    model_or_plan: str = typer.Argument(..., help="Packed folder, model folder / demo name, or a plan file (.json/.yaml)."),
    model: str | None = typer.Option(None, "--model", help="Base model (folder or demo name) when serving a plan."),
    engine: Engine = typer.Option(Engine.hf, "--engine", help="Serving engine."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    served_name: str | None = typer.Option(None, "--served-model-name", help="Name clients use (default: folder name)."),
    max_num_seqs: int = typer.Option(
        32, "--max-num-seqs", min=1, help="--engine hf: sequences decoded together at most (continuous batching)."
    ),
    max_waiting: int = typer.Option(
        128, "--max-waiting", min=0, help="--engine hf: sequences that may wait for a slot; beyond, 503 + Retry-After."
    ),
    engine_args: list[str] | None = typer.Argument(None, help="After `--`: extra arguments for the engine's server."),
) -> None:
    """Serve with the OpenAI API (/v1/models, /v1/completions, /v1/chat/completions, streaming)."""
    if engine is not Engine.hf:
        _serve_engine(engine, model_or_plan, model, host, port, served_name, engine_args or [])
        return
    if engine_args:
        fail(f"extra arguments {' '.join(engine_args)} are for an engine's own server; --engine {engine.value} takes none")
    from transformers import AutoTokenizer

    from ..loaders.hf_model import load_model
    from ..server.runner import run_server

    target = Path(model_or_plan)
    try:
        if target.is_file():
            folder = resolve_model(model) if model else None
            loaded = load_model(target, folder)
            tokenizer_dir = folder or Path(loaded.config._name_or_path)
            name = served_name or target.stem
        else:
            folder = resolve_model(model_or_plan)
            loaded = load_model(folder)
            tokenizer_dir = folder
            name = served_name or folder.name
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    except (MPQError, OSError) as e:
        fail(str(e))
    run_server(loaded, tokenizer, name, host, port, max_num_seqs=max_num_seqs, max_waiting=max_waiting)


def _serve_engine(engine: Engine, model_or_plan: str, model: str | None, host: str, port: int,
                  served_name: str | None, extra: list[str]) -> None:
    """Pack when given a plan, then run the engine's own OpenAI server with its mpq plugin (integrations/)."""
    from ..integrations.common.launch import packed_for_plan

    if engine is Engine.vllm:
        from ..integrations.vllm.launch import run_vllm as run
    else:
        from ..integrations.sglang.launch import run_sglang as run
    target = Path(model_or_plan)
    try:
        folder = packed_for_plan(target, resolve_model(model) if model else None) if target.is_file() \
            else resolve_model(model_or_plan)
        code = run(folder, host, port, served_name, extra)
    except MPQError as e:
        fail(str(e))
    raise typer.Exit(code)
