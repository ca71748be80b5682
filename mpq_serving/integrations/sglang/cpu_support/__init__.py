"""What SGLang-on-CPU needs on a machine without Intel AMX and without a registry build of sgl-kernel.

SGLang 0.5.23's CPU path (`--device cpu`, env `SGLANG_USE_CPU_ENGINE=1`) imports two things that a
plain CPU install cannot give it:

- `sgl_kernel`: its CPU build ships in no package registry.  `sgl_kernel_torch` provides the few
  ops the CPU path touches when AMX is absent, in plain torch, each tested against the op's
  definition (tests/engines/sglang/test_cpu_support.py).
- `torchvision`: imported unconditionally (multimodal configs); the PyPI wheel is a CUDA build whose
  compiled ops do not load against CPU torch, so its import fails on the missing `torchvision::nms`
  schema.  `torchvision_ops` defines `nms` / `qnms` in plain torch before torchvision loads.

`startup` installs both through an import hook; `scripts/install_sglang.sh` puts one `.pth` line
into `.venv-sglang` only, so every SGLang process there (launcher, scheduler, detokenizer) gets it.
This is test support for CPU-only machines: on a GPU box with the real sgl-kernel it stays inert.
"""
