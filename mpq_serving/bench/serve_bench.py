"""`mpq bench serve`: the load generator over several served models, a table and a plot.

Targets are either running servers (`--url`) or things `mpq serve` can serve (a model folder or demo
name, a packed folder, a plan file with `--model`), started one at a time and stopped afterwards.
Prompts are consecutive slices of the bundled Wikipedia evaluation text, so every engine gets the same
requests; `ignore_eos` keeps every answer at `max_tokens` (all three engines accept it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..eval.text import load_text
from .load_gen import LevelResult, run_level, served_model
from .servers import launched_server


@dataclass(frozen=True)
class ServeBenchConfig:
    concurrencies: tuple[int, ...] = (1, 2, 4, 8)
    min_requests: int = 8  # per level; at least 2 x concurrency
    max_tokens: int = 64
    prompt_words: int = 64


def make_prompts(count: int, words: int) -> list[str]:
    text = load_text("wiki_eval").split()
    return [" ".join(text[i * words:(i + 1) * words]) for i in range(count)]


def bench_url(url: str, label: str | None, config: ServeBenchConfig,
              on_level: Callable[[LevelResult], None] | None = None) -> list[LevelResult]:
    """Every concurrency level against one running server; `label` defaults to the served model's name."""
    prompts = make_prompts(64, config.prompt_words)

    async def run() -> list[LevelResult]:
        nonlocal label
        model = await served_model(url)
        label = label or model
        await run_level(url, model, label, 1, prompts, 1, 4, {"ignore_eos": True})  # warm-up, not reported
        levels = []
        for c in config.concurrencies:
            level = await run_level(url, model, label, c, prompts, max(config.min_requests, 2 * c),
                                    config.max_tokens, {"ignore_eos": True})
            levels.append(level)
            if on_level:
                on_level(level)
        return levels

    return asyncio.run(run())


def bench_targets(
    targets: Sequence[str], engine: str, config: ServeBenchConfig, log_dir: Path, base_model: str | None = None,
    on_level: Callable[[LevelResult], None] | None = None, engine_args: Sequence[str] = (),
) -> list[LevelResult]:
    """Serve each target in turn with `mpq serve --engine`, benchmark it, stop it."""
    results = []
    for target in targets:
        label = f"{engine}:{Path(target).stem}"
        with launched_server(target, engine, log_dir, base_model, engine_args=engine_args) as url:
            results += bench_url(url, label, config, on_level)
    return results


def plot(results: Sequence[LevelResult], path: Path) -> None:
    """Output tokens/s, TTFT p50 and ITL p50 against concurrency, one line per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = (("output tokens/s", lambda r: r.output_tokens_per_s), ("TTFT p50 (ms)", lambda r: r.ttft_ms["p50"]),
              ("inter-token latency p50 (ms)", lambda r: r.itl_ms["p50"]))
    for target in dict.fromkeys(r.target for r in results):
        rows = [r for r in results if r.target == target]
        for ax, (title, value) in zip(axes, panels, strict=True):
            ax.plot([r.concurrency for r in rows], [value(r) for r in rows], marker="o", label=target)
    levels = sorted({r.concurrency for r in results})
    for ax, (title, _) in zip(axes, panels, strict=True):
        ax.set_title(title)
        ax.set_xlabel("concurrent requests")
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
