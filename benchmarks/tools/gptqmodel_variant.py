"""Write one GPTQModel checkpoint variant of a model and what GPTQModel itself reads back from it.

    python gptqmodel_variant.py MODEL_DIR OUT_DIR --bits 4 [--group-size 32] [--asym] [--desc-act]
                                [--dynamic JSON] [--format gptq|gptq_v2]

Runs in GPTQModel's throw-away venv (`make_tool_venv.sh gptqmodel DIR`), imports nothing of mpq-serving.
Writes OUT_DIR/checkpoint (GPTQModel's own `save`) and, from GPTQModel loading that checkpoint again
with its torch kernel, OUT_DIR/theirs.safetensors: every quantized linear's `dequantize_weight()` as
`<module>.weight` [out, in] (float16: loaded in the scales' dtype), and the logits on fixed token ids as `logits` (ids in `ids`).
`benchmarks/tool_matrix.py` compares our reading of the checkpoint with these.
"""

from __future__ import annotations

import argparse
import json

import torch
from safetensors.torch import save_file


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--asym", action="store_true")
    parser.add_argument("--desc-act", action="store_true")
    parser.add_argument("--dynamic", default=None, help="GPTQModel `dynamic` overrides as JSON")
    parser.add_argument("--format", default="gptq")
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args()

    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    config = QuantizeConfig(bits=args.bits, group_size=args.group_size, sym=not args.asym, desc_act=args.desc_act,
                            dynamic=json.loads(args.dynamic) if args.dynamic else None, format=args.format,
                            offload_to_disk=False)
    gen = torch.Generator().manual_seed(0)
    model = GPTQModel.load(args.model, config, device="cpu")
    vocab = model.model.config.vocab_size
    calibration = [{"input_ids": torch.randint(0, vocab, (64,), generator=gen).tolist(), "attention_mask": [1] * 64}
                   for _ in range(args.samples)]
    model.quantize(calibration, batch_size=1, calibration_sort=None)
    model.save(f"{args.out}/checkpoint")
    del model

    # float16, the scales' own dtype: GPTQModel's kernels compute in the model dtype, and bf16 would round the scales
    loaded = GPTQModel.load(f"{args.out}/checkpoint", device="cpu", backend=BACKEND.TORCH, dtype=torch.float16)
    tensors = {}
    for name, module in loaded.model.named_modules():
        if isinstance(module, BaseQuantLinear):
            tensors[f"{name}.weight"] = module.dequantize_weight().t().contiguous()
    ids = torch.randint(0, vocab, (1, 24), generator=gen)
    with torch.no_grad():
        tensors["logits"] = loaded.model(input_ids=ids).logits.float()
    tensors["ids"] = ids
    save_file(tensors, f"{args.out}/theirs.safetensors")
    print(f"wrote {len(tensors) - 2} dequantized linears")


if __name__ == "__main__":
    main()
