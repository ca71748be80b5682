"""The plain-torch stand-ins SGLang's CPU path runs on here (mpq_serving.integrations.sglang.cpu_support),
each against the definition of the op it replaces."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mpq_serving.integrations.sglang.cpu_support import sgl_kernel_torch, torchvision_ops

# SGLang's own Triton kernel (the GPU definition of the op), run by Triton's CPU interpreter.
_TRITON_REFERENCE = r"""
import json, sys, torch
from sglang.srt.mem_cache.allocation import assign_req_to_token_pool
case = json.loads(sys.argv[1])
table = torch.zeros(case["rows"], case["pool_len"], dtype=torch.int32)
t = lambda k: torch.tensor(case[k], dtype=torch.int64)
assign_req_to_token_pool[(len(case["req"]),)](t("req"), table, t("start"), t("end"), t("loc"), case["pool_len"], 4)
print(json.dumps(table.tolist()))
"""

CASE = {"rows": 5, "pool_len": 64, "req": [4, 0, 2], "start": [3, 0, 40], "end": [7, 37, 42],
        "loc": list(range(100, 100 + 4 + 37 + 2))}


def test_assign_req_to_token_pool_cpu_equals_sglangs_triton_kernel():
    env = {k: v for k, v in os.environ.items() if k != "SGLANG_USE_CPU_ENGINE"}
    env["TRITON_INTERPRET"] = "1"
    done = subprocess.run([sys.executable, "-c", _TRITON_REFERENCE, json.dumps(CASE)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]), dtype=torch.int32)

    table = torch.zeros(CASE["rows"], CASE["pool_len"], dtype=torch.int32)
    t = lambda k: torch.tensor(CASE[k], dtype=torch.int64)  # noqa: E731
    sgl_kernel_torch.assign_req_to_token_pool_cpu(t("req"), table, t("start"), t("end"), t("loc"), CASE["pool_len"])
    assert torch.equal(table, expected)
    assert table[0, :37].tolist() == list(range(104, 141))  # request 1 (row 0) follows request 0's 4 slots


def test_ops_without_a_stand_in_fail_loudly_naming_the_op():
    from mpq_serving.integrations.sglang.cpu_support.sgl_kernel_torch import fused_experts_cpu

    with pytest.raises(NotImplementedError, match="sgl_kernel.fused_experts_cpu"):
        fused_experts_cpu()


def _nms_definition(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[int]:
    """Greedy NMS written out: take the best remaining box, drop every box overlapping it by IoU > threshold."""
    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])  # noqa: E731
        return w * h / (area(a) + area(b) - w * h)

    remaining = sorted(range(len(scores)), key=lambda i: -scores[i].item())
    keep = []
    while remaining:
        best = remaining.pop(0)
        keep.append(best)
        remaining = [i for i in remaining if iou(boxes[best].tolist(), boxes[i].tolist()) <= threshold]
    return keep


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_equals_its_definition(seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(40, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(40, 2, generator=g) * 20], dim=1)
    scores = torch.rand(40, generator=g)
    kept = torchvision_ops.nms(boxes, scores, 0.3)
    assert kept.tolist() == _nms_definition(boxes, scores, 0.3)


def test_torchvision_imports_on_cpu_torch_with_the_nms_op_defined():
    """torchvision (a CUDA wheel whose C++ ops cannot load) imports against CPU torch, as SGLang needs;
    the op its Python part registers against is the stand-in."""
    import torchvision.transforms  # noqa: F401  (what SGLang's configs import)

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    assert torch.ops.torchvision.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 2]
