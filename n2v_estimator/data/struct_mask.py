"""structN2V: the neighbours of a blind spot whose noise is correlated with its own, and their values scrambled.

A ``struct_mask`` parameter (n2v's 0/1 array, or a line ``(axis, span)``) is resolved into integer offsets from the
blind spot; in every batch, the pixels at those offsets around each blind spot get the values of random pixels of
the same sample and channel, so that the network cannot read the blind spot's noise from its neighbours.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from .blind_spot_grid import offset_positions, sampling_dtype
from .manipulators import MAX_NEIGHBOURHOOD

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import ArrayLike, NDArray

# The spatial axis (counted from the last) each name of the short form ``(axis, span)`` means.
_STRUCT_AXIS_FROM_END = {"x": -1, "horizontal": -1, "y": -2, "vertical": -2, "z": -3}


def resolve_struct_mask(
    struct_mask: ArrayLike | tuple[str, int] | None, ndim: int, patch_shape: Sequence[int] | None = None
) -> NDArray[np.int64]:
    """Turn a ``struct_mask`` parameter into the integer offsets it masks.

    Parameters
    ----------
    struct_mask : None, array-like of 0/1, or (axis, span)
        ``None``: plain N2V. An array with ``ndim`` odd-length dimensions centred
        on the blind spot (the n2v form; 1 means "mask this neighbour"); an
        array with fewer dimensions is aligned with the last spatial axes.
        ``(axis, span)``: the short form, a line of ``span`` (odd) pixels along
        ``axis`` in ``{"x", "horizontal", "y", "vertical", "z"}``.
    ndim : int
        Number of spatial dimensions of the data.
    patch_shape : tuple of int, optional
        The training patches the mask must fit in.

    Returns
    -------
    ndarray of shape (K, ndim), int64
        Offsets from the blind spot, the centre excluded (``K`` may be 0).

    Raises
    ------
    ValueError
        For a mask that is not 0/1, not centred (an even side), has more than
        ``ndim`` dimensions, is larger than ``patch_shape`` or holds more than
        :data:`~n2v_estimator.data.manipulators.MAX_NEIGHBOURHOOD` values; the
        sizes are checked before anything is computed from the values.
    """
    if struct_mask is None:
        return np.zeros((0, ndim), dtype=np.int64)
    if isinstance(struct_mask, (tuple, list)) and len(struct_mask) == 2 and isinstance(struct_mask[0], str):
        axis_name, span = struct_mask
        if axis_name.lower() not in _STRUCT_AXIS_FROM_END:
            raise ValueError(f"struct_mask axis {axis_name!r} is unknown; use one of {sorted(_STRUCT_AXIS_FROM_END)}.")
        axis = _STRUCT_AXIS_FROM_END[axis_name.lower()]
        if -axis > ndim:
            raise ValueError(f"struct_mask along {axis_name!r} needs 3D data (axes with Z).")
        if not isinstance(span, (int, np.integer)) or span < 1 or span % 2 == 0:
            raise ValueError(f"struct_mask span must be a positive odd integer, got {span!r}.")
        shape = [1] * ndim
        shape[axis] = int(span)
        _check_struct_mask_size(tuple(shape), patch_shape)
        array = np.ones(shape, dtype=bool)
    else:
        array = np.asarray(struct_mask)
        if array.ndim == 0 or array.ndim > ndim or any(s % 2 == 0 for s in array.shape):
            raise ValueError(
                f"struct_mask must have at most {ndim} dimensions, each of odd length "
                f"(centred on the blind spot); got shape {array.shape}."
            )
        _check_struct_mask_size((1,) * (ndim - array.ndim) + array.shape, patch_shape)
        if array.dtype == object or not np.isin(array, (0, 1)).all():
            raise ValueError("struct_mask as an array must hold only 0 and 1.")
        array = array.astype(bool).reshape((1,) * (ndim - array.ndim) + array.shape)
    centre = np.array(array.shape) // 2
    offsets = np.argwhere(array) - centre
    return offsets[np.any(offsets != 0, axis=1)].astype(np.int64)


def _check_struct_mask_size(shape: tuple[int, ...], patch_shape: Sequence[int] | None) -> None:
    """Refuse a struct mask of ``shape`` (one side per spatial axis) larger than the
    patches or than :data:`~n2v_estimator.data.manipulators.MAX_NEIGHBOURHOOD`, before its
    offsets are computed: every blind spot holds all of them (a 3001x3001 mask took 40 s and
    2.6 GiB to set up, then asked for 175 GiB per batch), and n2v's masks span a few pixels."""
    if patch_shape is not None and any(s > p for s, p in zip(shape, patch_shape)):
        raise ValueError(
            f"struct_mask of shape {shape} is larger than the training patches {tuple(patch_shape)} "
            "(patch_size); a struct mask must fit in a patch: use a smaller struct_mask (a line of a "
            "few pixels along the correlated axis, such as ('x', 5)) or a larger patch_size."
        )
    size = math.prod(shape)
    if size > MAX_NEIGHBOURHOOD:
        raise ValueError(
            f"struct_mask of shape {shape} spans {size} pixels; at most {MAX_NEIGHBOURHOOD} are allowed "
            f"(every blind spot holds them all): use a smaller struct_mask, such as ('x', 5)."
        )


