"""Helpers shared by the demo-model builders: where folders go, how they are written, what is on disk."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from safetensors import safe_open

from ..errors import CheckpointError

MODEL_KIND = "model"  # the output kind (see outputs.py) of `mpq model prepare|upcycle|tiny`

# What a tokenizer + chat template + generation settings amount to in an HF folder (transformers 5 writes
# the chat template to its own file; older folders keep it inside tokenizer_config.json).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")

# Names transformers 5 uses in memory for fused experts; a checkpoint on disk must never hold them.
_FUSED_EXPERT_NAME = re.compile(r"\.experts\.(gate_up_proj|down_proj|gate_proj|up_proj)(\.weight)?$")


def cache_root() -> Path:
    """`$MPQ_CACHE_DIR`, else `~/.cache/mpq-serving`: built demo models live here, outside the repo."""
    env = os.environ.get("MPQ_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mpq-serving"


def safetensors_names(folder: Path) -> list[str]:
    """Every tensor name in the folder's *.safetensors files, sorted."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors file in {folder}")
    names: list[str] = []
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            names.extend(f.keys())
    return sorted(names)


def check_per_expert_names(folder: Path) -> None:
    """Fail if the checkpoint stores experts fused (3-D, transformers-5 in-memory layout) instead of one
    tensor per expert as Hub checkpoints do; vLLM, SGLang and our loaders expect the per-expert names."""
    fused = [n for n in safetensors_names(folder) if _FUSED_EXPERT_NAME.search(n)]
    if fused:
        raise CheckpointError(f"{folder} stores fused expert tensors (e.g. {fused[0]!r}); expected per-expert names")


def copy_tokenizer(src: Path, dst: Path) -> list[str]:
    """Copy the tokenizer / chat-template files that exist in `src`; return the names copied."""
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, Path(dst) / name)
            copied.append(name)
    return copied
