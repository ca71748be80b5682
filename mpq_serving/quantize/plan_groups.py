"""Seed 003's layer groups (the mutual-information search) carried through quantization.

`mpq plan mutual-info` clusters layers by mutual information and gives each group one format; its plan
keeps the groups in `summary.groups` (`search/mutual_info.py`).  Quantizing that plan with GPTQ
compensates every member layer's error on its own calibration Hessian in the group's format; this
module tags each layer's record with its group and totals GPTQ's error estimate per group, so the
group view the search made is kept next to how its layers were made.
"""

from __future__ import annotations

from typing import Any

from ..plan import Plan


def group_records(plan: Plan, records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per group of the plan's summary: its format, members, methods used and summed GPTQ loss;
    tags `records[name]["mi_group"]`.  Empty when the plan has no groups."""
    out = []
    for group in plan.summary.get("groups") or []:
        members = [n for n in group.get("layers", []) if n in records]
        methods: dict[str, int] = {}
        for name in members:
            records[name]["mi_group"] = group["group"]
            method = records[name].get("method", "?")
            methods[method] = methods.get(method, 0) + 1
        out.append({"group": group["group"], "format": group.get("format"), "layers": len(members),
                    "methods": methods, "loss": sum(records[n].get("loss", 0.0) for n in members)})
    return out