def scramble_struct_neighbours(
    x: torch.Tensor,
    x_masked: torch.Tensor,
    mask: torch.Tensor,
    spots: torch.Tensor,
    struct_offsets: torch.Tensor,
    generator: torch.Generator,
    valid: torch.Tensor | None = None,
) -> None:
    """Give the structN2V neighbours of every blind spot, in ``x_masked`` (written in place), the values in ``x``
    of random pixels of the same sample and channel that are neither blind spots nor the neighbour itself.

    So no blind spot's own noisy value ever lands beside it, and no neighbour keeps its own (correlated) noise.
    Positions outside the patch are skipped, and so are neighbours that are blind spots themselves (they get a
    replacement value). A pixel that neighbours several blind spots gets one value; one whose sample and
    channel hold no other free pixel keeps its own.

    Parameters
    ----------
    x, x_masked : Tensor of shape (B, C, *spatial)
        The batch, and its masked copy.
    mask : bool Tensor of shape (B, C, *spatial)
        The blind spots.
    spots : int64 Tensor of shape (N, 2 + ndim)
        Sample, channel, spatial coordinates of the blind spots (or candidates, with ``valid``).
    struct_offsets : int64 Tensor of shape (K, ndim), on ``x.device``
        :func:`resolve_struct_mask`'s offsets.
    generator : torch.Generator on ``x.device``
    valid : bool Tensor of shape (N,), optional
        Which of ``spots`` are blind spots (default: all).

    Notes
    -----
    Nothing is selected or counted on the host: every (spot, offset) pair draws a source
    and those that must not write are masked out, so a GPU runs on.
    """
    batch, channels, *spatial = x.shape
    device, k = x.device, len(struct_offsets)
    rows, pixels = batch * channels, math.prod(spatial)
    coords, write = offset_positions(spots, struct_offsets, spatial)  # (N, K, ndim), (N, K)
    if valid is not None:
        write &= valid[:, None]
    clamped = [coords[..., d].clamp(0, size - 1) for d, size in enumerate(spatial)]
    row = (spots[:, 0] * channels + spots[:, 1])[:, None].expand(-1, k)
    target = row * pixels + _flat_index(clamped, spatial)  # flat (row, pixel) of each neighbour
    free = ~mask.reshape(-1)  # mask is (B, C, *spatial): flat index row * pixels + pixel
    write &= free[target]
    # The u-th free pixel other than the target, u uniform per pair over the row's other free
    # pixels: the first flat position where the running count of free pixels reaches the
    # row's start + u + 1, u skipping the target's own rank among them.
    running = free.cumsum(0)
    counts = free.reshape(rows, pixels).sum(dim=1)
    starts = counts.cumsum(0) - counts
    others = counts[row] - 1  # the target is free wherever it writes
    write &= others >= 1
    u = torch.rand(row.shape, generator=generator, device=device, dtype=sampling_dtype(device))
    pick = torch.minimum((u * others).long(), (others - 1).clamp_min(0))
    pick += pick >= running[target] - 1 - starts[row]  # the target's rank among its row's free pixels
    source = torch.searchsorted(running, starts[row] + pick + 1).clamp_max(rows * pixels - 1)
    values = x.reshape(-1)[source]  # a row without free pixels writes nowhere (all its pixels are spots)
    # Where several pairs land on one pixel, the last one writes (a maximum, not a race).
    order = torch.arange(write.numel(), device=device).reshape(write.shape)
    winner = torch.full((rows * pixels,), -1, dtype=torch.int64, device=device)
    winner.scatter_reduce_(0, target.reshape(-1), torch.where(write, order, -1).reshape(-1), "amax")
    scrambled = values.reshape(-1)[winner.clamp_min(0)].reshape(x.shape)
    x_masked.copy_(torch.where((winner >= 0).reshape(x.shape), scrambled, x_masked))


def _flat_index(coords: Sequence[torch.Tensor], spatial: Sequence[int]) -> torch.Tensor:
    """Row-major flat index of the per-axis coordinates ``coords`` in an array of shape ``spatial``."""
    flat = coords[0]
    for c, size in zip(coords[1:], spatial[1:]):
        flat = flat * size + c
    return flat
