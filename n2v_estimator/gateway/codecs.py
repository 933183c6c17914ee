"""Which zarr arrays may be read: their codecs and dtype checked against an allowlist.

A zarr array's metadata names the codecs its chunks are decoded with, and a
store from a stranger may name one that runs code: numcodecs' ``pickle`` codec
(zarr 2 decodes with it; numcodecs before 0.15 unpickles whatever a chunk
holds), ``msgpack``, ``json`` and the object codecs. The dtype alone says
nothing (a ``float32`` array may have a pickle compressor). So every zarr array
the package reads, from a path, passed to ``fit`` or ``transform``, or at the
bottom of a dask array, is checked here first, before any chunk is read: every
codec must be on :data:`ALLOWED_CODECS` (compression, shuffling, checksums and
numeric filters) and the dtype numeric. Anything else is refused with
:class:`UnsafeZarrError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

# Whatever check_source is given, it gives back.
_Source = TypeVar("_Source")

# numcodecs codec ids (zarr format 2 ``compressor`` and ``filters``; zarr 3 names them
# "numcodecs.<id>"): lossless compression, byte shuffles, checksums and numeric filters.
# None of them decodes to Python objects.
_NUMCODECS = frozenset(
    {
        "blosc",
        "zstd",
        "lz4",
        "zlib",
        "gzip",
        "bz2",
        "lzma",
        "shuffle",
        "delta",
        "fixedscaleoffset",
        "quantize",
        "bitround",
        "astype",
        "crc32",
        "crc32c",
        "adler32",
        "fletcher32",
        "jenkins_lookup3",
    }
)
# zarr format 3 codec names (the specification's own), and the numcodecs ids under their zarr 3 names.
ALLOWED_CODECS = frozenset(
    {"bytes", "endian", "transpose", "gzip", "zstd", "blosc", "crc32c", "sharding_indexed"}
    | _NUMCODECS
    | {f"numcodecs.{codec}" for codec in _NUMCODECS}
)
# Where a sharding codec nests further codecs.
_NESTED = ("codecs", "index_codecs")


class UnsafeZarrError(ValueError):
    """A zarr array whose metadata names a codec or dtype the package does not decode."""


def is_zarr_array(X: object) -> bool:
    """Whether ``X`` is a zarr array (zarr 2 or 3), checked without importing zarr."""
    return type(X).__module__.split(".")[0] == "zarr" and hasattr(X, "shape") and hasattr(X, "dtype")


def check_zarr_array(array: Any, name: str = "X") -> None:
    """Refuse ``array`` (a zarr array) unless its codecs are on :data:`ALLOWED_CODECS` and its
    dtype is numeric. Reads the metadata only, never a chunk.

    Raises
    ------
    UnsafeZarrError
        Naming the codec (or dtype) and the array, and what to do.
    """
    codecs, dtype = _codecs_and_dtype(array)
    where = _describe(array, name)
    for codec in codecs:
        if codec not in ALLOWED_CODECS:
            raise UnsafeZarrError(
                f"{where} names the codec {codec!r}, which this package does not decode: it reads zarr "
                "arrays whose codecs are compression, shuffles, checksums or numeric filters "
                f"({', '.join(sorted(_NUMCODECS))}; zarr 3: {', '.join(sorted(ALLOWED_CODECS - _NUMCODECS))}), "
                "never codecs that decode to Python objects (pickle runs code). If you trust the store, "
                "copy it to a new array with one of those codecs."
            )
    # Fixed-size numbers (booleans and complex ones too: the dtype rules of any input then judge
    # them, with the same message as for numpy) decode without object codecs; objects, strings and
    # records do not.
    if dtype.kind not in "iufbc" or dtype.fields is not None:
        raise UnsafeZarrError(
            f"{where} has dtype {dtype}; a numeric (integer or float) zarr array is needed, and other dtypes "
            "(objects, strings) are decoded by codecs this package does not run."
        )


def _describe(array: Any, name: str) -> str:
    store = getattr(array, "store_path", None) or getattr(array, "store", None)
    path = getattr(array, "path", "")
    where = str(store) if store is not None else "a zarr store"
    return f"{name} (the zarr array {path!r} of {where})" if path else f"{name} (the zarr array of {where})"


def _codecs_and_dtype(array: Any) -> tuple[list[str], np.dtype[Any]]:
    """The codec names (nested ones included) and the dtype of a zarr 2 or zarr 3 array, as
    zarr will decode it. Anything unrecognised is named as it is, so that it is refused."""
    metadata = getattr(array, "metadata", None)
    if metadata is not None and hasattr(metadata, "to_dict"):  # zarr 3 (formats 2 and 3)
        document = metadata.to_dict()
        dtype = np.dtype(array.dtype)
        if document.get("zarr_format") == 3:
            return _v3_names(document.get("codecs") or ()), dtype
        return _v2_names(document.get("compressor"), document.get("filters")), dtype
    # zarr 2: the codec objects the array decodes with.
    compressor: Any = getattr(array, "compressor", None)  # a numcodecs codec, or None
    filters = getattr(array, "filters", None) or []
    configs = [c.get_config() if hasattr(c, "get_config") else c for c in filters]
    return _v2_names(compressor.get_config() if hasattr(compressor, "get_config") else compressor, configs), (
        np.dtype(array.dtype)
    )


def _v2_names(compressor: object, filters: Iterable[object] | None) -> list[str]:
    names = []
    for codec in ([compressor] if compressor is not None else []) + list(filters or []):
        names.append(str(codec.get("id")) if isinstance(codec, dict) else repr(codec))
    return names


def _v3_names(codecs: Iterable[object]) -> list[str]:
    names = []
    for codec in codecs:
        if isinstance(codec, str):
            names.append(codec)
            continue
        if not isinstance(codec, dict):
            names.append(repr(codec))
            continue
        names.append(str(codec.get("name")))
        configuration = codec.get("configuration") or {}
        for key in _NESTED:
            if isinstance(configuration, dict) and configuration.get(key):
                names += _v3_names(configuration[key])
    return names


def zarr_arrays_in(dask_array: Any) -> list[Any]:
    """The zarr arrays a dask array reads from: values of its graph, and arguments of its
    tasks (``from_zarr``/``from_array`` keep the array as a graph value, or inline it)."""
    found, seen = [], set()

    def visit(value: object, depth: int) -> None:
        if id(value) in seen or depth > 6:
            return
        seen.add(id(value))
        if is_zarr_array(value):
            found.append(value)
        elif isinstance(value, (tuple, list)):
            for item in value:
                visit(item, depth + 1)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item, depth + 1)
        elif type(value).__module__.startswith("dask."):  # a task, a reference, or a node holding a value
            for attribute in ("value", "args", "kwargs"):
                if hasattr(value, attribute):
                    visit(getattr(value, attribute), depth + 1)

    graph = dask_array.__dask_graph__()
    layers = getattr(graph, "layers", {"": graph})
    for layer in layers.values():
        mapping = getattr(layer, "mapping", None)
        if mapping is None and hasattr(layer, "indices"):  # a blockwise layer: its constant arguments
            visit(list(getattr(layer, "indices", ())), 0)
            visit(getattr(layer, "task", None), 0)
            continue
        for value in (mapping if mapping is not None else layer).values():
            visit(value, 0)
    return found


def check_source(X: _Source, name: str = "X") -> _Source:
    """Refuse ``X`` if it is a zarr array, or a dask array built on one, that
    :func:`check_zarr_array` refuses; anything else passes unchanged."""
    if is_zarr_array(X):
        check_zarr_array(X, name)
    elif callable(getattr(X, "__dask_graph__", None)):  # any dask collection (dask's own protocol)
        for array in zarr_arrays_in(X):
            check_zarr_array(array, name)
    return X
