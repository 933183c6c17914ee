"""The settings checked against the input before a fit: what cannot train is refused, with the value
and the fix; what trains otherwise than asked is warned of.

:func:`n2v_estimator.fit.plan.make_plan` calls these in the order a user is told of problems. A warning of
a setting the fit changed for the user is said once per process (:func:`_say_once`): a grid search fits
a clone per fold and setting, and hears each once, not once per fold.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..data.manipulators import hiding_manipulator
from ..data.patches import VALIDATION_MIN_SIDE, fit_patch_shape
from ..nets.unet import check_batch_norm

if TYPE_CHECKING:
    from .._typing import Description, Params, Shape
    from .training import Masker
    from .training_data import TrainingData, TrainingImage

# Adam changes every weight by about the learning rate each step, whatever the
# gradients' scale (its update is the rate times m/sqrt(v), about 1 in size), and
# the U-Net's weights start within +-1/sqrt(fan_in) (at most 0.58, for a 1x1
# convolution of 3 inputs): a rate above 1 moves every weight by more than its
# whole initial range in one step, which no schedule recovers from. Below the
# smallest normal float32 the rate is zero or subnormal in the weights' float32
# arithmetic and nothing trains.
MAX_LEARNING_RATE = 1.0
MIN_LEARNING_RATE = float(np.finfo(np.float32).tiny)
# Narrowest training patch side of a blind-spot network (reach 47 at depth 2) that
# predicts whole images well (see warn_small_blind_patch).
BLIND_MIN_PATCH = 64


def check_time_alone(max_time: float | None, n_devices: int | str) -> None:
    """A time budget is a single process's: ranks would each stop (and lay out their learning rates)
    by their own clocks, and their weights would part."""
    if max_time is not None and n_devices != 1:
        raise ValueError(
            f"max_time={max_time!r} with n_devices={n_devices!r}: a time budget is not shared between "
            "training processes; give several devices max_epochs instead, or train in one process (n_devices=1)."
        )


def check_learning_rate(learning_rate: float) -> None:
    """Refuse a learning rate that cannot train (see :data:`MAX_LEARNING_RATE`)."""
    if not MIN_LEARNING_RATE <= learning_rate <= MAX_LEARNING_RATE:  # also refuses inf and nan
        raise ValueError(
            f"learning_rate={learning_rate!r} cannot train: Adam changes every weight by about the learning "
            f"rate each step, so it must lie between {MIN_LEARNING_RATE:.3g} (the smallest normal float32) "
            f"and {MAX_LEARNING_RATE:g}; 1e-4 to 1e-2 train well (default 1e-3)."
        )


def checked_manipulator(params: Params, noise_kind: str | None, blind_network: bool) -> str:
    """The manipulator the masker uses, after refusing settings that contradict each other:
    structN2V with a noise model or a blind-spot network; a probabilistic masked network's
    manipulator must hide each pixel's own value (its prior is combined with it)."""
    if noise_kind is not None and params["struct_mask"] is not None:
        raise ValueError(
            f"noise_model={params['noise_model']!r} assumes noise independent from pixel to pixel, and "
            "struct_mask is for noise correlated along a line; set noise_model=None for structN2V."
        )
    if blind_network and params["struct_mask"] is not None:
        raise ValueError(
            "blind_spot='network' hides exactly one pixel from the network, and struct_mask hides a line of "
            "them (for noise correlated along it); set blind_spot='mask' for structN2V."
        )
    if noise_kind is None or blind_network:
        return params["manipulator"]
    try:  # the prior is combined with each pixel's own value: it must never see it
        return hiding_manipulator(params["manipulator"])
    except ValueError as exc:
        raise ValueError(
            f"noise_model={params['noise_model']!r} combines a prior with each pixel's own value, and {exc} "
            "Use 'uniform_withCP' (the default) or another manipulator that hides it."
        ) from None


