"""Training data read on demand: zarr and dask arrays larger than memory.

``fit`` never loads such an array. It reads a fixed sample of blocks for the
normalisation statistics and the first noise estimate, then cuts every
training and validation patch from the array when the patch is drawn: only
the chunks under the patches sampled are ever read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .._typing import Array
from ..gateway.codecs import is_zarr_array
from .axes import _CANONICAL, check_image_array, is_dask_array, layout_of, read_unread, to_canonical
from .normalize import normalize

# Pixels per channel of the sample the statistics and the noise estimate are taken from.
SAMPLE_PIXELS = 2**22
# Side of a sample block per spatial axis (2D, 3D): large enough for the noise
# filter, small enough that the blocks come from all over the array.
SAMPLE_BLOCK = {2: (128, 128), 3: (16, 64, 64)}


def is_on_demand(X: object) -> bool:
    """Whether ``X`` is read on demand rather than converted to numpy: a zarr or
    dask array (checked without importing either)."""
    return is_zarr_array(X) or is_dask_array(X)


class OnDemandImage:
    """One ``(C, *spatial)`` image of an on-demand array, cut into normalised patches when indexed.

    Parameters
    ----------
    array : zarr or dask array
    axes : str
        ``array``'s axes (validated).
    sample : int
        The index along ``S`` (0 when there is none).
    start, stop : tuple of int
        The spatial region (canonical ``(Z), Y, X`` order) this image covers.
    mean, std : ndarray of shape (C,) or None
        The normalisation applied to every patch (set with :meth:`normalized`).
    """

    def __init__(
        self,
        array: Any,
        axes: str,
        sample: int,
        start: Sequence[int],
        stop: Sequence[int],
        mean: Array | None = None,
        std: Array | None = None,
    ) -> None:
        self.array, self.axes, self.sample = array, axes, sample
        self.start, self.stop = tuple(start), tuple(stop)
        self.mean, self.std = mean, std
        channels = array.shape[axes.index("C")] if "C" in axes else 1
        self.shape = (channels,) + tuple(b - a for a, b in zip(self.start, self.stop))

    def normalized(self, mean: Array, std: Array) -> OnDemandImage:
        """This image, its patches normalised with ``mean`` and ``std``."""
        return OnDemandImage(self.array, self.axes, self.sample, self.start, self.stop, mean, std)

    def split(self, axis: int, at: int) -> tuple[OnDemandImage, OnDemandImage]:
        """The two images before and from ``at`` along spatial ``axis`` (nothing read)."""
        middle = list(self.start)
        middle[axis] += at
        end = list(self.stop)
        end[axis] = middle[axis]
        return (
            OnDemandImage(self.array, self.axes, self.sample, self.start, end, self.mean, self.std),
            OnDemandImage(self.array, self.axes, self.sample, middle, self.stop, self.mean, self.std),
        )

    def read(self, spatial: Sequence[slice]) -> Array:
        """The raw pixels under ``spatial`` (slices relative to this image), as a
        ``(C, *spatial)`` numpy array in the input's dtype."""
        letters = [a for a in _CANONICAL[2:] if a in self.axes]
        index: list[int | slice] = []
        for letter in self.axes:
            if letter == "S":
                index.append(self.sample)
            elif letter == "C":
                index.append(slice(None))
            else:
                k = letters.index(letter)
                s = spatial[k]
                index.append(slice(self.start[k] + s.start, self.start[k] + s.stop))
        block = _as_declared(self.array[tuple(index)], self.array, index)
        if block.dtype.kind == "f" and not np.isfinite(block).all():
            first = np.argwhere(~np.isfinite(block))[0]
            raise ValueError(_non_finite_message(index, first))
        return to_canonical(block, self.axes.replace("S", ""))[0]

    def __getitem__(self, index: tuple[slice, ...]) -> torch.Tensor:
        """A normalised float32 tensor of ``(slice(None), *spatial slices)``, as a
        numpy-backed image would give (what :class:`n2v_estimator.data.patches.PatchSampler` asks for)."""
        if self.mean is None or self.std is None:
            raise RuntimeError("An on-demand image is cut into patches once normalized: call normalized(mean, std).")
        return torch.from_numpy(normalize(self.read(index[1:])[None], self.mean, self.std)[0])


