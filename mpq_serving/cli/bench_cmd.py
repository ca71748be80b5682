"""`mpq bench kernels` (kernel roofline per format and batch) and `mpq bench serve` (OpenAI load generator)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .common import fail

app = typer.Typer(no_args_is_help=True, help="Kernel roofline and serving throughput benchmarks.")
out = Console(highlight=False, width=180)  # wide tables stay one row per line in logs and pipes


def _csv(text: str, cast=str) -> list:
    return [cast(part.strip()) for part in text.split(",") if part.strip()]


@app.command("kernels")
def kernels(
    formats: str = typer.Option(
        "gptq_int4,gptq_int4_act_order,awq_int4,fp8,fp8_w8a8,int8,int8_w8a8,mxfp4,mxfp8", "--formats",
        help="Comma-separated benchmark formats (see mpq_serving/bench/kernel_bench.py SPECS).",
    ),
    batches: str = typer.Option("1,4,16,64,256", "--batches", help="Comma-separated batch sizes (rows of x)."),
    device: str = typer.Option("auto", "--device", help="cuda, cpu, or auto (cuda when available)."),
    small: bool | None = typer.Option(
        None, "--small/--large",
        help="CPU-sized shapes (512x512, 512x1792, 1792x512, MoE 8x top-2) instead of 4096x4096, 4096x14336, "
        "14336x4096 and MoE 128x top-8 2048x768; default: small on CPU, large on CUDA.",
    ),
    moe: bool = typer.Option(True, "--moe/--no-moe", help="Also time the mixed-format MoE layer."),
    json_out: Path = typer.Option(Path("out/kernel_bench.json"), "--json", help="Where to write the rows as JSON."),
    markdown_out: Path | None = typer.Option(None, "--markdown", help="Also write the table as a markdown results file."),
) -> None:
    """Time each format's kernel per batch size: µs, GB/s, % of measured copy bandwidth, speed-up over bf16."""
    import torch

    import sys

    from ..bench.kernel_bench import rows_as_json, rows_as_markdown, run_kernel_bench

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    if dev.type == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: no CUDA device is visible")
    small = dev.type != "cuda" if small is None else small
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"

    def progress(row) -> None:
        out.print(f"  {row.shape:>28} {row.format:>20} b={row.batch:<4} {row.time_us:10.1f} µs  {row.gbps:7.1f} GB/s",
                  highlight=False)

    try:
        peak, rows = run_kernel_bench(
            device=dev, small=small, formats=_csv(formats), batches=_csv(batches, int), moe=moe, progress=progress
        )
    except ValueError as e:
        fail(str(e))
    table = Table(title=f"Kernels on {name}: peak copy bandwidth {peak / 1e9:.1f} GB/s (measured)")
    for col in ("shape (K x N)", "format", "batch", "kernel", "µs", "GB/s", "% peak", "× roofline", "× bf16"):
        table.add_column(col, justify="right" if col not in ("format", "kernel", "shape (K x N)") else "left")
    for r in rows:
        table.add_row(r.shape, r.format, str(r.batch), r.kernel, f"{r.time_us:.1f}", f"{r.gbps:.1f}",
                      f"{r.pct_peak:.0f}", f"{r.x_roofline:.2f}", f"{r.speedup_vs_bf16:.2f}")
    out.print(table)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(rows_as_json(name, peak, rows), indent=1))
    out.print(f"wrote {json_out}")
    if markdown_out:
        markdown_out.parent.mkdir(parents=True, exist_ok=True)
        markdown_out.write_text(rows_as_markdown(name, peak, rows, "mpq " + " ".join(sys.argv[1:])))
        out.print(f"wrote {markdown_out}")


@app.command("serve")
def serve(
    targets: list[str] = typer.Argument(
        None, help="What `mpq serve` serves, one at a time: model folders / demo names, packed folders, plan files."
    ),
    engine: str = typer.Option("hf", "--engine", help="vllm, sglang or hf: the engine `mpq serve` starts."),
    model: str | None = typer.Option(None, "--model", help="Base model (folder or demo name) for plan targets."),
    url: list[str] = typer.Option(
        None, "--url", help="An already running OpenAI server (…/v1), labelled by its model name; repeatable."
    ),
    concurrency: str = typer.Option("1,2,4,8", "--concurrency", help="Comma-separated concurrency levels."),
    requests: int = typer.Option(8, "--requests", help="Requests per level (at least 2 x concurrency)."),
    max_tokens: int = typer.Option(64, "--max-tokens", help="Output tokens per request (ignore_eos)."),
    prompt_words: int = typer.Option(64, "--prompt-words", help="Words of Wikipedia text per prompt."),
    out_dir: Path = typer.Option(Path("out/bench-serve"), "--out", help="Folder for the JSON, the plot and server logs."),
    engine_args: str = typer.Option(
        "", "--engine-args", help="Arguments for the engine's own server, one string (e.g. '--max-num-seqs 8')."
    ),
) -> None:
    """Load-test OpenAI servers: requests/s, output tokens/s, TTFT and inter-token latency p50/p90/p99."""
    from ..bench.serve_bench import ServeBenchConfig, bench_targets, bench_url, plot
    from ..errors import MPQError

    if engine not in ("vllm", "sglang", "hf"):
        fail(f"--engine {engine!r}: choose vllm, sglang or hf")
    if not targets and not url:
        fail("nothing to benchmark: give targets to serve, or --url of a running server")
    config = ServeBenchConfig(tuple(_csv(concurrency, int)), requests, max_tokens, prompt_words)

    def progress(level) -> None:
        out.print(f"  {level.target:>32} c={level.concurrency:<3} {level.output_tokens_per_s:8.1f} tok/s  "
                  f"TTFT p50 {level.ttft_ms['p50']:8.1f} ms  ITL p50 {level.itl_ms['p50']:7.1f} ms  failed {level.failed}")

    results = []
    try:
        for u in url or []:
            results += bench_url(u.rstrip("/"), None, config, progress)
        if targets:
            results += bench_targets(targets, engine, config, out_dir / "logs", model, progress, shlex.split(engine_args))
    except MPQError as e:
        fail(str(e))
    table = Table(title=f"Serving benchmark ({engine}; {max_tokens} output tokens per request)")
    for col in ("target", "conc.", "req/s", "out tok/s", "TTFT p50/p90/p99 ms", "ITL p50/p90/p99 ms", "failed"):
        table.add_column(col, justify="left" if col == "target" else "right")
    for r in results:
        table.add_row(
            r.target, str(r.concurrency), f"{r.requests_per_s:.2f}", f"{r.output_tokens_per_s:.1f}",
            "/".join(f"{r.ttft_ms[p]:.0f}" for p in ("p50", "p90", "p99")),
            "/".join(f"{r.itl_ms[p]:.1f}" for p in ("p50", "p90", "p99")), f"{r.failed}/{r.requests}",
        )
    out.print(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "serve_bench.json").write_text(json.dumps([r.as_dict() for r in results], indent=1))
    plot(results, out_dir / "serve_bench.png")
    out.print(f"wrote {out_dir / 'serve_bench.json'} and {out_dir / 'serve_bench.png'}")
    failed = [r for r in results if r.failed]
    if failed:
        fail(f"{sum(r.failed for r in failed)} requests failed, e.g. {failed[0].first_error}")
