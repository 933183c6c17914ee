"""TIFF files, also OME-TIFF and ImageJ hyperstacks, with their axes in our letters.

:func:`read_tiff` reads the first series whole, or lazily (a memory map of an
uncompressed file, tifffile's zarr view of a compressed or tiled one), with its
calibration; :func:`write_tiff` writes an image whole or chunk by chunk as
OME-TIFF where OME holds its axes, as ImageJ when the input was ImageJ, else as
tifffile's shaped TIFF, with the input's calibration, and as BigTIFF when large.

tifffile is optional (the extra ``[tiff]``).
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from ..gateway.budget import check_declared, check_in_memory, check_tiff_metadata, ome_declared
from .chunks import is_lazy, lazy_from_memmap, lazy_from_zarr, store_in_file
from .errors import MissingDependencyError, require
from .metadata import for_axes
from .tiff_calibration import imagej_options, ome_tiff_metadata, resolution_options, tiff_calibration

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path
    from types import ModuleType

    from numpy.typing import DTypeLike
    from tifffile import TiffFile

    from .._typing import Shape
    from .chunks import ImageArray

# TIFF files whose data is larger than this are written as BigTIFF: classic TIFF's 32-bit offsets end
# at 4 GiB, and some readers take them as signed (2 GiB).
BIGTIFF_BYTES = 2 * 2**30


def axes_from_tiff(tiff_axes: str) -> str | None:
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


def axes_to_tiff(axes: str) -> str:
    """tifffile's axes for ours: ``S`` -> ``T``, a ``C`` after ``Y`` and ``X``
    (colour, as in ``YXC``) -> ``S`` (samples per pixel), any other ``C`` -> ``C``.

    >>> axes_to_tiff("SCYX"), axes_to_tiff("YXC"), axes_to_tiff("ZYX")
    ('TCYX', 'YXS', 'ZYX')
    """
    last_plane = max(axes.index("Y"), axes.index("X"))
    return "".join("T" if a == "S" else "S" if a == "C" and axes.index("C") > last_plane else a for a in axes)


# ---------------------------------------------------------------- reading
def read_tiff(path: Path, lazy_above: int | None, trust: bool) -> tuple[ImageArray, str | None, dict[str, Any]]:
    """The first series of the TIFF file ``path``, its axes (ours, or ``None``) and its metadata
    (:func:`n2v_estimator.images.files.read_image`'s); a dask array where it holds more than
    ``lazy_above`` bytes (``None``: never). Its metadata and declared size are checked first
    (``trust``: the size is not)."""
    tifffile = require("tifffile", "tiff", "Reading TIFF files")
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
        dropped: list[str] = []
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
        return lazy_from_memmap(data, axes), axes, metadata
    zarr = require("zarr", "zarr", "Reading a compressed or tiled TIFF file lazily")
    if int(zarr.__version__.split(".")[0]) < 3:
        raise MissingDependencyError(
            f"Reading the compressed or tiled TIFF file {path} lazily needs zarr 3 (tifffile's zarr store); "
            f'zarr {zarr.__version__} is installed: pip install "zarr>=3"'
        )
    array = zarr.open(tifffile.imread(path, aszarr=True, series=0, level=0, _multifile=False), mode="r")
    return lazy_from_zarr(array, axes, path), axes, metadata


def _open_tiff(tifffile: ModuleType, path: Path) -> TiffFile:
    """``path`` open as a TIFF file on its own: an OME-TIFF's XML may name other files
    (a multi-file data set), which are not read."""
    try:
        return tifffile.TiffFile(path, _multifile=False)
    except TypeError:  # pragma: no cover - a tifffile without the option
        return tifffile.TiffFile(path)


# ---------------------------------------------------------------- writing
def write_tiff(temporary: Path, data: ImageArray, axes: str, source: Mapping[str, Any]) -> None:
    """Write ``data`` with our ``axes`` to the file ``temporary`` as a TIFF in the flavour of the
    ``source`` (:func:`n2v_estimator.images.files.read_image`'s metadata) and with its calibration;
    a dask array chunk by chunk into an uncompressed file."""
    tifffile = require("tifffile", "tiff", "Writing TIFF files")
    options = _tiff_options(_tiff_axes_for(axes, source), data.shape, data.dtype, source)
    if not is_lazy(data):
        tifffile.imwrite(temporary, data, **options)
        return
    # An empty, uncompressed file first; then each chunk into its place.
    tifffile.imwrite(temporary, shape=data.shape, dtype=data.dtype, **options)
    store_in_file(data, tifffile.memmap(temporary, mode="r+").reshape(data.shape))  # tifffile drops axes of length 1


def _tiff_axes_for(axes: str, source: Mapping[str, Any]) -> str:
    """The input TIFF's own axes letters where they map to ``axes`` (``Q`` stays
    ``Q``, not ``T``); ours mapped back (:func:`axes_to_tiff`) otherwise."""
    own = source.get("tiff_axes") if source.get("format") == "tiff" else None
    if own and axes_from_tiff(own) == axes and ("S" not in own or own.endswith("YXS")):
        return own.replace("I", "T")  # OME has no I (an image sequence): T
    return axes_to_tiff(axes)


def _tiff_options(
    tiff_axes: str, shape: Shape, dtype: DTypeLike, source: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """tifffile's options for ``shape`` and ``dtype`` with ``tiff_axes``, in the flavour of
    the ``source`` (:func:`n2v_estimator.images.files.read_image`'s metadata) and with its calibration."""
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


def _channels(tiff_axes: str, shape: Shape) -> int | None:
    """The number of channels of ``shape`` with ``tiff_axes`` (tifffile's ``C`` or ``S``), or ``None``."""
    ours = axes_from_tiff(tiff_axes)
    return shape[ours.index("C")] if ours and "C" in ours else None
