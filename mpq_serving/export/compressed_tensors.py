"""`mpq export compressed-tensors`: a packed mixed checkpoint as a compressed-tensors folder stock vLLM / SGLang load.

compressed-tensors (the format llm-compressor writes, read by vLLM's and SGLang's
`CompressedTensorsConfig`) expresses per-layer mixing: one config group per scheme, each with its own
`format`, the top-level `format` `mixed-precision` when there are several, and `ignore` for
unquantized layers.  Our formats map as follows (tensor names as compressed-tensors 0.20 writes them):

| ours | group format | scheme | tensors |
|---|---|---|---|
| int8 + `aq: int8` | int-quantized | W8A8: int8 channel weights, dynamic per-token int8 inputs | weight, weight_scale |
| int8 | pack-quantized | W8A16 (int8 channel) | weight_packed (4 per int32), weight_scale, weight_shape |
| gptq_int4 / awq_int4 / ct_int4 | pack-quantized | W4A16 group / channel, sym or asym | weight_packed, weight_scale, weight_zero_point (asym), weight_shape |
| gptq_int8 / ct_int8 | pack-quantized | W8A16 group / channel, sym or asym | the same, 4 codes per int32 |
| fp8 (+ `aq: fp8`) | float-quantized | FP8 tensor / channel / block weights (+ dynamic fp8 inputs) | weight, weight_scale |
| fp8 + `aq: fp8_static` | float-quantized | FP8 with static per-tensor inputs | weight, weight_scale, input_scale |
| mxfp4 (+ `aq: mxfp4`) | mxfp4-pack-quantized | MXFP4A16 / MXFP4 | weight_packed, weight_scale |
| mxfp8 (+ `aq: mxfp8`) | mxfp8-quantized | MXFP8A16 / MXFP8 | weight, weight_scale |
| nvfp4 | nvfp4-pack-quantized | NVFP4A16 | weight_packed, weight_scale (E4M3), weight_global_scale |
| bf16 / fp16 | (ignore) | unquantized | weight |

Refused, with the reason: GPTQ act-order (vLLM dropped group activation ordering), MX activations
of another width than the weights (no compressed-tensors scheme), fp32 weights (the engines cast
unquantized layers to the model dtype), per-expert mixing inside one MoE layer (vLLM and SGLang give
an MoE layer one scheme, read from expert 0's gate / up / down projections), and different schemes
for projections the engines fuse (q / k / v → qkv_proj, gate / up → gate_up_proj: vLLM takes the
first shard's scheme for the fused layer).

Codes, scales and zero points are moved, never requantized: compressed-tensors' decompressor gives
back our dequantized weights (tests/export).  GPTQ / AWQ keep their fp16 scales.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import MPQError
from ..formats import QuantizedTensor, QuantSpec, get_format
from ..loaders.pack import ShardWriter, copy_side_files
from ..outputs import output_folder
from .source import open_source

QUANT_METHOD = "compressed-tensors"
MIXED = "mixed-precision"
EXPORT_KIND = "compressed-tensors-export"  # the output kind (see outputs.py) of this export
_PACKED_BITS = {"gptq_int4": 4, "awq_int4": 4, "ct_int4": 4, "gptq_int8": 8, "ct_int8": 8}  # → pack-quantized
_UNQUANTIZED = {"bf16", "fp16"}
# Projections the engines fuse into one layer, which then takes one scheme.
_FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
_EXPERT = re.compile(r"^(?P<layer>.+\.experts)\.(?P<e>\d+)\.(?P<proj>[^.]+)$")


class ExportRefused(MPQError):
    """The plan uses something a compressed-tensors checkpoint cannot express for stock engines."""


@dataclass(frozen=True)
class Scheme:
    """One config group's content: its format and the weight / input-activation QuantizationArgs."""

    format: str
    weights: tuple[tuple[str, Any], ...]
    input_activations: tuple[tuple[str, Any], ...] | None

    def describe(self) -> str:
        w = dict(self.weights)
        text = f"{'int' if w['type'] == 'int' else 'float'}{w['num_bits']} {w['strategy']}"
        if w.get("group_size"):
            text += f" g{w['group_size']}"
        if not w["symmetric"]:
            text += " asym"
        if self.input_activations:
            a = dict(self.input_activations)
            text += f", {a['type']}{a['num_bits']} {a['strategy']} inputs"
        return text

    def to_dict(self, targets: list[str]) -> dict[str, Any]:
        return {"targets": targets, "weights": dict(self.weights),
                "input_activations": dict(self.input_activations) if self.input_activations else None,
                "output_activations": None, "format": self.format}


@dataclass(frozen=True)
class Group:
    name: str
    format: str
    scheme: str
    n_modules: int


