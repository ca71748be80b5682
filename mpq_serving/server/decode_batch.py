"""The running sequences' KV caches held as one left-padded batch, so a decode step is one forward.

Continuous batching on a plain transformers model, without a paged-attention kernel: a sequence
runs its prompt alone (its own `DynamicCache`), then joins by left-padding its keys and values to
the batch's length. The attention mask hides the padding and explicit position ids keep each row's
own RoPE positions, so a row decodes as it would alone. Finished or abandoned rows leave by index
selection, and columns only padding occupies are trimmed. Transformers' own continuous batching
(`generate_batch`) was not used: it samples with one generation config for all requests and returns
no top logprobs, prompt logprobs, stop strings, penalties or per-request seeds, which the OpenAI
API needs per request.

Padding costs a copy of the batch's cache when a longer sequence joins; sliding-window and
recurrent caches cannot be padded this way, so such models decode one sequence at a time
(`DecodeBatch.batchable`).
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig
from transformers.cache_utils import DynamicCache, DynamicLayer

from .generation import Delta, Generation, LanguageModel


def _left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """`tensor` with zeros prepended along `dim` up to `width`."""
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class DecodeBatch:
    """Sequences past their prompt, decoded together one token per `step`."""

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        self.gens: list[Generation] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [rows, columns]: 1 where a row has a real token

    @staticmethod
    def batchable(config: PretrainedConfig) -> str | None:
        """None when this model's cache can be padded into a batch, else why it cannot."""
        layers = DynamicCache(config=config).layers
        kinds = {type(layer).__name__ for layer in layers if type(layer) is not DynamicLayer}
        return f"its cache has {', '.join(sorted(kinds))} layers, which cannot be left-padded" if kinds else None

    def __len__(self) -> int:
        return len(self.gens)

    def join(self, gen: Generation) -> None:
        """Take over `gen`'s own cache (its prompt and first token are done)."""
        cache, gen.cache = gen.cache, None
        if cache is None:
            raise ValueError("a sequence joins the decode batch only after its prompt has run")
        length = cache.get_seq_length()
        mask = torch.ones(1, length, dtype=torch.long, device=self.lm.device)
        if self._cache is None or self._mask is None:
            self._cache, self._mask, self.gens = cache, mask, [gen]
            return
        width = max(self._mask.shape[1], length)
        for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, width, -2), _left_pad(theirs.keys, width, -2)])
            mine.values = torch.cat([_left_pad(mine.values, width, -2), _left_pad(theirs.values, width, -2)])
        self._mask = torch.cat([_left_pad(self._mask, width, 1), _left_pad(mask, width, 1)])
        self.gens.append(gen)

    def drop_finished(self) -> list[Generation]:
        """Remove the rows whose sequence ended (or was aborted); returns them."""
        keep = [i for i, gen in enumerate(self.gens) if gen.finish_reason is None]
        if len(keep) == len(self.gens):
            return []
        gone = [gen for gen in self.gens if gen.finish_reason is not None]
        if not keep or self._cache is None or self._mask is None:
            self._cache, self._mask, self.gens = None, None, []
            return gone
        rows = torch.tensor(keep, device=self.lm.device)
        self._cache.batch_select_indices(rows)
        self._mask = self._mask[rows]
        self.gens = [self.gens[i] for i in keep]
        start = int((self._mask.sum(0) > 0).nonzero()[0])
        if start:
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[..., start:, :], layer.values[..., start:, :]
            self._mask = self._mask[:, start:]
        return gone

    @torch.inference_mode()
    def step(self) -> list[Delta | None]:
        """One token for every row: one forward over the batch, then each sequence samples its own."""
        if self._cache is None or self._mask is None:
            return []
        device = self.lm.device
        ids = torch.tensor([[gen.ids[-1]] for gen in self.gens], device=device)
        self._mask = torch.cat([self._mask, self._mask.new_ones(len(self.gens), 1)], dim=1)
        positions = self._mask.sum(1, keepdim=True) - 1
        logits, self._cache = self.lm.run(ids, self._cache, attention_mask=self._mask, position_ids=positions)
        return [gen.accept(row) for gen, row in zip(self.gens, logits[:, -1], strict=True)]
