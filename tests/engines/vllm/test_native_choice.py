"""Who runs a GPTQ / AWQ layer under the plugin on this CPU: ours by default, vLLM's with MPQ_VLLM_PREFER=vllm."""

from __future__ import annotations

import pytest
from servers import vllm_cpu_int4_kernel

from mpq_serving.formats import QuantSpec, get_format
from mpq_serving.integrations.common import ModuleEntry
from mpq_serving.integrations.vllm.native import CPU_PREFER_OURS, PREFER_ENV, native_choice


def entry(fmt: str, **fields) -> ModuleEntry:
    return ModuleEntry("model.layers.0.mlp.down_proj", get_format(fmt).normalize(QuantSpec(fmt, **fields)), (576, 1536))


@pytest.mark.skipif(not vllm_cpu_int4_kernel(), reason="this vLLM CPU build has no cpu_gemm_wna16: ours either way")
@pytest.mark.parametrize(("fmt", "fields", "kind"), [("gptq_int4", {"group_size": 64}, "gptq"),
                                                     ("awq_int4", {"group_size": 64}, "awq")])
def test_cpu_prefers_our_int4_kernel_unless_told(fmt, fields, kind, monkeypatch):
    parts = [entry(fmt, **fields)]
    monkeypatch.delenv(PREFER_ENV, raising=False)
    assert native_choice(parts, 1536, 576) == (None, CPU_PREFER_OURS)
    monkeypatch.setenv(PREFER_ENV, "vllm")
    chosen, reason = native_choice(parts, 1536, 576)
    assert chosen == kind and "cpu_gemm_wna16" in reason
