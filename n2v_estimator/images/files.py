"""Image files in and out, with their axes in the estimator's letters: the entrance that picks a format's module.

:func:`read_image` reads TIFF (also OME-TIFF and ImageJ hyperstacks: :mod:`.tiff`), PNG and JPEG
(:mod:`.pictures`), ``.npy`` (:mod:`.npy`) and Zarr (a plain array, or an OME-Zarr group: :mod:`.omezarr`)
and returns the array with the axes its file names (``None`` where it names none). With ``lazy=True`` a
zarr store, or a TIFF or ``.npy`` file over :data:`LAZY_BYTES`, comes back as a dask array that reads
nothing until it is computed (:mod:`.chunks`). :func:`write_image` writes a result as TIFF, OME-Zarr or
``.npy`` with its axes and the input's calibration (pixel sizes, frame interval, channel names: see
:mod:`n2v_estimator.images.metadata`; an ImageJ TIFF as ImageJ, another TIFF as OME-TIFF), streams a
dask array to disk chunk by chunk, and writes under a temporary name renamed into place, so that a failed
write never leaves a half-written file. :func:`check_output_path` and :func:`check_output_apart` refuse an
output before any work.

tifffile, zarr and dask are optional (the extras ``[tiff]``, ``[zarr]`` and ``[dask]``): they are imported
inside the functions, and a missing one raises :class:`MissingDependencyError` saying what to install.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from ..data.axes import is_dask_array, resolve_axes
from ..gateway.atomic import atomic_write
from ..gateway.budget import DeclaredSizeError
from ..gateway.codecs import UnsafeZarrError
from .chunks import rechunk_for_axes
from .errors import ImageReadError, MissingDependencyError
from .npy import read_npy, write_npy
from .omezarr import read_zarr, write_zarr
from .pictures import read_picture
from .tiff import read_tiff, write_tiff

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from .._typing import PathLike
    from .chunks import ImageArray

__all__ = [
    "LAZY_BYTES",
    "READ_FORMATS",
    "WRITE_FORMATS",
    "MissingDependencyError",
    "check_output_apart",
    "check_output_path",
    "input_format",
    "is_zarr_store",
    "read_image",
    "rechunk_for_axes",
    "write_image",
]

# With lazy=True, TIFF and .npy files larger than this come back as dask arrays (zarr stores always do).
LAZY_BYTES = 512 * 2**20

READ_FORMATS = (
    "TIFF (.tif, .tiff; OME-TIFF, ImageJ), PNG, JPEG (.png, .jpg, .jpeg), NumPy (.npy), "
    "Zarr (a folder: an array or an OME-Zarr group)"
)
WRITE_FORMATS = ".tif or .tiff (TIFF), .zarr (OME-Zarr) or .npy"

_TIFF = (".tif", ".tiff")
_PICTURE = (".png", ".jpg", ".jpeg")
_ZARR_MARKERS = (".zarray", ".zgroup", "zarr.json")
# Each reader takes the path, the size above which it reads lazily (None: never) and whether to trust sizes.
_READERS: dict[str, Callable[[Path, int | None, bool], tuple[ImageArray, str | None, dict[str, Any]]]] = {
    "tiff": read_tiff,
    "zarr": read_zarr,
    "npy": read_npy,
    "picture": read_picture,
}
# Each writer takes the temporary path, the data, its axes and the input's metadata.
_WRITERS: dict[str, Callable[[Path, ImageArray, str, Mapping[str, Any]], None]] = {
    "tiff": write_tiff,
    "zarr": write_zarr,
    "npy": write_npy,
}


# ---------------------------------------------------------------- reading
@overload
def read_image(
    path: PathLike,
    lazy: bool = False,
    *,
    return_metadata: Literal[False] = False,
    trust_declared_size: bool = False,
    lazy_bytes: int | None = None,
) -> tuple[ImageArray, str | None]: ...


@overload
def read_image(
    path: PathLike,
    lazy: bool = False,
    *,
    return_metadata: Literal[True],
    trust_declared_size: bool = False,
    lazy_bytes: int | None = None,
) -> tuple[ImageArray, str | None, dict[str, Any]]: ...


def read_image(
    path: PathLike,
    lazy: bool = False,
    *,
    return_metadata: bool = False,
    trust_declared_size: bool = False,
    lazy_bytes: int | None = None,
) -> tuple[ImageArray, str | None] | tuple[ImageArray, str | None, dict[str, Any]]:
    """Read an image file and the axes it names.

    Parameters
    ----------
    path : str or path-like
        A TIFF file (``.tif``, ``.tiff``: also OME-TIFF and ImageJ
        hyperstacks; the first series), a PNG or JPEG file, a ``.npy`` file, or
        a zarr folder (an array, or an OME-Zarr group, whose full-resolution
        level is read).
    lazy : bool, default=False
        Return a zarr store, and a TIFF or ``.npy`` file larger than
        ``lazy_bytes``, as a ``dask.array.Array`` in chunks of
        :func:`.chunks.lazy_chunks`: nothing of the data is read until it is computed.
    return_metadata : bool, default=False
        Also return a dict of what :func:`write_image` can carry over to a
        result: ``format`` (``"tiff"``, ``"zarr"``, ``"ome-zarr"``, ``"npy"`` or
        ``"picture"``), ``axes``, ``calibration`` (pixel sizes and units, frame
        interval, channel names, keyed by our letters: :mod:`n2v_estimator.images.metadata`),
        and the TIFF's ``tiff_axes`` (tifffile's), flavour (``ome``,
        ``imagej``) and ``imagej_extras``, or the OME-Zarr's ``multiscale``
        (its first ``multiscales`` entry) and ``omero``; ``dropped``, a line for
        each piece of the file's metadata that failed its checks and is not carried.
    lazy_bytes : int or None, default=None
        With ``lazy``, the size above which TIFF and ``.npy`` files are read
        lazily; ``None``: :data:`LAZY_BYTES`.
    trust_declared_size : bool, default=False
        Read a file that declares far more pixels than it stores (see
        :mod:`n2v_estimator.gateway.budget`), which is otherwise refused from its header.

    Returns
    -------
    array : ndarray or dask.array.Array
        In the file's axis order (a ``.npy`` file memory-mapped, read-only).
    axes : str or None
        Our letters (``S``, ``C``, ``Z``, ``Y``, ``X``) for the axes the file
        names: TIFF series axes (tifffile's ``S`` and ``C`` are ``C``; one
        leading ``T``, ``I`` or ``Q`` is ``S``), OME-Zarr axis names (``t``
        -> ``S``, ``c`` -> ``C``, ``z``, ``y``, ``x``), ``YX`` or ``YXC`` for
        PNG and JPEG. ``None`` for ``.npy`` files, plain zarr arrays, and axes
        that have no letter of ours.
    metadata : dict
        Only with ``return_metadata``.

    Raises
    ------
    FileNotFoundError
        If nothing is at ``path``.
    ValueError
        If the format is not one of :data:`READ_FORMATS` or the file cannot be
        read as its suffix says; the message names the path. A
        :class:`n2v_estimator.gateway.budget.DeclaredSizeError` for a file that declares far more
        than it stores (or, read whole, than the memory available), and a
        :class:`n2v_estimator.gateway.codecs.UnsafeZarrError` for a zarr store whose codecs
        could run code, both before any pixel is read.
    MissingDependencyError
        If the format needs tifffile, zarr or dask and it is not installed.
    """
    path = Path(path)
    kind = input_format(path)
    reader = _READERS[kind]
    try:
        lazy_above = (LAZY_BYTES if lazy_bytes is None else lazy_bytes) if lazy else None
        array, axes, metadata = reader(path, lazy_above, trust_declared_size)
    except (MissingDependencyError, ImageReadError, DeclaredSizeError, UnsafeZarrError, MemoryError):
        raise
    except Exception as exc:  # every engine has its own errors for a bad file
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"{path} could not be read as {kind.upper()}: {reason}") from exc
    metadata["axes"] = axes
    return (array, axes, metadata) if return_metadata else (array, axes)


def is_zarr_store(path: PathLike) -> bool:
    """Whether ``path`` is a folder holding zarr metadata (format 2 or 3)."""
    return Path(path).is_dir() and any((Path(path) / marker).exists() for marker in _ZARR_MARKERS)


def input_format(path: PathLike) -> str:
    """The format of the image at ``path`` as :func:`read_image` reads it (``"tiff"``, ``"zarr"``,
    ``"npy"`` or ``"picture"``), judged by its suffix (a folder: by its zarr metadata) without
    reading it; ``FileNotFoundError`` or ``ValueError`` naming the supported formats."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder. Supported formats: {READ_FORMATS}.")
    if path.is_dir():
        if is_zarr_store(path):
            return "zarr"
        raise ValueError(
            f"{path} is a folder but not a zarr store (it holds no .zarray, .zgroup or zarr.json). "
            f"Supported formats: {READ_FORMATS}."
        )
    suffix = path.suffix.lower()
    if suffix in _TIFF:
        return "tiff"
    if suffix in _PICTURE:
        return "picture"
    if suffix == ".npy":
        return "npy"
    raise ValueError(f"{path}: unknown image format {suffix or '(no suffix)'!r}. Supported formats: {READ_FORMATS}.")


