"""Axes strings: validation, inference and conversion to the canonical layout.

Inside the package every array is ``(S, C, Y, X)`` or ``(S, C, Z, Y, X)``:
samples, channels, then spatial axes. ``to_canonical`` brings a user array
there and ``from_canonical`` takes a result back to the user's own layout.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

# The axis letters, in the canonical order (S, C, (Z), Y, X) used inside the package.
_CANONICAL = "SCZYX"


def resolve_axes(axes, ndim):
    """Return the axes string of an array with ``ndim`` dimensions.

    Parameters
    ----------
    axes : str or None
        Letters from ``S C Z Y X``, one per array dimension, in array order.
        ``None`` infers ``"YX"`` for 2D arrays and ``"SYX"`` for 3D arrays.
    ndim : int
        Number of dimensions of the array.

    Returns
    -------
    str
        The validated, upper-case axes string.
    """
    if axes is None:
        if ndim == 2:
            return "YX"
        if ndim == 3:
            return "SYX"
        if ndim < 2:
            raise ValueError(
                f"Expected an image, got a {ndim}D array. Reshape your data: with axes=None a 2D "
                "array is one image (YX), a 3D array a stack of images (SYX); flattened images "
                "need image_shape."
            )
        raise ValueError(
            f"Cannot infer the axes of a {ndim}D array: axes=None only covers 2D images (YX) "
            f"and 3D stacks of images (SYX). Pass axes explicitly, e.g. axes='ZYX', 'SCYX' or 'YXC'."
        )
    if not isinstance(axes, str):
        raise TypeError(f"axes must be a string such as 'YX' or 'SZYX', got {axes!r}.")
    axes_upper = axes.upper()
    unknown = sorted(set(axes_upper) - set(_CANONICAL))
    if unknown:
        raise ValueError(
            f"axes={axes!r} contains unknown letter(s) {unknown}; use only S, C, Z, Y, X."
        )
    repeated = sorted({a for a in axes_upper if axes_upper.count(a) > 1})
    if repeated:
        raise ValueError(f"axes={axes!r} repeats the letter(s) {repeated}; each axis appears once.")
    if "Y" not in axes_upper or "X" not in axes_upper:
        raise ValueError(f"axes={axes!r} must contain both Y and X.")
    if len(axes_upper) != ndim:
        raise ValueError(
            f"axes={axes!r} names {len(axes_upper)} axes but the array has {ndim} dimensions."
        )
    return axes_upper


def to_canonical(array, axes):
    """Transpose ``array`` with ``axes`` to ``S C (Z) Y X``, adding S and C of length 1.

    Returns a view where possible (no copy of the data).
    """
    present = [a for a in _CANONICAL if a in axes]
    out = np.transpose(array, [axes.index(a) for a in present])
    for position, letter in enumerate("SC"):
        if letter not in axes:
            out = np.expand_dims(out, position)
    return out


def from_canonical(array, axes):
    """Inverse of :func:`to_canonical`: back to the layout named by ``axes``."""
    present = [a for a in _CANONICAL if a in axes]
    if "C" not in axes:
        array = array[:, 0]
    if "S" not in axes:
        array = array[0]
    order = [present.index(a) for a in axes]
    return np.transpose(array, order)


def spatial_ndim(axes):
    """Number of spatial axes (2 or 3) named by ``axes``."""
    return 3 if "Z" in axes else 2


def check_image_array(X, name="X"):
    """Return ``X`` as a numeric ndarray, or raise a clear error.

    Rejects sparse matrices, non-numeric dtypes (bool, complex, strings, object
    arrays of non-numbers), empty arrays and non-finite values (naming how many
    and the first position). Integer and floating arrays are returned unchanged
    (no copy); object arrays of numbers are converted to float64.
    """
    if sp.issparse(X):
        raise TypeError(
            f"Sparse data was passed for {name}, but dense data is required: images are dense. "
            "Use X.toarray() to convert to a dense numpy array."
        )
    try:
        array = np.asarray(X)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name} could not be converted to a numpy array: {exc}") from exc
    kind = array.dtype.kind
    if kind == "b":
        raise TypeError(f"{name} has boolean dtype; convert it to a number type (e.g. X.astype(np.float32)).")
    if kind == "c":
        raise ValueError(
            f"Complex data not supported: {name} has dtype {array.dtype}. Denoise the real and "
            "imaginary parts (or the magnitude) separately."
        )
    if kind == "O":
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} has dtype object with non-numeric entries: {exc}") from exc
        kind = "f"
    if kind not in "iuf":
        raise TypeError(f"{name} has dtype {array.dtype}; a numeric (integer or float) image is needed.")
    if array.size == 0:
        if array.ndim == 2 and array.shape[0] > 0:
            raise ValueError(
                f"{name} is empty: found array with 0 feature(s) (shape={array.shape}) while a minimum of 1 is required."
            )
        raise ValueError(
            f"{name} is empty: found array with 0 sample(s) (shape={array.shape}) while a minimum of 1 is required."
        )
    if kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            bad = np.argwhere(~finite)
            first = tuple(int(i) for i in bad[0])
            raise ValueError(
                f"{name} contains {len(bad)} non-finite value(s) (NaN or inf); the first at index "
                f"{first}. Replace them (e.g. np.nan_to_num or inpainting) before denoising."
            )
    return array
