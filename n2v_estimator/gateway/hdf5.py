"""HDF5 files from strangers (the TensorFlow n2v's Keras weights): what is read, and what is refused.

An HDF5 file can point outside itself and declare more than it stores:

- **links**: an external link (to a group or dataset of another file, or to a
  named pipe, where opening blocks forever), a soft link, at any level of a path
  (``model_weights`` itself, a layer's group, a group between a layer and its
  weight). Only hard links, objects stored in this file, are followed here; the
  file itself must be a regular file, opened without blocking.
- **raw data elsewhere**: datasets whose data lie in external files or are
  virtual (assembled from other files).
- **declared against stored**: a dataset declared large whose bytes are never
  written (its fill value), a chunk far larger than the dataset it belongs to
  (a gzip chunk of a gigabyte behind a 576-byte kernel), or compression beyond
  :data:`n2v_estimator.gateway.budget.MAX_EXPANSION` (weights are noise-like and barely
  compress). Each is judged from the dataset's metadata before any byte is
  decompressed.
- **filters**: only deflate, shuffle, fletcher32 and LZF; any other filter
  would load a plugin library from the machine.
- **counts**: more than :data:`MAX_MEMBERS` names in a list (``layer_names``,
  ``weight_names``) is not a Keras model.

Every refusal is an :class:`HDF5Error` naming the path inside the file.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
from typing import TYPE_CHECKING

import numpy as np

from .budget import MAX_EXPANSION
from .text import shown

if TYPE_CHECKING:
    from collections.abc import Iterator

    import h5py

    from .._typing import PathLike

# Layers or weights a Keras model lists: an n2v U-Net of depth 8 with 16 channels has some 900.
MAX_MEMBERS = 4096
# Below this a dataset is read whatever it stores (a few bias values, a blur kernel).
FREE_BYTES = 4096
# HDF5's own filters: deflate (gzip), shuffle, fletcher32; and h5py's LZF.
_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32", 32000: "lzf"}


class HDF5Error(ValueError):
    """An HDF5 file points outside itself, declares more than it stores, or is not one to read."""


@contextlib.contextmanager
def open_file(path: PathLike) -> Iterator[h5py.File]:
    """The regular file at ``path`` as an open, read-only ``h5py.File`` (a context manager). A
    named pipe, a device or a folder is refused before anything is read (it is opened without
    blocking), and the file is read through that one open file: a name replaced meanwhile is not."""
    import h5py

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise HDF5Error(f"{path} cannot be opened: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise HDF5Error(f"{path} is not a regular file (a pipe, a device or a folder).")
        try:
            file = h5py.File(handle, "r")
        except OSError as exc:
            raise HDF5Error(f"{path} is not an HDF5 file: {' '.join(str(exc).split())[:200]}") from None
        with file:
            yield file


def child(group: h5py.Group, path: str) -> h5py.Group | h5py.Dataset:
    """``group[path]``, followed one name at a time: each a hard link (an object stored in this
    file), never a soft or external link. ``path`` may hold ``/``; ``.`` and empty names are refused."""
    import h5py

    node = group
    for name in str(path).split("/"):
        if name in ("", ".", ".."):
            raise HDF5Error(f"{_shown(path)} is not a plain path inside the file.")
        if not isinstance(node, h5py.Group):
            raise HDF5Error(f"{_shown(path)}: {_shown(node.name)} is not a group.")
        link = node.get(name, getlink=True)
        if link is None:
            raise HDF5Error(f"{_shown(path)} is not in the file ({_shown(name)} is missing).")
        if not isinstance(link, h5py.HardLink):
            raise HDF5Error(
                f"{_shown(path)}: {_shown(name)} is a {type(link).__name__} (to another file or place); "
                "only objects stored in the file itself are read."
            )
        node = node[name]
    return node


def names(group: h5py.Group, attribute: str) -> list[str]:
    """The strings listed in ``group``'s ``attribute`` (Keras' ``layer_names``, ``weight_names``),
    at most :data:`MAX_MEMBERS`."""
    values = group.attrs.get(attribute, [])
    if np.ndim(values) != 1 or len(values) > MAX_MEMBERS:
        raise HDF5Error(
            f"{_shown(group.name)}'s {attribute} lists {np.size(values)} names: not a Keras model's "
            f"(at most {MAX_MEMBERS})."
        )
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def checked_dataset(dataset: h5py.Group | h5py.Dataset, name: str) -> h5py.Dataset:
    """``dataset`` if its data lie in this file and it stores what it declares: not external or
    virtual, a float type, known filters, chunks no larger than the data, and at least
    1/:data:`MAX_EXPANSION` of its declared bytes stored (none: never written)."""
    import h5py

    shown = _shown(name)
    if not isinstance(dataset, h5py.Dataset):
        raise HDF5Error(f"{shown} is not a dataset.")
    if dataset.external or dataset.is_virtual:
        raise HDF5Error(f"{shown} is not stored in the file itself (external or virtual data is not read).")
    if dataset.dtype.kind != "f" or dataset.dtype.itemsize > 8:
        raise HDF5Error(f"{shown} holds {dataset.dtype}, not floating-point weights.")
    plist = dataset.id.get_create_plist()
    filters = [plist.get_filter(k)[0] for k in range(plist.get_nfilters())]
    unknown = [f for f in filters if f not in _FILTERS]
    if unknown:
        raise HDF5Error(f"{shown} needs HDF5 filter(s) {unknown}: only {sorted(_FILTERS.values())} are read.")
    declared = math.prod(int(n) for n in dataset.shape) * dataset.dtype.itemsize
    if dataset.chunks is not None:
        chunk = math.prod(int(n) for n in dataset.chunks) * dataset.dtype.itemsize
        if chunk > max(declared, FREE_BYTES):
            raise HDF5Error(f"{shown} is cut in chunks of {chunk} bytes for {declared} bytes of data: crafted.")
    stored = dataset.id.get_storage_size()
    if declared and (stored == 0 or (declared > FREE_BYTES and declared > stored * MAX_EXPANSION)):
        raise HDF5Error(
            f"{shown} declares {declared} bytes and stores {stored}: its values were never written, or are "
            "compressed far beyond what weights compress."
        )
    return dataset


def _shown(text: str, limit: int = 80) -> str:
    """A name from the file as a message shows it: quoted, escaped, cut (:func:`n2v_estimator.gateway.text.shown`)."""
    return f"'{shown(text, limit - 2)}'"
