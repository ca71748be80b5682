"""`torchvision::nms` and `torchvision::qnms` in plain torch, for a torchvision whose C++ ops cannot load.

torchvision's Python import registers fake (meta) kernels for these two ops unconditionally, so it
fails when its compiled library is missing.  Defining them here first lets the pure-Python parts of
torchvision (transforms, which SGLang's multimodal configs import) load against CPU torch.
"""

from __future__ import annotations

import torch

_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
_library: torch.library.Library | None = None


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression; boxes [N, 4] as (x1, y1, x2, y2); kept indices by score, descending."""
    if boxes.is_quantized:  # qnms
        boxes, scores = boxes.dequantize(), scores.dequantize()
    order = torch.argsort(scores, descending=True, stable=True)
    boxes = boxes.to(torch.float64)
    areas = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for rank, i in enumerate(order.tolist()):
        if suppressed[rank]:
            continue
        keep.append(i)
        rest = order[rank + 1:]
        lt = torch.maximum(boxes[i, :2], boxes[rest, :2])
        rb = torch.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=1)
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rank + 1:] |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=scores.device)


def _has_op(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def register() -> None:
    """Define the two ops unless a working torchvision library already did."""
    global _library
    if _library is not None or _has_op("nms"):
        return
    _library = torch.library.Library("torchvision", "DEF")
    for name in ("nms", "qnms"):
        _library.define(name + _SCHEMA)
        _library.impl(name, nms, "CompositeExplicitAutograd")
