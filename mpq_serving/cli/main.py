"""`mpq`: the command line. Thin: parse, call the library, print."""

from __future__ import annotations

import typer

from . import bench_cmd, eval_cmd, model_cmd, pack_cmd, plan_cmd, quantize_cmd, report_cmd, serve_cmd

app = typer.Typer(no_args_is_help=True, help="Mixed-precision quantization for LLM serving.", pretty_exceptions_show_locals=False)
app.add_typer(plan_cmd.app, name="plan", help="Validate, inspect, convert and search mixed-precision plans.")
app.add_typer(model_cmd.app, name="model", help="Prepare demo models (SmolLM2, upcycled MoE, tiny random).")
app.add_typer(eval_cmd.app, name="eval", help="Evaluate a model or a mixed plan (perplexity).")
app.command("pack")(pack_cmd.pack)
app.command("quantize")(quantize_cmd.quantize)
app.command("serve")(serve_cmd.serve)
app.add_typer(bench_cmd.app, name="bench", help="Kernel roofline and serving throughput benchmarks.")
report_cmd.register(app)
from . import export_cmd  # noqa: E402
app.add_typer(export_cmd.app, name="export", help="Export a mixed model: GGUF for llama.cpp, compressed-tensors for stock vLLM / SGLang.")

if __name__ == "__main__":
    app()
