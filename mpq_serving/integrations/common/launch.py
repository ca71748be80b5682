"""Starting an engine's own server on a packed checkpoint: the parts `mpq serve --engine vllm|sglang` share.

A plan is packed first (into the cache, reused while the plan and base model are unchanged). The engine
runs under the interpreter that has it: the current one if the engine imports here, else the
repository's own environment for it (`.venv-vllm`, `.venv-sglang`, made by scripts/install_*.sh),
because the engines pin torch and transformers differently from us and from each other.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

from ...errors import MPQError

REPO = Path(__file__).resolve().parents[3]


def engine_python(module: str, install_hint: str) -> str:
    """The interpreter that can import `module`: this one, else `.venv-<module>` of the repository."""
    if importlib.util.find_spec(module) is not None:
        return sys.executable
    venv = REPO / f".venv-{module}" / "bin" / "python"
    if venv.exists():
        return str(venv)
    raise MPQError(f"{module} is not installed here: {install_hint}")


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


def server_args(host: str, port: int, served_name: str | None) -> list[str]:
    """The address and name arguments both engines' servers spell the same way."""
    return ["--host", host, "--port", str(port), *(["--served-model-name", served_name] if served_name else [])]
