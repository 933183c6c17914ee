"""Axes strings: validation, inference and conversion to the canonical layout.

Inside the package every array is ``(S, C, Y, X)`` or ``(S, C, Z, Y, X)``:
samples, channels, then spatial axes. ``to_canonical`` brings a user array
there and ``from_canonical`` takes a result back to the user's own layout.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from numbers import Integral
from typing import Any, Literal, NamedTuple, TypeAlias, overload

import numpy as np
from numpy.typing import ArrayLike

from .._typing import Array, ImagesLike
from ..gateway.codecs import check_source

#: What a fitted denoiser takes: its spatial dimensions, channels, row length (under ``image_shape``; ``None``
#: for images) and the estimator's class name for messages (:func:`check_fitted_layout`).
FittedLayout: TypeAlias = tuple[int, int, int | None, str]

# The axis letters, in the canonical order (S, C, (Z), Y, X) used inside the package.
_CANONICAL = "SCZYX"


def resolve_axes(axes: str | None, ndim: int) -> str:
    """Return the axes string of an array with ``ndim`` dimensions.

    Parameters
    ----------
    axes : str or None
        Letters from ``S T C Z Y X``, one per array dimension, in array order.
        ``T`` (time: frames of a time-lapse) is trained and denoised as samples,
        each frame (or each time point's volume, with ``Z``) an image, and kept in
        its place; an array has ``S`` or ``T``, not both. ``None`` infers ``"YX"``
        for 2D arrays and ``"SYX"`` for 3D arrays.
    ndim : int
        Number of dimensions of the array.

    Returns
    -------
    str
        The validated, upper-case axes string, with ``T`` written ``S`` (the
        package's sample axis; the array's layout is unchanged).

    >>> resolve_axes("tyx", 3), resolve_axes("TCZYX", 5)
    ('SYX', 'SCZYX')
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
    unknown = sorted(set(axes_upper) - set(_CANONICAL) - {"T"})
    if unknown:
        raise ValueError(
            f"axes={axes!r} contains unknown letter(s) {unknown}; use only S (samples), T (time), C (channels), "
            "Z, Y and X, e.g. 'TYX' for a time-lapse, 'TCZYX' for OME's order."
        )
    if "T" in axes_upper and "S" in axes_upper:
        raise ValueError(
            f"axes={axes!r} has both S and T: both are trained as samples, and an array has one of them. "
            "Reshape the array to merge them (X.reshape(-1, *X.shape[2:]) when they come first), or fit each "
            "time-lapse separately."
        )
    axes_upper = axes_upper.replace("T", "S")
    repeated = sorted({a for a in axes_upper if axes_upper.count(a) > 1})
    if repeated:
        raise ValueError(f"axes={axes!r} repeats the letter(s) {repeated}; each axis appears once.")
    if "Y" not in axes_upper or "X" not in axes_upper:
        raise ValueError(f"axes={axes!r} must contain both Y and X.")
    if len(axes_upper) != ndim:
        raise ValueError(f"axes={axes!r} names {len(axes_upper)} axes but the array has {ndim} dimensions.")
    return axes_upper


def to_canonical(array: Array, axes: str) -> Array:
    """Transpose ``array`` with ``axes`` to ``S C (Z) Y X``, adding S and C of length 1.

    Returns a view where possible (no copy of the data).
    """
    present = [a for a in _CANONICAL if a in axes]
    out = np.transpose(array, [axes.index(a) for a in present])
    for position, letter in enumerate("SC"):
        if letter not in axes:
            out = np.expand_dims(out, position)
    return out


def from_canonical(array: Array, axes: str) -> Array:
    """Inverse of :func:`to_canonical`: back to the layout named by ``axes``."""
    present = [a for a in _CANONICAL if a in axes]
    if "C" not in axes:
        array = array[:, 0]
    if "S" not in axes:
        array = array[0]
    order = [present.index(a) for a in axes]
    return np.transpose(array, order)


def per_axis(value: object, ndim: int, name: str, minimum: int = 1) -> tuple[int, ...]:
    """An int, or a sequence of one int per spatial axis, as a tuple of ``ndim``
    ints of at least ``minimum``; ``ValueError`` naming the parameter otherwise."""
    values: tuple[object, ...]
    if isinstance(value, (Integral, np.integer)):
        values = (value,) * ndim
    else:
        values = tuple(value) if isinstance(value, Iterable) else (value,)  # (value,): refused below
    if len(values) != ndim or not all(isinstance(v, (Integral, np.integer)) and int(v) >= minimum for v in values):
        raise ValueError(
            f"{name}={value!r} must be an int or {ndim} ints (one per spatial axis), each at least {minimum}."
        )
    return tuple(int(v) for v in values if isinstance(v, (Integral, np.integer)))  # each one is (checked above)


class Images(NamedTuple):
    """Validated input: ``canonical`` is the ``(S, C, *spatial)`` view of ``array``
    (the validated ``X``), ``axes`` the layout of ``X`` (each row's image, prefixed
    with ``S``, under ``image_shape``), and ``n_features`` the values per row of a
    2D ``X`` (``None`` for other ``X``)."""

    canonical: Array
    axes: str
    array: Array
    n_features: int | None


def read_images(X: ImagesLike, axes: str | None, image_shape: Sequence[int] | None) -> Images:
    """Validate ``X`` and view it in the canonical layout.

    Parameters
    ----------
    X : array-like
        Images laid out as ``axes`` says, or flattened images (one per row)
        when ``image_shape`` is given.
    axes : str or None
        The estimator's ``axes``. With ``image_shape`` it describes one row's
        image (default ``"YX"`` or ``"ZYX"``) and has no ``S``.
    image_shape : tuple of int or None
        Shape of the image each row of a 2D ``X`` holds.

    Returns
    -------
    Images
    """
    X = array = check_image_array(X)
    if image_shape is None:
        layout = layout_of(X.shape, axes)
    else:
        shape = tuple(image_shape)
        if not shape or not all(isinstance(n, (Integral, np.integer)) and n > 0 for n in shape):
            raise ValueError(f"image_shape={image_shape!r} must be a tuple of positive ints.")
        size = int(np.prod(shape, dtype=object))  # Python ints: no overflow for absurd shapes
        if X.ndim != 2:
            raise ValueError(
                f"With image_shape={shape}, X must be 2D (n_samples, {size}), one flattened image "
                f"per row; got shape {X.shape}."
            )
        if X.shape[1] != size:
            raise ValueError(f"X has rows of {X.shape[1]} values, but image_shape={shape} needs {size} values per row.")
        default = "YX" if len(shape) == 2 else "ZYX" if len(shape) == 3 else None
        image_axes = resolve_axes(axes if axes is not None else default, len(shape))
        if "S" in image_axes:
            raise ValueError(f"With image_shape, axes={axes!r} describes one row's image and has no S.")
        layout = "S" + image_axes
        X = X.reshape((X.shape[0],) + shape)
    n_features = int(array.shape[1]) if array.ndim == 2 else None
    return Images(to_canonical(X, layout), layout, array, n_features)


def is_image_list(X: object, image_shape: Sequence[int] | None = None, axes: str | None = None) -> bool:
    """Whether ``X`` is a list (or tuple) of images that may differ in size:
    arrays (anything with a ``shape`` and a ``dtype``) of at least 2 dimensions.
    Nested Python lists, rows under ``image_shape``, and a list of the images
    of ``axes``'s ``S`` axis (one dimension fewer than ``axes`` names, as
    ``np.asarray`` would stack them) stay one array-like."""
    if image_shape is not None or not isinstance(X, (list, tuple)) or not X:
        return False
    if not all(hasattr(x, "shape") and hasattr(x, "dtype") and len(x.shape) >= 2 for x in X):
        return False
    if isinstance(axes, str) and ("S" in axes.upper() or "T" in axes.upper()):  # stacked along S (or T)
        return not all(len(x.shape) == len(axes) - 1 for x in X)
    return True


def read_image_list(X: Sequence[ImagesLike], axes: str | None) -> list[Images]:
    """Validate each array of a list of images (:func:`is_image_list`) with the
    same ``axes``; they must agree in dimensionality and channels, not in size.

    Returns
    -------
    list of Images
    """
    parts: list[Images] = []
    for i, x in enumerate(X):
        try:
            part = read_images(x, axes, None)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"X[{i}]: {exc}") from exc
        if parts:
            check_same_layout(parts[0].axes, parts[0].canonical.shape[1], part.axes, part.canonical.shape[1], i)
        parts.append(part)
    return parts


