"""Real-tool checkpoints through our readers: each GPTQModel 7.6 variant of a tiny Llama × {packs, bit-exact
against GPTQModel's own reader, logits of our merged model vs GPTQModel's own model}.

    bash benchmarks/tools/make_tool_venv.sh gptqmodel /tmp/venv-gptqmodel
    python benchmarks/tool_matrix.py --gptqmodel-python /tmp/venv-gptqmodel/bin/python

For every variant, `tools/gptqmodel_variant.py` (in GPTQModel's venv) quantizes the model with GPTQModel
itself, saves its checkpoint, loads it back with GPTQModel's torch kernel in float16 (the scales' dtype)
and dumps every linear's `dequantize_weight()` and the logits on fixed ids.  Here, in ours:

* bit-exact: our dequantization of each module (exact, float32) rounded to float16 equals GPTQModel's;
* pack: `mpq pack` of the folder as its tool stored it (`tool_folder_plan`), loaded by `load_model`;
* logits: relative error (‖a − b‖ / ‖b‖) of our packed model and of GPTQModel's own model against the
  float model, and between the two.

Serving each packed variant on vLLM / SGLang is not run by this script (the engines' own test suites
serve packed GPTQ checkpoints); the columns say so.  Writes benchmarks/results/tool-matrix.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm import tqdm
from transformers import AutoModelForCausalLM

from mpq_serving.formats import get_format
from mpq_serving.loaders.hf_model import load_model
from mpq_serving.loaders.pack import pack
from mpq_serving.loaders.tool_folder import tool_folder_plan
from mpq_serving.loaders.true_mixed import TrueMixedPrecisionLoader
from mpq_serving.models.tiny import build_tiny

HERE = Path(__file__).resolve().parent
WORKER = HERE / "tools" / "gptqmodel_variant.py"

# name: arguments of gptqmodel_variant.py
VARIANTS = {
    "GPTQ 4-bit sym g32 (v1)": ["--bits", "4"],
    "GPTQ 4-bit asym g32 (v1)": ["--bits", "4", "--asym"],
    "GPTQ 4-bit asym g32 (v2)": ["--bits", "4", "--asym", "--format", "gptq_v2"],
    "GPTQ 4-bit sym g32 act-order": ["--bits", "4", "--desc-act"],
    "GPTQ 3-bit asym g32 (v1)": ["--bits", "3", "--asym"],
    "GPTQ 8-bit sym g32": ["--bits", "8"],
    "GPTQ 2-bit asym g32 (v1)": ["--bits", "2", "--asym"],
    "GPTQ dynamic: down 8-bit, up 3-bit, o_proj skipped": [
        "--bits", "4", "--dynamic",
        json.dumps({r"+:.*\.down_proj": {"bits": 8}, r"+:.*\.up_proj": {"bits": 3}, r"-:.*\.o_proj": {}}),
    ],
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def check_variant(base: Path, folder: Path, float_logits_fn) -> dict:
    theirs = load_file(str(folder / "theirs.safetensors"))
    plan = tool_folder_plan(folder / "checkpoint")
    loader = TrueMixedPrecisionLoader(plan)
    exact, formats = True, set()
    for name, q in loader.iter_modules(progress=False):
        key = f"{name}.weight"
        if key not in theirs:
            continue
        formats.add(q.spec.describe())
        ours = get_format(q.format).dequantize(q)
        exact &= torch.equal(ours.to(theirs[key].dtype), theirs[key])
    packed = pack(plan, folder / "packed", progress=False)
    model = load_model(packed, dtype=torch.float32, progress=False)
    ids = theirs["ids"]
    with torch.no_grad():
        ours_logits = model(input_ids=ids).logits
    float_logits = float_logits_fn(ids)
    return {"formats": sorted(formats), "bit_exact": exact, "packed": True,
            "ours_vs_float": rel(ours_logits, float_logits), "tool_vs_float": rel(theirs["logits"], float_logits),
            "ours_vs_tool": rel(ours_logits, theirs["logits"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gptqmodel-python", required=True)
    parser.add_argument("--only", default=None, help="comma-separated substrings of variant names")
    parser.add_argument("--name", default="tool-matrix")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tool-matrix-"))
    base = build_tiny("llama", work / "base")
    float_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()

    def float_logits(ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return float_model(input_ids=ids).logits

    rows = {}
    chosen = [v for v in VARIANTS if not args.only or any(s in v for s in args.only.split(","))]
    for i, variant in enumerate(tqdm(chosen, desc="variants", unit="variant")):
        folder = work / f"v{i}"
        folder.mkdir()
        proc = subprocess.run([args.gptqmodel_python, str(WORKER), str(base), str(folder), *VARIANTS[variant]],
                              capture_output=True, text=True, env={"GPTQMODEL_CPU_WORKERS": "2", "PATH": "/usr/bin:/bin"},
                              cwd=folder)  # GPTQModel writes a logs/ folder into its working directory
        if proc.returncode:
            rows[variant] = {"error": (proc.stdout + proc.stderr)[-400:]}
            continue
        try:
            rows[variant] = check_variant(base, folder, float_logits)
        except Exception as e:  # a row that fails is a finding, not the end of the matrix
            rows[variant] = {"error": f"{type(e).__name__}: {e}"}
        print(variant, rows[variant], flush=True)

    out = HERE / "results"
    (out / f"{args.name}.json").write_text(json.dumps(rows, indent=2))
    lines = ["# GPTQModel 7.6 checkpoints through mpq-serving's readers (tiny Llama, 2 layers, hidden 128)", "",
             "Regenerate: `python benchmarks/tool_matrix.py --gptqmodel-python PY` (see its docstring). Logit "
             "columns: relative error against the float model (ours = `mpq pack` of the folder, loaded by "
             "`load_model` in float32; tool = GPTQModel's own model, float16).", "",
             "| variant | read as | bit-exact vs GPTQModel | packs + loads | ours vs float | GPTQModel vs float "
             "| ours vs GPTQModel | vLLM | SGLang |", "|---|---|---|---|---:|---:|---:|---|---|"]
    for variant, r in rows.items():
        if "error" in r:
            lines.append(f"| {variant} | error: {r['error'][:120]!r} | | | | | | | |")
            continue
        lines.append(f"| {variant} | {', '.join(r['formats'])} | {'yes' if r['bit_exact'] else '**no**'} | yes | "
                     f"{r['ours_vs_float']:.4f} | {r['tool_vs_float']:.4f} | {r['ours_vs_tool']:.4f} | "
                     "not run here | not run here |")
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
