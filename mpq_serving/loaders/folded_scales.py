"""Scales that AWQ and SmoothQuant folded into a norm or a linear travel with the layers that consume them.

AWQ (AutoAWQ, llm-compressor's AWQModifier, `mpq quantize --method awq`) and SmoothQuant multiply a
linear's input channels by s and divide the op producing that input by s: the RMSNorm before q/k/v or
before gate/up (and the MoE router), v_proj before o_proj, up_proj before down_proj.  A source's quantized
linears are right only with that source's own norm and producer.  So, for every norm, before any weight
is read:

- the norm is taken from the checkpoint whose stored (quantized) consumers were made against it — not
  from the base model;
- a consumer read as float (bf16 / fp16 from any checkpoint, or quantized from the base model now) that
  was made against another norm is re-folded exactly: its input columns are multiplied by
  own_norm / chosen_norm before it is cast or quantized;
- consumers stored quantized against *different* norms cannot both be right: refused, naming them.

A linear producer (v_proj → o_proj, up_proj → down_proj) folded by a declared AWQ source must come from
the same checkpoint as its consumer — the scale is not stored anywhere, so it cannot be re-folded: refused
otherwise.  A source that declares nothing (GPTQ, FP8) is taken to have folded nothing into linears.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CheckpointError
from .checkpoint import Checkpoint
from .sources import Located

logger = logging.getLogger(__name__)

# Model types whose RMSNorm computes x̂·(1 + weight): their effective scale is 1 + the stored weight.
_OFFSET_NORMS = ("gemma", "gemma2", "gemma3", "gemma3_text", "gemma3n", "gemma3n_text")
_LAYER = re.compile(r"^(?P<prefix>.*\.layers\.\d+\.)(?P<rest>.+)$")
_ATTN_INPUTS = ("q_proj", "k_proj", "v_proj", "qkv_proj")
_MLP_INPUTS = ("gate_proj", "up_proj", "gate_up_proj", "w1", "w3", "gate", "shared_expert_gate")
_MLP_BLOCKS = ("mlp.", "block_sparse_moe.")
_LINEAR_PAIRS = (("self_attn.v_proj", "self_attn.o_proj"), ("up_proj", "down_proj"), ("w3", "w2"))
# Relative difference below which two copies of a norm count as the same (fp16 / bf16 copies of one norm).
_SAME = 1e-3


@dataclass
class FoldedScales:
    """What reconciling folded scales decided: norms to write instead of the reference's, and columns to rescale."""

    norms: dict[str, torch.Tensor] = field(default_factory=dict)  # norm tensor name -> tensor to write
    column_scales: dict[str, torch.Tensor] = field(default_factory=dict)  # module -> factor per input column


def reconcile_folded_scales(reference: Checkpoint, located: dict[str, Located],
                            shapes: dict[str, tuple[int, int]]) -> FoldedScales:
    """Decide, from the norms each checkpoint holds, where every norm comes from; refuse what cannot be right."""
    result = FoldedScales()
    if {loc.checkpoint.path for loc in located.values()} <= {reference.path}:
        return result  # everything from the reference: its norms and linears already agree
    offset = 1.0 if str(reference.config.get("model_type", "")) in _OFFSET_NORMS else 0.0
    for norm, consumers in norm_consumers(reference, located).items():
        _reconcile_norm(norm, consumers, reference, located, offset, result)
    _check_linear_pairs(located, shapes)
    return result


def norm_consumers(reference: Checkpoint, located: dict[str, Located]) -> dict[str, list[str]]:
    """Each decoder layer's input norms and the linears that read their output, from the tensor names."""
    by_layer: dict[str, list[str]] = {}
    for module in located:
        m = _LAYER.match(module)
        if m:
            by_layer.setdefault(m["prefix"], []).append(m["rest"])
    out: dict[str, list[str]] = {}
    for prefix, parts in by_layer.items():
        attn = [p for p in parts if p.startswith("self_attn.") and p.rsplit(".", 1)[-1] in _ATTN_INPUTS]
        mlp = [p for p in parts if p.startswith(_MLP_BLOCKS) and p.rsplit(".", 1)[-1] in _MLP_INPUTS]
        mlp_norm = next((f"{prefix}{n}.weight" for n in ("pre_feedforward_layernorm", "post_attention_layernorm")
                         if f"{prefix}{n}.weight" in reference), None)
        for norm, linears in ((f"{prefix}input_layernorm.weight", attn), (mlp_norm, mlp)):
            if norm is not None and norm in reference and linears:
                out[norm] = [prefix + p for p in linears]
    return out


