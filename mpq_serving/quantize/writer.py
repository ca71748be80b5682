"""Write quantized modules as a checkpoint: our packed mixed layout, or a plain GPTQ / AWQ folder.

* `mpq` (default): the folder `mpq pack` writes (loaders/pack.py's shard writer and side files):
  `quantization_config: {quant_method: "mpq", modules, plan, quantize}`, each module in its format's
  layout; `quantize` (also in the plan's summary) records how every layer was made.
* `gptq`: what GPTQModel writes, loadable by stock vLLM / transformers with no plugin:
  `quant_method: "gptq"`, bits 4, one `group_size` / `desc_act` / `sym`, and GPTQModel's per-module
  `dynamic` overrides (`+:<regex>` with another group size, `-:<regex>` for linears left in float).
  Needs every non-protected linear in gptq_int4 with one sym and one act-order choice.
* `awq`: what AutoAWQ writes (`quant_method: "awq"`, `version: "gemm"`, `zero_point`, one group size,
  `modules_to_not_convert` for float linears). Needs every quantized linear in awq_int4 with a single
  group size and zero-point choice (AWQ has no per-module overrides).

Non-linear tensors (embeddings, norms with folded AWQ / SmoothQuant scales, biases) come from the
calibration model, in the base checkpoint's dtype.  Written to a temporary folder and renamed, so a
failed write leaves nothing behind.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from ..errors import MPQError
from ..formats import get_format
from ..loaders.checkpoint import Checkpoint
from ..loaders.pack import CHECKPOINT_KIND, ShardWriter, copy_side_files
from ..outputs import output_folder
from ..packed_config import PackedConfig
from ..plan import Plan, is_protected, plan_to_json_dict
from .sequential import QuantizedModel

Layout = Literal["mpq", "gptq", "awq"]
_FLOAT = {"bf16", "fp16", "fp32"}


def checkpoint_kind(layout: Layout) -> str:
    """The output kind (see outputs.py) of a `layout` folder: `--overwrite` replaces only the same kind."""
    return CHECKPOINT_KIND if layout == "mpq" else f"{layout}-checkpoint"


def write_checkpoint(result: QuantizedModel, plan: Plan, output: str | Path, layout: Layout = "mpq",
                     shard_bytes: int = 2 << 30, overwrite: bool = False) -> Path:
    """Write `result` to `output` in `layout`; returns the folder (see outputs.py for what `overwrite` may replace)."""
    if layout not in ("mpq", "gptq", "awq"):
        raise MPQError(f"unknown checkpoint layout {layout!r}; choose mpq, gptq or awq")
    reference = Checkpoint(result.model_dir)
    summary = result.summary()
    plan = plan.model_copy(update={"summary": {**plan.summary, "quantize": summary}})
    if layout == "mpq":
        modules = {n: (q.spec, q.shape) for n, q in result.modules.items()}
        qconfig = PackedConfig.build(modules, plan_to_json_dict(plan), quantize=summary).to_dict()
    elif layout == "gptq":
        qconfig = gptq_config(result)
    else:
        qconfig = awq_config(result)

    with output_folder(output, checkpoint_kind(layout), overwrite=overwrite, inputs=[result.model_dir]) as tmp:
        writer = ShardWriter(tmp, shard_bytes)
        owned = set()
        for name, q in result.modules.items():
            if layout != "mpq" and get_format(q.format).name in _FLOAT:
                # plain tools read float linears as `weight` in the model dtype
                owned.add(f"{name}.weight")
                writer.add(f"{name}.weight", get_format(q.format).dequantize(q).to(reference.info(f"{name}.weight").dtype))
                continue
            for suffix, tensor in q.tensors.items():
                writer.add(f"{name}.{suffix}", tensor)
            owned.add(f"{name}.weight")
        for name in reference.tensors:
            if name not in owned:
                writer.add(name, result.float_tensor(name).to(reference.info(name).dtype).cpu())
        writer.finish()
        config = dict(reference.config)
        config.pop("quantization_config", None)
        config["quantization_config"] = qconfig
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        copy_side_files(reference.path, tmp)
    return Path(output)


def _quantized(result: QuantizedModel, fmt: str) -> dict[str, Any]:
    """The quantized modules, after checking every non-protected linear is in `fmt`."""
    quantized, float_names = {}, []
    for name, q in result.modules.items():
        name_fmt = get_format(q.format).name
        if name_fmt == fmt:
            quantized[name] = get_format(fmt).normalize(q.spec)
        elif name_fmt in _FLOAT:
            float_names.append(name)
        else:
            raise MPQError(f"{name}: {q.spec.describe()} cannot be written in a plain {fmt.split('_')[0].upper()} "
                           f"checkpoint (every quantized linear must be {fmt}); use --layout mpq")
    if not quantized:
        raise MPQError(f"no linear is {fmt}: nothing to write as a plain {fmt.split('_')[0].upper()} checkpoint")
    unprotected = [n for n in float_names if not is_protected(n)]
    return {"specs": quantized, "float": float_names, "unprotected_float": unprotected}


def _one(values: list[Any], what: str, fmt: str) -> Any:
    distinct = sorted(set(values), key=str)
    if len(distinct) > 1:
        raise MPQError(f"a plain {fmt} checkpoint has one {what}; the plan uses {distinct}; use --layout mpq")
    return distinct[0]


def gptq_config(result: QuantizedModel) -> dict[str, Any]:
    """GPTQModel's quantize_config, with `dynamic` overrides for group sizes that differ from the main one."""
    parts = _quantized(result, "gptq_int4")
    specs = parts["specs"]
    sym = _one([s.symmetric for s in specs.values()], "sym setting", "GPTQ")
    desc_act = _one([s.act_order for s in specs.values()], "desc_act (act-order) setting", "GPTQ")
    _one([s.checkpoint_format for s in specs.values()], "checkpoint_format", "GPTQ")
    groups = Counter(s.group_size for s in specs.values())
    main_group = groups.most_common(1)[0][0]
    dynamic: dict[str, dict[str, Any]] = {}
    for name in parts["unprotected_float"]:
        dynamic[f"-:^{re.escape(name)}$"] = {}
    for name, spec in specs.items():
        if spec.group_size != main_group:
            dynamic[f"+:^{re.escape(name)}$"] = {"group_size": spec.group_size}
    config: dict[str, Any] = {
        "quant_method": "gptq", "bits": 4, "group_size": main_group, "desc_act": desc_act, "sym": sym,
        "lm_head": False, "checkpoint_format": "gptq", "static_groups": False, "true_sequential": True,
        "damp_percent": result.config.damp,
        "quantizer": ["mpq-serving"], "mpq_quantize": result.summary(),
    }
    if dynamic:
        config["dynamic"] = dynamic
    return config


def awq_config(result: QuantizedModel) -> dict[str, Any]:
    """AutoAWQ's quantization_config (GEMM version)."""
    parts = _quantized(result, "awq_int4")
    specs = parts["specs"]
    group = _one([s.group_size for s in specs.values()], "group_size", "AWQ")
    sym = _one([s.symmetric for s in specs.values()], "zero-point setting", "AWQ")
    not_converted = sorted(parts["unprotected_float"])
    return {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": not sym, "version": "gemm",
            "modules_to_not_convert": not_converted or None, "mpq_quantize": result.summary()}
