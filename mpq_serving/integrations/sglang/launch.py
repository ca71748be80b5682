"""Start SGLang's own server on a packed mixed checkpoint (what `mpq serve --engine sglang` runs).

`python -m sglang.launch_server --model-path PACKED --quantization mpq` (a plain model folder, e.g. a
bf16 baseline, without `--quantization`), with the interpreter that has SGLang
(`integrations.common.launch`). The `mpq` plugin is found through its entry point in every SGLang
process. Without a CUDA GPU it selects SGLang's CPU engine (SGLANG_USE_CPU_ENGINE=1, `--device cpu`,
torch-native attention).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ...packed_config import QUANT_METHOD
from ..common.launch import engine_python, server_args

CPU_ARGS = ["--device", "cpu", "--attention-backend", "torch_native"]
INSTALL_HINT = "pip install 'mpq-serving[sglang]' (CUDA), or run scripts/install_sglang.sh (CPU)"


def sglang_python() -> str:
    return engine_python("sglang", INSTALL_HINT)


def on_cpu(extra: list[str]) -> bool:
    """SGLang's CPU engine unless the arguments name a device or this machine has a CUDA GPU."""
    if "--device" in extra:
        return extra[extra.index("--device") + 1:][:1] == ["cpu"]
    import torch

    return not torch.cuda.is_available()


def sglang_command(folder: Path, host: str, port: int, served_name: str | None, extra: list[str]) -> list[str]:
    from ...loaders.hf_model import is_packed

    cmd = [sglang_python(), "-m", "sglang.launch_server", "--model-path", str(folder), *server_args(host, port, served_name)]
    if is_packed(folder):  # a plain model folder (a bf16 baseline) is served as it is
        cmd += ["--quantization", QUANT_METHOD]
    if on_cpu(extra) and "--device" not in extra:
        cmd += CPU_ARGS
    return cmd + list(extra)


def run_sglang(folder: Path, host: str, port: int, served_name: str | None, extra: list[str]) -> int:
    env = dict(os.environ)
    if on_cpu(extra):
        env["SGLANG_USE_CPU_ENGINE"] = "1"
    return subprocess.call(sglang_command(folder, host, port, served_name, extra), env=env)  # foreground: Ctrl-C reaches it