def check_same_layout(first_axes: str, first_channels: int, axes: str, channels: int, index: int) -> None:
    """Refuse image ``index`` of a list unless it has the first image's
    dimensionality and channels (its size may differ)."""
    if spatial_ndim(axes) != spatial_ndim(first_axes) or channels != first_channels:
        raise ValueError(
            f"The images of a list must share their axes and channels: X[0] has axes {first_axes!r} and "
            f"{first_channels} channel(s), X[{index}] has axes {axes!r} and {channels}. "
            "Pass axes=... to name them, or fit them separately."
        )


def check_fitted_layout(axes: str, n_channels: int, n_features: int | None, fitted: FittedLayout) -> None:
    """Refuse images of layout ``axes`` with ``n_channels`` channels (rows of ``n_features`` values)
    unlike those a denoiser was fitted on: ``fitted`` is its ``(ndim, n_channels, n_features,
    estimator_name)``; the row length is compared where the fitted one is given."""
    ndim, fitted_channels, fitted_features, estimator_name = fitted
    found = spatial_ndim(axes)
    if found != ndim:
        raise ValueError(f"The denoiser was fitted on {ndim}D images but X is {found}D (axes {axes!r}).")
    if n_channels != fitted_channels:
        raise ValueError(
            f"X has {n_channels} channel(s) (axes {axes!r}) but the denoiser was fitted on {fitted_channels}."
        )
    if fitted_features is not None and n_features != fitted_features:
        raise ValueError(
            f"X has {n_features} features, but {estimator_name} is expecting {fitted_features} features as input."
        )


