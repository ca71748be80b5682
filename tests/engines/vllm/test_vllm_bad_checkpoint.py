"""A packed checkpoint whose tensors do not match its plan fails at vLLM start-up, naming the tensor."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file, save_file
from servers import ServerStartError, VllmServer

PLAN = {"mixed_precision": {"default": {"format": "gptq_int4", "group_size": 64},
                            "weight_mapping": {r"re:.*\.mlp\..*": "mxfp4"}}}


@pytest.fixture(scope="module")
def packed(smollm2_dir, tmp_path_factory):
    from mpq_serving.loaders.pack import pack
    from mpq_serving.models.tiny import build_tiny
    from mpq_serving.plan.io import plan_from_dict

    tmp = tmp_path_factory.mktemp("tiny-llama")
    return pack(plan_from_dict(PLAN), tmp / "packed", build_tiny("llama", tmp / "base"), progress=False)


def _damaged_copy(packed, dest, edit):
    import shutil

    shutil.copytree(packed, dest)
    tensors = load_file(dest / "model.safetensors")
    edit(tensors)
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


def _start_fails(folder, work) -> str:
    """vLLM's start-up fails; returns its whole log (the root cause is logged above vLLM's own summary)."""
    server = VllmServer(folder, work, ["--enforce-eager"], timeout_s=600)
    try:
        with pytest.raises(ServerStartError):
            server.start()
    finally:
        server.stop()
    return server.log_path.read_text()


def test_mis_shaped_tensor_is_named(packed, tmp_path):
    name = "model.layers.1.mlp.up_proj.weight_scale"

    def edit(t):
        t[name] = t[name][:, :-1].contiguous()

    message = _start_fails(_damaged_copy(packed, tmp_path / "bad", edit), tmp_path / "work")
    assert name in message and "shape" in message


def test_missing_tensor_is_named(packed, tmp_path):
    name = "model.layers.0.self_attn.k_proj.scales"

    def edit(t):
        del t[name]

    message = _start_fails(_damaged_copy(packed, tmp_path / "bad", edit), tmp_path / "work")
    assert name in message or "k_proj.scales" in message
