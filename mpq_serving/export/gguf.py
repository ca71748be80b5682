"""`mpq export gguf`: a mixed model as one GGUF file llama.cpp runs, each weight in the closest GGML type.

The type of each weight comes from `gguf_types` (exact for int4 and MXFP4, Q8_0 for the 8-bit
formats, BF16 / F16 for float); names, hparams and q/k row order from `gguf_names`; the tokenizer
and chat template from `gguf_tokenizer`.  llama.cpp stores the experts of one MoE projection in one
3-D tensor of one type, so when a plan mixes formats among them the whole stack takes the widest
type (most bits per weight), with a warning; the narrower experts are requantized to it.

Every tensor's ggml dequantization is compared to our own dequantized weight and the largest
difference reported, so the user sees which weights went across exactly.  The file is written to a
temporary name and renamed at the end.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import MPQError
from ..formats import QuantizedTensor, get_format
from ..outputs import output_file
from ..plan import Plan
from . import gguf_names, gguf_types
from .gguf_tokenizer import tokenizer_fields
from .source import open_source

T = gguf.GGMLQuantizationType
_MX_ACTIVATIONS = {"mxfp4", "mxfp8"}


@dataclass(frozen=True)
class TensorRow:
    """One GGUF tensor: what it came from and how faithfully."""

    name: str
    source_format: str  # e.g. "gptq_int4 g128", "mixed: fp8, mxfp4" for an expert stack
    ggml_type: str
    exact: bool
    max_abs_err: float  # ggml's dequantization vs ours (0.0 when exact)
    note: str


@dataclass
class GGUFExport:
    path: Path
    rows: list[TensorRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for row in self.rows:
            counts[row.ggml_type] += 1
        return dict(counts)


def export_gguf(model: str | Path, output: str | Path, plan: str | Path | Plan | None = None, *,
                progress: bool = True, overwrite: bool = False) -> GGUFExport:
    """Write `output` (.gguf) from a packed folder, or a model folder under `plan`.

    An existing `output` is replaced only with `overwrite`, and only if it is a GGUF file.
    """
    source = open_source(model, plan)
    hp = gguf_names.hparams(source.config)
    output = Path(output)
    result = GGUFExport(output)
    with output_file(output, "gguf file", overwrite=overwrite, recognise=is_gguf) as tmp:
        writer = gguf.GGUFWriter(str(tmp), gguf_names.ARCH)
        try:
            writer.add_name(Path(source.folder).name)
            gguf_names.write_hparams(writer, source.config, hp)
            for key, (value, vtype) in tokenizer_fields(source.folder, source.config, result.warnings).items():
                if isinstance(value, list):
                    writer.add_array(key, value)
                else:
                    writer.add_key_value(key, value, vtype)
            _add_tensors(writer, source, hp, result, progress)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file(progress=progress)
        finally:
            writer.close()
    return result


def is_gguf(path: Path) -> bool:
    """Whether `path` starts with the GGUF magic: the only kind of file `--overwrite` may replace here."""
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _add_tensors(writer: gguf.GGUFWriter, source, hp: gguf_names.Hparams, result: GGUFExport, progress: bool) -> None:
    experts: dict[str, dict[int, tuple[str, QuantizedTensor]]] = defaultdict(dict)
    modules = source.modules(progress=False)
    for name, q in tqdm(modules, total=len(source.module_shapes), desc="GGUF tensors", unit="mod",
                        disable=not progress):
        target = gguf_names.gguf_target(f"{name}.weight", hp)
        _warn_activation(name, q, result)
        if target.expert is None:
            _add_module(writer, target, q, result)
            continue
        stack = experts[target.name]
        stack[target.expert] = (name, q)
        if len(stack) == hp.n_experts:
            _add_expert_stack(writer, target.name, experts.pop(target.name), result)
    if experts:
        incomplete = {k: sorted(v) for k, v in experts.items()}
        raise MPQError(f"expert stacks with missing experts (have {hp.n_experts} per layer?): {incomplete}")
    for name, tensor in source.other_tensors():
        target = gguf_names.gguf_target(name, hp)
        qtype = _other_type(target.name, tensor)
        data = gguf_types.float_to_ggml(tensor, qtype)
        if target.permute_heads:
            data = gguf_names.permute_rows(data, target.permute_heads)
        writer.add_tensor(target.name, data, raw_dtype=qtype if data.dtype == np.uint8 else None)
        result.rows.append(TensorRow(target.name, str(tensor.dtype).removeprefix("torch."), qtype.name,
                                     True, 0.0, "as stored"))


def _other_type(gguf_name: str, tensor: torch.Tensor) -> gguf.GGMLQuantizationType:
    """Norms, biases and the MoE router in F32 (as llama.cpp's converter does); embeddings as stored."""
    if tensor.dim() == 1 or ".ffn_gate_inp." in gguf_name:
        return T.F32
    return {torch.float16: T.F16, torch.float32: T.F32}.get(tensor.dtype, T.BF16)


def _add_module(writer: gguf.GGUFWriter, target: gguf_names.Target, q: QuantizedTensor, result: GGUFExport) -> None:
    choice = gguf_types.choose(q)
    if ".ffn_gate_inp." in target.name and choice.qtype in (T.BF16, T.F16):
        choice = gguf_types.Choice(T.F32, True, "MoE router in F32, as llama.cpp's converter writes it")
    data = gguf_types.encode(q, choice.qtype)
    err = _max_err(q, data, choice.qtype)
    if target.permute_heads:
        data = gguf_names.permute_rows(data, target.permute_heads)
    writer.add_tensor(target.name, data, raw_dtype=choice.qtype if data.dtype == np.uint8 else None)
    result.rows.append(TensorRow(target.name, q.spec.describe(), choice.qtype.name, choice.exact, err, choice.why))
    if choice.qtype in (T.BF16, T.F16) and get_format(q.format).name not in ("bf16", "fp16"):
        result.warnings.append(f"{target.name}: {choice.why}")


def _add_expert_stack(writer: gguf.GGUFWriter, name: str, stack: dict[int, tuple[str, QuantizedTensor]],
                      result: GGUFExport) -> None:
    """One [experts, out, in] tensor of one type: the widest of the experts' own types."""
    ordered = [stack[e] for e in sorted(stack)]
    choices = [gguf_types.choose(q) for _, q in ordered]
    qtype = max((c.qtype for c in choices), key=gguf_types.bits_per_weight)
    formats = sorted({q.spec.describe() for _, q in ordered})
    if len({c.qtype for c in choices}) > 1:
        result.warnings.append(
            f"{name}: llama.cpp stores a layer's experts in one tensor of one type; the plan mixes "
            f"{', '.join(formats)} there, so all {len(ordered)} experts are exported as {qtype.name} (the widest)")
    datas, errs = [], []
    for (_, q), c in zip(ordered, choices, strict=True):
        data = gguf_types.encode(q, qtype)
        errs.append(_max_err(q, data, qtype))
        datas.append(data)
    exact = all(c.exact and c.qtype == qtype for c in choices)
    moved = sorted({q.spec.describe() for (_, q), c in zip(ordered, choices, strict=True) if c.qtype != qtype})
    note = "experts stacked" + (f"; {', '.join(moved)} requantized to {qtype.name}" if moved else "")
    if not moved and not exact:
        note += "; " + "; ".join(sorted({c.why for c in choices}))
    writer.add_tensor(name, np.stack(datas), raw_dtype=qtype if datas[0].dtype == np.uint8 else None)
    label = formats[0] if len(formats) == 1 else "mixed: " + ", ".join(formats)
    result.rows.append(TensorRow(name, label, qtype.name, exact, max(errs), note))


def _max_err(q: QuantizedTensor, data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> float:
    ours = get_format(q.format).dequantize(q)
    if qtype in (T.F32, T.F16):
        theirs = torch.from_numpy(data).to(torch.float32)
    elif qtype == T.BF16:
        theirs = torch.from_numpy(data.view(np.int16).copy()).view(torch.bfloat16).to(torch.float32)
    else:
        theirs = gguf_types.dequantize(data, qtype)
    return float((theirs.reshape(ours.shape) - ours).abs().max()) if ours.numel() else 0.0


def _warn_activation(name: str, q: QuantizedTensor, result: GGUFExport) -> None:
    if q.spec.activation in _MX_ACTIVATIONS:
        result.warnings.append(f"{name}: the plan's {q.spec.activation} activations are not simulated by llama.cpp "
                               "(GGUF has no activation format; llama.cpp picks its own)")
