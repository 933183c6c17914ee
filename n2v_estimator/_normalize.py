"""Per-channel mean/std normalisation of canonical ``(S, C, *spatial)`` arrays."""

from __future__ import annotations

import numpy as np


def channel_stats(images):
    """Mean and standard deviation of each channel.

    Parameters
    ----------
    images : ndarray of shape (S, C, *spatial)

    Returns
    -------
    mean, std : ndarray of shape (C,), float64
        A channel with zero spread gets ``std = 1`` so that normalising it
        does not divide by zero.
    """
    moved = np.moveaxis(images, 1, 0).reshape(images.shape[1], -1)
    mean = moved.mean(axis=1, dtype=np.float64)
    std = moved.std(axis=1, dtype=np.float64)
    std = np.where(std > 0, std, 1.0)
    return mean, std


def _broadcast(stats, ndim):
    return np.asarray(stats, dtype=np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def normalize(images, mean, std):
    """Return ``(images - mean) / std`` per channel as a new float32 array.

    Computed in float64 and cast at the end, so that large offsets and
    integers above 2**24 keep their precision.
    """
    out = images.astype(np.float64, copy=True)
    out -= _broadcast(mean, out.ndim)
    out /= _broadcast(std, out.ndim)
    return out.astype(np.float32)


def denormalize(images, mean, std, dtype=np.float32):
    """Inverse of :func:`normalize`, computed in ``dtype`` (a new array)."""
    out = images.astype(dtype, copy=True)
    out *= _broadcast(std, out.ndim).astype(dtype)
    out += _broadcast(mean, out.ndim).astype(dtype)
    return out
