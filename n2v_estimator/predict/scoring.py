"""Self-supervised (J-invariant) scoring of a fitted denoiser.

Following Batson & Royer (2019, "Noise2Self"), a denoiser made blind on a
fixed set of pixels J (their values replaced by the mean of their neighbours
before denoising) cannot see the noise at J. If the noise is independent and
zero-mean, the expected squared difference between its output and the noisy
input on J is the true mean squared error plus the noise variance, a constant:
ranking denoisers by it ranks them by their true error, with no clean image.
The masks are a fixed grid, independent of any estimator's own mask settings,
so that different settings are scored on exactly the same pixels.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..data.axes import check_image_array

if TYPE_CHECKING:
    from .._typing import Array, Float64Array, ImagesLike

GRID_STRIDE = 4


def clean_images(X: ImagesLike, y: ImagesLike | None) -> Float64Array | None:
    """What ``score(X, y)`` scores against: ``y`` as float64 clean images when it
    has ``X``'s shape; ``None`` for the self-supervised score (``y`` None, or one
    label per row of ``X``, as a pipeline or a search passes along)."""
    X_shape, y_shape = np.shape(X), None if y is None else np.shape(y)
    if y_shape == X_shape:
        return check_image_array(y, name="y").astype(np.float64)
    if y_shape is not None and y_shape != X_shape[:1]:
        raise ValueError(
            f"y of shape {y_shape} is neither clean images of X's shape {X_shape} nor one label "
            "per row of X; pass clean images to score against them, or y=None for the "
            "self-supervised score."
        )
    return None


def pooled_score(
    score: Callable[[ImagesLike, ImagesLike | None], float], X: Sequence[ImagesLike], y: ImagesLike | None
) -> float:
    """``score`` of a list of images ``X`` (and ``y``: None, one clean image
    each, or one label each, ignored as for a stack), the images' scores
    averaged with their sizes as weights: the score of all their pixels together."""
    labels = y is not None and len(y) == len(X) and all(np.ndim(t) == 0 for t in y)
    targets = [None] * len(X) if y is None or labels else list(y)  # one label per image: ignored
    if len(targets) != len(X):
        raise ValueError(f"y holds {len(targets)} images for the {len(X)} of X; pass y=None or one per image.")
    scores = [score(x, target) for x, target in zip(X, targets)]
    return float(np.average(scores, weights=[np.size(x) for x in X]))


def all_phases(ndim: int, stride: int) -> list[tuple[int, ...]]:
    """Every phase of a regular grid of ``stride`` pixels along ``ndim`` axes: ``stride**ndim`` offsets."""
    return list(itertools.product(range(stride), repeat=ndim))


def phase_window(phase: Sequence[int], stride: int) -> tuple[slice, ...]:
    """The index of one grid ``phase``'s pixels in ``(S, C, *spatial)`` arrays (every ``stride``-th from it)."""
    return (slice(None), slice(None)) + tuple(slice(p, None, stride) for p in phase)


def grid_phases(ndim: int, n_phases: int, stride: int = GRID_STRIDE) -> list[tuple[int, ...]]:
    """The first ``n_phases`` of the ``stride**ndim`` grid phases: the origin
    (present in every image, however small), then a fixed pseudo-random order."""
    phases = all_phases(ndim, stride)
    order = [0] + list(1 + np.random.default_rng(0).permutation(len(phases) - 1))
    return [phases[i] for i in order[: min(n_phases, len(phases))]]


def neighbour_mean(images: Array) -> Float64Array:
    """Mean of the direct neighbours of every pixel (the ``3**ndim - 1`` around
    it, fewer at the border: only neighbours inside the image count, so a
    pixel's own value never enters its mean).

    ``images`` has shape ``(S, C, *spatial)``; the result has the same shape, float64.
    """
    ndim = images.ndim - 2
    pad = [(0, 0), (0, 0)] + [(1, 1)] * ndim
    padded = np.pad(images.astype(np.float64), pad)
    inside = np.pad(np.ones(images.shape[2:]), [(1, 1)] * ndim)
    total = np.zeros(images.shape, dtype=np.float64)
    count = np.zeros(images.shape[2:], dtype=np.float64)
    for offset in itertools.product((0, 1, 2), repeat=ndim):
        if offset == (1,) * ndim:
            continue
        window = tuple(slice(o, o + n) for o, n in zip(offset, images.shape[2:]))
        total += padded[(slice(None), slice(None)) + window]
        count += inside[window]
    # A single-pixel image has no neighbour: its mean is 0 (the normalised mean).
    return total / np.maximum(count, 1)


def j_invariant_mse(denoise: Callable[[Float64Array], Array], images: Array, n_phases: int) -> float:
    """Mean squared error between the blind denoised images and ``images`` on the grid.

    Parameters
    ----------
    denoise : callable
        Maps a ``(S, C, *spatial)`` float array to its denoised version (same shape).
    images : ndarray of shape (S, C, *spatial)
        Noisy images.
    n_phases : int
        Grid phases evaluated (each masks ``1 / GRID_STRIDE**ndim`` of the
        pixels and costs one denoising pass).

    Returns
    -------
    float
        The self-supervised loss, in the squared units of ``images``.
    """
    ndim = images.ndim - 2
    replaced = neighbour_mean(images)
    total, count = 0.0, 0
    for phase in grid_phases(ndim, n_phases):
        spots = phase_window(phase, GRID_STRIDE)
        masked = np.array(images, dtype=np.float64, copy=True)
        masked[spots] = replaced[spots]
        difference = denoise(masked)[spots] - images[spots]
        total += float(np.sum(difference.astype(np.float64) ** 2))
        count += difference.size
    return total / count