def feature_names_out(
    image_shape: Sequence[int] | None, n_features: int | None, input_features: ArrayLike | None = None
) -> Array:
    """Column names of ``transform``'s output of flattened images (rows of ``n_features``
    values, one per pixel, under ``image_shape``): ``input_features``, else ``x0``, ``x1``, ...
    as scikit-learn names unnamed columns. What ``set_output(transform="pandas")`` labels
    the output with; refused for images, whose shape is not a table's."""
    if image_shape is None or n_features is None:
        raise ValueError(
            "Column names (get_feature_names_out, set_output(transform='pandas' or 'polars')) exist for "
            "flattened images only, fitted and denoised with image_shape: one column per pixel. Without "
            "image_shape, transform returns images (of any size), not tables; keep set_output(transform='default')."
        )
    if input_features is None:
        return np.asarray([f"x{i}" for i in range(n_features)], dtype=object)
    names = np.asarray(input_features, dtype=object)
    if names.ndim != 1 or len(names) != n_features:
        raise ValueError(
            f"input_features should have length equal to number of features ({n_features}), got {names.size}."
        )
    return names


class UnreadImages(NamedTuple):
    """An array that is not read here (zarr, dask: read patch by patch, or chunk by chunk), judged:
    ``axes`` its layout, ``dtype`` the type numpy input of its dtype is read as (object: float64),
    ``n_channels`` its channels (1 without ``C``)."""

    array: Any
    axes: str
    dtype: np.dtype[Any]
    n_channels: int


def read_unread(X: Any, axes: str | None) -> UnreadImages:
    """The entrance of an array that is not read (zarr, or dask, or a dask array on a zarr store):
    the codecs of the store under it, numpy input's dtype and emptiness rules (:func:`check_image_array`,
    in its order, on a stand-in of ``X``'s dtype: of ``X``'s own shape where it holds nothing, else of
    one pixel), then its layout (:func:`layout_of`); nothing of ``X`` is read. Its values are checked
    as they are read."""
    check_source(X)  # a zarr array, or a dask array on one: its codecs before any chunk is read
    shape = tuple(X.shape)
    if any(not isinstance(n, (Integral, np.integer)) for n in shape):  # dask: nan for unknown chunk sizes
        raise ValueError(f"X has chunks of unknown size (shape {shape}); call X.compute_chunk_sizes() first.")
    dtype = _numeric_array(np.zeros(shape if 0 in shape else (1,) * len(shape), dtype=X.dtype)).dtype
    layout = layout_of(shape, axes)
    return UnreadImages(X, layout, dtype, shape[layout.index("C")] if "C" in layout else 1)


def layout_of(shape: Sequence[int], axes: str | None) -> str:
    """The axes of an array of ``shape`` (any container: numpy, a list's item, dask, zarr) under the
    estimator's ``axes``: the one place that judges a shape, so that the same array gets the same
    verdict and message whatever holds it (:func:`resolve_axes`, and a colour axis left unnamed
    refused)."""
    _refuse_unnamed_colour_axis(tuple(shape), axes)
    return resolve_axes(axes, len(shape))


