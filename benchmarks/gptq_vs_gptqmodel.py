"""GPTQ calibration side by side: `mpq quantize --method gptq` against GPTQModel 7.6 on SmolLM2-135M.

    bash benchmarks/tools/make_tool_venv.sh gptqmodel /tmp/venv-gptqmodel
    python benchmarks/gptq_vs_gptqmodel.py --gptqmodel-python /tmp/venv-gptqmodel/bin/python \
        [--nsamples 128 --seq-len 512 --repeats 2]

Same everything: the same calibration windows (drawn once by `calibration_tokens`, the function
`mpq quantize` uses, and handed to GPTQModel as token ids), int4 symmetric g64 everywhere (SmolLM2's
hidden 576 is not a multiple of 128), no act-order, damping 0.01, batch 1 for GPTQModel (its default),
the same thread count for both (OMP / MKL / torch threads).  Runs are interleaved A B A B; the table
gives medians of whole-process wall time and of the quantize step alone, and their ratio.
Both outputs are then evaluated by `mpq eval ppl` (GPTQModel's folder through our GPTQ reader) on
wiki_eval.  Writes benchmarks/results/gptq-vs-gptqmodel-smollm2.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from safetensors.torch import save_file
from transformers import AutoTokenizer

from mpq_serving.models.smollm2 import prepare_smollm2
from mpq_serving.search.common import calibration_tokens

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
WORKER = HERE / "tools" / "gptqmodel_quantize.py"
MPQ = Path(sys.executable).with_name("mpq")


def run_timed(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, float | None, str]:
    """Whole-process wall seconds, the quantize step's own seconds where the command prints them, output.
    `cwd`: GPTQModel writes a logs/ folder into its working directory; keep it in the scratch folder."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - start
    out = proc.stdout + proc.stderr
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:3])} … failed ({proc.returncode}):\n{out[-3000:]}")
    step = re.search(r"quantize_seconds: ([0-9.]+)", out)
    return wall, float(step.group(1)) if step else None, out


def ppl(folder: Path, env: dict[str, str], max_tokens: int | None) -> float:
    cmd = [str(MPQ), "eval", "ppl", str(folder)] + (["--max-tokens", str(max_tokens)] if max_tokens else [])
    _, _, out = run_timed(cmd, env)
    return float(re.findall(r"ppl: ([0-9.]+)", out)[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gptqmodel-python", required=True, help="python of a venv with gptqmodel 7.6")
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ppl-max-tokens", type=int, default=None)
    parser.add_argument("--name", default="gptq-vs-gptqmodel-smollm2")
    args = parser.parse_args()

    model = prepare_smollm2()
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "GPTQMODEL_CPU_WORKERS": threads,
           "TOKENIZERS_PARALLELISM": "false"}
    work = Path(tempfile.mkdtemp(prefix="gptq-vs-gptqmodel-"))
    windows = calibration_tokens(AutoTokenizer.from_pretrained(model), args.nsamples, args.seq_len)
    save_file({"input_ids": windows.contiguous()}, str(work / "calib.safetensors"))
    plan = work / "plan.yaml"
    plan.write_text(yaml.safe_dump({"default": {"wq": "gptq_int4", "group_size": 64}}))

    def ours(out: Path) -> list[str]:
        return [str(MPQ), "quantize", str(model), "--plan", str(plan), "--method", "gptq", "--nsamples",
                str(args.nsamples), "--seq-len", str(args.seq_len), "--damp", "0.01", "--layout", "gptq",
                "-o", str(out), "--overwrite"]

    def theirs(out: Path) -> list[str]:
        return [args.gptqmodel_python, str(WORKER), str(model), str(work / "calib.safetensors"), str(out),
                "--bits", "4", "--group-size", "64", "--damp", "0.01"]

    runs: dict[str, list[tuple[float, float | None]]] = {"mpq": [], "gptqmodel": []}
    for i in range(args.repeats):  # interleaved: A B A B
        for side, cmd in (("mpq", ours), ("gptqmodel", theirs)):
            wall, step, _ = run_timed(cmd(work / f"{side}-{i}"), env, cwd=work)
            runs[side].append((wall, step))
            print(f"run {i} {side}: wall {wall:.1f} s" + (f", quantize {step:.1f} s" if step else ""), flush=True)

    perplexities = {side: ppl(work / f"{side}-0", env, args.ppl_max_tokens) for side in runs}
    perplexities["bf16"] = ppl(model, env, args.ppl_max_tokens)
    med = {side: statistics.median(w for w, _ in r) for side, r in runs.items()}
    step_med = {side: statistics.median(s for _, s in r) if all(s for _, s in r) else None for side, r in runs.items()}
    result = {
        "settings": {"model": "SmolLM2-135M-Instruct", "nsamples": args.nsamples, "seq_len": args.seq_len,
                     "format": "int4 sym g64, no act-order, damp 0.01", "threads": args.threads,
                     "repeats": args.repeats, "gptqmodel": "7.6.0"},
        "wall_seconds": {side: [round(w, 2) for w, _ in r] for side, r in runs.items()},
        "quantize_seconds": {side: [s and round(s, 2) for _, s in r] for side, r in runs.items()},
        "median_wall_seconds": med, "median_wall_ratio_mpq_over_gptqmodel": med["mpq"] / med["gptqmodel"],
        "ppl_wiki_eval": perplexities,
        "ppl_ratio_mpq_over_gptqmodel": perplexities["mpq"] / perplexities["gptqmodel"],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# GPTQ on SmolLM2-135M: mpq-serving vs GPTQModel 7.6 ({args.nsamples} x {args.seq_len} tokens)",
        "",
        f"Regenerate: `python benchmarks/gptq_vs_gptqmodel.py --gptqmodel-python PY --nsamples {args.nsamples} "
        f"--seq-len {args.seq_len} --repeats {args.repeats}`. Same calibration windows, int4 sym g64, "
        f"damp 0.01, no act-order, {args.threads} threads each, runs interleaved A B A B; medians. "
        "`mpq` time is the whole `mpq quantize` process (load, calibrate, pack, write); GPTQModel's the whole "
        "worker process, and its quantize step alone.",
        "",
        "| | wall s (median) | quantize step s | PPL wiki_eval |",
        "|---|---:|---:|---:|",
        f"| mpq quantize --method gptq | {med['mpq']:.1f} | – | {perplexities['mpq']:.3f} |",
        f"| GPTQModel 7.6 | {med['gptqmodel']:.1f} | "
        f"{step_med['gptqmodel'] and format(step_med['gptqmodel'], '.1f')} | {perplexities['gptqmodel']:.3f} |",
        f"| bf16 | | | {perplexities['bf16']:.3f} |",
        "",
        f"Wall ratio mpq / GPTQModel: **{result['median_wall_ratio_mpq_over_gptqmodel']:.2f}**; "
        f"PPL ratio mpq / GPTQModel: **{result['ppl_ratio_mpq_over_gptqmodel']:.4f}**.",
    ]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