def checked_patch_shapes(
    requested: Shape,
    data: TrainingData,
    train_images: list[TrainingImage],
    validation_images: list[TrainingImage],
    network: Description,
    masker: Masker,
    blind_network: bool,
    batch_size: int,
    patch_size_given: bool = False,
) -> tuple[Shape, Shape | None]:
    """The training and validation patch shapes (``requested``, shrunk to fit the images;
    validation patches only need to fit the held-out part, a thin strip of a single
    image, or ``None`` without validation), checked against the network, the masker
    and batch norm."""
    sides = [im.shape[1:] for im in train_images]
    patch_shape = fit_patch_shape(requested, sides)
    check_patch_fits_network(patch_shape, requested, data, sides, network["depth"])
    check_kernel_fits_patch(network["kernel_size"], patch_shape, requested)
    warn_shrunk_patch(requested, patch_shape, patch_size_given)  # said once the patches can train
    if blind_network:
        warn_small_blind_patch(patch_shape, sides + [im.shape[1:] for im in validation_images])
    masker.check_patch(patch_shape)
    check_batch_norm(network, batch_size, patch_shape)
    if not validation_images:
        return patch_shape, None
    validation_shape = fit_patch_shape(patch_shape, [im.shape[1:] for im in validation_images])
    masker.check_patch(validation_shape)
    return patch_shape, validation_shape


def check_patch_fits_network(
    patch_shape: Shape, requested: Shape, data: TrainingData, sides: Sequence[Shape], depth: int
) -> None:
    """Every side of a training patch must hold at least ``2**depth`` pixels, the
    network's down-sampling factor: below that its deepest level sees only padding.
    ``sides`` are the training images' spatial shapes, named in the message with
    ``data``'s axes and channels (wrong axes are the usual cause)."""
    multiple = 2**depth
    axes = data.axes
    spatial_axes = [a for a in "ZYX" if a in axes]  # the canonical order of patch_shape
    for k, (letter, side, asked) in enumerate(zip(spatial_axes, patch_shape, requested)):
        if side >= multiple:
            continue
        if asked < multiple:
            raise ValueError(
                f"patch_size={asked} along {letter} is smaller than 2**depth={multiple}, the "
                f"network's down-sampling factor at depth={depth}; raise patch_size or lower depth."
            )
        smallest = min(sides, key=lambda shape: shape[k])
        message = (
            f"With axes={axes!r} the images hold {data.channels} channel(s) of "
            f"{' x '.join(spatial_axes)} = {' x '.join(map(str, smallest))} pixels: only {side} pixel(s) along "
            f"{letter}, fewer than 2**depth={multiple} the network needs at depth={depth}. If these axes are "
            "wrong, give the right ones (the axes parameter; --axes on the command line); else lower depth or "
            "train on larger images"
        )
        if data.one_2d_array_shape is not None:
            # One 2D image: its rows are what scikit-learn calls samples, its columns features.
            kind = "sample(s)" if axes.index(letter) == 0 else "feature(s)"
            message += f" (X is one image; found array with {side} {kind})"
        raise ValueError(message + ".")


def check_kernel_fits_patch(kernel_size: int, patch_shape: Shape, requested: Shape) -> None:
    """Refuse a kernel with weights that no pixel of a training patch ever reaches.

    A convolution's weight ``j`` pixels from the kernel's centre sees the patch
    only from outputs within ``side - j`` of it, none once ``j >= side``: it sees
    only the zero padding, gets no gradient and keeps its random initial value,
    which ``transform`` would then apply to real pixels (its tiles are larger).
    """
    largest = 2 * min(patch_shape) - 1
    if kernel_size <= largest:
        return
    shrunk = "" if tuple(patch_shape) == tuple(requested) else f" (patch_size={tuple(requested)}, shrunk to the images)"
    raise ValueError(
        f"kernel_size={kernel_size} is larger than the training patches {tuple(patch_shape)}{shrunk} can train: "
        f"its weights {min(patch_shape)} or more pixels from the centre never see a pixel of a patch, and would "
        f"stay random; use kernel_size <= {largest} or a larger patch_size."
    )


