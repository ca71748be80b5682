"""The linear weights a plan applies to, read from a model folder's safetensors headers (no weights loaded)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError
from ..loaders.checkpoint import Checkpoint
from .matching import is_protected

_EMBEDDING_PARTS = ("embed_tokens", "wte", "wpe", "embed_in", "embed_positions")


@dataclass(frozen=True)
class LinearWeight:
    """One linear layer's weight: module name, logical (out, in) shape, and category."""

    name: str
    shape: tuple[int, int]
    category: str

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]


def categorize(name: str) -> str:
    """expert / router / attention / mlp / lm_head / other (seed 000's classes, refined)."""
    last = name.rsplit(".", 1)[-1]
    if last == "lm_head":
        return "lm_head"
    if is_protected(name):
        return "router"
    if ".experts." in name:
        return "expert"
    if any(part in name for part in ("self_attn", ".attn.", "attention")):
        return "attention"
    if any(part in name for part in ("mlp", "feed_forward", "shared_expert", "ffn")):
        return "mlp"
    return "other"


def linear_weights(model: str | Path | Checkpoint) -> list[LinearWeight]:
    """Every linear weight of a model folder, in checkpoint order.

    Counted: 2-D `*.weight` tensors that are not embeddings (so lm_head counts when it is stored,
    i.e. not tied), plus modules stored quantized by GPTQ / AWQ / compressed-tensors tools, whose
    logical shape is derived from their packed tensors.  Norms (1-D) and embeddings are not linear.
    """
    ckpt = model if isinstance(model, Checkpoint) else Checkpoint(model)
    method = (ckpt.quantization_config or {}).get("quant_method", "")
    out: dict[str, LinearWeight] = {}
    for tensor_name, info in ckpt.tensors.items():
        module, _, suffix = tensor_name.rpartition(".")
        if not module or module in out:
            continue
        shape = _logical_shape(ckpt, module, suffix, info.shape, method)
        if shape is None or any(part in module.split(".") for part in _EMBEDDING_PARTS):
            continue
        out[module] = LinearWeight(module, shape, categorize(module))
    if not out:
        raise CheckpointError(f"{ckpt.path}: no linear weights found")
    return list(out.values())


def _logical_shape(ckpt: Checkpoint, module: str, suffix: str, shape: tuple[int, ...], method: str):
    if suffix == "weight" and len(shape) == 2 and f"{module}.weight_packed" not in ckpt:
        return (shape[0], shape[1])
    if suffix == "qweight" and len(shape) == 2:
        if method == "awq":  # GEMM: qweight [in, out/8]; GEMV: [out, in/8]
            if str((ckpt.quantization_config or {}).get("version", "gemm")).lower() == "gemv":
                return (shape[0], shape[1] * 8)
            return (shape[1] * 8, shape[0])
        # GPTQ at 2 / 3 / 4 / 8 bits (per module under GPTQModel's `dynamic`): qweight [in*b/32, out] and
        # qzeros [groups, out*b/32] pack the same b, so in = qweight rows * out / qzeros columns
        zeros = ckpt.tensors.get(f"{module}.qzeros")
        if zeros is not None and len(zeros.shape) == 2 and zeros.shape[1]:
            return (shape[1], shape[0] * shape[1] // zeros.shape[1])
        return (shape[1], shape[0] * 8)
    if suffix == "weight_packed" and len(shape) == 2:
        if f"{module}.weight_shape" in ckpt:
            out_f, in_f = (int(v) for v in ckpt.read(f"{module}.weight_shape").tolist())
            return (out_f, in_f)
        return (shape[0], shape[1] * 2)  # MXFP4: two E2M1 codes per byte
    return None