def _reconcile_norm(norm: str, consumers: list[str], reference: Checkpoint, located: dict[str, Located],
                    offset: float, result: FoldedScales) -> None:
    ref = reference.read(norm)
    copies: dict[Path, torch.Tensor] = {reference.path: ref.float()}

    def own(module: str) -> torch.Tensor:
        ckpt = located[module].checkpoint
        if ckpt.path not in copies:
            copies[ckpt.path] = ckpt.read(norm).float() if norm in ckpt else copies[reference.path]
        return copies[ckpt.path]

    stored = [c for c in consumers if not located[c].quantize_from_base]
    required: list[tuple[str, torch.Tensor]] = []
    for c in stored:
        if not any(_same(own(c), t) for _, t in required):
            required.append((c, own(c)))
    if len(required) > 1:
        (a, _), (b, _) = required[:2]
        raise CheckpointError(
            f"{norm}: {a} (from {located[a].checkpoint.path}) and {b} (from {located[b].checkpoint.path}) were "
            "quantized against different versions of this norm (AWQ / SmoothQuant folded different scales into "
            "it); take every linear this norm feeds from one source, or quantize the others from the base model")
    chosen = required[0][1] if required else own(consumers[0])
    if not all(_same(own(c), chosen) for c in consumers) and not required:
        chosen = copies[reference.path]  # float consumers only, from differently folded checkpoints: back to the reference
    effective_chosen = chosen + offset
    for c in consumers:
        if located[c].quantize_from_base and not _same(own(c), chosen):
            effective_own = own(c) + offset
            if bool(((effective_chosen == 0) & (effective_own != 0)).any()):
                raise CheckpointError(f"{norm}: cannot re-fold {c} onto the chosen norm (it has zero channels)")
            result.column_scales[c] = effective_own / effective_chosen
    if not _same(chosen, ref.float()):
        result.norms[norm] = chosen.to(ref.dtype)
        source = next(located[c].checkpoint.path for c in consumers if _same(own(c), chosen))
        logger.info("%s from %s (scales folded by its tool)", norm, source)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(((a - b).abs() <= _SAME * b.abs().clamp_min(1e-6)).all())


def _check_linear_pairs(located: dict[str, Located], shapes: dict[str, tuple[int, int]]) -> None:
    for consumer, loc in located.items():
        for producer_part, consumer_part in _LINEAR_PAIRS:
            if not consumer.endswith("." + consumer_part):
                continue
            producer = consumer[: len(consumer) - len(consumer_part)] + producer_part
            if producer not in located:
                continue
            if producer_part == "self_attn.v_proj" and shapes[producer] != shapes[consumer]:
                continue  # grouped-query attention: AWQ does not fold v_proj into o_proj
            p_ckpt, c_ckpt = located[producer].checkpoint, loc.checkpoint
            if p_ckpt.path == c_ckpt.path:
                continue
            folding = [ck for ck in (p_ckpt, c_ckpt) if folds_into_linears(ck)]
            if folding:
                raise CheckpointError(
                    f"{consumer} comes from {c_ckpt.path} but {producer}, which produces its input, from "
                    f"{p_ckpt.path}: {folding[0].path} is an AWQ checkpoint, which folds a scale of {consumer}'s "
                    f"input into {producer} and stores it nowhere; take both from the same source")


def folds_into_linears(ckpt: Checkpoint) -> bool:
    """Whether a checkpoint declares AWQ, the method that folds scales into preceding linears."""
    qc = ckpt.quantization_config or {}
    method = str(qc.get("quant_method", "")).lower()
    if method == "awq":
        return True
    if method == "mpq":
        return str((qc.get("quantize") or {}).get("method", "")).lower() == "awq"
    if method == "compressed-tensors":
        recipe = Path(ckpt.path) / "recipe.yaml"
        return recipe.is_file() and "AWQModifier" in recipe.read_text(encoding="utf-8", errors="replace")
    return False
