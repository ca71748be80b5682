"""Run an exported GGUF in llama.cpp (through `llama-cpp-python`) and read its logits.

`LlamaCppLM` looks like a transformers causal LM to `eval.perplexity`: called with `input_ids` it
evaluates each row in a fresh llama.cpp context and returns llama.cpp's own logits, so the GGUF's
perplexity comes from the same windows, tokens and scoring code as our HF path's.  The tokens are
ours (the HF tokenizer) so both sides score the same sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import MPQError


def load_llama(path: str | Path, n_ctx: int = 512, n_threads: int | None = None, logits_all: bool = True):
    """A `llama_cpp.Llama` on the GGUF (CPU), with every position's logits kept when `logits_all`."""
    try:
        import llama_cpp
    except ImportError:
        raise MPQError("llama-cpp-python is not installed: bash scripts/install_llamacpp.sh") from None
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, n_batch=n_ctx,
                           logits_all=logits_all, verbose=False)


@dataclass
class _Output:
    logits: torch.Tensor


class LlamaCppLM(nn.Module):
    """llama.cpp behind the `model(input_ids=...).logits` interface (no parameters, CPU)."""

    def __init__(self, llama):
        super().__init__()
        self.llama = llama

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> _Output:
        rows = [self.logits(row.tolist()) for row in input_ids]
        return _Output(torch.stack(rows))

    def logits(self, tokens: list[int]) -> torch.Tensor:
        """[len(tokens), vocab] float32 logits of one sequence, from an empty KV cache."""
        if len(tokens) > self.llama.n_ctx():
            raise MPQError(f"{len(tokens)} tokens do not fit llama.cpp's context of {self.llama.n_ctx()}")
        self.llama.reset()  # position 0: eval() then drops every cached key from there on
        self.llama.eval(tokens)
        return torch.from_numpy(np.array(self.llama.scores[: len(tokens)], dtype=np.float32))
