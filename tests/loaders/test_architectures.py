"""Any decoder-only transformers model whose linears are nn.Linear: plan → pack → load → logits equal to the
model with every quantized weight replaced by its dequantization (the model's own buffers, such as Gemma's
embed_scale, built by its own code)."""

from __future__ import annotations

import pytest
import torch
from tiny_hf import DENSE_ARCHS, dequantized_reference, save_tiny

from mpq_serving.loaders.hf_model import load_model
from mpq_serving.loaders.pack import pack
from mpq_serving.plan import plan_from_dict

MIXED = {"default": {"wq": "gptq_int4", "group_size": 32},
         "overrides": [{"pattern": "*.self_attn.*", "wq": "int8"}, {"pattern": "*.down_proj", "wq": "fp8"},
                       {"pattern": "model.layers.1.*", "wq": "mxfp4"}]}


@pytest.mark.parametrize("arch", sorted(DENSE_ARCHS))
def test_mixed_plan_packs_and_loads_on_every_family(arch, tmp_path):
    folder = save_tiny(arch, tmp_path / arch)
    plan = plan_from_dict({**MIXED, "base_model_path": str(folder)})
    packed = pack(plan, tmp_path / "packed", progress=False)
    ours = load_model(packed, dtype=torch.float32, progress=False)
    reference = dequantized_reference(folder, plan)
    ids = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26, 43, 38, 32, 79, 50, 28, 8, 41]])
    with torch.no_grad():
        got, want = ours(ids).logits, reference(ids).logits
    assert float((got - want).abs().max() / want.abs().max()) < 1e-4, arch
