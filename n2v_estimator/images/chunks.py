"""Image files as dask arrays, chunk by chunk: the chunks a lazy read is cut into, the readers dask calls for each
(a file mapped only while one block of it is read, a zarr array that names its store when a chunk is damaged), and
a dask array stored into a file or a zarr array one band of chunks at a time.

dask is optional (the extra ``[dask]``): it is imported when a lazy array is made or stored.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeGuard

import numpy as np

from ..data.axes import is_dask_array
from .errors import require

if TYPE_CHECKING:
    from types import EllipsisType

    import dask.array as da
    from numpy.typing import ArrayLike

    from .._typing import Array, PathLike, Shape

#: An image as a file gives it: in memory (or memory-mapped), or a dask array that reads on demand.
ImageArray: TypeAlias = "Array | da.Array"
#: A zarr array: zarr 2's and zarr 3's are different classes (the package reads with either), and tifffile's
#: zarr view of a TIFF file is a third.
ZarrArray: TypeAlias = Any
#: What indexes one block of an array: an index or a slice per axis, or ``...`` for all of it.
Index: TypeAlias = "int | slice | EllipsisType | tuple[int | slice | EllipsisType, ...]"

# Side of a lazily read chunk along each spatial axis: 1024 x 1024 pixels in 2D (4 MiB of float32,
# large against the halo of a few dozen pixels the denoiser adds around it); 256**3 voxels in 3D
# (64 MiB), where 1024**3 would not fit a worker's memory.
LAZY_CHUNK_SIDE = 1024
LAZY_CHUNK_SIDE_3D = 256


def is_lazy(data: ImageArray) -> TypeGuard[da.Array]:
    """Whether ``data`` is a dask array, read or written chunk by chunk (without importing dask)."""
    return is_dask_array(data)


def lazy_chunks(shape: Sequence[int], axes: str | None, storage_chunks: Sequence[int] | None = None) -> Shape:
    """Chunks for a lazily read array of ``shape``: about :data:`LAZY_CHUNK_SIDE`
    pixels along each spatial axis (:data:`LAZY_CHUNK_SIDE_3D` in 3D), all
    channels together, one sample at a time; each a multiple of the file's own
    ``storage_chunks`` (so that no stored chunk is read twice), cut to ``shape``.
    ``axes=None``: the last two axes are ``Y`` and ``X``, the others samples.
    """
    layout = axes if axes is not None else "S" * (len(shape) - 2) + "YX"
    side = LAZY_CHUNK_SIDE_3D if "Z" in layout else LAZY_CHUNK_SIDE
    chunks = []
    for position, (length, letter) in enumerate(zip(shape, layout)):
        stored = max(1, int(storage_chunks[position])) if storage_chunks is not None else 1
        wanted = side if letter in "ZYX" else length if letter == "C" else 1
        chunks.append(max(1, min(length, max(stored, wanted // stored * stored))))
    return tuple(chunks)


def rechunk_for_axes(array: da.Array, axes: str | None) -> da.Array:
    """A dask ``array`` chunked as :func:`lazy_chunks` chunks one of these ``axes``
    (the file named none, or other ones): unchanged where it already is."""
    chunks = lazy_chunks(array.shape, axes)
    return array if array.chunksize == chunks else array.rechunk(chunks)


# ---------------------------------------------------------------- reading
class _MappedFile:
    """An array stored contiguously in a file, mapped only while one block of it is
    read or written. ``dask.array.from_array`` takes it as it is (it copies, that is
    reads whole, any array with a ``copy`` method), ``dask.array.store`` writes into
    it, and the process holds one block at a time, not every page a long-lived
    memory map has touched. Pickles as its file name and place (a dask worker
    maps the file itself)."""

    def __init__(self, memmap: np.memmap[Any, np.dtype[Any]], mode: Literal["r", "r+"] = "r") -> None:
        self.filename, self.offset, self.mode = str(memmap.filename), int(memmap.offset), mode
        self.shape, self.dtype, self.ndim = tuple(memmap.shape), memmap.dtype, memmap.ndim
        self.order: Literal["C", "F"] = "F" if memmap.flags.f_contiguous and not memmap.flags.c_contiguous else "C"

    def _map(self) -> np.memmap[Any, np.dtype[Any]]:
        return np.memmap(self.filename, self.dtype, self.mode, self.offset, self.shape, self.order)

    def __getitem__(self, key: Index) -> Array:
        return np.array(self._map()[key])  # a copy: the map closes as it goes

    def __setitem__(self, key: Index, value: ArrayLike) -> None:
        self._map()[key] = value


class ChunkReader:
    """A zarr array that names its store when a chunk cannot be read (a damaged or
    truncated chunk raises the codec's own error, which names no file)."""

    def __init__(self, array: ZarrArray, source: PathLike) -> None:
        self.array, self.source = array, str(source)
        self.shape, self.dtype, self.ndim = tuple(array.shape), np.dtype(array.dtype), len(array.shape)

    def __getitem__(self, key: Index) -> Array:
        try:
            return np.asarray(self.array[key])
        except Exception as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise ValueError(
                f"{self.source}: the data at {_region(key, self.shape)} could not be read ({type(exc).__name__}: "
                f"{reason[:300]}); the file or store is damaged there."
            ) from exc


def _region(key: Index, shape: Shape) -> str:
    key = key if isinstance(key, tuple) else (key,)
    if key == (Ellipsis,):
        return "any index"
    parts = []
    for k, n in zip(key, shape):
        if isinstance(k, slice):
            start, stop, _ = k.indices(n)
            parts.append(f"{start}:{stop}")
        else:
            parts.append(str(k))
    return "[" + ", ".join(parts) + "]"


def _dask_reading(reader: _MappedFile | ChunkReader, chunks: Shape) -> da.Array:
    """A dask array whose chunks ``reader`` reads when they are computed (under a name of
    its own: two reads of one file are two arrays, as the file may change between them)."""
    da = require("dask.array", "dask", "Reading large images lazily")
    meta = np.empty((0,) * reader.ndim, reader.dtype)
    return da.from_array(reader, chunks=chunks, name=f"n2v-read-{secrets.token_hex(8)}", meta=meta)


def lazy_from_memmap(memmap: np.memmap[Any, np.dtype[Any]], axes: str | None) -> da.Array:
    """A dask array over a memory-mapped file: nothing is read until it is computed."""
    return _dask_reading(_MappedFile(memmap), lazy_chunks(memmap.shape, axes))


def lazy_from_zarr(array: ZarrArray, axes: str | None, source: PathLike) -> da.Array:
    """A dask array over a zarr array (a store, or tifffile's view of a TIFF), nothing read."""
    return _dask_reading(ChunkReader(array, source), lazy_chunks(array.shape, axes, array.chunks))


# ---------------------------------------------------------------- writing
def store_chunks(data: da.Array, target: _MappedFile | ZarrArray) -> None:
    """Compute the dask array ``data`` chunk by chunk into ``target`` (chunks never overlap).

    One band of chunks (along the first axis cut into several) is computed at
    a time: given the whole graph at once, dask holds many chunks' inputs and
    halos while it waits to finish their neighbours (914 MiB for a 16384x16384
    float32 image in 1024x1024 chunks, against 323 MiB for torch and the model).
    """
    da = require("dask.array", "dask", "Writing dask arrays")
    axis = next((i for i, chunks in enumerate(data.chunks) if len(chunks) > 1), 0)
    edges = np.cumsum((0,) + tuple(data.chunks[axis]))
    for start, stop in zip(edges[:-1], edges[1:]):
        region = (slice(None),) * axis + (slice(int(start), int(stop)),)
        da.store(data[region], target, regions=region, lock=False)


def store_in_file(data: da.Array, memmap: np.memmap[Any, np.dtype[Any]]) -> None:
    """:func:`store_chunks` into the file ``memmap`` maps, mapping one chunk at a time (flushed to
    disk by :func:`n2v_estimator.gateway.atomic.atomic_write` before the file is renamed into place)."""
    memmap.flush()
    target = _MappedFile(memmap, mode="r+")
    del memmap
    store_chunks(data, target)
