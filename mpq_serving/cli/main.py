"""`mpq`: the command line. Thin: parse, call the library, print.

`main` is the console script: an error reaches the user as one line naming the culprit (the library's
own `MPQError` messages, or the exception's type and text); `mpq --debug ...` shows the traceback.
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from ..errors import MPQError
from . import bench_cmd, eval_cmd, model_cmd, pack_cmd, plan_cmd, quantize_cmd, report_cmd, serve_cmd
from .common import err

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

_debug = False


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="Show the traceback of an error.")) -> None:
    global _debug
    _debug = debug


def main() -> None:
    """Run `mpq`; errors as one line (exit 1), tracebacks only with --debug."""
    try:
        app()
    except MPQError as e:
        if _debug:
            raise
        err.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - the user gets one line, the developer --debug
        if _debug:
            raise
        err.print(f"[bold red]error:[/] {type(e).__name__}: {escape(str(e))} (run `mpq --debug ...` for the traceback)",
                  soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