def _refuse_unnamed_colour_axis(shape: tuple[int, ...], axes: str | None) -> None:
    """With ``axes=None`` a ``(H, W, 3)`` photograph would be read as H images of
    W x 3 pixels and trained on nonsense: ask for the axes, as n2v and CAREamics do."""
    if axes is None and len(shape) == 3 and shape[-1] in (3, 4) and min(shape[:2]) > shape[-1]:
        raise ValueError(
            f"X of shape {shape} looks like a colour image (its last axis has {shape[-1]} entries): "
            "name its axes, axes='YXC' for one RGB(A) image, or axes='SYX' if it really is a "
            f"stack of {shape[0]} images of {shape[1]}x{shape[2]} pixels."
        )


def spatial_ndim(axes: str) -> int:
    """Number of spatial axes (2 or 3) named by ``axes``."""
    return 3 if "Z" in axes else 2


def _is_sparse(X: object) -> bool:
    """Whether ``X`` is a SciPy sparse matrix or array. SciPy is not imported for it: a sparse
    object exists only once ``scipy.sparse`` is (the command line starts without SciPy)."""
    sparse = sys.modules.get("scipy.sparse")
    return sparse is not None and sparse.issparse(X)


def check_image_array(X: ImagesLike, name: str = "X") -> Array:
    """Return ``X`` as a numeric ndarray, or raise a clear error.

    Rejects sparse matrices, non-numeric dtypes (bool, complex, strings, object
    arrays of non-numbers), empty arrays and non-finite values (naming how many
    and the first position). Integer and floating arrays are returned unchanged
    (no copy); object arrays of numbers are converted to float64.
    """
    check_source(X, name)  # a zarr array (or a dask array on one): its codecs, before any chunk is read
    return _numeric_array(X, name)


def _numeric_array(X: ImagesLike, name: str = "X") -> Array:
    """:func:`check_image_array` after the source check: ``X`` as a numeric ndarray, or the error."""
    if _is_sparse(X):
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
        check_finite(array, name)
    return array


def check_finite(array: Array, name: str = "X") -> None:
    """Refuse non-finite values, naming how many and the first position: the one check of values that an
    array read later (a dask chunk) still needs once its dtype and layout were judged unread."""
    finite = np.isfinite(array)
    if not finite.all():
        bad = np.argwhere(~finite)
        first = tuple(int(i) for i in bad[0])
        raise ValueError(
            f"{name} contains {len(bad)} non-finite value(s) (NaN or inf); the first at index "
            f"{first}. Replace them (e.g. np.nan_to_num or inpainting) before denoising."
        )


@overload
def fitted_images(
    X: ImagesLike,
    axes: str | None,
    image_shape: Sequence[int] | None,
    fitted: FittedLayout,
    *,
    lazy: Literal[False] = False,
) -> Images: ...
@overload
def fitted_images(
    X: ImagesLike, axes: str | None, image_shape: Sequence[int] | None, fitted: FittedLayout, *, lazy: bool
) -> Images | UnreadImages: ...
def fitted_images(
    X: ImagesLike, axes: str | None, image_shape: Sequence[int] | None, fitted: FittedLayout, *, lazy: bool = False
) -> Images | UnreadImages:
    """The one entrance of images for a fitted denoiser (``transform``, ``score``, a package's test image).

    ``X`` is read (:func:`read_images`) and its layout compared with ``fitted``, the denoiser's
    ``(ndim, n_channels, n_features, estimator_name)`` (:func:`check_fitted_layout`; rows of
    ``n_features`` values under ``image_shape``). With ``lazy``, a dask array is judged unread
    (:func:`read_unread`) and returned as :class:`UnreadImages`, for ``transform`` to denoise it chunk by
    chunk; flattened rows (``image_shape``) are not read that way.
    """
    if lazy and is_dask_array(X):
        if image_shape is not None:
            raise ValueError(
                f"image_shape={image_shape!r}: flattened rows are not supported for dask arrays; "
                "reshape X to its images (e.g. X.reshape((-1, *image_shape))) and use a denoiser without "
                "image_shape, or compute X and pass a numpy array."
            )
        unread = read_unread(X, axes)
        check_fitted_layout(unread.axes, unread.n_channels, None, fitted)
        return unread
    images = read_images(X, axes, image_shape)
    check_fitted_layout(images.axes, images.canonical.shape[1], images.n_features, fitted)
    return images


def is_dask_array(X: object) -> bool:
    """Whether ``X`` is a ``dask.array.Array`` (without importing dask)."""
    return type(X).__module__.split(".")[0] == "dask" and hasattr(X, "chunks") and hasattr(X, "map_overlap")