@dataclass
class CompressedTensorsExport:
    path: Path
    groups: list[Group] = field(default_factory=list)
    n_ignored: int = 0


def _args(num_bits: int, type_: str, strategy: str, *, symmetric: bool = True, dynamic: bool = False,
          group_size: int | None = None, block_structure: list[int] | None = None,
          scale_dtype: str | None = None) -> tuple[tuple[str, Any], ...]:
    """QuantizationArgs as compressed-tensors serializes them (`model_dump`), hashable."""
    args: dict[str, Any] = {"num_bits": num_bits, "type": type_, "symmetric": symmetric, "strategy": strategy,
                            "group_size": group_size, "block_structure": block_structure, "dynamic": dynamic,
                            "actorder": None, "observer": None if dynamic else "minmax"}
    if scale_dtype:
        args.update(scale_dtype=scale_dtype, zp_dtype=scale_dtype)
    return tuple(args.items())


def scheme_for(spec: QuantSpec, name: str) -> Scheme | None:
    """The compressed-tensors scheme of one module's spec; None for an unquantized one; refusal otherwise."""
    fmt = get_format(spec.format)
    spec = fmt.normalize(spec)
    kind = fmt.name
    if kind in _UNQUANTIZED:
        return None
    if kind == "int8":
        w = _args(8, "int", "channel")
        if spec.activation == "int8":
            return Scheme("int-quantized", w, _args(8, "int", "token", dynamic=True))
        return Scheme("pack-quantized", w, None)
    if kind in _PACKED_BITS:
        if spec.act_order:
            raise ExportRefused(f"{name}: {spec.describe()} uses act-order (a g_idx permutation); compressed-tensors "
                                "dropped group activation ordering and vLLM refuses it — re-pack it without act-order")
        gs = spec.group_size
        strategy = "channel" if gs == -1 else "group"
        return Scheme("pack-quantized", _args(_PACKED_BITS[kind], "int", strategy, symmetric=bool(spec.symmetric),
                                              group_size=None if gs == -1 else gs), None)
    if kind == "fp8":
        if spec.granularity == "block":
            w = _args(8, "float", "block", block_structure=[spec.group_size, spec.group_size])
            act = _args(8, "float", "group", dynamic=True, group_size=spec.group_size)
        else:
            w = _args(8, "float", spec.granularity)
            act = _args(8, "float", "token", dynamic=True)
        if spec.activation == "fp8_static":  # the stored input_scale travels with the weight (convert_tensors)
            act = _args(8, "float", "tensor", dynamic=False)
        return Scheme("float-quantized", w, act if spec.activation else None)
    if kind == "nvfp4":
        return Scheme("nvfp4-pack-quantized", _args(4, "float", "tensor_group", group_size=16,
                                                    scale_dtype="torch.float8_e4m3fn"), None)
    if kind in ("mxfp4", "mxfp8"):
        bits = 4 if kind == "mxfp4" else 8
        if spec.activation not in (None, kind):
            raise ExportRefused(f"{name}: {kind} weights with {spec.activation} activations have no compressed-tensors "
                                f"scheme (its MX presets pair {kind} weights with {kind} activations or none)")
        w = _args(bits, "float", "group", group_size=32, scale_dtype="torch.uint8")
        act = _args(bits, "float", "group", dynamic=True, group_size=32, scale_dtype="torch.uint8")
        fmt_name = "mxfp4-pack-quantized" if kind == "mxfp4" else "mxfp8-quantized"
        return Scheme(fmt_name, w, act if spec.activation else None)
    raise ExportRefused(f"{name}: {spec.describe()} has no compressed-tensors form stock vLLM / SGLang read "
                        f"(fp32 would be cast to the model dtype; export it as bf16)")


def convert_tensors(q: QuantizedTensor) -> dict[str, torch.Tensor]:
    """One module's tensors in compressed-tensors' names and layout (codes and scales unchanged)."""
    fmt = get_format(q.format)
    kind, t = fmt.name, q.tensors
    if kind in _UNQUANTIZED or kind in ("mxfp4", "mxfp8", "nvfp4") or (kind == "int8" and q.spec.activation == "int8"):
        return dict(t)
    if kind == "int8":
        return {"weight_packed": _pack_int8(t["weight"]), "weight_scale": t["weight_scale"],
                "weight_shape": torch.tensor(q.shape, dtype=torch.int64)}
    if kind in _PACKED_BITS:
        parts = fmt.unpack(q)  # type: ignore[attr-defined]
        spec = fmt.normalize(q.spec)
        target = "ct_int4" if _PACKED_BITS[kind] == 4 else "ct_int8"
        ct = get_format(target).pack(parts, QuantSpec(target, group_size=spec.group_size,  # type: ignore[attr-defined]
                                                      symmetric=bool(spec.symmetric)))
        tensors = dict(ct.tensors)
        tensors["weight_scale"] = parts.scales.contiguous()  # keep GPTQ / AWQ fp16 scales exactly
        return tensors
    if kind == "fp8":
        if "weight_scale_inv" in t:  # DeepSeek's block-scale name → compressed-tensors'
            return {"weight": t["weight"], "weight_scale": t["weight_scale_inv"]}
        return dict(t)
    raise ExportRefused(f"{kind}: no compressed-tensors layout")


