"""A safetensors checkpoint folder, read lazily: names, shapes and dtypes from headers, tensors on demand.

Nothing here unpickles: only safetensors and JSON are read.  Every error names the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ..errors import CheckpointError

INDEX_FILE = "model.safetensors.index.json"

_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
    "F64": torch.float64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
}


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype


class Checkpoint:
    """The tensors of one HF model folder (single file, or shards with an index json)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise CheckpointError(f"{self.path}: checkpoint folder not found")
        files = self._files()
        self.tensors: dict[str, TensorInfo] = {}
        for file in files:
            for name, info in _read_header(file).items():
                if name in self.tensors:
                    raise CheckpointError(f"{file}: tensor {name} is also in {self.tensors[name].file}")
                self.tensors[name] = info
        self._handles: dict[Path, Any] = {}

    def _files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        index = self.path / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
            files = sorted({self.path / f for f in weight_map.values()})
            for f in files:
                if not f.is_file():
                    raise CheckpointError(f"{index}: names shard {f.name}, which is missing from {self.path}")
            return files
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{self.path}: no *.safetensors files (and no {INDEX_FILE})")
        return files

    @property
    def config(self) -> dict[str, Any]:
        """config.json, or {} when the folder has none."""
        return _read_json(self.path / "config.json") if self.path.is_dir() else {}

    @property
    def quantization_config(self) -> dict[str, Any] | None:
        """The tool's quantization config (see `folder_quantization_config`)."""
        qc = self.config.get("quantization_config")
        return qc if qc is not None or not self.path.is_dir() else folder_quantization_config(self.path)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: tensor {name} is missing") from None

    def read(self, name: str) -> torch.Tensor:
        """Load one tensor (only that tensor's bytes are read)."""
        info = self.info(name)
        handle = self._handles.get(info.file)
        if handle is None:
            handle = self._handles[info.file] = _open(info.file)
        try:
            return handle.get_tensor(name)
        except (SafetensorError, RuntimeError) as e:
            raise CheckpointError(f"{info.file}: cannot read tensor {name} ({e})") from None

    def close(self) -> None:
        self._handles.clear()


def _open(file: Path) -> Any:
    try:
        return safe_open(str(file), framework="pt")
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{file}: corrupt or unreadable safetensors file ({e})") from None


def _read_header(file: Path) -> dict[str, TensorInfo]:
    handle = _open(file)
    out = {}
    for name in handle.keys():
        sl = handle.get_slice(name)
        dtype = _DTYPES.get(sl.get_dtype())
        if dtype is None:
            raise CheckpointError(f"{file}: tensor {name} has unsupported dtype {sl.get_dtype()}")
        out[name] = TensorInfo(file, tuple(sl.get_shape()), dtype)
    return out


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: malformed JSON at line {e.lineno}: {e.msg}") from None


def folder_quantization_config(folder: Path) -> dict[str, Any] | None:
    """config.json's `quantization_config`, else quantize_config.json (AutoGPTQ / GPTQModel), else ModelOpt's
    hf_quant_config.json (its `quantization` block, as quant_method modelopt); None for a plain folder."""
    config = folder / "config.json"
    qc = _read_json(config).get("quantization_config") if config.is_file() else None
    if qc is None and (folder / "quantize_config.json").is_file():
        qc = _read_json(folder / "quantize_config.json")
    if qc is None and (folder / "hf_quant_config.json").is_file():
        qc = {"quant_method": "modelopt", **(_read_json(folder / "hf_quant_config.json").get("quantization") or {})}
    return qc
