"""Synthetic layer inputs shared by the quantizer tests."""

from __future__ import annotations

import torch


def correlated_inputs(rows: int = 2048, features: int = 256, seed: int = 0) -> torch.Tensor:
    """Inputs with correlated channels and a few outlier channels, like real hidden states."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(features, features, generator=gen) / features**0.5 + torch.eye(features)
    x = torch.randn(rows, features, generator=gen) @ mix
    x[:, :4] *= 8
    return x


def output_error(x: torch.Tensor, w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return float(((x @ (w - w_hat).t()) ** 2).mean())
