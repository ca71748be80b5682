"""Calibration data and the inputs of the first decoder layer, the start of the layer-by-layer pass.

Sequential quantization (GPTQ, AWQ, SparseGPT as their reference tools run them) never runs the whole
model on the calibration set after the embeddings: it catches what enters decoder layer 0, then feeds
each layer the previous layer's outputs.  Only one layer's inputs and outputs are held at a time.
Tokens are random windows of a text (`search.common.calibration_tokens`), by default the shipped
`wiki_calib` slice, which does not overlap the `wiki_eval` slice perplexity is measured on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import MPQError
from ..search.common import calibration_tokens

__all__ = ["LayerInputs", "calibration_tokens", "capture_first_layer_inputs", "decoder_layers", "run_layer"]


@dataclass
class LayerInputs:
    """Hidden states entering a decoder layer, per calibration batch, with the keyword arguments the
    model passed the layer (rotary cos/sin, attention mask, positions), which every layer shares."""

    hidden: list[torch.Tensor]
    kwargs: list[dict[str, Any]]

    @property
    def rows(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)

    def first_samples(self, n: int) -> "LayerInputs":
        """The first n samples (whole batches, the last one cut), with their per-sample keyword tensors cut alike."""
        hidden, kwargs = [], []
        for h, kw in zip(self.hidden, self.kwargs, strict=True):
            if n <= 0:
                break
            take = min(n, h.shape[0])
            hidden.append(h[:take])
            kwargs.append({k: _first_rows(v, h.shape[0], take) for k, v in kw.items()})
            n -= take
        return LayerInputs(hidden, kwargs)


def _first_rows(value: Any, batch: int, take: int) -> Any:
    """Cut a per-sample keyword argument (a tensor or tuple of tensors with the batch first) to `take` samples."""
    if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == batch:
        return value[:take]
    if isinstance(value, tuple):
        return tuple(_first_rows(v, batch, take) for v in value)
    return value


class _Caught(Exception):
    """Raised by the hook on layer 0 to stop the forward pass once its inputs are captured."""


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformers decoder layer stack (`model.model.layers` for every supported architecture)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise MPQError(f"{type(model).__name__}: no decoder layer list at model.layers; unsupported architecture")
    return layers


@torch.no_grad()
def capture_first_layer_inputs(model: nn.Module, tokens: torch.Tensor, batch_size: int = 8) -> LayerInputs:
    """Run the embeddings (and rotary tables) on each batch of `tokens` and keep what layer 0 receives."""
    first = decoder_layers(model)[0]
    captured = LayerInputs([], [])

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.hidden.append(hidden.detach())
        captured.kwargs.append({k: v for k, v in kwargs.items() if k != "hidden_states"})
        raise _Caught

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, tokens.shape[0], batch_size):
            try:
                model.model(input_ids=tokens[start:start + batch_size], use_cache=False)
            except _Caught:
                pass
    finally:
        handle.remove()
    return captured


def run_layer(layer: nn.Module, inputs: LayerInputs) -> list[torch.Tensor]:
    """The layer's output for every batch (decoder layers return a tensor, or a tuple whose first item is it)."""
    outs = []
    with torch.no_grad():
        for hidden, kwargs in zip(inputs.hidden, inputs.kwargs, strict=True):
            out = layer(hidden, **kwargs)
            outs.append(out[0] if isinstance(out, tuple) else out)
    return outs