def _as_declared(block: Any, array: Any, index: Sequence[int | slice]) -> Array:
    """``block`` (read from ``array`` at ``index``) as numpy, if it is what ``array`` declares:
    its dtype and the shape of the region read. A dask array's chunks may hold other values
    than its metadata says (complex, strings, fewer pixels): refused, never silently cast."""
    block = np.asarray(block)
    expected = tuple(len(range(*i.indices(n))) for i, n in zip(index, array.shape) if isinstance(i, slice))
    where = tuple(i.indices(n)[0] if isinstance(i, slice) else int(i) for i, n in zip(index, array.shape))
    if block.dtype != np.dtype(array.dtype):
        raise ValueError(
            f"X declares dtype {np.dtype(array.dtype)}, but its data at index {where} is {block.dtype}: the chunks "
            "of a dask array must hold what its dtype says (fix the array's meta, or .astype() it)."
        )
    if block.shape != expected:
        raise ValueError(
            f"X declares a region of shape {expected} at index {where}, but reading it gave shape {block.shape}: "
            "the chunks of a dask array must have the sizes its chunks say (call X.compute_chunk_sizes(), "
            "or fix the function that builds them)."
        )
    return block


def _non_finite_message(index: Sequence[int | slice], first: Sequence[int]) -> str:
    """The numpy input's words for a non-finite value, at its index in the whole array."""
    position, k = [], 0
    for i in index:
        if isinstance(i, slice):
            position.append(int(i.start) + int(first[k]))
            k += 1
        else:
            position.append(int(i))
    return (
        f"X contains a non-finite value (NaN or inf) at index {tuple(position)}, found when reading "
        "it patch by patch. Replace such values (e.g. np.nan_to_num or inpainting) before denoising."
    )


def on_demand_images(X: Any, axes: str | None) -> tuple[list[OnDemandImage], str]:
    """The images of an on-demand array, one per sample, nothing read (a
    numpy array in a list with on-demand ones is checked whole; the others'
    values are checked as patches are read).

    Raises
    ------
    ValueError, TypeError
        For axes that do not fit, or a non-numeric dtype.
    """
    if isinstance(X, np.ndarray):  # in memory, in a list with arrays read on demand: checked whole
        layout = layout_of(check_image_array(X).shape, axes)
    else:
        layout = read_unread(X, axes).axes
    spatial = [X.shape[layout.index(a)] for a in _CANONICAL[2:] if a in layout]
    samples = X.shape[layout.index("S")] if "S" in layout else 1
    return [OnDemandImage(X, layout, s, [0] * len(spatial), spatial) for s in range(samples)], layout


def sample_blocks(images: Sequence[OnDemandImage], seed: int = 0) -> list[Array]:
    """A fixed random sample of raw ``(1, C, *block)`` float64 blocks of ``images``
    (:class:`OnDemandImage`), at most :data:`SAMPLE_PIXELS` pixels per channel
    together: all of small images, scattered blocks of large ones."""
    ndim = len(images[0].shape) - 1
    rng = np.random.default_rng(seed)
    total = sum(math.prod(im.shape[1:]) for im in images)
    if total <= SAMPLE_PIXELS:
        return [im.read([slice(0, n) for n in im.shape[1:]]).astype(np.float64)[None] for im in images]
    sizes = np.array([math.prod(im.shape[1:]) for im in images], dtype=np.float64)
    blocks, taken = [], 0
    while taken < SAMPLE_PIXELS:
        image = images[rng.choice(len(images), p=sizes / sizes.sum())]
        side = [min(b, n) for b, n in zip(SAMPLE_BLOCK[ndim], image.shape[1:])]
        corner = [int(rng.integers(0, n - s + 1)) for n, s in zip(image.shape[1:], side)]
        block = image.read([slice(c, c + s) for c, s in zip(corner, side)]).astype(np.float64)[None]
        blocks.append(block)
        taken += math.prod(side)
    return blocks
