"""Where the blind spots go: one per cell of a randomly shifted stratified grid, for a whole batch in torch.

A blind spot is a row ``(sample, channel, *spatial coordinates)`` of an integer tensor. A batch's candidate spots
come with a flag each that says whether it is a blind spot, so that their number depends on the batch's shape alone
and nothing waits for the device to count them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from collections.abc import Sequence


def sampling_dtype(device: torch.device | str) -> torch.dtype:
    """float64 for exact sampling where the device has it (Apple MPS does not)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def grid_cell_side(masked_pixel_percentage: float, ndim: int) -> float:
    """Side of the stratification cell holding one blind spot: ``(100/p)**(1/ndim)``."""
    return (100.0 / masked_pixel_percentage) ** (1.0 / ndim)


def candidate_spots(
    shape: Sequence[int], masked_pixel_percentage: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidate blind spots of a batch of ``shape = (B, C, *spatial)``: ``(spots, valid)``.

    Each ``(sample, channel)`` gets one candidate per cell of a grid of side :func:`grid_cell_side`, shifted by
    a random phase and jittered within the cell. Cells are cut at whole pixels (so they never share a pixel) and
    candidates falling outside the patch are not blind spots, so the expected density is exactly the requested
    percentage. A ``(sample, channel)`` that would get no blind spot (tiny patches, low percentages) gets one at
    a random pixel.

    Returns
    -------
    spots : int64 Tensor of shape (N, 2 + ndim), on ``generator``'s device
        Sample, channel, spatial coordinates: one per grid cell of every ``(sample, channel)`` (cell order, which
        within a sample is the pixels' row-major order), then one random pixel per ``(sample, channel)``.
        Candidates outside the patch are clamped into it.
    valid : bool Tensor of shape (N,)
        The blind spots: the cells' candidates inside the patch, and the random pixel of a ``(sample, channel)``
        left without one. ``N`` depends on ``shape`` alone, so nothing here waits for the device to know a count
        (a GPU runs on).
    """
    device = generator.device
    batch, channels, *spatial = shape
    ndim = len(spatial)
    n_rows = batch * channels  # one row per (sample, channel)
    side = grid_cell_side(masked_pixel_percentage, ndim)
    cells = [math.ceil(size / side) + 1 for size in spatial]
    dtype = sampling_dtype(device)
    phase = torch.rand((n_rows, ndim), generator=generator, device=device, dtype=dtype) * side
    jitter = torch.rand((n_rows, *cells, ndim), generator=generator, device=device, dtype=dtype)
    coords, inside = [], torch.ones((n_rows, *cells), dtype=torch.bool, device=device)
    for d, size in enumerate(spatial):
        index = torch.arange(cells[d], device=device).reshape([1] + [-1 if i == d else 1 for i in range(ndim)])
        shift = phase[:, d].reshape([n_rows] + [1] * ndim)
        low = torch.floor(index * side - shift)
        high = torch.floor((index + 1) * side - shift)
        coord = (low + torch.floor(jitter[..., d] * (high - low))).long()
        inside &= (coord >= 0) & (coord < size)
        coords.append(coord.clamp(0, size - 1).reshape(n_rows, -1))
    inside = inside.reshape(n_rows, -1)
    # A (sample, channel) without a spot inside gets one at a random pixel.
    pick = torch.randint(math.prod(spatial), (n_rows,), generator=generator, device=device)
    fallback = torch.unravel_index(pick, tuple(spatial))
    rows = torch.arange(n_rows, device=device)
    row = torch.cat([rows[:, None].expand_as(inside).reshape(-1), rows])
    spatial_coords = [torch.cat([c.reshape(-1), f]) for c, f in zip(coords, fallback)]
    spots = torch.stack([row // channels, row % channels, *spatial_coords], dim=1)
    valid = torch.cat([inside.reshape(-1), ~inside.any(dim=1)])
    return spots, valid


def blind_spot_mask(zeros: torch.Tensor, spots: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The bool mask, of ``zeros``' shape and memory layout, of the ``valid`` ones of ``spots``.

    ``zeros`` is an int32 tensor of zeros of the batch's shape, which counts the valid spots on each pixel (it is
    written to); counting, rather than selecting the valid spots, keeps the host from waiting for the device.
    """
    return zeros.index_put_(tuple(spots.T), valid.to(torch.int32), accumulate=True) > 0


def offset_positions(
    spots: torch.Tensor, offsets: torch.Tensor, spatial: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions ``spots[:, 2:] + offsets``, shape ``(N, K, ndim)``, and whether
    each lies inside a patch of shape ``spatial``, shape ``(N, K)``."""
    coords = spots[:, None, 2:] + offsets[None, :, :]
    inside = torch.ones(coords.shape[:2], dtype=torch.bool, device=spots.device)
    for d, size in enumerate(spatial):
        inside &= (coords[..., d] >= 0) & (coords[..., d] < size)
    return coords, inside
