"""Perplexity of a causal LM on a text: the yardstick every format and mixed plan is judged by.

Windows of `seq_len` tokens; by default they do not overlap (stride = seq_len), so each token is
scored once, with only the tokens before it in its own window as context, and the first token of each
window is not scored (it has no context). A smaller stride gives later windows overlapping context and
scores only the tokens not scored before, as in the transformers perplexity guide; it costs
seq_len / stride times more compute. Numbers are comparable only at the same text, seq_len and stride.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import MPQError


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood per scored token, in nats: ppl == exp(nll)
    n_tokens: int  # tokens scored


@dataclass(frozen=True)
class _Window:
    begin: int  # first token of the window
    end: int  # one past its last token
    first_scored: int  # first token whose log-likelihood counts (earlier ones are context only)


def perplexity(
    model: torch.nn.Module,
    tokenizer,
    text: str,
    seq_len: int = 512,
    max_tokens: int | None = None,
    stride: int | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of `model` on `text` (tokenized without special tokens, first `max_tokens` kept).

    `model(input_ids=..., use_cache=False)` must return `.logits` of shape [batch, seq, vocab], as every
    transformers causal LM does (no KV cache is kept between windows). Runs under
    `torch.inference_mode`; logits are scored in float32.
    """
    stride = seq_len if stride is None else stride
    if seq_len < 2 or not 1 <= stride <= seq_len:
        raise MPQError(f"perplexity: need seq_len >= 2 and 1 <= stride <= seq_len, "
                       f"got seq_len={seq_len}, stride={stride}")
    if batch_size < 1:
        raise MPQError(f"perplexity: batch_size must be >= 1, got {batch_size}")
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise MPQError(f"perplexity: the text gives {len(ids)} token(s); at least 2 are needed")
    ids = torch.tensor(ids, dtype=torch.long)
    windows = list(_windows(len(ids), seq_len, stride))
    n_tokens = sum(w.end - w.first_scored for w in windows)
    device = _device_of(model)

    total_nll = 0.0
    done = 0
    with torch.inference_mode(), tqdm(total=n_tokens, desc="perplexity", unit="tok", disable=not progress) as bar:
        for batch in _batches(windows, batch_size):
            input_ids = torch.stack([ids[w.begin:w.end] for w in batch]).to(device)
            logits = model(input_ids=input_ids, use_cache=False).logits
            for row_logits, row_ids, w in zip(logits, input_ids, batch):
                # The logit at window position p predicts the token at p + 1.
                first = w.first_scored - w.begin
                pred = row_logits[first - 1 : w.end - w.begin - 1].float()
                total_nll += F.cross_entropy(pred, row_ids[first:], reduction="sum").item()
            scored = sum(w.end - w.first_scored for w in batch)
            done += scored
            bar.update(scored)
            bar.set_postfix(ppl=f"{math.exp(total_nll / done):.3f}")
    nll = total_nll / n_tokens
    return PerplexityResult(ppl=math.exp(nll), nll=nll, n_tokens=n_tokens)


def _windows(n: int, seq_len: int, stride: int) -> Iterator[_Window]:
    """Windows starting every `stride` tokens until one reaches the end; each scores only new tokens."""
    scored_up_to = 1  # token 0 has no context
    for begin in range(0, n, stride):
        end = min(begin + seq_len, n)
        first = max(scored_up_to, begin + 1)
        if end > first:
            yield _Window(begin, end, first)
        scored_up_to = end
        if end == n:
            return


def _batches(windows: list[_Window], batch_size: int) -> Iterator[list[_Window]]:
    """Consecutive windows of equal length, at most `batch_size` at a time (no padding needed)."""
    batch: list[_Window] = []
    for w in windows:
        if batch and (len(batch) == batch_size or w.end - w.begin != batch[0].end - batch[0].begin):
            yield batch
            batch = []
        batch.append(w)
    if batch:
        yield batch


def _device_of(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
