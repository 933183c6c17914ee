"""Tiled, batched prediction with overlap, crop and stitch, and test-time augmentation."""

from __future__ import annotations

import functools
import itertools
import math
import operator
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
import torch

from ..data.axes import per_axis
from ..nets.geometry import round_up
from ..runtime.compute import autocast, fastest_layout
from ..runtime.progress import progress_bar

if TYPE_CHECKING:
    from numpy.typing import DTypeLike, NDArray

    from .._typing import Array, Shape
    from ..nets.geometry import NetworkGeometry

#: Where a tile lies along one axis: it reads ``[start, stop)`` and writes ``[write_start, write_stop)``.
AxisTile: TypeAlias = tuple[int, int, int, int]
#: A tile: its sample, and where it lies along each spatial axis.
Tile: TypeAlias = tuple[int, tuple[AxisTile, ...]]
#: A test-time augmentation of ``(B, C, *spatial)`` tensors and its inverse.
Augmentation: TypeAlias = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def mirror_index(start: int, stop: int, length: int) -> NDArray[np.intp]:
    """Indices into an axis of ``length`` for positions ``[start, stop)`` that may
    lie outside it: mirrored at the ends with the edge pixel repeated (numpy's
    ``"symmetric"`` padding, repeated for reaches longer than the axis)."""
    index = np.arange(start, stop) % (2 * length)
    return np.where(index < length, index, 2 * length - 1 - index)


