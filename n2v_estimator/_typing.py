"""Names for the types that cross the package's layers, so that every signature says the same thing the same way."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: A file path as a caller gives it.
PathLike: TypeAlias = str | os.PathLike[str]
#: A NumPy array of any dtype (images, statistics); the shape is in the docstring.
Array: TypeAlias = NDArray[Any]
#: A float64 array (per-channel statistics, data ranges).
Float64Array: TypeAlias = NDArray[np.float64]
#: What a user may pass as images: an array, a list of arrays, a zarr or dask array (read lazily).
ImagesLike: TypeAlias = Any
#: A spatial shape or a per-axis size: (Y, X) or (Z, Y, X).
Shape: TypeAlias = tuple[int, ...]
#: A network's description: plain JSON values keyed by setting (``nets.unet.network_description``).
Description: TypeAlias = Mapping[str, Any]
#: An estimator's parameters, as ``get_params`` gives them.
Params: TypeAlias = Mapping[str, Any]

__all__ = ["Array", "ArrayLike", "Description", "Float64Array", "ImagesLike", "Params", "PathLike", "Shape"]
