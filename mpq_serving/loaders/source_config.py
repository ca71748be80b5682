"""What a tool's quantization config says about one module: its format and spec.

Understands GPTQ / GPTQModel (`quantize_config.json` or `quantization_config`, incl. `dynamic`
per-module overrides), AutoAWQ, FP8 block releases (`quant_method: fp8`, `weight_block_size`),
compressed-tensors (`config_groups`, `ignore`), NVIDIA ModelOpt (`quant_method: modelopt`, or the
`quantization` block of its hf_quant_config.json), and our own packed `mpq` checkpoints.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import replace
from typing import Any

from ..errors import CheckpointError
from ..formats import QuantSpec, get_format
from ..packed_config import PackedConfig


def module_spec(qconfig: dict[str, Any] | None, module: str, where: str) -> QuantSpec | None:
    """The spec the checkpoint stores `module` in; None when the module is stored unquantized."""
    if not qconfig:
        return None
    method = str(qconfig.get("quant_method", "")).lower()
    if method == "gptq":
        return _gptq(qconfig, module, where)
    if method == "awq":
        return _awq(qconfig, module, where)
    if method == "fp8":
        return _fp8_block(qconfig, module, where)
    if method == "compressed-tensors":
        return _compressed_tensors(qconfig, module, where)
    if method == "modelopt":
        return _modelopt(qconfig, module, where)
    if method == "mpq":
        entry = PackedConfig.read(qconfig, where).modules.get(module)
        return None if entry is None else entry.spec()
    raise CheckpointError(f"{where}: quant_method {method!r} is not one mpq-serving reads")


def spec_to_dict(spec: QuantSpec) -> dict[str, Any]:
    return {k: v for k, v in spec.__dict__.items() if v is not None and not (k == "act_order" and v is False)
            and not (k == "checkpoint_format" and v == "gptq")}


GPTQ_BITS = {2: "gptq_int2", 3: "gptq_int3", 4: "gptq_int4", 8: "gptq_int8"}


def _gptq_format(bits: Any, where: str) -> str:
    if int(bits) not in GPTQ_BITS:
        raise CheckpointError(f"{where}: {bits}-bit GPTQ weights; GPTQ is read at 2, 3, 4 or 8 bits")
    return GPTQ_BITS[int(bits)]


def _gptq(qc: dict[str, Any], module: str, where: str) -> QuantSpec | None:
    fields = {
        "bits": qc.get("bits", 4),
        "group_size": int(qc.get("group_size", 128)),
        "desc_act": bool(qc.get("desc_act", False)),
        "sym": bool(qc.get("sym", True)),
    }
    for pattern, override in (qc.get("dynamic") or {}).items():
        negative = pattern.startswith("-:")
        regex = pattern[2:] if pattern[:2] in ("+:", "-:") else pattern
        if re.match(regex, module):
            if negative:
                return None  # GPTQModel: `-:` excludes the module from quantization
            # GPTQModel's per-module overrides: any of bits, group_size, desc_act, sym
            fields.update({k: override[k] for k in ("bits", "group_size", "desc_act", "sym") if k in override})
            break
    fmt_name = _gptq_format(fields["bits"], f"{where}: module {module}" if qc.get("dynamic") else where)
    # GPTQModel writes the layout as `format` and (legacy, still read by vLLM) `checkpoint_format`; older
    # writers only the latter, AutoGPTQ's Marlin repack only `is_marlin_format`.  None of them: v1.
    fmt = str(qc.get("checkpoint_format") or qc.get("format") or ("marlin" if qc.get("is_marlin_format") else "gptq"))
    fmt = fmt.lower()
    if fmt not in ("gptq", "gptq_v2"):
        raise CheckpointError(f"{where}: GPTQ checkpoint_format {fmt!r} is not supported (gptq or gptq_v2)")
    return QuantSpec(
        fmt_name,
        group_size=int(fields["group_size"]),
        symmetric=bool(fields["sym"]),
        act_order=bool(fields["desc_act"]),
        checkpoint_format=fmt,  # type: ignore[arg-type]
    )


def _awq(qc: dict[str, Any], module: str, where: str) -> QuantSpec | None:
    bits = qc.get("bits", qc.get("w_bit", 4))
    if int(bits) != 4:
        raise CheckpointError(f"{where}: {bits}-bit AWQ weights; AutoAWQ's layouts are read at 4 bits")
    version = str(qc.get("version", "gemm")).lower()
    if version not in ("gemm", "gemv"):
        raise CheckpointError(f"{where}: AWQ version {version!r}; the GEMM and GEMV layouts are read")
    if any(skip in module for skip in qc.get("modules_to_not_convert") or []):
        return None
    return QuantSpec(
        "awq_int4",
        group_size=int(qc.get("group_size", qc.get("q_group_size", 128))),
        symmetric=not bool(qc.get("zero_point", True)),
        checkpoint_format="awq_gemv" if version == "gemv" else "gptq",  # GEMV: repacked to GEMM at load
    )


def _fp8_block(qc: dict[str, Any], module: str, where: str) -> QuantSpec | None:
    if any(module.startswith(m) or module.endswith(m) for m in qc.get("modules_to_not_convert") or []):
        return None
    # `activation_scheme: dynamic` (DeepSeek-V3, Qwen3-FP8): fp8 activations scaled on the fly (per token
    # group of the block width with block weights); `static` (AutoFP8): the stored per-tensor input_scale.
    scheme = str(qc.get("activation_scheme", "dynamic")).lower()
    if scheme not in ("dynamic", "static"):
        raise CheckpointError(f"{where}: fp8 activation_scheme {scheme!r} is not one of dynamic, static")
    activation = "fp8" if scheme == "dynamic" else "fp8_static"
    block = qc.get("weight_block_size")
    if block:
        if len(block) != 2 or block[0] != block[1]:
            raise CheckpointError(f"{where}: weight_block_size {block}: only square blocks are supported")
        if scheme == "static":
            raise CheckpointError(f"{where}: fp8 block weights with activation_scheme static; vLLM and SGLang run "
                                  "block weights with dynamic activations only")
        return QuantSpec("fp8", group_size=int(block[0]), granularity="block", activation=activation)
    return QuantSpec("fp8", granularity="tensor", activation=activation)


def _modelopt(qc: dict[str, Any], module: str, where: str) -> QuantSpec | None:
    """NVIDIA ModelOpt: `quant_algo` FP8 stores per-tensor fp8 `weight` + `weight_scale` and a calibrated
    per-tensor `input_scale` (static activations, as vLLM's ModelOptFp8Config runs them), the names AutoFP8
    static uses.  NVFP4 (W4A4: FP4 activations) and the other algorithms are refused by name."""
    qc = qc.get("quantization", qc)
    excluded = qc.get("exclude_modules") or qc.get("ignore") or []
    if any(fnmatch.fnmatchcase(module, p) or module == p or module.endswith("." + p) for p in excluded):
        return None
    algo = str(qc.get("quant_algo", "")).upper()
    if algo == "FP8":
        return QuantSpec("fp8", granularity="tensor", activation="fp8_static")
    if algo == "NVFP4":
        raise CheckpointError(f"{where}: ModelOpt quant_algo NVFP4 is W4A4 (NVFP4 activations with a calibrated "
                              "input_scale), which mpq-serving does not run; its weight-only NVFP4 is read from "
                              "compressed-tensors (NVFP4A16)")
    raise CheckpointError(f"{where}: ModelOpt quant_algo {algo or '(none)'!r} is not read (FP8 is)")


def _ct_target_matches(target: str, module: str) -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], module) is not None
    return target == "Linear" or module == target or module.endswith("." + target)


def _compressed_tensors(qc: dict[str, Any], module: str, where: str) -> QuantSpec | None:
    if any(_ct_target_matches(t, module) for t in qc.get("ignore") or []):
        return None
    for group_name, group in (qc.get("config_groups") or {}).items():
        if not any(_ct_target_matches(t, module) for t in group.get("targets", [])):
            continue
        w = group.get("weights") or {}
        fmt = str(group.get("format") or qc.get("format") or "").lower()
        act = group.get("input_activations")
        label = f"{where}: compressed-tensors group {group_name!r}"
        bits, kind, strategy = int(w.get("num_bits", 16)), w.get("type", "int"), w.get("strategy", "tensor")
        mx_scales = "uint8" in str(w.get("scale_dtype"))  # E8M0 scales: compressed-tensors' MX test
        if "nvfp4" in fmt or (bits == 4 and kind == "float" and w.get("group_size") == 16):
            _ct_activation(act, None, label)  # NVFP4A16 only: FP4 activations are not simulated
            return QuantSpec("nvfp4", group_size=16)
        if "mxfp4" in fmt or (bits == 4 and kind == "float" and w.get("group_size") == 32 and "nvfp4" not in fmt):
            return QuantSpec("mxfp4", group_size=32, activation=_ct_mx_activation(act, label))
        if "mxfp8" in fmt or (bits == 8 and kind == "float" and w.get("group_size") == 32 and mx_scales):
            return QuantSpec("mxfp8", group_size=32, activation=_ct_mx_activation(act, label))
        if bits == 8 and kind == "float" and strategy == "block":
            b = w.get("block_structure") or [128, 128]
            if len(b) != 2 or b[0] != b[1]:
                raise CheckpointError(
                    f"{where}: compressed-tensors group {group_name!r} has block_structure {b}; "
                    "only square fp8 blocks are supported"
                )
            activation = _ct_activation(act, "fp8", label, int(b[0]))
            return QuantSpec("fp8", group_size=int(b[0]), granularity="block", activation=activation)
        if bits == 8 and kind == "float" and strategy in ("tensor", "channel"):
            activation = _ct_activation(act, "fp8", label)
            return QuantSpec("fp8", granularity=strategy, activation=activation)
        if bits == 8 and kind == "int" and "pack-quantized" in fmt and strategy in ("group", "channel"):
            _refuse_actorder(w, label)
            gs = int(w.get("group_size") or -1) if strategy == "group" else -1
            _ct_activation(act, None, label)  # W8A16: declared 16-bit inputs only
            return QuantSpec("ct_int8", group_size=gs, symmetric=bool(w.get("symmetric", True)))
        if bits == 8 and kind == "int" and strategy == "channel":
            activation = _ct_activation(act, "int8", label)
            return QuantSpec("int8", activation=activation)
        if bits == 4 and kind == "int" and strategy in ("group", "channel"):
            _refuse_actorder(w, label)
            gs = int(w.get("group_size") or -1) if strategy == "group" else -1
            _ct_activation(act, None, label)
            return QuantSpec("ct_int4", group_size=gs, symmetric=bool(w.get("symmetric", True)))
        raise CheckpointError(
            f"{where}: compressed-tensors group {group_name!r} ({bits}-bit {kind}, {strategy}, format {fmt!r}) "
            "is not a scheme mpq-serving reads"
        )
    return None


def _refuse_actorder(weights: dict[str, Any], label: str) -> None:
    """llm-compressor's GPTQ actorder=group (removed in compressed-tensors 0.20) stores `weight_g_idx`; the
    pack-quantized formats read contiguous groups only, so reading it would be silently wrong."""
    if str(weights.get("actorder")).lower() in ("group", "dynamic", "true"):
        raise CheckpointError(f"{label} uses actorder={weights.get('actorder')!r} (a weight_g_idx permutation); "
                              "pack-quantized weights are read with contiguous groups only")


def _ct_activation(act: dict[str, Any] | None, weight_kind: str | None, where: str,
                   block: int | None = None) -> str | None:
    """The activation scheme a group declares, as our spec names it; anything we would not run as declared
    (static int8, asymmetric inputs, other strategies) is refused here rather than silently run weight-only."""
    if not act:
        return None
    bits, kind = int(act.get("num_bits", 16)), act.get("type", "int")
    strategy, dynamic = act.get("strategy"), act.get("dynamic")
    label = f"{where}: input_activations ({bits}-bit {kind}, {strategy}, dynamic={dynamic})"
    if bits >= 16:
        return None
    if act.get("symmetric") is False:
        raise CheckpointError(f"{label}: asymmetric activations (input_zero_point) are not run by mpq-serving")
    if weight_kind == "fp8" and kind == "float" and bits == 8:
        if dynamic is True and block is None and strategy == "token":
            return "fp8"
        if dynamic is True and block is not None and strategy == "group" and act.get("group_size") == block:
            return "fp8"  # per token and per group of the block width: how fp8 block weights run
        if dynamic is False and block is None and strategy == "tensor":
            return "fp8_static"
    if weight_kind == "int8" and kind == "int" and bits == 8 and dynamic is True and strategy == "token":
        return "int8"
    raise CheckpointError(f"{label}: this activation scheme is not one mpq-serving runs with these weights, "
                          "and running the layer weight-only instead would silently change its numerics")


def _ct_mx_activation(act: dict[str, Any] | None, where: str) -> str | None:
    """The MX format of a dynamic per-32 float activation group (MXFP4 / MXFP8 presets); None without one."""
    if not act or int(act.get("num_bits", 16)) >= 16:
        return None
    if act.get("dynamic") is True and act.get("type") == "float" and act.get("group_size") == 32:
        mx = {4: "mxfp4", 8: "mxfp8"}.get(int(act.get("num_bits", 16)))
        if mx:
            return mx
    raise CheckpointError(f"{where}: input_activations {act} with MX weights is not a scheme mpq-serving runs "
                          "(dynamic per-32 float4 / float8 only)")


def merge_specs(plan: QuantSpec, stored: QuantSpec, module: str, where: str) -> QuantSpec:
    """The plan's spec completed by what the source stores; a contradiction is an error naming both."""
    fmt = get_format(plan.format)
    if fmt.name != get_format(stored.format).name:
        raise CheckpointError(
            f"{where}: module {module} is stored as {stored.describe()}, but the plan asks {plan.describe()}"
        )
    merged = stored
    for field in ("group_size", "granularity", "symmetric"):
        want, have = getattr(plan, field), getattr(stored, field)
        if want is not None and have is not None and want != have:
            raise CheckpointError(
                f"{where}: module {module} is stored with {field}={have}, but the plan asks {field}={want}"
            )
    if plan.activation is not None:
        merged = replace(merged, activation=plan.activation)
    return fmt.normalize(merged)
