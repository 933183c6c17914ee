"""napari layers as the estimator's input and output: which of a viewer's layers are images, their axes, their
data (lazy where it is big), the checks that turn a wrong choice into a sentence, and the result layers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from ..data.axes import is_dask_array, resolve_axes
from ..data.patches import requested_patch_shape

if TYPE_CHECKING:
    from napari.layers import Image, Layer
    from napari.viewer import Viewer

    from .._typing import Shape
    from ..estimator import Noise2VoidDenoiser

#: A layer's array as napari holds it: NumPy, dask, zarr, or any array-like napari accepts.
LayerData: TypeAlias = Any
#: What napari adds as a layer: its data, its keyword arguments (name, scale, ...) and its kind ("image").
LayerDataTuple: TypeAlias = tuple[LayerData, dict[str, Any], str]

# In-memory layers larger than this (in float32) are handed to fit as dask arrays, which it
# reads patch by patch: a float32 copy of a long video would not fit in memory.
LAZY_BYTES = 1 << 30

# napari's axis labels (its defaults are "-2", "-1", or "axis -1") in the estimator's letters.
_LABELS = {
    "t": "T",
    "time": "T",
    "s": "S",
    "sample": "S",
    "samples": "S",
    "z": "Z",
    "y": "Y",
    "x": "X",
    "c": "C",
    "ch": "C",
    "channel": "C",
    "channels": "C",
}


class LayerError(ValueError):
    """A layer that cannot be used as chosen; the message names the layer and the fix."""


def layer_data(layer: Layer) -> LayerData:
    """The layer's full-resolution array (the first level of a multiscale layer), not copied."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def infer_axes(layer: Layer) -> str:
    """The estimator's axes for ``layer``: from its axis labels where they name axes
    (``t`` is the time axis ``T``, trained as samples), else by dimensions: ``YX``, ``ZYX``, ``SZYX``; an
    RGB(A) layer ends with ``C``, and a stack of RGB images is a video (``SYXC``), not a
    volume. Only a guess: the widgets let the user edit it."""
    rgb = bool(getattr(layer, "rgb", False))
    ndim = layer_data(layer).ndim - rgb
    labels = [str(label).strip().lower() for label in (getattr(layer, "axis_labels", None) or ())][:ndim]
    named = "".join(_LABELS.get(label, "?") for label in labels)
    if len(named) == ndim and "?" not in named and len(set(named)) == ndim and named.endswith("YX"):
        axes = named
    else:
        axes = {2: "YX", 3: "SYX" if rgb else "ZYX", 4: "SZYX"}.get(ndim, "SCZYX"[-ndim:] if ndim <= 5 else "")
    return axes + ("C" if rgb else "")


def image_layers(viewer: Viewer) -> list[Image]:
    """The viewer's image layers, bottom to top (the layers the widgets offer)."""
    return [layer for layer in viewer.layers if is_image_layer(layer)]


def is_image_layer(layer: Layer | None) -> bool:
    """Whether ``layer`` is a napari image layer (plugins get layers through a proxy, which
    ``isinstance`` sees through and ``type`` does not)."""
    from napari.layers import Image

    return isinstance(layer, Image)


def check_image_layer(layer: Layer) -> None:
    """Refuse anything but an image layer (labels, shapes, points ...), naming it."""
    if not is_image_layer(layer):
        kind = layer.__class__.__name__  # the layer's class, also through napari's proxy for plugins
        raise LayerError(
            f"Layer {layer.name!r} is a {kind} layer: Noise2Void works on image layers. "
            f"Choose an image layer (File > Open, or File > Open Sample for a noisy example)."
        )