def warn_small_blind_patch(patch_shape: Shape, image_shapes: Sequence[Shape]) -> None:
    """Warn when a blind-spot network trains on patches narrower than :data:`BLIND_MIN_PATCH`
    along an axis where its images are wider: ``transform`` then shows it whole images
    whose context it never saw in training (the zeros beyond a patch's edge are within its reach)."""
    wider = [max(shape[axis] for shape in image_shapes) for axis in range(len(patch_shape))]
    if all(side >= min(BLIND_MIN_PATCH, extent) for side, extent in zip(patch_shape, wider)):
        return
    warnings.warn(
        f"blind_spot='network' trains on patches of {'x'.join(map(str, patch_shape))}, narrower than the "
        f"{BLIND_MIN_PATCH} pixels per axis its reach (47 pixels at depth 2) needs on these images: its "
        "prediction on whole images may be far off (a 192x192 crop of camera with Gaussian noise: its prior "
        f"was 12.4 dB with 32x32 patches, 23.2 with 48x48, 24.9 with 64x64). Use patch_size={BLIND_MIN_PATCH} "
        "or more, or blind_spot='mask'.",
        UserWarning,
        stacklevel=4,
    )


def warn_no_validation(fraction: float, images: Sequence[TrainingImage]) -> None:
    """``validation_fraction`` held out nothing: say so, since the best-weights promise lapses."""
    largest = max((image.shape[1:] for image in images), key=np.prod)
    warnings.warn(
        f"validation_fraction={fraction} held out nothing: {len(images)} image(s) are too few to hold out "
        f"whole images and too small (the largest is {'x'.join(map(str, largest))}) to hold out a strip of "
        f"at least {VALIDATION_MIN_SIDE} pixels, so training keeps its last weights, not those of lowest "
        "validation loss. Fit on more images or larger ones to validate, or set validation_fraction=0 to "
        "keep the last weights without this warning.",
        UserWarning,
        stacklevel=4,
    )


def warn_rows_as_folds(shape: Shape) -> None:
    """A search or cross-validation split one 2D image by its rows: say what each fold then fits."""
    warnings.warn(
        f"Fitted inside scikit-learn's model selection on one 2D image ({shape[0]}x{shape[1]} here): "
        "the splitter takes its rows for samples, so each fold trains on some of the image's rows, "
        "stacked together, and scores on the others. To search or cross-validate over images, pass a "
        "stack of images (axes='SYX': folds split along S) or flattened images with image_shape.",
        UserWarning,
        stacklevel=4,
    )


# The keys of what this process has said of the settings it changed for the user (:func:`_say_once`).
_ALREADY_SAID: set[Hashable] = set()


def _say_once(key: Hashable, message: str) -> None:
    """``message`` as a UserWarning, unless this process said the one of ``key`` already."""
    if key in _ALREADY_SAID:
        return
    _ALREADY_SAID.add(key)
    warnings.warn(message, UserWarning, stacklevel=5)


def warn_stack_of_2d(shape: Shape | None) -> None:
    """A 3D array with ``axes=None`` is a stack of 2D images, as documented; say so (once for images of
    this size: a search's folds differ only in their number), as it may be a volume."""
    what = f"X of shape {tuple(shape)}" if shape is not None else "X"
    count = f"{shape[0]} " if shape is not None else ""
    _say_once(
        ("stack", None if shape is None else tuple(shape[1:])),
        f"{what} with axes=None is trained as a stack of {count}separate 2D images (axes='SYX'), not as a "
        "volume: pass axes='ZYX' (--axes ZYX on the command line) for a volume, or axes='SYX' to say it is a stack.",
    )


def warn_shrunk_patch(requested: Shape, patch_shape: Shape, patch_size_given: bool) -> None:
    """Patches the user asked for (``patch_size_given``), larger than the images, are cut to them:
    say so once (the default patches fit themselves to small images, as documented)."""
    if patch_size_given and tuple(requested) != tuple(patch_shape):
        _say_once(
            ("patch", tuple(requested), tuple(patch_shape)),
            f"patch_size {tuple(requested)} is larger than the training images: patches of {tuple(patch_shape)} "
            "are trained instead (set patch_size to at most the images' size to silence this).",
        )
