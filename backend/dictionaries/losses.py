"""Training losses as pure functions (no state, no side effects).

Conventions (training units: activations scaled to unit mean squared norm, see train.py):
    mse = mean over tokens of ||x - x_hat||^2          (sum over dims, so mse ~ FVU of the raw second moment)
    l1  = mean over tokens of sum_i f_i * ||W_dec_i||  (decoder-norm weighted, Anthropic April 2024 update)
    loss = mse + l1_coeff * l1
The per-element MSE reported in metrics.json (SAELens convention) is a different number: see metrics.py.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class LossParts(NamedTuple):
    total: torch.Tensor  # scalar, what is backpropagated
    mse: torch.Tensor  # scalar, mean over tokens of the squared error summed over dims
    l1: torch.Tensor  # scalar, mean over tokens of the decoder-norm weighted L1 of latents


def relu_l1_loss(x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor, dec_norms: torch.Tensor,
                 l1_coeff: float) -> LossParts:
    """x, x_hat [B, d_in]; f [B, d_sae] (>= 0); dec_norms [d_sae] = ||W_dec_i||."""
    mse = (x_hat - x).pow(2).sum(-1).mean()
    l1 = (f * dec_norms).sum(-1).mean()
    return LossParts(mse + l1_coeff * l1, mse, l1)