def check_axes(layer: Layer, axes: str | None) -> str:
    """The user's ``axes`` for ``layer``, checked against its dimensions and its RGB flag."""
    axes = (axes or "").strip().upper()
    data = layer_data(layer)
    try:
        resolve_axes(axes, data.ndim)
    except ValueError as exc:
        raise LayerError(f"Layer {layer.name!r} (shape {tuple(data.shape)}): {exc}") from None
    rgb = bool(getattr(layer, "rgb", False))
    if rgb and not axes.endswith("C"):
        raise LayerError(
            f"Layer {layer.name!r} is RGB(A): its last axis (of {data.shape[-1]}) holds the colours, but axes "
            f"{axes!r} read it as {axes[-1]}. Use axes ending in 'C', such as {infer_axes(layer)!r}."
        )
    return axes


def spatial_shape(layer: Layer, axes: str) -> Shape:
    """The sizes of the layer's Z, Y and X axes."""
    shape = layer_data(layer).shape
    return tuple(size for letter, size in zip(axes, shape) if letter in "ZYX")


def check_patch_fits(layer: Layer, axes: str, patch_size: int | Sequence[int] | None) -> None:
    """Refuse a layer smaller than the training patches (an int side, or one per spatial axis)."""
    sizes = spatial_shape(layer, axes)
    if patch_size is None:
        return
    wanted = requested_patch_shape(patch_size, len(sizes))  # as fit reads it (an int p is (p // 2, p, p) in 3D)
    if any(s < w for s, w in zip(sizes, wanted)):
        largest = min(sizes[-2:])
        raise LayerError(
            f"Layer {layer.name!r} ({' x '.join(map(str, sizes))} pixels) is smaller than the training "
            f"patches ({' x '.join(map(str, wanted))}). Choose a patch size of at most {largest}, or a larger image."
        )


def training_array(layer: Image, axes: str) -> LayerData:
    """What ``fit`` gets for ``layer``: its dask or zarr data as it is (read patch by
    patch), an in-memory array larger than :data:`LAZY_BYTES` as float32 wrapped in a
    dask array (so that no float32 copy of it is made), else the array itself."""
    data = layer_data(layer)
    if is_dask_array(data) or not isinstance(data, np.ndarray):
        return data
    if data.size * 4 > LAZY_BYTES:
        import dask.array as da

        chunks = tuple(size if letter in "CYX" else 1 for letter, size in zip(axes, data.shape))
        return da.from_array(data, chunks=chunks)
    return data


def check_model_fits(estimator: Noise2VoidDenoiser, layer: Layer, axes: str) -> None:
    """Refuse a fitted ``estimator`` whose channels or dimensions do not match ``layer`` read with ``axes``."""
    channels = layer_data(layer).shape[axes.index("C")] if "C" in axes else 1
    spatial = sum(letter in "ZYX" for letter in axes)
    if spatial != estimator.spatial_ndim_:
        raise LayerError(
            f"The model denoises {estimator.spatial_ndim_}D images; layer {layer.name!r} read with "
            f"axes {axes!r} is {spatial}D. Change the axes, or choose a {estimator.spatial_ndim_}D model."
        )
    if channels != estimator.n_channels_:
        raise LayerError(
            f"The model was trained on {estimator.n_channels_} channel(s); layer {layer.name!r} read "
            f"with axes {axes!r} has {channels}. Choose a layer with {estimator.n_channels_} channel(s) "
            f"or a model trained on images like this one."
        )


def result_layers(layer: Image, denoised: LayerData, std: LayerData | None = None) -> list[LayerDataTuple]:
    """napari layer-data tuples for the result: the denoised image named after ``layer``,
    with its scale, translation and RGB flag, and the posterior std beside it."""
    shared = {"scale": tuple(layer.scale), "translate": tuple(layer.translate)}
    rgb = bool(getattr(layer, "rgb", False))
    out: list[LayerDataTuple] = [
        (
            denoised,
            {
                **shared,
                "name": f"{layer.name} denoised",
                "rgb": rgb,
                **({"contrast_limits": tuple(layer.contrast_limits)} if rgb else {}),
            },
            "image",
        )
    ]
    if std is not None:
        out.append(
            (
                std,
                {**shared, "name": f"{layer.name} posterior std", "rgb": False, "colormap": "magma", "visible": False},
                "image",
            )
        )
    return out
