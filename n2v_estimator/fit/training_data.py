"""What ``fit`` trains on: ``X`` read once (arrays in memory, lists of images of different sizes, or
zarr and dask arrays read patch by patch), its layout checked; how it splits into training and
validation images once the normalisation is known; and which training images hold the patches.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

from ..data.axes import check_same_layout, is_image_list, read_image_list, read_images
from ..data.normalize import normalize
from ..data.ondemand import is_on_demand, on_demand_images, sample_blocks
from ..data.patches import split_validation

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from .._typing import Array, Float64Array, ImagesLike, Shape
    from ..data.ondemand import OnDemandImage

    #: A training or validation image of shape ``(C, *spatial)``, normalised: float32 in memory, or
    #: read (and normalised) patch by patch.
    TrainingImage: TypeAlias = NDArray[np.float32] | OnDemandImage
    #: ``split(mean, std, fraction)``: the normalised training and validation images (see
    #: :func:`n2v_estimator.data.patches.split_validation`).
    Split: TypeAlias = Callable[[Float64Array, Float64Array, float], tuple[list[TrainingImage], list[TrainingImage]]]


class TrainingData(NamedTuple):
    """What ``fit`` trains on: its layout (``axes`` of the first image, ``channels``,
    ``n_features`` of a 2D array, and ``one_2d_array_shape``, the ``(Y, X)`` shape of an ``X``
    that is one 2D array, else ``None``: its rows are what scikit-learn calls samples), the ``pixels``
    the statistics and the noise estimate are taken from (a canonical array, or
    a list of them), and ``split(mean, std, fraction)``, the normalised
    training and validation images."""

    axes: str
    channels: int
    n_features: int | None
    one_2d_array_shape: Shape | None
    pixels: Array | list[Array]
    split: Split


def read_training_data(X: ImagesLike, axes: str | None, image_shape: Sequence[int] | None) -> TrainingData:
    """Read ``X`` (an array, a list of arrays of different sizes, or arrays read
    on demand: zarr or dask) as :class:`TrainingData`, checking its layout."""
    items = X if is_image_list(X, image_shape, axes) else [X]
    if image_shape is None and any(is_on_demand(x) for x in items):
        images: list[OnDemandImage] = []
        layouts: list[str] = []
        for i, item in enumerate(items):
            try:
                found, layout = on_demand_images(item, axes)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"X[{i}]: {exc}" if items is X else str(exc)) from exc
            if images:
                check_same_layout(layouts[0], images[0].shape[0], layout, found[0].shape[0], i)
            images += found
            layouts.append(layout)

        def split_on_demand(
            mean: Float64Array, std: Float64Array, fraction: float
        ) -> tuple[list[TrainingImage], list[TrainingImage]]:
            return split_validation([image.normalized(mean, std) for image in images], fraction)

        one_2d_array = len(items) == 1 and len(items[0].shape) == 2 and len(layouts[0]) == 2  # as for numpy
        shape_2d = tuple(images[0].shape[1:]) if one_2d_array else None
        return TrainingData(layouts[0], images[0].shape[0], None, shape_2d, sample_blocks(images), split_on_demand)
    pixels: Array | list[Array]
    if items is X:
        parts = read_image_list(X, axes)
        pixels = [part.canonical for part in parts]
    else:
        parts = [read_images(X, axes, image_shape)]
        pixels = parts[0].canonical  # one array stays one array, as it always was

    def split_in_memory(
        mean: Float64Array, std: Float64Array, fraction: float
    ) -> tuple[list[TrainingImage], list[TrainingImage]]:
        normalized = [image for part in parts for image in normalize(part.canonical, mean, std)]
        return split_validation(normalized, fraction)

    first = parts[0]
    one_2d_array = len(parts) == 1 and first.array.ndim == 2 and len(first.axes) == 2
    shape_2d = tuple(first.canonical.shape[2:]) if one_2d_array else None
    n_features = first.n_features if len(parts) == 1 else None
    return TrainingData(first.axes, first.canonical.shape[1], n_features, shape_2d, pixels, split_in_memory)


def images_holding_patches(images: list[TrainingImage], requested: Shape) -> list[TrainingImage]:
    """The training images, without those smaller than the requested patches
    when others hold them (with a warning): one thin image of a list would
    otherwise shrink every patch. When none holds them, the patches shrink."""
    holds = [all(s >= p for s, p in zip(image.shape[1:], requested)) for image in images]
    if all(holds) or not any(holds):
        return images
    small = [tuple(image.shape[1:]) for image, ok in zip(images, holds) if not ok]
    warnings.warn(
        f"{len(small)} of the {len(images)} training images (of shapes {', '.join(map(str, small[:5]))}"
        f"{', ...' if len(small) > 5 else ''}) are smaller than the {tuple(requested)} patches and are not "
        "trained on; lower patch_size to train on them too.",
        UserWarning,
        stacklevel=4,
    )
    return [image for image, ok in zip(images, holds) if ok]
