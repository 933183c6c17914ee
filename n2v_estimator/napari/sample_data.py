"""napari's File > Open Sample: noisy images made from scikit-image's own data (no download)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .layers import LayerDataTuple

SIGMA = 25.0


def noisy_camera() -> list[LayerDataTuple]:
    """scikit-image's camera (512 x 512) with Gaussian noise of sigma 25 (seed 0), float32."""
    from skimage import data

    clean = data.camera().astype(np.float32)
    noisy = clean + np.random.default_rng(0).normal(0, SIGMA, clean.shape).astype(np.float32)
    return [(noisy, {"name": "noisy camera", "contrast_limits": (0, 255)}, "image")]


def noisy_volume() -> list[LayerDataTuple]:
    """A smooth 3D volume (64 x 128 x 128: blobs blurred with sigma 2, 0..255) with Gaussian
    noise of sigma 25 (seed 0), float32, laid out ZYX."""
    from scipy import ndimage
    from skimage import data

    blobs = data.binary_blobs(length=128, n_dim=3, volume_fraction=0.3, rng=0)[:64].astype(np.float32)
    smooth = ndimage.gaussian_filter(blobs, 2.0)
    clean = (smooth - smooth.min()) / (smooth.max() - smooth.min()) * 255
    noisy = clean + np.random.default_rng(0).normal(0, SIGMA, clean.shape).astype(np.float32)
    return [(noisy.astype(np.float32), {"name": "noisy volume", "contrast_limits": (0, 255)}, "image")]
