"""Zarr stores: a plain array, or an OME-Zarr image (0.1 to 0.5; its full-resolution level), with the axes its
``multiscales`` entry names in our letters and its calibration; written as an OME-Zarr 0.4 group (zarr format 2)
of one level, whole or chunk by chunk, with the input's calibration.

Every piece of metadata is checked (:mod:`n2v_estimator.gateway.budget`, :mod:`n2v_estimator.gateway.codecs`)
before any chunk is read, and nothing of a stranger's metadata is copied to a result as it is. zarr is optional
(the extra ``[zarr]``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from ..gateway.budget import check_declared, check_in_memory, check_zarr_metadata
from ..gateway.codecs import check_zarr_array
from ..gateway.text import plain
from .chunks import ChunkReader, is_lazy, lazy_chunks, lazy_from_zarr, store_chunks
from .errors import ImageReadError, require
from .metadata import for_axes
from .zarr_calibration import ome_zarr_entries, zarr_calibration

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._typing import Shape
    from .chunks import ImageArray, ZarrArray

#: A zarr group: zarr 2's and zarr 3's are different classes (the package reads with either).
ZarrGroup: TypeAlias = Any

# OME-Zarr axis names and types <-> our letters; OME-Zarr 0.4 orders them t, c, z, y, x, as we do.
_FROM_OME = {"t": "S", "c": "C", "z": "Z", "y": "Y", "x": "X"}
_OME_TYPES = {"S": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}
_CANONICAL = "SCZYX"


def _axes_from_ome(multiscale: Mapping[str, Any], ndim: int) -> str | None:
    """Our axes from an OME-Zarr ``multiscales`` entry, or ``None`` where they do not map."""
    names = [axis.get("name") if isinstance(axis, dict) else axis for axis in multiscale.get("axes") or []]
    if not names and ndim == 5:  # OME-NGFF 0.1 and 0.2: always t, c, z, y, x
        names = list("tczyx")
    letters = [_FROM_OME.get(str(name).lower()) for name in names]
    if len(letters) != ndim or None in letters or len(set(letters)) != ndim or not {"Y", "X"} <= set(letters):
        return None
    return "".join(letter for letter in letters if letter is not None)


# ---------------------------------------------------------------- reading
def read_zarr(path: Path, lazy_above: int | None, trust: bool) -> tuple[ImageArray, str | None, dict[str, Any]]:
    """The zarr array at ``path`` (a group: its OME-Zarr image's full-resolution level), its axes
    (ours, from OME-Zarr's names, or ``None``) and its metadata (:func:`n2v_estimator.images.files.read_image`'s);
    a dask array whenever ``lazy_above`` is not ``None``. Its metadata, codecs and declared size are
    checked first (``trust``: the size is not)."""
    zarr = require("zarr", "zarr", "Reading zarr stores")
    check_zarr_metadata(path, trust)
    node = zarr.open(str(path), mode="r")
    metadata: dict[str, Any] = {"format": "zarr", "calibration": {}}
    axes = None
    if not hasattr(node, "shape"):  # a group
        node, multiscale, version, omero = _ome_image(node, path, trust)
        axes = _axes_from_ome(multiscale, node.ndim)
        dropped: list[str] = []
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
        return lazy_from_zarr(node, axes, path), axes, metadata
    check_in_memory(path, node.shape, node.dtype)
    return ChunkReader(node, path)[...], axes, metadata


def _ome_image(
    group: ZarrGroup, path: Path, trust: bool = False
) -> tuple[ZarrArray, dict[str, Any], str | None, dict[str, Any] | None]:
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
        raise ImageReadError(f"{path} is a zarr group without OME-Zarr 'multiscales' metadata; {hint}.")
    multiscale = multiscales[0]
    try:
        dataset = multiscale["datasets"][0]["path"]
    except (KeyError, IndexError, TypeError) as exc:
        raise ImageReadError(
            f"{path}: the OME-Zarr metadata names no dataset (multiscales[0].datasets[0].path)."
        ) from exc
    version = ome.get("version") or multiscale.get("version")
    omero = ome.get("omero") if isinstance(ome.get("omero"), dict) else None
    if isinstance(dataset, str):
        check_zarr_metadata(Path(path) / dataset, trust)
    return group[dataset], multiscale, version, omero


# ---------------------------------------------------------------- writing
def write_zarr(temporary: Path, data: ImageArray, axes: str, source: Mapping[str, Any]) -> None:
    """Write ``data`` with our ``axes`` to the folder ``temporary`` as an OME-Zarr 0.4 group of one
    level, the array ``"0"``, its axes in OME's order, with the ``source``'s calibration
    (:func:`n2v_estimator.images.files.read_image`'s metadata); a dask array chunk by chunk, one
    zarr chunk per dask chunk."""
    zarr = require("zarr", "zarr", "Writing zarr stores")
    order = [axes.index(letter) for letter in _CANONICAL if letter in axes]
    if order != sorted(order):  # OME-Zarr 0.4 orders the axes t, c, z, y, x
        data, axes = data.transpose(order), "".join(axes[i] for i in order)
    if is_lazy(data):
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
    if is_lazy(data):
        store_chunks(data, array)
    else:
        array[...] = data


def _multiscale(
    axes: str, source: Mapping[str, Any], shape: Shape
) -> tuple[dict[str, Any], dict[str, list[dict[str, str]]] | None]:
    """An OME-Zarr 0.4 ``multiscales`` entry for one level ``"0"`` with ``axes``, and an
    ``omero`` entry (or ``None``), made from the input's checked calibration record (scales
    of 1 where it has none) and, where the input was an OME-Zarr image with these axes, its
    name, its translation and its channels' colours where they pass their checks: nothing
    of a stranger's metadata is copied as it is."""
    n_channels = shape[axes.index("C")] if "C" in axes else None
    record = for_axes(source.get("calibration"), axes, n_channels)
    entries, scales, omero = ome_zarr_entries(record, axes, _OME_TYPES)
    transforms: list[dict[str, Any]] = [{"type": "scale", "scale": scales}]
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
