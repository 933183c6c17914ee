"""NumPy ``.npy`` files: read memory-mapped (a dask array over the map where large), written whole or chunk by
chunk into a mapped file. They name no axes and carry no calibration."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..gateway.budget import check_declared
from .chunks import is_lazy, lazy_from_memmap, store_in_file

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from .chunks import ImageArray


def read_npy(path: Path, lazy_above: int | None, trust: bool) -> tuple[ImageArray, None, dict[str, Any]]:
    """The array in the ``.npy`` file ``path``, memory-mapped read-only (a dask array where it
    holds more than ``lazy_above`` bytes; ``None``: never), no axes, and its metadata
    (:func:`n2v_estimator.images.files.read_image`'s). Its declared size is checked first
    (``trust``: it is not)."""
    data = np.load(path, allow_pickle=False, mmap_mode="r")
    check_declared(path, data.shape, data.dtype, trust=trust)
    if lazy_above is not None and data.nbytes > lazy_above:
        data = lazy_from_memmap(data, None)
    return data, None, {"format": "npy", "calibration": {}}


def write_npy(temporary: Path, data: ImageArray, axes: str, source: Mapping[str, Any]) -> None:
    """Write ``data`` to the file ``temporary`` as ``.npy`` (its ``axes`` and ``source`` are not
    kept: the format holds neither); a dask array chunk by chunk."""
    if not is_lazy(data):
        with open(temporary, "wb") as file:
            np.save(file, data, allow_pickle=False)
        return
    store_in_file(data, np.lib.format.open_memmap(temporary, mode="w+", dtype=data.dtype, shape=data.shape))
