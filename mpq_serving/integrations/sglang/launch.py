"""Start SGLang's own server on a packed mixed checkpoint (what `mpq serve --engine sglang` runs).

Packs first when given a plan (into the cache, reused while the plan and base model are unchanged;
the same packing `mpq serve --engine vllm` uses), then runs `python -m sglang.launch_server
--model-path PACKED --quantization mpq` (a plain model folder, e.g. a bf16 baseline, without
`--quantization`) with the interpreter that has SGLang: the current one if `import sglang` works,
else the repository's `.venv-sglang` (scripts/install_sglang.sh).  The `mpq` plugin is found through
its entry point in every SGLang process.  Without a CUDA GPU it selects
SGLang's CPU engine (SGLANG_USE_CPU_ENGINE=1, `--device cpu`, torch-native attention).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from ...errors import MPQError
from .plugin import QUANT_METHOD

REPO = Path(__file__).resolve().parents[3]
CPU_ARGS = ["--device", "cpu", "--attention-backend", "torch_native"]


def sglang_python() -> str:
    if importlib.util.find_spec("sglang") is not None:
        return sys.executable
    venv = REPO / ".venv-sglang" / "bin" / "python"
    if venv.exists():
        return str(venv)
    raise MPQError("SGLang is not installed here: pip install 'mpq-serving[sglang]' (CUDA), "
                   "or run scripts/install_sglang.sh (CPU)")


def on_cpu(extra: list[str]) -> bool:
    """SGLang's CPU engine unless the arguments name a device or this machine has a CUDA GPU."""
    if "--device" in extra:
        return extra[extra.index("--device") + 1:][:1] == ["cpu"]
    import torch

    return not torch.cuda.is_available()


def sglang_command(folder: Path, host: str, port: int, served_name: str | None, extra: list[str]) -> list[str]:
    from ...loaders.hf_model import is_packed

    cmd = [sglang_python(), "-m", "sglang.launch_server", "--model-path", str(folder), "--host", host, "--port", str(port)]
    if is_packed(folder):  # a plain model folder (a bf16 baseline) is served as it is
        cmd += ["--quantization", QUANT_METHOD]
    if served_name:
        cmd += ["--served-model-name", served_name]
    if on_cpu(extra) and "--device" not in extra:
        cmd += CPU_ARGS
    return cmd + list(extra)


def run_sglang(folder: Path, host: str, port: int, served_name: str | None, extra: list[str]) -> int:
    """Run SGLang's server in the foreground (Ctrl-C stops it)."""
    env = dict(os.environ)
    if on_cpu(extra):
        env["SGLANG_USE_CPU_ENGINE"] = "1"
    return subprocess.call(sglang_command(folder, host, port, served_name, extra), env=env)
