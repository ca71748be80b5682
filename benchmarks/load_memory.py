"""Peak RSS and wall time of loading packed mixed SmolLM2 vs its bf16 folder, each in a fresh process.

    python benchmarks/load_memory.py [--plan configs/smollm2_mixed.yaml] [--repeats 3]

Prints a table (medians over repeats). The packed folder is built once into the cache.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

# VmHWM is this process's own peak; ru_maxrss would carry the parent's peak across fork + exec.
PEAK = r"""
def vm_hwm_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

CHILD = PEAK + r"""
import json, sys, time
import torch
t0 = time.perf_counter()
from mpq_serving.loaders.hf_model import load_model
model = load_model(sys.argv[1], dtype=torch.bfloat16)
with torch.inference_mode():
    model(torch.tensor([[1, 2, 3]]))
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_mib": vm_hwm_mib()}))
"""

BASELINE = PEAK + r"""
import json
import torch
import transformers
print(json.dumps({"peak_rss_mib": vm_hwm_mib()}))
"""


def measure(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", default="configs/smollm2_mixed.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from mpq_serving.loaders.pack import pack
    from mpq_serving.models.smollm2 import prepare_smollm2
    from mpq_serving.plan import load_plan

    dense = prepare_smollm2()
    packed = dense.parent / f"packed-{Path(args.plan).stem}"
    if not (packed / "config.json").is_file():
        pack(load_plan(args.plan), packed, dense)
    size = lambda d: sum(f.stat().st_size for f in Path(d).glob("*.safetensors")) / 2**20
    floor = measure(BASELINE)["peak_rss_mib"]
    table = Table(title=f"Loading SmolLM2-135M (median of {args.repeats}; python+torch+transformers import floor {floor:.0f} MiB)")
    for col in ("folder", "safetensors MiB", "load+1 forward s", "peak RSS MiB", "RSS above floor MiB"):
        table.add_column(col, justify="right" if col != "folder" else "left")
    for label, folder in (("bf16", dense), (f"packed {Path(args.plan).stem}", packed)):
        runs = [measure(CHILD, str(folder)) for _ in range(args.repeats)]
        secs = statistics.median(r["seconds"] for r in runs)
        rss = statistics.median(r["peak_rss_mib"] for r in runs)
        table.add_row(label, f"{size(folder):.1f}", f"{secs:.2f}", f"{rss:.0f}", f"{rss - floor:.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
