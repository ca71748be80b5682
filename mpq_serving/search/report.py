"""`mpq report`: plans side by side — average bits, weight memory, perplexity — with two charts.

Every plan is loaded on the HF path (`load_model`) and scored by the same `perplexity` as `mpq eval
ppl`, on the same text, window and token count, so the numbers are comparable across strategies.
Charts: perplexity against average bits (one point per plan, coloured by its `summary.strategy`),
and per plan a format map (layers × projections, experts as their own columns).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..outputs import check_output_folder, output_folder
from ..plan import Plan, SpecFields, is_protected, load_plan, resolve
from ..plan.bits import average_bits
from ..plan.model_weights import LinearWeight, linear_weights

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")
BASELINE = "bf16 (no plan)"

REPORT_KIND = "report"  # the output kind (see outputs.py) of `mpq report`


@dataclass
class PlanResult:
    """One row of the report."""

    label: str
    strategy: str
    plan: str | None
    avg_bits: float
    weight_memory_mib: float
    ppl: float
    n_tokens: int
    search_seconds: float | None
    format_counts: dict[str, int] = field(default_factory=dict)


def strategy_of(summary: dict[str, Any], formats: dict[str, str]) -> str:
    """`summary.strategy` when a search wrote the plan; else `uniform` when every weight has one format
    (protected bf16 layers aside; group sizes may differ with the shapes), `manual` otherwise."""
    if summary.get("strategy"):
        return str(summary["strategy"])
    kinds = {f.split()[0] for n, f in formats.items() if not is_protected(n)}  # "awq_int4 g64" -> awq_int4
    return "uniform" if len(kinds) == 1 else "manual"


def evaluate(plan_path: Path | None, model_dir: Path, tokenizer, text: str, seq_len: int,
             max_tokens: int | None, label: str | None = None, progress: bool = True) -> PlanResult:
    """Load the model under the plan (the bf16 model without one), measure perplexity and memory."""
    from ..eval.memory import weight_memory
    from ..eval.perplexity import perplexity
    from ..loaders.hf_model import load_model

    weights = linear_weights(model_dir)
    plan = load_plan(plan_path) if plan_path is not None else Plan(default=SpecFields(wq="bf16"))
    resolved = resolve(plan, [w.name for w in weights])
    bits = average_bits(weights, resolved).avg_bits
    formats = {n: r.spec.describe() for n, r in resolved.items()}
    if plan_path is None:
        model, label, strategy = load_model(model_dir), BASELINE, "bf16"
    else:
        model = load_model(plan, model_dir, progress=progress)
        label, strategy = label or plan_path.stem, strategy_of(plan.summary, formats)
    summary = plan.summary
    result = perplexity(model, tokenizer, text, seq_len=seq_len, max_tokens=max_tokens, progress=progress)
    memory = weight_memory(model).total_bytes / 2**20
    counts: dict[str, int] = {}
    for fmt in formats.values():
        counts[fmt] = counts.get(fmt, 0) + 1
    seconds = summary.get("search_seconds")
    return PlanResult(label, strategy, None if plan_path is None else str(plan_path), round(bits, 4),
                      round(memory, 2), round(result.ppl, 4), result.n_tokens,
                      None if seconds is None else float(seconds), dict(sorted(counts.items())))


def layer_grid(weights: list[LinearWeight],
               formats: dict[str, str]) -> tuple[list[str], list[str], list[list[str | None]]]:
    """Rows (layers, then `other` for weights outside layers), columns (projection names, experts
    included, in checkpoint order), and the format in each cell (None where a layer lacks it)."""
    rows: dict[str, dict[str, str]] = {}
    columns: dict[str, tuple] = {}
    for w in weights:
        m = _LAYER.search(w.name)
        row, column = (f"layer {int(m[1])}", _short(m[2])) if m else ("other", w.name)
        rows.setdefault(row, {})[column] = formats[w.name]
        columns.setdefault(column, _column_order(w.category, column))
    ordered = sorted(rows, key=lambda r: (r == "other", int(r.split()[1]) if r != "other" else 0))
    names = sorted(columns, key=columns.__getitem__)
    return ordered, names, [[rows[r].get(c) for c in names] for r in ordered]


_CATEGORY_ORDER = {"attention": 0, "mlp": 1, "router": 2, "expert": 3}
_PROJ_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "w1", "w3", "w2")


def _column_order(category: str, column: str) -> tuple:
    """Attention, MLP, router, experts (by index), the rest; projections in the order they compute."""
    expert, _, proj = column.rpartition(".") if column.startswith("e") and "." in column else ("", "", column)
    proj_rank = _PROJ_ORDER.index(proj) if proj in _PROJ_ORDER else len(_PROJ_ORDER)
    return (_CATEGORY_ORDER.get(category, 4), int(expert[1:]) if expert else -1, proj_rank, column)


def _short(rest: str) -> str:
    """`self_attn.q_proj` -> `q_proj`; `block_sparse_moe.experts.3.w1` -> `e3.w1`."""
    m = re.search(r"experts\.(\d+)\.(\w+)$", rest)
    if m:
        return f"e{m[1]}.{m[2]}"
    return rest.rsplit(".", 1)[-1] if rest.count(".") == 1 else rest


def plot_ppl_vs_bits(results: list[PlanResult], path: Path) -> Path:
    """One point per plan at (avg bits, PPL), one colour and marker per strategy, each point labelled."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    strategies = sorted({r.strategy for r in results})
    markers = "osD^vP*Xh<>"
    for i, strategy in enumerate(strategies):
        rows = [r for r in results if r.strategy == strategy]
        ax.scatter([r.avg_bits for r in rows], [r.ppl for r in rows], label=strategy, marker=markers[i % len(markers)],
                   s=60, zorder=3)
        for r in rows:
            ax.annotate(r.label, (r.avg_bits, r.ppl), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xlabel("average bits per linear weight (scales and zeros included)")
    ax.set_ylabel("perplexity")
    ax.set_title("Perplexity vs average bits")
    ax.grid(True, alpha=0.3)
    ax.legend(title="strategy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_format_map(weights: list[LinearWeight], formats: dict[str, str], title: str, path: Path) -> Path:
    """A layers × projections grid, each cell coloured by the weight's format."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    plt = _pyplot()
    rows, columns, cells = layer_grid(weights, formats)
    names = sorted({c for row in cells for c in row if c is not None})
    code = {name: i for i, name in enumerate(names)}
    grid = [[code[c] if c is not None else float("nan") for c in row] for row in cells]
    palette = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    colors = [palette(i) for i in range(len(names))]
    fig, ax = plt.subplots(figsize=(min(2 + 0.35 * len(columns), 24), min(1.5 + 0.22 * len(rows), 30)))
    ax.imshow(grid, cmap=ListedColormap(colors), vmin=-0.5, vmax=len(names) - 0.5, aspect="auto",
              interpolation="nearest")
    ax.set_xticks(range(len(columns)), columns, rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.legend(handles=[Patch(color=colors[i], label=n) for n, i in code.items()], loc="upper left",
              bbox_to_anchor=(1.01, 1), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_report(results: list[PlanResult], model_dir: Path, out_dir: Path, settings: dict[str, Any],
                 overwrite: bool = False) -> list[Path]:
    """report.md, report.json, ppl_vs_bits.png and one format map per plan; the paths written.

    `out_dir` must be new or empty, or (with `overwrite`) a previous report."""
    out_dir = Path(out_dir)
    with output_folder(out_dir, REPORT_KIND, overwrite=overwrite) as tmp:
        written = _write_report_files(results, model_dir, tmp, settings)
    return [out_dir / p.name for p in written]


def _write_report_files(results: list[PlanResult], model_dir: Path, out_dir: Path, settings: dict[str, Any]) -> list[Path]:
    weights = linear_weights(model_dir)
    written = [plot_ppl_vs_bits(results, out_dir / "ppl_vs_bits.png")]
    maps: dict[str, Path] = {}
    for r in results:
        if r.plan is None:
            continue
        resolved = resolve(load_plan(r.plan), [w.name for w in weights])
        formats = {n: res.spec.describe() for n, res in resolved.items()}
        path = out_dir / f"format_map_{_slug(r.label)}.png"
        maps[r.label] = plot_format_map(weights, formats, f"{r.label} ({r.strategy}, {r.avg_bits:.3f} bits, "
                                        f"PPL {r.ppl:.3f})", path)
        written.append(path)
    data = {"model": str(model_dir), **settings, "plans": [asdict(r) for r in results]}
    (out_dir / "report.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(_markdown(results, model_dir, settings, maps), encoding="utf-8")
    return [out_dir / "report.md", out_dir / "report.json", *written]


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label)


def _markdown(results: list[PlanResult], model_dir: Path, settings: dict[str, Any], maps: dict[str, Path]) -> str:
    lines = [f"# Plan report: {model_dir.name}", "",
             f"Perplexity on `{settings['text']}`, windows of {settings['seq_len']} tokens"
             + (f", first {settings['max_tokens']} tokens" if settings.get("max_tokens") else "")
             + "; average bits over every linear weight of the checkpoint, scales and zeros included.", "",
             "| plan | strategy | avg bits | weight memory (MiB) | PPL | tokens | search (s) | formats |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in sorted(results, key=lambda r: (r.avg_bits, r.ppl)):
        seconds = "" if r.search_seconds is None else f"{r.search_seconds:.1f}"
        counts = ", ".join(f"{n} {f}" for f, n in r.format_counts.items())
        lines.append(f"| {r.label} | {r.strategy} | {r.avg_bits:.3f} | {r.weight_memory_mib:.1f} | {r.ppl:.3f} | "
                     f"{r.n_tokens} | {seconds} | {counts} |")
    lines += ["", "![perplexity vs average bits](ppl_vs_bits.png)", ""]
    for label, path in maps.items():
        lines += [f"## {label}", "", f"![format map of {label}]({path.name})", ""]
    return "\n".join(lines)


def run_report(plans: list[Path], model_dir: Path, out_dir: Path, tokenizer, text: str = "wiki_eval",
               seq_len: int = 512, max_tokens: int | None = None, baseline: bool = True,
               progress: bool = True, on_result: Callable[[PlanResult], None] | None = None,
               overwrite: bool = False) -> list[Path]:
    """Evaluate every plan (and the bf16 model), then write the report files (`out_dir` checked first)."""
    check_output_folder(out_dir, REPORT_KIND, overwrite=overwrite)
    from ..eval.text import load_text

    corpus = load_text(text)
    stems = [p.stem for p in plans]
    labels = [p.stem if stems.count(p.stem) == 1 else f"{p.parent.name}/{p.stem}" for p in plans]
    results = []
    for plan, label in ([(None, None)] if baseline else []) + list(zip(plans, labels, strict=True)):
        result = evaluate(plan, model_dir, tokenizer, corpus, seq_len, max_tokens, label, progress)
        results.append(result)
        if on_result is not None:
            on_result(result)
    settings = {"text": text, "seq_len": seq_len, "max_tokens": max_tokens}
    return write_report(results, model_dir, out_dir, settings, overwrite=overwrite)
