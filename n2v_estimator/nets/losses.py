"""The losses of a blind-spot fit: means over the masked pixels only."""

from __future__ import annotations

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the blind spots ``mask`` (same shape), without selecting
    them: a selection's size is known only once the device has counted it. Values outside the
    mask do not count, even non-finite ones."""
    return torch.where(mask, values, 0).sum() / mask.sum()


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the blind spots only."""
    return masked_mean((prediction - target).square(), mask)


def squared_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The squared error of every pixel (plain Noise2Void's validation loss, before its mean over the blind spots)."""
    return (prediction - target).square()
