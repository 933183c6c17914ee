"""Per-channel mean/std normalisation of canonical ``(S, C, *spatial)`` arrays, and the
checks that the network's float32 arithmetic can represent what goes in and comes out."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import dask.array as da
    from numpy.typing import ArrayLike, DTypeLike

    from .._typing import Array, Float64Array

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def output_dtype(dtype: DTypeLike) -> np.dtype[np.float32] | np.dtype[np.float64]:
    """The dtype ``transform`` returns for input of ``dtype``: float64 for 8-byte (and wider) floats
    (of either byte order) and for integers wider than 16 bits, whose values float32
    cannot resolve (uint32 near 2**31 has a float32 step of 256); float32 otherwise."""
    dtype = np.dtype(dtype)
    wide = (dtype.kind == "f" and dtype.itemsize >= 8) or (dtype.kind in "iu" and dtype.itemsize > 2)
    return np.dtype(np.float64) if wide else np.dtype(np.float32)


def in_requested_dtype(
    result: Array | da.Array | tuple[Array | da.Array, ...], input_dtype: DTypeLike, requested: str
) -> Array | da.Array | tuple[Array | da.Array, ...]:
    """``transform``'s ``result`` in the dtype the estimator's ``dtype`` parameter asks for.

    ``requested="float"``: ``result`` as it is (see :func:`output_dtype`). ``"input"``:
    in ``input_dtype``, through :func:`to_dtype`; of a ``(mean, std)`` pair only the
    mean (an uncertainty is not an image of the input's kind); a dask array lazily.
    """
    if requested != "input":
        return result
    dtype = np.dtype(input_dtype)
    if isinstance(result, tuple):
        return (_image_in_dtype(result[0], dtype), *result[1:])
    return _image_in_dtype(result, dtype)


def _image_in_dtype(image: Array | da.Array, dtype: np.dtype[Any]) -> Array | da.Array:
    """``image`` through :func:`to_dtype`; a dask array chunk by chunk, when computed."""
    if not isinstance(image, np.ndarray) and hasattr(image, "map_blocks"):
        # dask types Array.map_blocks through functools.wraps as the module-level map_blocks(func, *args),
        # so that mypy takes to_dtype for the array.
        return image.map_blocks(to_dtype, dtype, dtype=dtype)  # type: ignore[arg-type]
    return to_dtype(image, dtype)


def to_dtype(values: ArrayLike, dtype: DTypeLike) -> Array:
    """``values`` (a float array) as a new array of ``dtype``: for an integer dtype rounded
    to the nearest integer (halves to even) and clipped to its range (uint8: 0..255),
    for a float dtype clipped to its finite range, so that nothing wraps around or overflows."""
    dtype = np.dtype(dtype)
    values = np.asarray(values)
    info = np.iinfo(dtype) if dtype.kind in "iu" else np.finfo(dtype)
    low, high = values.dtype.type(info.min), values.dtype.type(info.max)
    if dtype.kind in "iu":
        if int(high) > info.max:  # int64's maximum rounds up to 2**63 in floating point
            high = np.nextafter(high, values.dtype.type(0))
        values = np.rint(values)
    return np.clip(values, low, high).astype(dtype)


def check_representable(
    images: Array | list[Array],
    mean: Float64Array,
    std: Float64Array,
    name: str = "X",
    data_range: tuple[ArrayLike, ArrayLike] | None = None,
) -> None:
    """Refuse ``images`` whose normalised values float32 cannot hold (they would
    become infinite inside the network), naming how far out they are; with the
    training data's ``data_range`` (``(min, max)`` per channel), warn about values
    far outside it (:func:`warn_outside_range`)."""
    low, high = channel_range(images)
    with np.errstate(over="ignore"):
        reach = np.maximum(np.abs(low - mean), np.abs(high - mean)) / std
    if not (reach <= _FLOAT32_MAX).all():
        raise ValueError(
            f"{name} holds values {float(np.max(reach)):.3g} standard deviations from the training data's "
            "mean, beyond what the network's float32 arithmetic can hold; rescale it, or fit on data like it."
        )
    if data_range is not None:
        warn_outside_range((low, high), data_range, std, name)


def channel_range(images: Array | list[Array]) -> tuple[Float64Array, Float64Array]:
    """Per-channel minimum and maximum (float64) of ``(S, C, *spatial)`` images, or of a list of them."""
    if isinstance(images, list):
        ranges = [channel_range(part) for part in images]
        return np.min([r[0] for r in ranges], axis=0), np.max([r[1] for r in ranges], axis=0)
    flat = by_channel(images)
    return flat.min(axis=1).astype(np.float64), flat.max(axis=1).astype(np.float64)


def warn_outside_range(
    found: tuple[Float64Array, Float64Array],
    data_range: tuple[ArrayLike, ArrayLike],
    std: ArrayLike,
    name: str = "X",
) -> None:
    """Warn when the ``found`` ``(min, max)`` per channel reach beyond the training data's
    ``data_range`` by more than its own span (at least one ``std``): the network has never
    seen such values, and a ReLU network extrapolates them far off (a float16 65504 into a
    model of 8-bit data came back as -186)."""
    (low, high), (data_low, data_high) = found, (np.asarray(r, dtype=np.float64) for r in data_range)
    margin = np.maximum(data_high - data_low, np.asarray(std, dtype=np.float64))
    with np.errstate(over="ignore", invalid="ignore"):
        outside = (low < data_low - margin) | (high > data_high + margin)
    if outside.any():
        c = int(np.argmax(outside))
        warnings.warn(
            f"{name} holds values from {low[c]:.6g} to {high[c]:.6g} (channel {c}), far outside the training data's "
            f"range {data_low[c]:.6g} to {data_high[c]:.6g}: the denoised values there are extrapolations and may be "
            "wrong. Denoise data like the training data, or fit on data that covers this range.",
            UserWarning,
            stacklevel=3,
        )


def check_finite_output(output: Array, name: str = "X") -> None:
    """Refuse an output with non-finite values instead of returning it."""
    bad = int(np.size(output) - np.count_nonzero(np.isfinite(output)))
    if bad:
        raise ValueError(
            f"The denoised {name} holds {bad} non-finite value(s): its values lie too far from the "
            "training data's range for the network's float32 arithmetic; rescale it, or fit on data like it."
        )


def channel_stats(images: Array | list[Array]) -> tuple[Float64Array, Float64Array]:
    """Mean and standard deviation of each channel.

    Parameters
    ----------
    images : ndarray of shape (S, C, *spatial), or a list of them
        A list (images of different sizes) is pooled: every pixel counts once.

    Returns
    -------
    mean, std : ndarray of shape (C,), float64
        A channel with zero spread gets ``std = 1`` so that normalising it
        does not divide by zero.
    """
    if isinstance(images, list):
        counts = np.array([part[:, 0].size for part in images], dtype=np.float64)
        weights = (counts / counts.sum())[:, None]
        means, stds = map(np.array, zip(*(_moments(part) for part in images)))  # (parts, C)
        mean = (weights * means).sum(axis=0)
        # Pooled in units of the largest spread, so that huge values cannot overflow.
        scale = np.maximum(stds, np.abs(means - mean)).max(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        std = scale * np.sqrt((weights * ((stds / scale) ** 2 + ((means - mean) / scale) ** 2)).sum(axis=0))
    else:
        mean, std = _moments(images)
    std = np.where(std > 0, std, 1.0)
    return mean, std


def _moments(images: Array) -> tuple[Float64Array, Float64Array]:
    """Per-channel mean and standard deviation (float64) of ``(S, C, *spatial)`` images."""
    moved = by_channel(images)
    with np.errstate(over="ignore"):
        mean = moved.mean(axis=1, dtype=np.float64)
        std = moved.std(axis=1, dtype=np.float64)
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        # Squares (and sums) of values above ~1e154 overflow float64: scale each
        # channel by its largest magnitude first (this costs a float64 copy).
        scale = np.abs(moved).max(axis=1).astype(np.float64)
        scale = np.where(scale > 0, scale, 1.0)
        scaled = moved / scale[:, None]
        mean, std = scaled.mean(axis=1) * scale, scaled.std(axis=1) * scale
    return mean, std


def by_channel(images: Array) -> Array:
    """``(S, C, *spatial)`` images as ``(C, S * prod(spatial))``, channel by channel."""
    return np.moveaxis(images, 1, 0).reshape(images.shape[1], -1)


def _broadcast(stats: ArrayLike, ndim: int) -> Float64Array:
    """Per-channel ``stats`` shaped to broadcast against ``(S, C, *spatial)`` arrays of ``ndim`` dimensions."""
    return np.asarray(stats, dtype=np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def normalize(images: Array, mean: ArrayLike, std: ArrayLike) -> Array:
    """Return ``(images - mean) / std`` per channel as a new float32 array.

    Computed in float64 and cast at the end, so that large offsets and
    integers above 2**24 keep their precision.
    """
    out = images.astype(np.float64, copy=True)
    out -= _broadcast(mean, out.ndim)
    out /= _broadcast(std, out.ndim)
    return out.astype(np.float32)


def denormalize(images: Array, mean: ArrayLike, std: ArrayLike, dtype: DTypeLike = np.float32) -> Array:
    """Inverse of :func:`normalize`, computed in ``dtype`` (a new array)."""
    out = images.astype(dtype, copy=True)
    out *= _broadcast(std, out.ndim).astype(dtype)
    out += _broadcast(mean, out.ndim).astype(dtype)
    return out
