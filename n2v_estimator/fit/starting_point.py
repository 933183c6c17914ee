"""What a fit starts from: fresh, or the fitted state a ``warm_start`` fit continues from; the
normalisation and data range, the noise model's first parameters and the seeds that follow from it.

A continued fit keeps the previous normalisation (which must represent the new data), widens the
data range, takes its noise parameters from the network it continues, and moves its seeds on by the
epochs trained, so that it draws new patches and blind spots, not a replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sklearn.utils import check_random_state

from ..data.normalize import channel_range, channel_stats, check_representable
from ..nets.noise import estimate_noise

if TYPE_CHECKING:
    import torch

    from .._typing import Array, Description, Float64Array


@dataclass(frozen=True)
class WarmStartState:
    """The fitted state a ``warm_start`` fit continues from.

    Attributes
    ----------
    network : dict
        The fitted network's description; the new fit must plan the same.
    weights : dict of str to Tensor
        Its weights, which the new fit trains further (a copy of them).
    mean, std : ndarray of shape (n_channels,)
        Its normalisation, kept.
    n_epochs : int
        The epochs trained so far: the new fit's seeds move on by them.
    data_range : (ndarray, ndarray) or None
        Its training data's per-channel minimum and maximum, widened by the new data's.
    """

    network: Description
    weights: dict[str, torch.Tensor]
    mean: Float64Array
    std: Float64Array
    n_epochs: int
    data_range: tuple[Float64Array, Float64Array] | None = None


def starting_statistics(
    pixels: Array | list[Array], previous_fit: WarmStartState | None
) -> tuple[Float64Array, Float64Array, tuple[Float64Array, Float64Array]]:
    """``(mean, std, (low, high))`` per channel: the training data's normalisation (a
    continued fit keeps the previous one, which must represent this data) and range
    (widened by the previous fit's)."""
    if previous_fit is not None:
        mean, std = previous_fit.mean, previous_fit.std
        for part in pixels if isinstance(pixels, list) else [pixels]:
            check_representable(part, mean, std)  # statistics of this data always can
    else:
        mean, std = channel_stats(pixels)
    low, high = channel_range(pixels)
    if previous_fit is not None and previous_fit.data_range is not None:
        low, high = np.minimum(low, previous_fit.data_range[0]), np.maximum(high, previous_fit.data_range[1])
    return mean, std, (low, high)


def initial_noise(
    noise_model: str | float | None,
    noise_kind: str | None,
    pixels: Array | list[Array],
    n_channels: int,
    previous_fit: WarmStartState | None,
) -> dict[str, Float64Array] | None:
    """The noise model's starting parameters: a known sigma as given, else a robust estimate
    from the data; ``None`` without a noise model or when continuing (the network holds them)."""
    if noise_model is not None and not isinstance(noise_model, str):  # a known sigma
        return {"sigma": np.full(n_channels, float(noise_model))}
    if noise_kind is not None and previous_fit is None:
        return estimate_noise(pixels, noise_kind)
    return None


def fit_seeds(
    random_state: int | np.random.RandomState | None, previous_fit: WarmStartState | None
) -> tuple[int, int, int]:
    """Three seeds from ``random_state``: for the initial weights, the training draws and the validation
    set; a continued fit shifts them by its epochs, so that it draws new patches and blind spots, not a replay."""
    seeds = check_random_state(random_state).randint(0, 2**31 - 1, size=3)
    if previous_fit is not None:
        seeds = (seeds + 7919 * previous_fit.n_epochs) % (2**31 - 1)
    weights, training, validation = (int(seed) for seed in seeds)
    return weights, training, validation
