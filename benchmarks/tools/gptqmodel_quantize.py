"""Quantize a model with GPTQModel on given calibration windows (runs in GPTQModel's own throw-away venv).

    python gptqmodel_quantize.py MODEL_DIR CALIB.safetensors OUT_DIR --bits 4 --group-size 64 --damp 0.01

Called by `benchmarks/gptq_vs_gptqmodel.py`; imports nothing of mpq-serving, so it runs in a venv that
holds only torch 2.13 and gptqmodel 7.6 (see `benchmarks/tools/make_tool_venv.sh`).  Prints one line
`quantize_seconds: <s>` measured around `model.quantize` alone, and the whole process is timed outside.
"""

from __future__ import annotations

import argparse
import time

from safetensors.torch import load_file


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("calib")
    parser.add_argument("out")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--damp", type=float, default=0.01)
    parser.add_argument("--desc-act", action="store_true")
    args = parser.parse_args()

    from gptqmodel import GPTQModel, QuantizeConfig

    config = QuantizeConfig(bits=args.bits, group_size=args.group_size, sym=True, desc_act=args.desc_act,
                            offload_to_disk=False)
    config.damp_percent = args.damp  # 7.6's default is 0.05; GPTQ's and ours is 0.01
    windows = load_file(args.calib)["input_ids"]
    calibration = [{"input_ids": row.tolist(), "attention_mask": [1] * len(row)} for row in windows]
    model = GPTQModel.load(args.model, config, device="cpu")
    start = time.perf_counter()
    model.quantize(calibration, batch_size=1, calibration_sort=None)
    print(f"quantize_seconds: {time.perf_counter() - start:.2f}", flush=True)
    model.save(args.out)


if __name__ == "__main__":
    main()
