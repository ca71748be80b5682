"""Peak RSS of `mpq quantize --method gptq` on SmolLM2-135M, in a fresh process per configuration.

    python benchmarks/quantize_memory.py [--nsamples 128] [--seq-len 512] [--layers 30] [--method gptq]

The child runs `quantize_model` + `write_checkpoint` (what `mpq quantize` does) and reports its own
VmHWM.  Memory is bounded by design: the float32 model, one layer's calibration activations
(nsamples × seq_len × hidden × 4 bytes, in and out) and one stage's Hessians.  `--layers N` quantizes a
copy of SmolLM2 cut to its first N decoder layers (real weights): every layer holds the same
activations, so the peak differs from the full model's only by the float32 weights of the layers cut
(printed as the full-model estimate), and it runs in N/30 of the time on a busy CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from mpq_serving.plan import plan_from_dict
from mpq_serving.quantize import QuantizeConfig, quantize_model, write_checkpoint
model_dir, out, method, nsamples, seq_len = sys.argv[1:6]
plan = plan_from_dict({"default": {"wq": "gptq_int4", "group_size": 64},
                       "overrides": [{"pattern": "down_proj", "wq": "gptq_int4", "group_size": 128}]})
config = QuantizeConfig(method=method, nsamples=int(nsamples), seq_len=int(seq_len))
write_checkpoint(quantize_model(model_dir, plan, config, progress=False), plan, out)
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_mib": peak}))
"""


def truncated_copy(model_dir: Path, layers: int, out: Path) -> tuple[Path, int]:
    """SmolLM2 cut to its first `layers` decoder layers; returns the folder and the bytes of float32
    weights the cut layers would have added."""
    from safetensors.torch import load_file, save_file

    config = json.loads((model_dir / "config.json").read_text())
    total = config["num_hidden_layers"]
    tensors = load_file(str(model_dir / "model.safetensors"))
    keep, cut_bytes = {}, 0
    for name, t in tensors.items():
        parts = name.split(".")
        if len(parts) > 2 and parts[1] == "layers" and int(parts[2]) >= layers:
            cut_bytes += t.numel() * 4
            continue
        keep[name] = t
    out.mkdir(parents=True)
    save_file(keep, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps({**config, "num_hidden_layers": layers}))
    for f in model_dir.iterdir():
        if f.name not in ("config.json", "model.safetensors") and f.is_file():
            shutil.copy2(f, out / f.name)
    return out, cut_bytes if layers < total else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--method", default="gptq")
    args = parser.parse_args()
    from mpq_serving.models.smollm2 import prepare_smollm2

    dense = prepare_smollm2()
    with tempfile.TemporaryDirectory(prefix="mpq-quantize-memory-") as tmp:
        folder, cut = truncated_copy(dense, args.layers, Path(tmp) / "model")
        res = subprocess.run([sys.executable, "-c", CHILD, str(folder), f"{tmp}/out", args.method,
                              str(args.nsamples), str(args.seq_len)], check=True, capture_output=True, text=True)
        run = json.loads(res.stdout.strip().splitlines()[-1])
    activations = 2 * args.nsamples * args.seq_len * 576 * 4 / 2**20
    table = Table(title=f"mpq quantize --method {args.method} on SmolLM2-135M (int4 g64 / g128 down_proj)")
    for col in ("nsamples x seq_len", "layers run", "activations in+out MiB", "peak RSS MiB",
                "full-model peak estimate MiB", "seconds"):
        table.add_column(col, justify="right")
    table.add_row(f"{args.nsamples} x {args.seq_len}", str(args.layers), f"{activations:.0f}",
                  f"{run['peak_rss_mib']:.0f}", f"{run['peak_rss_mib'] + cut / 2**20:.0f}", f"{run['seconds']:.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