def _pack_int8(codes: torch.Tensor) -> torch.Tensor:
    """compressed-tensors `pack_to_int32(num_bits=8)`: code + 128, element j of a word at bits 8j..8j+7."""
    out_f, in_f = codes.shape
    pad = -in_f % 4
    u = torch.nn.functional.pad(codes.to(torch.int64) + 128, (0, pad)).reshape(out_f, -1, 4)
    words = (u << torch.tensor([0, 8, 16, 24])).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _check_fused(schemes: dict[str, Scheme | None]) -> None:
    """Projections an engine fuses must share one scheme (or all be unquantized)."""
    for family in _FUSED:
        seen: dict[str, dict[str, Scheme | None]] = defaultdict(dict)
        for name, scheme in schemes.items():
            prefix, _, leaf = name.rpartition(".")
            if leaf in family and not _EXPERT.match(name):
                seen[prefix][leaf] = scheme
        for prefix, members in seen.items():
            if len(set(members.values())) > 1:
                detail = ", ".join(f"{leaf}: {s.describe() if s else 'bf16'}" for leaf, s in sorted(members.items()))
                raise ExportRefused(
                    f"{prefix}: {detail}. vLLM and SGLang fuse {'/'.join(family)} into one layer that takes one "
                    "scheme (vLLM silently applies the first shard's), so these must share a format in this export")


def _check_moe(schemes: dict[str, Scheme | None]) -> None:
    """Every expert and projection of one MoE layer must share one scheme."""
    layers: dict[str, dict[Scheme | None, list[str]]] = defaultdict(lambda: defaultdict(list))
    for name, scheme in schemes.items():
        m = _EXPERT.match(name)
        if m:
            layers[m["layer"]][scheme].append(f"{m['e']}.{m['proj']}")
    for layer, by_scheme in layers.items():
        if len(by_scheme) > 1:
            detail = "; ".join(f"{s.describe() if s else 'bf16'} on {len(v)} (e.g. experts.{v[0]})"
                               for s, v in by_scheme.items())
            raise ExportRefused(
                f"{layer}: the plan mixes schemes among this MoE layer's experts ({detail}). Stock vLLM and SGLang "
                "give an MoE layer one scheme (read from expert 0's gate/up/down), so per-expert mixing cannot be "
                "expressed in compressed-tensors; serve it with the mpq plugin, or give the layer one format")


def export_compressed_tensors(packed: str | Path, output: str | Path, *, shard_bytes: int = 2 << 30,
                              overwrite: bool = False) -> CompressedTensorsExport:
    """Write `output` from a packed folder; nothing is written when the plan cannot be expressed."""
    source = open_source(packed)
    schemes = {name: scheme_for(spec, name) for name, spec in source.module_specs.items()}
    _check_fused(schemes)
    _check_moe(schemes)

    by_scheme: dict[Scheme, list[str]] = defaultdict(list)
    ignore: list[str] = []
    for name, scheme in schemes.items():
        (ignore if scheme is None else by_scheme[scheme]).append(name)
    groups, result = {}, CompressedTensorsExport(Path(output), n_ignored=len(ignore))
    for i, (scheme, targets) in enumerate(by_scheme.items()):
        groups[f"group_{i}"] = scheme.to_dict(sorted(targets))
        result.groups.append(Group(f"group_{i}", scheme.format, scheme.describe(), len(targets)))
    formats = {s.format for s in by_scheme}
    qconfig = {
        "quant_method": QUANT_METHOD,
        "format": formats.pop() if len(formats) == 1 else MIXED,
        "quantization_status": "compressed",
        "config_groups": groups,
        "ignore": sorted(ignore),
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "sparsity_config": {},
        "transform_config": {},
    }

    with output_folder(output, EXPORT_KIND, overwrite=overwrite, inputs=[source.folder]) as tmp:
        writer = ShardWriter(tmp, shard_bytes)
        for name, q in source.modules():
            for suffix, tensor in convert_tensors(q).items():
                writer.add(f"{name}.{suffix}", tensor)
        for name, tensor in source.other_tensors():
            writer.add(name, tensor)
        writer.finish()
        config = dict(source.config)
        config["quantization_config"] = qconfig
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        copy_side_files(source.folder, tmp)
    return result