def tile_geometry(
    tile_size: int | Sequence[int] | None, tile_overlap: int | Sequence[int] | None, geometry: NetworkGeometry
) -> tuple[Shape, Shape]:
    """Tile side and overlap per spatial axis for the network of ``geometry``.

    Parameters
    ----------
    tile_size, tile_overlap : int, tuple of int or None
        The estimator's parameters. ``None``: tiles of 256 (2D) or 64x128x128
        (3D), or twice the overlap where that is larger, and an overlap of the
        network's :attr:`NetworkGeometry.overlap` (at most half a tile: see
        :func:`warn_if_seams`).
    geometry : NetworkGeometry
        Of the network that predicts: tiles and overlaps are rounded up to
        multiples of its pooling factor ``2**depth``.

    Returns
    -------
    tile_shape, overlap : tuple of int
        With the defaults, every tile is at least twice the network's overlap (a depth-3
        network with 5x5 kernels: 416 pixels), so that the overlap is never cut.

    Raises
    ------
    ValueError
        If the (rounded) overlap is not smaller than the tile.
    """
    ndim, multiple = geometry.ndim, geometry.pooling
    if tile_size is None:  # large enough for the network's whole overlap: tiles agree with the whole image
        tile: Shape = (256, 256) if ndim == 2 else (64, 128, 128)
        tile = tuple(max(round_up(t, multiple), 2 * geometry.overlap) for t in tile)
    else:
        tile = per_axis(tile_size, ndim, "tile_size")
    tile = tuple(round_up(t, multiple) for t in tile)
    if tile_overlap is None:
        return tile, tuple(min(geometry.overlap, (t // 2) // multiple * multiple) for t in tile)
    overlap = tuple(round_up(o, multiple) for o in per_axis(tile_overlap, ndim, "tile_overlap", minimum=0))
    if any(o >= t for t, o in zip(tile, overlap)):
        raise ValueError(
            f"tile_overlap={tile_overlap!r} (rounded up to {overlap}) must be smaller "
            f"than tile_size (rounded up to {tile}); both are multiples of 2**depth={multiple}."
        )
    return tile, overlap


def warn_if_seams(
    tile_shape: Sequence[int],
    overlap: Sequence[int],
    extended: Sequence[int],
    geometry: NetworkGeometry,
    tile_overlap: int | Sequence[int] | None,
) -> None:
    """Warn where tiles of ``tile_shape`` with ``overlap`` (the overlap cut to half a tile of a
    ``tile_size`` the user chose, ``tile_overlap`` left to ``None``) cut an axis of ``extended``
    pixels with less overlap than the network's reach needs: the tiles then disagree with the whole
    image by a little along their seams."""
    if tile_overlap is not None:
        return
    short = [d for d, (t, o, n) in enumerate(zip(tile_shape, overlap, extended)) if n > t and o < geometry.overlap]
    if short:
        warnings.warn(
            f"tile_size {tuple(tile_shape)} leaves an overlap of {tuple(overlap)} pixels between tiles where this "
            f"network needs {geometry.overlap} for tiles to agree with the whole image: the output shows faint seams. "
            f"Use tiles of at least {2 * geometry.overlap} pixels (or tile_size=None) for an exact result.",
            UserWarning,
            stacklevel=4,
        )


def tiles_per_batch(tile_shape: Sequence[int], spatial: Sequence[int], training_pixels: int) -> int:
    """How many tiles to predict at once: as many pixels as a training batch
    (``training_pixels``) and at least one default 2D tile's worth, since
    prediction needs far less memory than training; stacks of small images are
    then predicted many at a time."""
    tile_pixels = math.prod(min(t, n) for t, n in zip(tile_shape, spatial))
    return max(1, max(training_pixels, 256 * 256) // tile_pixels)


def _shape_of_tile(tile: Tile) -> Shape:
    """Shape of a ``(sample, per-axis bounds)`` tile: tiles of one shape share a batch."""
    return tuple(stop - start for start, stop, _, _ in tile[1])


def _read_tile(images: Array, sample: int, combo: Sequence[AxisTile], border: Sequence[tuple[int, int]]) -> Array:
    """One tile of ``images[sample]``: ``combo`` holds its ``(start, stop, ...)``
    per spatial axis in the coordinates of the image extended by ``border``
    (``(before, after)`` mirrored pixels per axis); a slice of the image where the tile lies inside it."""
    spatial = images.shape[2:]
    bounds = [(start - b, stop - b) for (start, stop, _, _), (b, _) in zip(combo, border)]
    if all(0 <= lo and hi <= n for (lo, hi), n in zip(bounds, spatial)):
        return images[(sample, slice(None)) + tuple(slice(lo, hi) for lo, hi in bounds)]
    index = np.ix_(*[mirror_index(lo, hi, n) for (lo, hi), n in zip(bounds, spatial)])
    return images[sample][(slice(None),) + index]


def _extended_tiles(length: int, tile: int, overlap: int, multiple: int, border: tuple[int, int]) -> list[AxisTile]:
    """:func:`axis_tiles` of an axis extended by ``border = (before, after)`` mirrored
    pixels, each writing only its part of the axis itself (in extended
    coordinates); tiles that would write nothing are dropped."""
    before, after = border
    tiles = []
    for start, stop, write_start, write_stop in axis_tiles(length + before + after, tile, overlap, multiple):
        write_start, write_stop = max(write_start, before), min(write_stop, before + length)
        if write_stop > write_start:
            tiles.append((start, stop, write_start, write_stop))
    return tiles


def axis_tiles(length: int, tile: int, overlap: int, multiple: int = 1) -> list[AxisTile]:
    """Tiles along one axis.

    Parameters
    ----------
    length : int
        Length of the axis.
    tile : int
        Tile side (input, context included), a multiple of ``multiple``.
    overlap : int
        Minimum overlap between neighbouring tiles, a multiple of ``multiple``
        smaller than ``tile``.
    multiple : int
        Every tile starts at a multiple of this (the network's down-sampling
        factor), so that all tiles see the same pooling grid as the whole image.

    Returns
    -------
    list of (start, stop, write_start, write_stop)
        Each tile reads ``[start, stop)`` and writes ``[write_start, write_stop)``
        of the output. The written parts cover the axis exactly once, and a
        boundary between two tiles lies in the middle of their overlap, so at
        least ``overlap // 2`` pixels of context surround every written pixel
        that is not at the image border. The last tile may be shorter than
        ``tile``; like the whole image, it is padded by the network itself.
    """
    if length <= tile:
        return [(0, length, 0, length)]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(round_up(length - tile, multiple))
    stops = [min(s + tile, length) for s in starts]
    bounds = [0] + [(stops[i - 1] + starts[i]) // 2 for i in range(1, len(starts))] + [length]
    return [(s, e, bounds[i], bounds[i + 1]) for i, (s, e) in enumerate(zip(starts, stops))]


def augmentations(ndim: int) -> list[Augmentation]:
    """Invertible test-time augmentations as ``(forward, inverse)`` pairs.

    2D: the 8 symmetries of the square (quarter turns, with and without a
    flip); the network is fully convolutional, so non-square tiles are turned
    too. 3D: the 8 combinations of flips along Z, Y and X, which keep each
    axis in place and so are valid for anisotropic volumes.
    """
    spatial = list(range(2, 2 + ndim))
    choices: list[tuple[int, tuple[int, ...]]]
    if ndim == 2:
        choices = [(k, dims) for k in range(4) for dims in ((), (spatial[-1],))]
    else:
        choices = [
            (0, tuple(d for d, f in zip(spatial, chosen) if f))
            for chosen in itertools.product([False, True], repeat=ndim)
        ]

    def pair(k: int, dims: tuple[int, ...]) -> Augmentation:
        def forward(x: torch.Tensor) -> torch.Tensor:
            x = torch.flip(x, dims) if dims else x
            return torch.rot90(x, k, dims=(-2, -1)) if k else x

        def inverse(x: torch.Tensor) -> torch.Tensor:
            x = torch.rot90(x, -k, dims=(-2, -1)) if k else x
            return torch.flip(x, dims) if dims else x

        return forward, inverse

    return [pair(k, dims) for k, dims in choices]


def predict_tiled(
    model: torch.nn.Module,
    images: Array,
    tile_shape: Sequence[int],
    tile_overlap: Sequence[int],
    batch_size: int,
    device: torch.device,
    multiple: int = 1,
    tta: bool = False,
    verbose: bool | int | str = False,
    prepare: Callable[[Array], Array] | None = None,
    finish: Callable[[Array], Array] | None = None,
    dtype: DTypeLike = np.float32,
    precision: str = "32",
    out_channels: int | None = None,
    border: Sequence[int | tuple[int, int]] | None = None,
) -> Array:
    """Apply ``model`` to every image in tiles.

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``(B, C, *tile)`` to the same shape; used in eval mode.
    images : ndarray of shape (S, C, *spatial)
        Images (any numeric dtype; ``prepare`` turns a batch into network input).
    tile_shape : tuple of int
        Tile side per spatial axis (context included).
    tile_overlap : tuple of int
        Minimum overlap per spatial axis.
    batch_size : int
        Tiles predicted together.
    device : torch.device
    multiple : int
        The network's down-sampling factor; tile sides, overlaps and starts are
        multiples of it (see :func:`axis_tiles`).
    tta : bool
        Average the predictions of the :func:`augmentations` of every tile.
    verbose : bool or "auto"
        Show a progress bar over tile batches (``"auto"``: once a few seconds have passed).
    prepare : callable, optional
        Applied to each ``(B, C, *tile)`` numpy batch before the network
        (normalisation); must return float32.
    finish : callable, optional
        Applied to each predicted numpy batch before it is stitched
        (de-normalisation).
    dtype : numpy dtype
        Of the returned array.
    precision : {"32", "bf16", "16-mixed"}
        Autocast precision of the network; its output is taken back to float32.
    out_channels : int, optional
        Channels of the network's output, if not ``C`` (a probabilistic
        network's prior mean and scale: ``2C``).
    border : tuple of int or of (before, after) pairs, optional
        Mirrored pixels added on each side of every spatial axis before the
        network sees the image (numpy's ``"symmetric"`` padding, read tile by
        tile, never held whole); multiples of ``multiple``. See
        :func:`n2v_estimator.nets.geometry.border_width`.

    Returns
    -------
    ndarray of shape (S, out_channels or C, *spatial)
        Only this array and two batches of tiles are held in memory: tiles are
        prepared and finished one batch at a time, and on a GPU batch ``i + 1`` is
        predicted while the host finishes and stitches batch ``i``.
    """
    n_samples, _, *spatial = images.shape
    ndim = len(spatial)
    widths = (0,) * ndim if border is None else tuple(border)
    sides = [(b, b) if isinstance(b, (int, np.integer)) else b for b in widths]  # (before, after) per axis
    per_axis = [_extended_tiles(n, t, o, multiple, b) for n, t, o, b in zip(spatial, tile_shape, tile_overlap, sides)]
    tiles = [(s, combo) for s in range(n_samples) for combo in itertools.product(*per_axis)]
    # Tiles of one shape are batched together; only the last along an axis may be shorter.
    tiles.sort(key=_shape_of_tile)
    transforms = augmentations(ndim) if tta else None
    output = np.empty((n_samples, out_channels or images.shape[1], *spatial), dtype=dtype)
    model.eval()
    layout = fastest_layout(model, precision)
    batches = []
    for _, same_shape in itertools.groupby(tiles, key=_shape_of_tile):
        group = list(same_shape)
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    pending = None  # the batch before: its prediction on its way back to the host
    with torch.inference_mode():
        for chunk in progress_bar(batches, desc="predict", unit="batch", verbose=verbose):
            batch = np.stack([_read_tile(images, s, combo, sides) for s, combo in chunk])
            if prepare is not None:
                batch = prepare(batch)
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            if device.type == "cuda":  # page-locked, so that the copy overlaps the work
                x = x.pin_memory()
            x = x.to(device, non_blocking=True)
            with autocast(device, precision):
                if transforms:
                    predictions = (inverse(model(layout(forward(x)))).float() for forward, inverse in transforms)
                    y = functools.reduce(operator.add, predictions) / len(transforms)
                else:
                    y = model(layout(x))
            # The device works on this batch while the host stitches the one before.
            if pending is not None:
                _stitch(output, *pending, sides, finish)
            pending = (_to_host(y.float()), chunk)
        if pending is not None:
            _stitch(output, *pending, sides, finish)
    return output


def _to_host(y: torch.Tensor) -> Callable[[], Array]:
    """Start copying the prediction ``y`` to the host without waiting for it; ``()`` of the
    result waits and gives the numpy array. On a GPU the copy goes to page-locked memory
    after the work queued before it, and the host runs on."""
    if y.device.type != "cuda":
        return lambda: y.cpu().numpy()
    host = y.to("cpu", non_blocking=True)
    done = torch.cuda.Event()
    done.record()

    def wait() -> Array:
        done.synchronize()
        return host.numpy()

    return wait


def _stitch(
    output: Array,
    prediction: Callable[[], Array],
    chunk: Sequence[Tile],
    border: Sequence[tuple[int, int]],
    finish: Callable[[Array], Array] | None,
) -> None:
    """Write the tiles of ``chunk`` (``prediction()`` gives their ``(B, C, *tile)``
    prediction) into ``output``, context cropped; ``finish`` applied first."""
    y = prediction()
    if finish is not None:
        y = finish(y)
    for out_tile, (s, combo) in zip(y, chunk):
        src = tuple(slice(lo - a, hi - a) for a, _, lo, hi in combo)
        dst = tuple(slice(lo - b, hi - b) for (_, _, lo, hi), (b, _) in zip(combo, border))
        output[(s, slice(None)) + dst] = out_tile[(slice(None),) + src]
