"""Exports of a mixed-precision model to formats other runtimes load with no mpq-serving code.

* `gguf`: one GGUF file for llama.cpp, each weight in the closest GGML tensor type (exact where the
  GGML block can hold our codes and scales, e.g. GPTQ / AWQ int4 → Q4_0 / Q4_1, MXFP4 → MXFP4);
* `compressed_tensors`: an HF folder with a compressed-tensors `mixed-precision` config that stock
  vLLM and SGLang serve, for the plans that format can express.

Each refuses, with the reason, what its target cannot express.
"""
