"""Token-by-token generation with a transformers causal LM, for the embedded server.

A `Generation` is one sequence: it owns its KV cache and advances one token per `step()`, so the
server can run each step in a worker thread (the event loop keeps serving) and stream every
token as soon as it exists. Logprobs are the raw model distribution (log_softmax of the logits,
before temperature, penalties or truncation), as vLLM reports them by default.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import Cache

CONTEXT_TOKENS = 5
"""Left context used to decode a token's text: enough for merges and SentencePiece's leading space."""

SAMPLING_EPS = 1e-5
"""Temperatures below this mean greedy decoding (vLLM's threshold)."""


@dataclass(frozen=True)
class SamplingParams:
    """What one request asks of each of its sequences; `max_tokens` is already fitted to the context."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: Mapping[int, float] | None = None
    ignore_eos: bool = False


SAMPLING_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty")
"""The generation_config.json entries a request falls back to (vLLM's `--generation-config auto`)."""


def sampling_defaults(folder: str | Path) -> dict[str, float]:
    """The sampling defaults the model's folder declares in generation_config.json; {} when none."""
    path = Path(folder) / "generation_config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return {k: data[k] for k in SAMPLING_KEYS if isinstance(data.get(k), (int, float))}


@dataclass(frozen=True)
class TokenLogprob:
    """One token's text and logprob with its top alternatives; both None for the first prompt token."""

    token: str
    logprob: float | None
    top: tuple[tuple[str, float], ...] | None


@dataclass(frozen=True)
class Delta:
    """What a step adds to the answer: new text, the logprobs of the tokens behind it, and the end."""

    text: str
    logprobs: list[TokenLogprob]
    finish_reason: str | None = None
    stop_reason: str | None = None


class LanguageModel:
    """The served model and tokenizer, with the facts about them that every request needs."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = model.device
        self.vocab_size: int = model.get_input_embeddings().num_embeddings
        self.max_model_len: int = getattr(model.config.get_text_config(), "max_position_embeddings", None) or int(
            tokenizer.model_max_length
        )
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos_ids = eos if isinstance(eos, list) else [eos]
        self.eos_token_ids = frozenset(i for i in [*eos_ids, tokenizer.eos_token_id] if i is not None)
        params = inspect.signature(model.forward).parameters
        self._keeps_logits = "logits_to_keep" in params
        self._cache_arg = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.2x
        self.sampling_defaults = sampling_defaults(getattr(model.config, "_name_or_path", "") or "")

    def run(
        self, ids: torch.Tensor, cache: Cache | None, all_logits: bool = False, **inputs: torch.Tensor
    ) -> tuple[torch.Tensor, Cache]:
        """One forward of `ids` [rows, tokens] after what `cache` holds: float32 logits [rows, positions, vocab]
        of every position or only the last, and the grown cache. `inputs` are the model's other arguments."""
        kwargs = {"logits_to_keep": 0 if all_logits else 1} if self._keeps_logits else {}
        out = self.model(input_ids=ids, use_cache=True, **{self._cache_arg: cache}, **inputs, **kwargs)
        logits = out.logits if all_logits else out.logits[:, -1:]
        return logits.float(), out[self._cache_arg]

    def forward(self, ids: Sequence[int], cache: Cache | None, all_logits: bool) -> tuple[torch.Tensor, Cache]:
        """Feed one sequence's `ids` after what `cache` holds; logits of every position, or only the last."""
        logits, cache = self.run(torch.tensor([list(ids)], device=self.device), cache, all_logits)
        return logits[0], cache

    def token_texts(self, context: Sequence[int], token_ids: Sequence[int]) -> list[str]:
        """Text of each candidate token right after `context`.

        Decoding in context keeps the leading space SentencePiece drops from a lone token, so the
        tokens of a sequence concatenate to its text; special tokens are kept visible.
        """
        context = list(context[-CONTEXT_TOKENS:])
        base = self.tokenizer.decode(context)
        texts = []
        for token_id in token_ids:
            full = self.tokenizer.decode([*context, token_id])
            texts.append(full[len(base) :] if full.startswith(base) else self.tokenizer.decode([token_id]))
        return texts

    def rng(self, seed: int | None) -> torch.Generator:
        """A per-request generator: seeded requests replay exactly whatever else the server does."""
        generator = torch.Generator(device=self.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        return generator


class IncrementalDetokenizer:
    """Turns ids into text one token at a time, holding back bytes that do not form a character yet.

    Each call decodes a short window (the prefix/read offsets of TGI and vLLM) rather than the
    whole sequence, and diffs it against the window without the new token.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_ids: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        self._ids = list(prompt_ids[-CONTEXT_TOKENS:])
        self._prefix = 0
        self._read = len(self._ids)

    def _diff(self) -> str:
        before = self._tokenizer.decode(self._ids[self._prefix : self._read], skip_special_tokens=True)
        after = self._tokenizer.decode(self._ids[self._prefix :], skip_special_tokens=True)
        return after[len(before) :] if len(after) > len(before) else ""

    def add(self, token_id: int) -> str:
        """The text `token_id` completes; empty while it ends inside a multi-byte character."""
        self._ids.append(token_id)
        text = self._diff()
        if not text or text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text

    def flush(self) -> str:
        """Whatever is still held back, incomplete characters included: the sequence has ended."""
        text = self._diff()
        self._prefix = self._read = len(self._ids)
        return text


class Generation:
    """One sequence being decoded: KV cache, sampled ids, detokenizer, stop checks, held-back text."""

    def __init__(
        self, lm: LanguageModel, prompt_ids: Sequence[int], params: SamplingParams, rng: torch.Generator
    ) -> None:
        self.lm = lm
        self.params = params
        self.prompt_len = len(prompt_ids)
        self.ids = list(prompt_ids)
        self.text = ""
        self.prompt_logprobs: list[TokenLogprob] | None = None
        self.finish_reason: str | None = None
        self.stop_reason: str | None = None
        self._rng = rng
        self.cache: Cache | None = None
        """This sequence's own KV cache, from its prompt until a decode batch takes it over."""
        self.started = False
        self._detokenizer = IncrementalDetokenizer(lm.tokenizer, prompt_ids)
        self._holdback = max((len(s) for s in params.stop), default=1) - 1
        self._emitted = 0
        self._pending_logprobs: list[TokenLogprob] = []
        self._bias: torch.Tensor | None = None  # made in begin(): tensors are made on the model's thread
        self._counts: torch.Tensor | None = None

    @property
    def num_generated(self) -> int:
        return len(self.ids) - self.prompt_len

    def _bias_vector(self) -> torch.Tensor | None:
        if not self.params.logit_bias:
            return None
        bias = torch.zeros(self.lm.vocab_size, device=self.lm.device)
        bias[list(self.params.logit_bias)] = torch.tensor(list(self.params.logit_bias.values()), device=self.lm.device)
        return bias

    @torch.inference_mode()
    def begin(self) -> Delta | None:
        """Run the prompt alone, keeping its KV cache in `self.cache`, and sample the first token."""
        self.started = True
        self._bias = self._bias_vector()
        if self.params.presence_penalty != 0.0 or self.params.frequency_penalty != 0.0:
            self._counts = torch.zeros(self.lm.vocab_size, device=self.lm.device)
        if self.params.max_tokens == 0:
            if self.params.prompt_logprobs is not None:
                self._prefill()
            return self._finish("length")
        return self.accept(self._prefill())

    @torch.inference_mode()
    def accept(self, logits: torch.Tensor) -> Delta | None:
        """Sample the next token from this sequence's logits; None while all new text is held back."""
        token = self._sample(logits)
        if self.params.logprobs is not None:
            self._pending_logprobs.append(self._entry(logits.log_softmax(-1), token, self.params.logprobs))
        self.ids.append(token)
        if self._counts is not None:
            self._counts[token] += 1
        if token in self.lm.eos_token_ids and not self.params.ignore_eos:
            return self._finish("stop")
        if stop := self._append_text(self._detokenizer.add(token)):
            return self._finish("stop", stop)
        if self.num_generated >= self.params.max_tokens:
            return self._finish("length")
        return self._delta()

    @torch.inference_mode()
    def step(self) -> Delta | None:
        """Decode one token on this sequence's own cache (the first call runs the prompt): the
        one-at-a-time reference that batched decoding (`batching.py`) must reproduce."""
        if not self.started:
            return self.begin()
        logits, self.cache = self.lm.forward([self.ids[-1]], self.cache, all_logits=False)
        return self.accept(logits[-1])

    def abort(self) -> None:
        """The client went away: end the sequence and drop its cache."""
        self.finish_reason, self.cache = self.finish_reason or "abort", None

    def _prefill(self) -> torch.Tensor:
        """Run the prompt; score every prompt token from that same pass when echo asks for it."""
        k = self.params.prompt_logprobs
        logits, self.cache = self.lm.forward(self.ids, None, all_logits=k is not None)
        if k is not None:
            self.prompt_logprobs = self._score_prompt(logits, k)
        return logits[-1]

    def _score_prompt(self, logits: torch.Tensor, k: int) -> list[TokenLogprob]:
        """Logprob of each prompt token given its prefix; the first has none (vLLM's convention)."""
        ids = self.ids
        first = TokenLogprob(self.lm.token_texts([], [ids[0]])[0], None, None)
        logprobs = logits[:-1].log_softmax(-1)
        chosen = logprobs.gather(1, torch.tensor(ids[1:], device=logprobs.device)[:, None])[:, 0].tolist()
        top_lp, top_ids = (t.tolist() for t in logprobs.topk(k, dim=-1))
        entries = [first]
        for pos, token in enumerate(ids[1:], start=1):
            texts = self.lm.token_texts(ids[max(0, pos - CONTEXT_TOKENS) : pos], [token, *top_ids[pos - 1]])
            entries.append(TokenLogprob(texts[0], chosen[pos - 1], tuple(zip(texts[1:], top_lp[pos - 1], strict=True))))
        return entries

    def _entry(self, logprobs: torch.Tensor, token: int, k: int) -> TokenLogprob:
        top_lp, top_ids = (t.tolist() for t in logprobs.topk(k))
        texts = self.lm.token_texts(self.ids, [token, *top_ids])
        return TokenLogprob(texts[0], float(logprobs[token]), tuple(zip(texts[1:], top_lp, strict=True)))

    def _sample(self, logits: torch.Tensor) -> int:
        p = self.params
        if self._bias is not None:
            logits = logits + self._bias
        if self._counts is not None:
            logits = logits - p.frequency_penalty * self._counts - p.presence_penalty * (self._counts > 0)
        if p.repetition_penalty != 1.0:  # vLLM's: over prompt and output tokens, divides positive logits
            seen = torch.zeros_like(logits, dtype=torch.bool)
            seen[torch.tensor(self.ids, device=logits.device)] = True
            penalised = torch.where(logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty)
            logits = torch.where(seen, penalised, logits)
        if p.temperature < SAMPLING_EPS:
            return int(logits.argmax())
        logits = logits / p.temperature
        if 0 < p.top_k < logits.numel():
            logits = logits.masked_fill(logits < logits.topk(p.top_k).values[-1], float("-inf"))
        if p.top_p < 1.0:
            sorted_logits, order = logits.sort(descending=True)
            probs = sorted_logits.softmax(-1)
            beyond = probs.cumsum(-1) - probs > p.top_p
            logits = logits.index_fill(0, order[beyond], float("-inf"))
        return int(torch.multinomial(logits.softmax(-1), 1, generator=self._rng))

    def _append_text(self, text: str) -> str | None:
        """Add new text; if it completes a stop string, cut the text before it and return the string."""
        start = max(0, len(self.text) - self._holdback)
        self.text += text
        hits = [(i, s) for s in self.params.stop if (i := self.text.find(s, start)) != -1] if text else []
        if not hits:
            return None
        index, stop = min(hits)
        self.text = self.text[:index]
        return stop

    def _finish(self, reason: str, stop: str | None = None) -> Delta:
        self.cache = None
        if stop is None:
            self.text += self._detokenizer.flush()
        self.finish_reason, self.stop_reason = reason, stop
        return self._delta()

    def _delta(self) -> Delta | None:
        """New text, minus a tail that could still begin a stop string unless the sequence has ended."""
        end = len(self.text) if self.finish_reason else len(self.text) - self._holdback
        if end <= self._emitted and self.finish_reason is None:
            return None
        text, self._emitted = self.text[self._emitted : end], max(self._emitted, end)
        logprobs, self._pending_logprobs = self._pending_logprobs, []
        return Delta(text, logprobs, self.finish_reason, self.stop_reason)
