"""Check a checkpoint's linear weights against what its config.json says the model has, from headers only.

A base model whose tensor is missing or has the wrong shape would otherwise pack "successfully" and
fail only at inference (`mat1 and mat2 shapes cannot be multiplied`).  The expected weights come from
transformers itself: the model is built from the config on the meta device (no memory), and every
`nn.Linear` and every fused MoE expert tensor gives the names and (out, in) shapes the checkpoint
must hold.  Architectures transformers does not know are not checked here (loading them fails anyway).
"""

from __future__ import annotations

import functools
import json
import logging
import re

import torch
from torch import nn

from ..errors import CheckpointError
from ..plan.model_weights import LinearWeight
from .checkpoint import Checkpoint

logger = logging.getLogger(__name__)

# A per-expert projection as checkpoints name it, and its role (Mixtral's w1/w3/w2 included).
EXPERT_NAME = re.compile(r"^(?P<prefix>.+\.experts)\.(?P<e>\d+)\.(?P<proj>gate_proj|up_proj|down_proj|w1|w3|w2)$")
EXPERT_ROLE = {"gate_proj": "gate", "w1": "gate", "up_proj": "up", "w3": "up", "down_proj": "down", "w2": "down"}


def check_against_config(ckpt: Checkpoint, weights: list[LinearWeight]) -> None:
    """Refuse, naming tensor and file, linear weights the config expects but the checkpoint lacks or shapes otherwise."""
    expected = expected_linears(ckpt)
    if expected is None:
        return
    present = {_key(w.name): w for w in weights}
    missing = [name for name in expected if name not in present]
    wrong = [(present[name].name, present[name].shape, shape) for name, shape in expected.items()
             if name in present and tuple(present[name].shape) != shape]
    problems = [f"tensor {name}.weight has shape {have}, but config.json makes it {want}" for name, have, want in wrong[:5]]
    if missing:
        listed = ", ".join(f"{m}.weight" for m in missing[:5])
        problems.append(f"{len(missing)} linear weight(s) that config.json implies are missing: {listed}"
                        + (" ..." if len(missing) > 5 else ""))
    if problems:
        raise CheckpointError(f"{ckpt.path}: " + "; ".join(problems))


def expected_linears(ckpt: Checkpoint) -> dict[str, tuple[int, int]] | None:
    """Linear weight name (experts as `<experts>.<e>.<gate|up|down>`) → (out, in), or None when unknown."""
    if not ckpt.config or ckpt.path.is_file():
        return None
    return _expected_for(str(ckpt.path), json.dumps(ckpt.config, sort_keys=True))


@functools.lru_cache(maxsize=8)
def _expected_for(path: str, config_json: str) -> dict[str, tuple[int, int]] | None:
    """Cached per folder and config: searches and reports build a loader per plan on the same model."""
    try:
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(path)
        config.__dict__.pop("quantization_config", None)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception as e:  # noqa: BLE001 - an architecture transformers cannot build is simply not checked
        logger.info("%s: not checked against config.json (%s)", path, e)
        return None
    tied = bool(getattr(config, "tie_word_embeddings", False))
    out: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            if tied and module is model.get_output_embeddings():
                continue
            out[name] = (module.out_features, module.in_features)
            continue
        out.update(_fused_experts(name, module))
    return {_key(k): v for k, v in out.items()}


def _fused_experts(name: str, module: nn.Module) -> dict[str, tuple[int, int]]:
    """transformers 5 keeps an MoE layer's experts as 3-D tensors [experts, out, in]; checkpoints, per expert."""
    params = dict(module.named_parameters(recurse=False))
    down = params.get("down_proj")
    if down is None or down.dim() != 3:
        return {}
    experts, hidden, inter = down.shape
    out = {}
    for e in range(experts):
        for role in ("gate", "up"):
            out[f"{name}.{e}.{role}"] = (inter, hidden)
        out[f"{name}.{e}.down"] = (hidden, inter)
    return out


def _key(name: str) -> str:
    """One spelling for checkpoint and model names: Mixtral's block_sparse_moe, experts by role."""
    name = name.replace(".block_sparse_moe.", ".mlp.")
    m = EXPERT_NAME.match(name)
    return f"{m['prefix']}.{m['e']}.{EXPERT_ROLE[m['proj']]}" if m else name