# ---------------------------------------------------------------- writing
def check_output_path(path: PathLike) -> str:
    """Refuse, before any work, an output ``path`` that :func:`write_image` cannot
    write: another suffix than :data:`WRITE_FORMATS`, a missing folder, or a
    folder in the way that is not a zarr store. Returns the format."""
    path = Path(path)
    suffix = path.suffix.lower()
    kind = "tiff" if suffix in _TIFF else "zarr" if suffix == ".zarr" else "npy" if suffix == ".npy" else None
    if kind is None:
        raise ValueError(f"{path}: cannot write {suffix or 'a file without a suffix'!r}; write {WRITE_FORMATS}.")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"Cannot write {path}: the folder {path.parent} does not exist.")
    if path.is_dir() and not (kind == "zarr" and is_zarr_store(path)):
        raise ValueError(f"Cannot write {path}: a folder that is not a zarr store is in the way.")
    return kind


def check_output_apart(output: PathLike, inputs: Iterable[PathLike], option: str = "--output") -> None:
    """Refuse an ``output`` path that is one of ``inputs``, lies inside one (a zarr store's
    array, a folder) or holds one, compared by resolved path (links followed) and, where
    both exist, by file identity (hard links): writing it would change or delete an input."""
    resolved = Path(os.path.realpath(output))
    for source in inputs:
        where = Path(os.path.realpath(source))
        same = resolved == where or (resolved.exists() and where.exists() and os.path.samefile(resolved, where))
        if same:
            raise ValueError(
                f"{option} {output} is the input {source}: writing it would replace it; choose another path."
            )
        if where in resolved.parents:
            raise ValueError(
                f"{option} {output} lies inside the input {source}: writing it would change the input; "
                "write outside it."
            )
        if resolved in where.parents:
            raise ValueError(
                f"{option} {output} holds the input {source}: replacing it would delete the input; choose another path."
            )


