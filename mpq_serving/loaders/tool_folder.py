"""A folder written by a quantization tool (GPTQModel, AutoAWQ, llm-compressor, FP8 releases) as a plan.

`mpq eval ppl`, `mpq serve --engine hf` and `load_model` on such a folder go through our own readers
(`source_config`, the formats) instead of transformers' quantizers, which want packages (optimum,
gptqmodel, autoawq) the user may not have, and which some layouts do not load at all on CPU.  The plan
takes every module in the format the folder stores it in: the most common format as the default,
exact-name rules for modules stored otherwise (GPTQModel `dynamic` widths, `ignore`d layers), and the
folder itself as source and base; merging with the stored spec fills in groups, symmetry and
activation schemes, so nothing here restates them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from ..plan import Plan, plan_from_dict
from ..plan.matching import is_protected
from ..plan.model_weights import linear_weights
from .checkpoint import Checkpoint, folder_quantization_config
from .source_config import module_spec

TOOL_METHODS = ("gptq", "awq", "fp8", "compressed-tensors", "modelopt")


def tool_quantization_config(folder: str | Path) -> dict | None:
    """The folder's `quantization_config` when a tool we read wrote it; None for a plain or packed folder."""
    if not Path(folder).is_dir():
        return None
    qc = folder_quantization_config(Path(folder))
    if not isinstance(qc, dict) or str(qc.get("quant_method", "")).lower() not in TOOL_METHODS:
        return None
    return qc


def tool_folder_plan(folder: str | Path) -> Plan:
    """Every linear of `folder` as the folder stores it (see the module docstring)."""
    folder = Path(folder)
    qc = tool_quantization_config(folder)
    if qc is None:
        raise ValueError(f"{folder}: not a quantization tool's folder (no quantization_config mpq-serving reads)")
    ckpt = Checkpoint(folder)
    formats = {w.name: _stored_format(qc, w.name, ckpt) for w in linear_weights(ckpt)}
    default = Counter(formats.values()).most_common(1)[0][0]
    # protected layers (lm_head, routers) stay bf16 unless a rule names them: name them when the tool quantized them
    overrides = [{"pattern": name, "wq": fmt} for name, fmt in formats.items()
                 if fmt != default or (fmt != "bf16" and is_protected(name))]  # bf16 is what protection keeps
    sources = {fmt: str(folder) for fmt in set(formats.values()) if fmt not in _FLOAT.values()}
    return plan_from_dict({"default": {"wq": default}, "overrides": overrides, "sources": sources,
                           "base_model_path": str(folder)}, source=f"{folder} (as its tool stored it)")


def _stored_format(qc: dict, module: str, ckpt: Checkpoint) -> str:
    """The module's format: its own float dtype when it is stored as a plain float weight (a layer the tool left
    alone, such as lm_head, whatever the config's patterns say), else what the config says."""
    weight = ckpt.tensors.get(f"{module}.weight")
    if weight is not None and weight.dtype in _FLOAT and not any(
            f"{module}.{s}" in ckpt for s in ("weight_scale", "weight_scale_inv", "weight_packed", "weight_global_scale")):
        return _FLOAT[weight.dtype]
    spec = module_spec(qc, module, str(ckpt.path))
    return "bf16" if spec is None else spec.format


_FLOAT = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
