"""Wall time of the Alpha-Hill analysis of every linear weight of a model (the issue asks < 60 s for SmolLM2).

    python benchmarks/alpha_hill_speed.py [--model smollm2] [--methods gram,svd] [--workers N]

Prints a table: method, workers, layers, seconds, α range; the default route (`gram`: eigvalsh of the
float64 Gram matrix, one layer per thread) is the one `mpq plan alpha-hill` uses.  Timings include
reading each tensor from the safetensors file.  On a shared CPU, `--workers 1` vs the default shows
the gain of running layers side by side.
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from mpq_serving.cli.common import resolve_model
from mpq_serving.plan.model_weights import linear_weights
from mpq_serving.search.alpha_hill import model_alphas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="model folder or demo name")
    parser.add_argument("--methods", default="gram,svd", help="eigenvalue routes to time, comma-separated")
    parser.add_argument("--workers", type=int, default=None, help="threads (default: torch's thread count)")
    args = parser.parse_args()

    folder = resolve_model(args.model)
    weights = linear_weights(folder)
    table = Table("method", "workers", "layers", "seconds", "alpha min", "alpha max", "limit",
                  title=f"Alpha-Hill of every linear weight of {folder.name} ({torch.get_num_threads()} torch threads)")
    for method in args.methods.split(","):
        start = time.perf_counter()
        alphas = model_alphas(folder, weights, method=method, workers=args.workers, progress=False)
        seconds = time.perf_counter() - start
        values = [a.alpha for a in alphas.values()]
        table.add_row(method, str(args.workers or torch.get_num_threads()), str(len(alphas)), f"{seconds:.1f}",
                      f"{min(values):.3f}", f"{max(values):.3f}", "ok (< 60 s)" if seconds < 60 else "OVER 60 s")
    Console().print(table)


if __name__ == "__main__":
    main()
