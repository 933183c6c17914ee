"""Arrays larger than memory: dask arrays in ``transform``, computed chunk by chunk.

Each chunk of ``X`` is denoised with a halo of its neighbours' pixels around it
(:func:`halo_width`), by the same in-memory path as a numpy ``X``, and only the
chunk's own pixels are kept. The U-Net sees nothing beyond its receptive field,
so with a halo that covers it (and the pooling grid of the whole image, see
:func:`_denoise_block`) a chunk's pixels come out as the whole image's do.

dask is an optional dependency: it is imported inside the functions only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._extras import install_command
from ..data.axes import UnreadImages, check_finite, from_canonical, to_canonical
from ..data.normalize import output_dtype
from ..nets.geometry import NetworkGeometry

if TYPE_CHECKING:
    from types import ModuleType

    from .._typing import Array, Description
    from .denoise import Denoiser


def _import_dask() -> tuple[ModuleType, Any]:
    """``dask.array`` and ``dask.delayed``, or an ``ImportError`` saying how to install them."""
    try:
        import dask
        import dask.array as da
    except ImportError as exc:  # e.g. dask without its array extra (numpy, toolz)
        raise ImportError(
            f"Denoising dask arrays needs dask with its array extra ({exc}); install it with: {install_command('dask')}"
        ) from exc
    return da, dask.delayed


def halo_width(description: Description, neighborhood_radius: int = 0) -> int:
    """Pixels of context each chunk borrows from its neighbours, per side and spatial axis.

    The network's :func:`~n2v_estimator.nets.geometry.receptive_radius`, plus
    ``2**depth - 1`` that a block may drop to start (and end) on the pooling
    grid of the whole image, plus, for a probabilistic network,
    ``neighborhood_radius``: the blind prior replaces every masked pixel by a
    neighbour within that radius, so a masked pixel at the edge of the
    receptive field must find the same neighbours as in the whole image. Default network (depth 2, kernel 3): 29, or 31 with the
    default radius 2 for a probabilistic one; depth 1: 11; a blind-spot network
    (which masks nothing): 50.

    Parameters
    ----------
    description : dict
        The network's description (``model_.description``).
    neighborhood_radius : int
        The estimator's ``neighborhood_radius``, counted for probabilistic networks only.

    Returns
    -------
    int
    """
    return NetworkGeometry.of(description).chunk_halo(neighborhood_radius)


def transform_lazy(images: UnreadImages, denoise: Denoiser, return_std: bool) -> Any:
    """Denoise a dask array lazily, chunk by chunk: ``transform`` for dask arrays.

    Parameters
    ----------
    images : UnreadImages
        The dask array ``X`` as :func:`n2v_estimator.data.axes.fitted_images` judged it, unread: its
        layout (with the channels seen in ``fit``) and the dtype numpy input of its dtype is read as.
    denoise : Denoiser
        The fitted network's in-memory denoising of canonical ``(S, C, *spatial)`` images, called on
        each chunk (shipped once to each dask worker).
    return_std : bool
        Also return the posterior standard deviation (probabilistic models only).

    Returns
    -------
    dask.array.Array, or (dask.array.Array, dask.array.Array) with ``return_std``
        Of ``X``'s shape and chunks (``C``, if present, in one chunk), with the
        dtype numpy ``transform`` gives (float64 for float64 input and integers
        wider than 16 bits, else float32). Nothing is computed until the result
        is: each output chunk then denoises its chunk of ``X`` with a halo of
        :func:`halo_width` pixels (29 for the default network) borrowed from
        its neighbours along each spatial axis, through the in-memory path
        (tiles, ``tta``, the blind prior), and keeps only the chunk's own
        pixels. For plain Noise2Void the result is the in-memory
        ``transform(X.compute())`` up to float32 rounding (with a
        ``tile_overlap`` below the default, up to the tiler's own overlap
        error). A probabilistic model's blind prior draws its random
        replacements per chunk, so its result differs from the in-memory one
        by those draws only (as two runs on differently tiled data would).

    Raises
    ------
    ValueError
        At once, for ``return_std`` with a plain model (``X`` itself was judged at the entrance).
        Values (non-finite, or too far from the training data's range) are checked when a chunk is
        computed.

    Notes
    -----
    Memory: a task holds one chunk plus its halo, its float32 normalised copy,
    its output and one batch of tiles (as many pixels as a training batch, at
    least 256x256, times 8 with ``tta``); a probabilistic model holds twice the
    channels for the prior. Each worker thread runs one task at a time. The
    halo adds ``(1 + 2 * halo / side)**ndim - 1`` to the work: 24% for
    512x512 chunks and the default network, 6% for 2048x2048. Chunks thinner
    than the halo are merged with a neighbour for the computation (the result
    is chunked like ``X`` again).

    With ``tta`` and an image side longer than a tile and not a multiple of
    ``2**depth``, the in-memory tiler pools the flipped copies of its inner
    tiles on another grid than those of its last tile; chunks follow the last
    tile's grid (that of the whole image) everywhere.

    The denoiser enters the graph as one key: a distributed cluster ships it to
    each worker once, not with every task. Progress bars are off inside tasks;
    use dask's own (``dask.diagnostics.ProgressBar``, the dashboard). With the
    threaded scheduler, tasks share the process's torch threads: on a CPU, one
    dask thread per few cores, or ``torch.set_num_threads``, avoids oversubscription.
    """
    da, delayed = _import_dask()
    X, layout, dtype = images.array, images.axes, output_dtype(images.dtype)
    network = denoise.model.description
    if return_std and network["noise_model"] is None:
        # The words of predict.denoise, which the in-memory transform raises.
        raise ValueError("return_std=True needs a probabilistic model: fit with noise_model set.")

    halo = halo_width(network, denoise.neighborhood_radius)
    spatial = [i for i, letter in enumerate(layout) if letter in "ZYX"]
    if "C" in layout:
        X = X.rechunk({layout.index("C"): -1})
    target_chunks = X.chunks
    depth, chunks = {}, list(X.chunks)
    for axis in spatial:
        if X.shape[axis] <= halo:  # the whole axis is less than one halo: one chunk, no halo
            depth[axis], chunks[axis] = 0, (X.shape[axis],)
        else:  # dask's overlap takes the halo from the next chunk only
            depth[axis] = halo
            chunks[axis] = da.overlap.ensure_minimum_chunksize(halo, X.chunks[axis])
    X = X.rechunk(tuple(chunks))
    padded = da.overlap.overlap(X, depth=depth, boundary="none")  # chunks fit the halo: no rechunk

    # One key for the denoiser (and the network it holds): pickled once into the graph, sent once to each worker.
    from dask.base import tokenize  # there: _import_dask found dask

    shipped = delayed(denoise, pure=True, traverse=False, name=f"n2v-denoiser-{tokenize(denoise)}")

    geometry = NetworkGeometry.of(network)
    # Where the whole image's pooling grid starts before each axis (non-zero for networks imported from n2v).
    phases = {
        axis: geometry.grid_phase(n) for axis, (letter, n) in enumerate(zip(layout, X.shape)) if letter not in "SC"
    }
    settings = dict(
        layout=layout,
        depth=depth,
        shape=X.shape,
        multiple=geometry.pooling,
        in_dtype=X.dtype,
        out_dtype=dtype,
        phases=phases if geometry.centred_grid else None,
    )
    if not return_std:
        out = da.map_blocks(
            _denoise_block,
            padded,
            shipped,
            **settings,
            return_std=False,
            chunks=X.chunks,
            dtype=dtype,
            meta=np.empty((0,) * X.ndim, dtype),
            token="n2v-denoise",
        )
        return out if out.chunks == target_chunks else out.rechunk(target_chunks)
    both = da.map_blocks(
        _denoise_block,
        padded,
        shipped,
        **settings,
        return_std=True,
        chunks=((2,),) + X.chunks,
        new_axis=0,
        dtype=dtype,
        meta=np.empty((0,) * (X.ndim + 1), dtype),
        token="n2v-denoise-std",
    )
    out = (both[0], both[1])
    return tuple(o if o.chunks == target_chunks else o.rechunk(target_chunks) for o in out)


def _denoise_block(
    block: Array,
    denoise: Denoiser,
    *,
    layout: str,
    depth: Mapping[int, int],
    shape: Sequence[int],
    multiple: int,
    in_dtype: np.dtype[Any],
    out_dtype: np.dtype[Any],
    return_std: bool,
    phases: Mapping[int, int] | None = None,
    block_info: Mapping[int | None, Mapping[str, Any]],
) -> Array:
    """Denoise one chunk of ``X`` from ``block`` (the chunk and its halo); return the chunk's pixels.

    The block is first cut, by fewer than ``multiple`` (``2**depth``) pixels a
    side, to start on a multiple of ``multiple`` and to end the same distance
    before the image's end modulo ``multiple``: the U-Net pools on a grid that
    starts at its input's start, and with ``tta`` flipped copies pool on one
    that starts at its end, so the block then pools as the whole image does.
    A network imported from n2v pools on a grid that starts ``phases[axis]`` pixels
    before the image (:meth:`NetworkGeometry.grid_phase`): the block is not cut, and
    ``denoise`` is told where that grid starts before the block.
    """
    declared = tuple(b - a for a, b in block_info[0]["array-location"])
    if block.shape != declared or block.dtype != in_dtype:
        problem = f"shape {block.shape}" if block.shape != declared else f"dtype {block.dtype}"
        expected = f"shape {declared}" if block.shape != declared else f"dtype {in_dtype}"
        raise ValueError(
            f"A chunk of X (at {tuple(a for a, _ in block_info[0]['array-location'])}) holds {problem}, but X "
            f"declares {expected}: the chunks of a dask array must hold what its shape, chunks and dtype say "
            "(call X.compute_chunk_sizes(), or fix the array's meta or the function that builds its chunks)."
        )
    location = block_info[None]["array-location"][-len(shape) :]  # the chunk's own (start, stop) per axis
    origin, cut, keep, block_phases = [], [], [], {}
    for axis, (start, stop) in enumerate(location):
        before = min(depth.get(axis, 0), start)  # "none" boundary: no halo at the image's edges
        first, end = start - before, start - before + block.shape[axis]  # the block's extent in X
        origin.append(first)
        if layout[axis] in "SC":
            cut.append(slice(None))
            keep.append(slice(None))
            continue
        if phases is None:
            lead, tail = -first % multiple, (end - shape[axis]) % multiple
        else:
            lead, tail = 0, 0
            block_phases[layout[axis]] = (first + phases[axis]) % multiple
        cut.append(slice(lead, block.shape[axis] - tail))
        keep.append(slice(before - lead, before - lead + stop - start))
    if block.dtype.kind == "O":  # numbers in objects, judged at the entrance: read as numpy input is
        block = block.astype(np.float64)
    try:
        if block.dtype.kind == "f":  # its dtype and layout were judged unread, at the entrance; its values now
            check_finite(block)
    except ValueError as exc:
        raise ValueError(f"{exc} (The index is within the block of X that starts at {tuple(origin)}.)") from exc
    canonical = to_canonical(block[tuple(cut)], layout)
    grid_phase = tuple(block_phases[a] for a in "ZYX" if a in block_phases) if phases is not None else None
    # No progress bars inside tasks.
    denoised = denoise(canonical, dtype=out_dtype, return_std=return_std, verbose=False, grid_phase=grid_phase)
    out = [from_canonical(o, layout)[tuple(keep)] for o in (denoised if isinstance(denoised, tuple) else [denoised])]
    return np.stack(out) if return_std else np.ascontiguousarray(out[0])
