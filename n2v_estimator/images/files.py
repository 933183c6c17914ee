"""Image files in and out, with their axes in the estimator's letters.

:func:`read_image` reads TIFF (also OME-TIFF and ImageJ hyperstacks), PNG and
JPEG, ``.npy`` and Zarr (a plain array, or an OME-Zarr group) and returns the
array with the axes its file names (``None`` where it names none). With
``lazy=True`` a zarr store, or a TIFF or ``.npy`` file over :data:`LAZY_BYTES`,
comes back as a dask array that reads nothing until it is computed.
:func:`write_image` writes a result as TIFF, OME-Zarr or ``.npy`` with its axes
and the input's calibration (pixel sizes, frame interval, channel names: see
:mod:`n2v_estimator.images.metadata`; an ImageJ TIFF as ImageJ, another TIFF as OME-TIFF),
streams a dask array to disk chunk by chunk, and writes under a temporary name
renamed into place, so that a failed write never leaves a half-written file.

tifffile, zarr and dask are optional (the extras ``[tiff]``, ``[zarr]`` and
``[dask]``): they are imported inside the functions, and a missing one raises
:class:`MissingDependencyError` saying what to install.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import secrets
import warnings
from pathlib import Path

import numpy as np

from .._extras import install_command
from ..data.axes import is_dask_array, resolve_axes
from ..gateway.atomic import atomic_write
from ..gateway.budget import (
    DeclaredSizeError,
    check_declared,
    check_in_memory,
    check_tiff_metadata,
    check_zarr_metadata,
    ome_declared,
)
from ..gateway.codecs import UnsafeZarrError, check_zarr_array
from ..gateway.text import plain
from .metadata import (
    for_axes,
    imagej_options,
    ome_tiff_metadata,
    ome_zarr_entries,
    resolution_options,
    tiff_calibration,
    zarr_calibration,
)

# With lazy=True, TIFF and .npy files larger than this come back as dask arrays (zarr stores always do).
LAZY_BYTES = 512 * 2**20
# Side of a lazily read chunk along each spatial axis: 1024 x 1024 pixels in 2D (4 MiB of float32,
# large against the halo of a few dozen pixels the denoiser adds around it); 256**3 voxels in 3D
# (64 MiB), where 1024**3 would not fit a worker's memory.
LAZY_CHUNK_SIDE = 1024
LAZY_CHUNK_SIDE_3D = 256
# TIFF files whose data is larger than this are written as BigTIFF: classic TIFF's 32-bit offsets end
# at 4 GiB, and some readers take them as signed (2 GiB).
BIGTIFF_BYTES = 2 * 2**30

READ_FORMATS = (
    "TIFF (.tif, .tiff; OME-TIFF, ImageJ), PNG, JPEG (.png, .jpg, .jpeg), NumPy (.npy), "
    "Zarr (a folder: an array or an OME-Zarr group)"
)
WRITE_FORMATS = ".tif or .tiff (TIFF), .zarr (OME-Zarr) or .npy"

_TIFF = (".tif", ".tiff")
_PICTURE = (".png", ".jpg", ".jpeg")
_ZARR_MARKERS = (".zarray", ".zgroup", "zarr.json")
# OME-Zarr axis names and types <-> our letters; OME-Zarr 0.4 orders them t, c, z, y, x, as we do.
_FROM_OME = {"t": "S", "c": "C", "z": "Z", "y": "Y", "x": "X"}
_OME_TYPES = {"S": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}
_CANONICAL = "SCZYX"


class MissingDependencyError(ImportError):
    """An optional dependency that a file format needs is not installed."""


class _ReadError(ValueError):
    """A file that cannot be read, with a message that already names it."""


def _require(module, extra, purpose):
    """Import ``module``, or raise :class:`MissingDependencyError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs {module.split('.')[0]}, which is not installed ({exc}); "
            f"install it with: {install_command(extra)}"
        ) from exc


# ------------------------------------------------------------------- axes
def axes_from_tiff(tiff_axes):
    """Our axes for tifffile's series axes, or ``None`` where they do not map.

    tifffile's ``S`` (samples per pixel: colour) and ``C`` are channels; ``T``
    (time), ``I`` (image sequence) and ``Q`` (unknown) are samples, but only as
    the first axis and only one of them; ``Z``, ``Y`` and ``X`` stay. Any other
    letter, or two axes that map to the same letter, give ``None``.

    >>> axes_from_tiff("TZCYX"), axes_from_tiff("YXS"), axes_from_tiff("IYX"), axes_from_tiff("CTYX")
    ('SZCYX', 'YXC', 'SYX', None)
    """
    letters = []
    for position, letter in enumerate(tiff_axes):
        if letter in "ZYX":
            letters.append(letter)
        elif letter in "SC":
            letters.append("C")
        elif letter in "TIQ" and position == 0:
            letters.append("S")
        else:
            return None
    if len(set(letters)) != len(letters) or not {"Y", "X"} <= set(letters):
        return None
    return "".join(letters)


def axes_to_tiff(axes):
    """tifffile's axes for ours: ``S`` -> ``T``, a ``C`` after ``Y`` and ``X``
    (colour, as in ``YXC``) -> ``S`` (samples per pixel), any other ``C`` -> ``C``.

    >>> axes_to_tiff("SCYX"), axes_to_tiff("YXC"), axes_to_tiff("ZYX")
    ('TCYX', 'YXS', 'ZYX')
    """
    last_plane = max(axes.index("Y"), axes.index("X"))
    return "".join("T" if a == "S" else "S" if a == "C" and axes.index("C") > last_plane else a for a in axes)


def _axes_from_ome(multiscale, ndim):
    """Our axes from an OME-Zarr ``multiscales`` entry, or ``None`` where they do not map."""
    names = [axis.get("name") if isinstance(axis, dict) else axis for axis in multiscale.get("axes") or []]
    if not names and ndim == 5:  # OME-NGFF 0.1 and 0.2: always t, c, z, y, x
        names = list("tczyx")
    letters = [_FROM_OME.get(str(name).lower()) for name in names]
    if len(letters) != ndim or None in letters or len(set(letters)) != ndim or not {"Y", "X"} <= set(letters):
        return None
    return "".join(letters)


def lazy_chunks(shape, axes, storage_chunks=None):
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


def rechunk_for_axes(array, axes):
    """A dask ``array`` chunked as :func:`lazy_chunks` chunks one of these ``axes``
    (the file named none, or other ones): unchanged where it already is."""
    chunks = lazy_chunks(array.shape, axes)
    return array if array.chunksize == chunks else array.rechunk(chunks)


# ---------------------------------------------------------------- reading
def read_image(path, lazy=False, *, return_metadata=False, trust_declared_size=False, lazy_bytes=None):
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
        :func:`lazy_chunks`: nothing of the data is read until it is computed.
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
    # Each reader takes the size above which it reads lazily (None: never) and whether to trust sizes.
    reader = {"tiff": _read_tiff, "zarr": _read_zarr, "npy": _read_npy, "picture": _read_picture}[kind]
    try:
        lazy_above = (LAZY_BYTES if lazy_bytes is None else lazy_bytes) if lazy else None
        array, axes, metadata = reader(path, lazy_above, trust_declared_size)
    except (MissingDependencyError, _ReadError, DeclaredSizeError, UnsafeZarrError, MemoryError):
        raise
    except Exception as exc:  # every engine has its own errors for a bad file
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"{path} could not be read as {kind.upper()}: {reason}") from exc
    metadata["axes"] = axes
    return (array, axes, metadata) if return_metadata else (array, axes)


def is_zarr_store(path):
    """Whether ``path`` is a folder holding zarr metadata (format 2 or 3)."""
    return Path(path).is_dir() and any((Path(path) / marker).exists() for marker in _ZARR_MARKERS)


def input_format(path):
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


def _read_tiff(path, lazy_above, trust):
    tifffile = _require("tifffile", "tiff", "Reading TIFF files")
    check_tiff_metadata(path, trust)  # its description and ImageJ's tags, bounded before tifffile reads them
    with _open_tiff(tifffile, path) as tif:
        if tif.is_ome:  # tifffile lists every plane the XML declares: check the XML first
            declared = ome_declared(tif.pages.first.description)
            if declared is not None:
                check_declared(path, *declared, trust=trust)
        series = tif.series[0]
        shape, dtype = tuple(series.shape), np.dtype(series.dtype)
        check_declared(path, shape, dtype, trust=trust)
        axes = axes_from_tiff(series.axes)
        dropped = []
        calibration, extras = tiff_calibration(tif, series.axes, axes, dropped)
        metadata = {
            "format": "tiff",
            "tiff_axes": series.axes,
            "ome": bool(tif.is_ome),
            "imagej": bool(tif.is_imagej),
            "calibration": calibration,
            "imagej_extras": extras,
            "dropped": dropped,
        }
        if lazy_above is None or math.prod(shape) * dtype.itemsize <= lazy_above:
            check_in_memory(path, shape, dtype)
            return series.asarray(), axes, metadata
        contiguous = series.dataoffset is not None and dtype.isnative
    if contiguous:  # uncompressed, untiled: a memory map reads only what a chunk needs
        data = tifffile.memmap(path, mode="r", series=0).reshape(shape)
        return _from_array(data, axes), axes, metadata
    zarr = _require("zarr", "zarr", "Reading a compressed or tiled TIFF file lazily")
    if int(zarr.__version__.split(".")[0]) < 3:
        raise MissingDependencyError(
            f"Reading the compressed or tiled TIFF file {path} lazily needs zarr 3 (tifffile's zarr store); "
            f'zarr {zarr.__version__} is installed: pip install "zarr>=3"'
        )
    array = zarr.open(tifffile.imread(path, aszarr=True, series=0, level=0, _multifile=False), mode="r")
    return _from_zarr(array, axes, path), axes, metadata


def _open_tiff(tifffile, path):
    """``path`` open as a TIFF file on its own: an OME-TIFF's XML may name other files
    (a multi-file data set), which are not read."""
    try:
        return tifffile.TiffFile(path, _multifile=False)
    except TypeError:  # pragma: no cover - a tifffile without the option
        return tifffile.TiffFile(path)


def _read_zarr(path, lazy_above, trust):
    zarr = _require("zarr", "zarr", "Reading zarr stores")
    check_zarr_metadata(path, trust)
    node = zarr.open(str(path), mode="r")
    metadata, axes = {"format": "zarr", "calibration": {}}, None
    if not hasattr(node, "shape"):  # a group
        node, multiscale, version, omero = _ome_image(node, path, trust)
        axes = _axes_from_ome(multiscale, node.ndim)
        dropped = []
        metadata = {
            "format": "ome-zarr",
            "ome_version": version,
            "multiscale": multiscale,
            "omero": omero,
            "calibration": zarr_calibration(multiscale, omero, axes, dropped),
            "dropped": dropped,
        }
    check_zarr_array(node, name=str(path))  # before any chunk is read
    check_declared(path, node.shape, node.dtype, node.chunks, trust=trust)
    if lazy_above is not None:  # a store is always read lazily when asked
        return _from_zarr(node, axes, path), axes, metadata
    check_in_memory(path, node.shape, node.dtype)
    return _ChunkReader(node, path)[...], axes, metadata


def _ome_image(group, path, trust=False):
    """The full-resolution array of the OME-Zarr image in ``group``, its
    ``multiscales[0]`` entry, the OME-NGFF version and its ``omero`` entry (or ``None``)."""
    attrs = dict(group.attrs)
    ome = attrs["ome"] if isinstance(attrs.get("ome"), dict) else attrs  # 0.5 nests under "ome"; 0.4 does not
    multiscales = ome.get("multiscales")
    if not multiscales:
        if "bioformats2raw.layout" in ome and "0" in group:  # a collection of images: the first
            check_zarr_metadata(Path(path) / "0", trust)
            return _ome_image(group["0"], Path(path) / "0", trust)
        arrays = sorted(group.array_keys())
        hint = f"give the path of one of its arrays, e.g. {path / arrays[0]}" if arrays else "it holds no array"
        raise _ReadError(f"{path} is a zarr group without OME-Zarr 'multiscales' metadata; {hint}.")
    multiscale = multiscales[0]
    try:
        dataset = multiscale["datasets"][0]["path"]
    except (KeyError, IndexError, TypeError) as exc:
        raise _ReadError(f"{path}: the OME-Zarr metadata names no dataset (multiscales[0].datasets[0].path).") from exc
    version = ome.get("version") or multiscale.get("version")
    omero = ome.get("omero") if isinstance(ome.get("omero"), dict) else None
    if isinstance(dataset, str):
        check_zarr_metadata(Path(path) / dataset, trust)
    return group[dataset], multiscale, version, omero


def _read_npy(path, lazy_above, trust):
    data = np.load(path, allow_pickle=False, mmap_mode="r")
    check_declared(path, data.shape, data.dtype, trust=trust)
    if lazy_above is not None and data.nbytes > lazy_above:
        data = _from_array(data, None)
    return data, None, {"format": "npy", "calibration": {}}


def _read_picture(path, lazy_above, trust):
    import imageio.v3 as iio  # scikit-image's own dependency
    from PIL import Image  # imageio's own dependency for PNG and JPEG

    with Image.open(path) as picture:  # the header only: a PNG of zeros inflates 1000-fold
        bands, wide = len(picture.getbands()), picture.mode.startswith("I")
        check_declared(path, (picture.height, picture.width, bands), "u2" if wide else "u1", trust=trust)
    data = iio.imread(path)
    axes = "YX" if data.ndim == 2 else "YXC" if data.ndim == 3 and data.shape[-1] in (2, 3, 4) else None
    return data, axes, {"format": "picture", "calibration": {}}


class _MappedFile:
    """An array stored contiguously in a file, mapped only while one block of it is
    read or written. ``dask.array.from_array`` takes it as it is (it copies, that is
    reads whole, any array with a ``copy`` method), ``dask.array.store`` writes into
    it, and the process holds one block at a time, not every page a long-lived
    memory map has touched. Pickles as its file name and place (a dask worker
    maps the file itself)."""

    def __init__(self, memmap, mode="r"):
        self.filename, self.offset, self.mode = str(memmap.filename), int(memmap.offset), mode
        self.shape, self.dtype, self.ndim = tuple(memmap.shape), memmap.dtype, memmap.ndim
        self.order = "F" if memmap.flags.f_contiguous and not memmap.flags.c_contiguous else "C"

    def _map(self):
        return np.memmap(self.filename, self.dtype, self.mode, self.offset, self.shape, self.order)

    def __getitem__(self, key):
        return np.array(self._map()[key])  # a copy: the map closes as it goes

    def __setitem__(self, key, value):
        self._map()[key] = value


def _from_array(memmap, axes):
    """A dask array over a memory-mapped file: nothing is read until it is computed."""
    return _dask_reading(_MappedFile(memmap), lazy_chunks(memmap.shape, axes))


def _dask_reading(reader, chunks):
    """A dask array whose chunks ``reader`` reads when they are computed (under a name of
    its own: two reads of one file are two arrays, as the file may change between them)."""
    da = _require("dask.array", "dask", "Reading large images lazily")
    meta = np.empty((0,) * reader.ndim, reader.dtype)
    return da.from_array(reader, chunks=chunks, name=f"n2v-read-{secrets.token_hex(8)}", meta=meta)


class _ChunkReader:
    """A zarr array that names its store when a chunk cannot be read (a damaged or
    truncated chunk raises the codec's own error, which names no file)."""

    def __init__(self, array, source):
        self.array, self.source = array, str(source)
        self.shape, self.dtype, self.ndim = tuple(array.shape), np.dtype(array.dtype), len(array.shape)

    def __getitem__(self, key):
        try:
            return np.asarray(self.array[key])
        except Exception as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise ValueError(
                f"{self.source}: the data at {_region(key, self.shape)} could not be read ({type(exc).__name__}: "
                f"{reason[:300]}); the file or store is damaged there."
            ) from exc


def _region(key, shape):
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


def _from_zarr(array, axes, source):
    """A dask array over a zarr array (a store, or tifffile's view of a TIFF), nothing read."""
    return _dask_reading(_ChunkReader(array, source), lazy_chunks(array.shape, axes, array.chunks))


# ---------------------------------------------------------------- writing
def check_output_path(path):
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


def check_output_apart(output, inputs, option="--output"):
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


def write_image(path, data, axes, source_metadata=None):
    """Write ``data`` to ``path`` with its axes, in the format its suffix names.

    Parameters
    ----------
    path : str or path-like
        ``.tif`` or ``.tiff``: TIFF, with the axes as tifffile metadata (OME-TIFF
        where OME can hold them: other axes before ``YX``, or ``YXS`` colour
        with 3 or 4 channels; else tifffile's own shaped TIFF); BigTIFF over
        :data:`BIGTIFF_BYTES`. ``.zarr``: an OME-Zarr 0.4 group (zarr format 2)
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
    lazy = is_dask_array(data)
    if not lazy:
        data = np.asarray(data)
    axes = resolve_axes(axes, data.ndim)
    writer = {"tiff": _write_tiff, "zarr": _write_zarr, "npy": _write_npy}[kind]
    with atomic_write(path, folder=kind == "zarr") as temporary:
        writer(temporary, data, axes, source_metadata or {}, lazy)


def _store(data, target):
    """Compute the dask array ``data`` chunk by chunk into ``target`` (chunks never overlap).

    One band of chunks (along the first axis cut into several) is computed at
    a time: given the whole graph at once, dask holds many chunks' inputs and
    halos while it waits to finish their neighbours (914 MiB for a 16384x16384
    float32 image in 1024x1024 chunks, against 323 MiB for torch and the model).
    """
    da = _require("dask.array", "dask", "Writing dask arrays")
    axis = next((i for i, chunks in enumerate(data.chunks) if len(chunks) > 1), 0)
    edges = np.cumsum((0,) + tuple(data.chunks[axis]))
    for start, stop in zip(edges[:-1], edges[1:]):
        region = (slice(None),) * axis + (slice(int(start), int(stop)),)
        da.store(data[region], target, regions=region, lock=False)


def _store_in_file(data, memmap):
    """:func:`_store` into the file ``memmap`` maps, mapping one chunk at a time (flushed to
    disk by :func:`.atomic.atomic_write` before the file is renamed into place)."""
    memmap.flush()
    target = _MappedFile(memmap, mode="r+")
    del memmap
    _store(data, target)


def _tiff_axes_for(axes, source):
    """The input TIFF's own axes letters where they map to ``axes`` (``Q`` stays
    ``Q``, not ``T``); ours mapped back (:func:`axes_to_tiff`) otherwise."""
    own = source.get("tiff_axes") if source.get("format") == "tiff" else None
    if own and axes_from_tiff(own) == axes and ("S" not in own or own.endswith("YXS")):
        return own.replace("I", "T")  # OME has no I (an image sequence): T
    return axes_to_tiff(axes)


def _tiff_options(tiff_axes, shape, dtype, source=None):
    """tifffile's options for ``shape`` and ``dtype`` with ``tiff_axes``, in the flavour of
    the ``source`` (:func:`read_image`'s metadata) and with its calibration."""
    source = source or {}
    record = for_axes(source.get("calibration"), axes_from_tiff(tiff_axes) or "", _channels(tiff_axes, shape))
    bigtiff = math.prod(shape) * np.dtype(dtype).itemsize > BIGTIFF_BYTES
    if source.get("format") == "tiff" and source.get("imagej"):
        options = imagej_options(record, source.get("imagej_extras") or {}, tiff_axes, np.dtype(dtype))
        if options is not None:
            return options
        warnings.warn(
            f"The input is an ImageJ TIFF, but ImageJ cannot hold {np.dtype(dtype)} data with axes {tiff_axes}: "
            "the result is written as OME-TIFF, with the same calibration.",
            UserWarning,
            stacklevel=4,
        )
    colour = tiff_axes.endswith("YXS") and shape[-1] in (3, 4)
    before = tiff_axes[: -3 if colour else -2]
    ome = (colour or tiff_axes.endswith("YX")) and set(before) <= set("TZCQ")
    metadata = {"axes": tiff_axes, **(ome_tiff_metadata(record, _channels(tiff_axes, shape)) if ome else {})}
    return dict(
        metadata=metadata,
        ome=ome,
        photometric="rgb" if colour else "minisblack",
        bigtiff=bigtiff,
        **resolution_options(record),
    )


def _channels(tiff_axes, shape):
    """The number of channels of ``shape`` with ``tiff_axes`` (tifffile's ``C`` or ``S``), or ``None``."""
    ours = axes_from_tiff(tiff_axes)
    return shape[ours.index("C")] if ours and "C" in ours else None


def _write_tiff(temporary, data, axes, source, lazy):
    tifffile = _require("tifffile", "tiff", "Writing TIFF files")
    options = _tiff_options(_tiff_axes_for(axes, source), data.shape, data.dtype, source)
    if not lazy:
        tifffile.imwrite(temporary, data, **options)
        return
    # An empty, uncompressed file first; then each chunk into its place.
    tifffile.imwrite(temporary, shape=data.shape, dtype=data.dtype, **options)
    _store_in_file(data, tifffile.memmap(temporary, mode="r+").reshape(data.shape))  # tifffile drops axes of length 1


def _write_npy(temporary, data, axes, source, lazy):
    if not lazy:
        with open(temporary, "wb") as file:
            np.save(file, data, allow_pickle=False)
        return
    _store_in_file(data, np.lib.format.open_memmap(temporary, mode="w+", dtype=data.dtype, shape=data.shape))


def _write_zarr(temporary, data, axes, source, lazy):
    zarr = _require("zarr", "zarr", "Writing zarr stores")
    order = [axes.index(letter) for letter in _CANONICAL if letter in axes]
    if order != sorted(order):  # OME-Zarr 0.4 orders the axes t, c, z, y, x
        data, axes = data.transpose(order), "".join(axes[i] for i in order)
    if lazy:
        chunks = tuple(int(c) for c in data.chunksize)
        data = data.rechunk(chunks)  # one zarr chunk per dask chunk: no two tasks write the same chunk
    else:
        chunks = lazy_chunks(data.shape, axes)
    major = int(zarr.__version__.split(".")[0])
    if major >= 3:
        group = zarr.open_group(str(temporary), mode="w", zarr_format=2)
        array = group.create_array(
            "0", shape=data.shape, chunks=chunks, dtype=data.dtype, chunk_key_encoding={"name": "v2", "separator": "/"}
        )
    else:
        group = zarr.open_group(str(temporary), mode="w")
        array = group.create_dataset("0", shape=data.shape, chunks=chunks, dtype=data.dtype, dimension_separator="/")
    multiscale, omero = _multiscale(axes, source, data.shape)
    group.attrs["multiscales"] = [multiscale]
    if omero:
        group.attrs["omero"] = omero
    if lazy:
        _store(data, array)
    else:
        array[...] = data


def _multiscale(axes, source, shape):
    """An OME-Zarr 0.4 ``multiscales`` entry for one level ``"0"`` with ``axes``, and an
    ``omero`` entry (or ``None``), made from the input's checked calibration record (scales
    of 1 where it has none) and, where the input was an OME-Zarr image with these axes, its
    name, its translation and its channels' colours where they pass their checks: nothing
    of a stranger's metadata is copied as it is."""
    n_channels = shape[axes.index("C")] if "C" in axes else None
    record = for_axes(source.get("calibration"), axes, n_channels)
    entries, scales, omero = ome_zarr_entries(record, axes, _OME_TYPES)
    transforms = [{"type": "scale", "scale": scales}]
    entry = {"version": "0.4", "axes": entries, "datasets": [{"path": "0", "coordinateTransformations": transforms}]}
    previous = source.get("multiscale") if source.get("format") == "ome-zarr" else None
    if not (isinstance(previous, dict) and _axes_from_ome(previous, len(axes)) == axes):
        return entry, omero
    if plain(previous.get("name")):
        entry["name"] = previous["name"]
    levels = previous.get("datasets") or [{}]
    for item in (levels[0].get("coordinateTransformations") or []) if isinstance(levels[0], dict) else []:
        offsets = item.get("translation") if isinstance(item, dict) and item.get("type") == "translation" else None
        if (
            isinstance(offsets, list)
            and len(offsets) == len(axes)
            and all(type(o) in (int, float) and math.isfinite(o) for o in offsets)
        ):
            transforms.append({"type": "translation", "translation": [float(o) for o in offsets]})
    channels = (source.get("omero") or {}).get("channels")
    if omero and isinstance(channels, list) and len(channels) == n_channels:
        for ours, theirs in zip(omero["channels"], channels):
            colour = theirs.get("color") if isinstance(theirs, dict) else None
            if isinstance(colour, str) and re.fullmatch(r"[0-9A-Fa-f]{6}", colour):
                ours["color"] = colour
    return entry, omero