def write_image(
    path: PathLike, data: ImageArray, axes: str | None, source_metadata: Mapping[str, Any] | None = None
) -> None:
    """Write ``data`` to ``path`` with its axes, in the format its suffix names.

    Parameters
    ----------
    path : str or path-like
        ``.tif`` or ``.tiff``: TIFF, with the axes as tifffile metadata (OME-TIFF
        where OME can hold them: other axes before ``YX``, or ``YXS`` colour
        with 3 or 4 channels; else tifffile's own shaped TIFF); BigTIFF over
        :data:`.tiff.BIGTIFF_BYTES`. ``.zarr``: an OME-Zarr 0.4 group (zarr format 2)
        holding one level, the array ``"0"``, its axes transposed to OME's
        order ``t, c, z, y, x`` where they are in another. ``.npy``: the array
        alone.
    data : ndarray or dask.array.Array
        A dask array is computed chunk by chunk straight into the file (its
        place in an uncompressed TIFF or ``.npy`` file, mapped one chunk at a
        time, or the zarr array's own chunks): it is never held in memory whole.
    axes : str or None
        Our letters for ``data``'s axes (``None``: ``YX`` in 2D, ``SYX`` in 3D).
    source_metadata : dict, optional
        From ``read_image(..., return_metadata=True)`` for the input ``data`` was
        made from. Its ``calibration`` is written in the output's format (for
        the letters of ``axes``): an ImageJ TIFF input gives an ImageJ TIFF
        (``unit``, ``spacing``, ``finterval``, resolution tags, slice labels;
        OME-TIFF, with a warning, where ImageJ cannot hold the data's type), any
        other TIFF an OME-TIFF (``PhysicalSize*``, ``TimeIncrement``, channel
        names) with resolution tags in pixels per centimetre, ``.zarr`` OME-Zarr
        axis units, scales and ``omero`` channel labels. A TIFF's tifffile axes
        (``T``, ``Q``, ...) are reused when they map to ``axes``, an OME-Zarr's
        axis entries and transformations when its axes are ``axes``.

    Raises
    ------
    ValueError, FileNotFoundError
        Before writing, as :func:`check_output_path` says, and for axes that do
        not fit ``data``.

    Notes
    -----
    The file (or zarr folder) is written next to ``path`` under a temporary
    name and renamed into place (:mod:`n2v_estimator.gateway.atomic`): a write that fails, or is
    interrupted, leaves whatever was at ``path`` before (an existing zarr store
    is replaced only once the new one is complete); the temporaries of a
    writer killed earlier are removed.
    """
    path = Path(path)
    kind = check_output_path(path)
    if not is_dask_array(data):
        data = np.asarray(data)
    axes = resolve_axes(axes, data.ndim)
    writer = _WRITERS[kind]
    with atomic_write(path, folder=kind == "zarr") as temporary:
        writer(temporary, data, axes, source_metadata or {})
