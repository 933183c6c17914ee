"""The fit plan: everything ``fit`` needs, derived from the parameters and the
data, and validated, before any training starts and without touching the estimator.

``fit`` is then all-or-nothing: :func:`make_plan` raises for every bad setting
or input; :meth:`FitPlan.run` trains a network of its own (a fresh one, or a
copy of the previous one for ``warm_start``); only after that does the
estimator take the result.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import numpy as np
from sklearn.utils import check_random_state

from ..data.axes import check_same_layout, is_image_list, read_image_list, read_images, spatial_ndim
from ..data.masking import BlindSpotMasker, hiding_manipulator, resolve_struct_mask
from ..data.normalize import channel_range, channel_stats, check_representable, normalize
from ..data.ondemand import is_on_demand, on_demand_images, sample_blocks
from ..data.patches import VALIDATION_MIN_SIDE, PatchSampler, fit_patch_shape, requested_patch_shape, split_validation
from ..nets.blindnet import every_pixel
from ..nets.builder import build_unet
from ..nets.geometry import NetworkGeometry
from ..nets.noise import PRIOR_SCALE_START, blind_spot_loss, estimate_noise, noise_kind
from ..nets.unet import check_batch_norm, network_description, resolve_blind_spot
from ..predict.tiling import tile_geometry
from ..runtime.compute import fastest_layout, resolve_precision
from ..runtime.devices import resolve_device
from ..runtime.memory import check_fit_memory
from ..runtime.progress import inside_model_selection
from .calibration import blind_spot_calibration, warn_if_uncalibrated
from .distributed import (
    average_over_ranks,
    batch_norm_over_ranks,
    check_devices,
    rank_seed,
    run_distributed,
    run_joined,
)
from .training import make_validation_set, train

# Default budget (x 50 steps per epoch): 1500 steps in 2D; in 3D the default
# 16x32x32 patches hold 4 times the blind spots of 64x64 ones and a step costs about
# 1.8 s on one CPU thread, so 300 steps (minutes) train as far.
DEFAULT_EPOCHS = {2: 30, 3: 6}
# Validation patches per batch of training patches; drawn once per fit.
_VALIDATION_BATCHES = 4
# Narrowest training patch side of a blind-spot network (reach 47 at depth 2) that
# predicts whole images well (see _warn_small_blind_patch).
BLIND_MIN_PATCH = 64
# Adam changes every weight by about the learning rate each step, whatever the
# gradients' scale (its update is the rate times m/sqrt(v), about 1 in size), and
# the U-Net's weights start within +-1/sqrt(fan_in) (at most 0.58, for a 1x1
# convolution of 3 inputs): a rate above 1 moves every weight by more than its
# whole initial range in one step, which no schedule recovers from. Below the
# smallest normal float32 the rate is zero or subnormal in the weights' float32
# arithmetic and nothing trains.
MAX_LEARNING_RATE = 1.0
MIN_LEARNING_RATE = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class Previous:
    """The fitted state a ``warm_start`` fit continues from."""

    network: dict
    weights: dict
    mean: np.ndarray
    std: np.ndarray
    n_epochs: int
    data_range: tuple | None = None


@dataclass(frozen=True)
class FitPlan:
    """A checked plan for one ``fit``.

    Attributes
    ----------
    network : dict
        Description of the network to train (see :mod:`n2v_estimator.nets.unet`).
    initial_weights : dict or None
        ``warm_start``: the previous network's weights, trained further.
        ``None``: fresh weights from ``seeds[0]``.
    mean, std : ndarray of shape (n_channels,)
        Normalisation statistics (the previous ones under ``warm_start``).
    n_features : int or None
        Values per row of a 2D ``X``.
    train_images, validation_images : list of ndarray of shape (C, *spatial)
        Normalised float32 images; ``validation_images`` may be empty.
    patch_shape, validation_shape : tuple of int
        Of the training and validation patches (``validation_shape`` is
        ``None`` without validation).
    masker : BlindSpotMasker or callable
        :func:`n2v_estimator.nets.blindnet.every_pixel` for a blind-spot network.
    device : torch.device
    precision : {"32", "bf16", "16-mixed"}
        Resolved for the device (see :func:`n2v_estimator.runtime.compute.resolve_precision`).
    seeds : tuple of 3 ints
        For the initial weights, the training draws and the validation set.
    batch_size, max_epochs, steps_per_epoch : int
    learning_rate : float
    noise : dict or None
        Probabilistic N2V: the initial noise parameters, input units (``None``
        under ``warm_start``, which continues from the previous ones, unless
        sigma is known).
    learn_noise : bool
        Whether training fits the noise parameters (not for a known sigma).
    data_range : (ndarray, ndarray) or None
        Per-channel minimum and maximum of the training data (input units; of
        the sample read, for data read on demand), with the previous fit's
        under ``warm_start``: ``transform`` warns about data far outside it.
    n_devices : int or "torchrun"
        Processes that train together (:mod:`n2v_estimator.fit.distributed`), one per device: started
        here, or (``"torchrun"``) by torchrun, this process being one of them.
    """

    network: dict
    initial_weights: dict | None
    mean: np.ndarray
    std: np.ndarray
    n_features: int | None
    train_images: list
    validation_images: list
    patch_shape: tuple
    validation_shape: tuple | None
    masker: object
    device: object
    precision: str
    seeds: tuple
    batch_size: int
    max_epochs: int
    steps_per_epoch: int
    learning_rate: float
    noise: dict | None = None
    learn_noise: bool = True
    data_range: tuple | None = None
    n_devices: int | str = 1

    @property
    def continuing(self):
        return self.initial_weights is not None

    def build_network(self, device=None):
        """The network to train, on the plan's device (or ``device``): never the previous one itself."""
        model = build_unet(self.network, seed=self.seeds[0])
        if self.initial_weights is not None:
            model.load_state_dict(self.initial_weights)
        if model.noise is not None:
            if self.noise is not None:  # a fresh network, or a known sigma (also under warm_start)
                model.noise.initialise(self.mean, self.std, self.noise)
            if self.initial_weights is None:
                model.initialise_prior_scale(PRIOR_SCALE_START * model.noise.typical_std())
            model.noise.requires_grad_(self.learn_noise)
        return model.to(self.device if device is None else device)

    def run(self, verbose=False, rank=None):
        """Train as planned; return ``(model, TrainingResult)``. With ``n_devices > 1`` in
        several processes (:func:`n2v_estimator.fit.distributed.run_distributed`), each of which
        calls this with its ``rank = (rank, ranks, device, same_patches)``."""
        if rank is None and self.n_devices == "torchrun":
            return run_joined(self, verbose)
        if rank is None and self.n_devices > 1:
            return run_distributed(self, self.n_devices, verbose)
        device = self.device if rank is None else rank[2]
        model = self.build_network(device)
        validation = []
        if self.validation_images:
            validation = make_validation_set(
                PatchSampler(self.validation_images, self.validation_shape, augment=False, device=device),
                self.masker,
                n_patches=_VALIDATION_BATCHES * self.batch_size,
                batch_size=self.batch_size,
                device=device,
                seed=self.seeds[2],
            )
        result = train(
            model,
            PatchSampler(self.train_images, self.patch_shape, device=device),
            self.masker,
            validation=validation,
            max_epochs=self.max_epochs,
            steps_per_epoch=self.steps_per_epoch,
            learning_rate=self.learning_rate,
            device=device,
            precision=self.precision,
            verbose=verbose,
            **self._objective(model),
            **self._share(model, rank),
        )
        if model.noise is not None and result.history and not (result.interrupted or result.error):
            result.calibration = self._calibrate(model, validation, device)
        return model, result

    def _share(self, model, rank):
        """A rank's part of the work: the whole batch and seed in one process; with several, its
        share of the batch, its own patch stream, averaged gradients (DDP) and epoch losses."""
        if rank is None:
            return {"batch_size": self.batch_size, "seed": self.seeds[1]}
        from torch.nn.parallel import DistributedDataParallel

        index, ranks, device, same_patches = rank
        fastest_layout(model, self.precision)  # before DDP records the parameters' layout
        # Batch norm over the whole batch, as in one process (per-rank statistics of a smaller
        # batch cost 0.6 dB on camera).
        forward = DistributedDataParallel(
            batch_norm_over_ranks(model), device_ids=[device.index] if device.type == "cuda" else None
        )
        share = {"batch_size": self.batch_size // ranks, "reduce": average_over_ranks, "forward": forward}
        if same_patches:
            return {**share, "seed": self.seeds[1], "shard": (index, ranks)}
        return {**share, "seed": rank_seed(self.seeds[1], index)}

    def _calibrate(self, model, validation, device):
        """The kept weights' :func:`n2v_estimator.fit.calibration.blind_spot_calibration` on the validation
        patches (else on patches of the training images), with a warning when it is off."""
        patches = "validation" if validation else "training"
        if not validation:
            sampler = PatchSampler(self.train_images, self.patch_shape, augment=False, device=device)
            validation = make_validation_set(
                sampler,
                self.masker,
                _VALIDATION_BATCHES * self.batch_size,
                self.batch_size,
                device,
                seed=self.seeds[2] + 2,
            )
        calibration = blind_spot_calibration(model, validation, self.mean, self.std, self.precision)
        where = "the validation patches" if patches == "validation" else "training patches (no validation set)"
        warn_if_uncalibrated(calibration, self.network["noise_model"], self.network["blind_spot"], where)
        return {"patches": patches, **calibration}

    @staticmethod
    def _objective(model):
        """The loss, and the history's extra fields, of plain or probabilistic N2V."""
        if model.noise is None:
            return {}  # the mean squared error
        noise = model.noise

        def record():
            return {f"noise_{k}": v.tolist() for k, v in noise.parameters_in_input_units().items()}

        return {"loss": partial(blind_spot_loss, noise=noise), "record": record}


def make_plan(params, X, previous=None):
    """Check ``params`` (the estimator's validated parameters) against ``X`` and plan the fit.

    Parameters
    ----------
    params : dict
        ``get_params()`` of the estimator, already validated against its
        declared constraints.
    X : array-like, a list of arrays, or a zarr or dask array
        The training images; a list (or tuple) of arrays that share their
        axes but not their sizes is pooled; zarr and dask arrays (also in a
        list) are read patch by patch (:mod:`n2v_estimator.data.ondemand`).
    previous : Previous or None
        The fitted state to continue from (``warm_start`` on a fitted estimator).

    Returns
    -------
    FitPlan

    Raises
    ------
    ValueError, TypeError
        For input or settings that cannot be trained, before any work is done.

    Notes
    -----
    Longer than most functions here on purpose: it reads top to bottom as the
    order of the checks (settings, then data, then patches, then memory), which
    decides which of several problems a user is told of first.
    """
    _check_learning_rate(params["learning_rate"])
    data = _training_data(X, params["axes"], params["image_shape"])
    if params["axes"] is None and params["image_shape"] is None and data.axes == "SYX":
        _warn_stack_of_2d(getattr(X, "shape", None))
    ndim = spatial_ndim(data.axes)
    device = resolve_device(params["device"])
    check_devices(params["n_devices"], device, params["batch_size"])
    precision = resolve_precision(params["precision"], device, ndim)
    kind = noise_kind(params["noise_model"])
    blind = resolve_blind_spot(params["blind_spot"], kind, ndim) == "network"
    manipulator = _manipulator(params, kind, blind)
    # A continued fit keeps its network's layout (n2v's, for a network imported from n2v).
    layout = previous.network.get("layout", "n2v-estimator") if previous is not None else "n2v-estimator"
    network = network_description(ndim, data.channels, params, kind, layout)
    if previous is not None and previous.network != network:
        raise ValueError(
            "warm_start=True needs the same network and data layout as the previous fit: "
            f"was {previous.network}, now {network}."
        )
    requested = requested_patch_shape(params["patch_size"], ndim)
    # A blind-spot network masks nothing: every pixel of a patch is a training target.
    masker = (
        every_pixel
        if blind
        else BlindSpotMasker(
            ndim,
            params["masked_pixel_percentage"],
            manipulator,
            params["neighborhood_radius"],
            resolve_struct_mask(params["struct_mask"], ndim, requested),
        )
    )
    # transform takes the tile settings as they are then; refuse impossible ones now.
    tile_geometry(params["tile_size"], params["tile_overlap"], NetworkGeometry.of(network))

    mean, std, (low, high) = _statistics(data.pixels, previous)
    train_images, validation_images = data.split(mean, std, params["validation_fraction"])
    if params["validation_fraction"] > 0 and not validation_images:
        _warn_no_validation(params["validation_fraction"], train_images)
    if data.one_2d_array and inside_model_selection():
        _warn_rows_as_folds(data.pixels.shape[2:])
    train_images = _holding_patches(train_images, requested)
    patch_shape, validation_shape = _patch_shapes(
        requested,
        data,
        train_images,
        validation_images,
        network,
        masker,
        blind,
        params["batch_size"],
        params["patch_size"] is not None,
    )
    check_fit_memory(
        network,
        params["batch_size"],
        patch_shape,
        device,
        precision=precision,
        validation_shape=validation_shape,
        validation_batches=_VALIDATION_BATCHES,
        masked_pixel_percentage=0.0 if blind else params["masked_pixel_percentage"],
        offsets_per_spot=0 if blind else len(masker.offsets) + len(masker.struct_offsets),
    )
    noise = _first_noise(params["noise_model"], kind, data.pixels, len(mean), previous)
    seeds = _seeds(params["random_state"], previous)  # drawn last: a refused fit leaves a RandomState untouched
    return FitPlan(
        network=network,
        initial_weights=None if previous is None else copy.deepcopy(previous.weights),
        mean=mean,
        std=std,
        n_features=data.n_features,
        train_images=train_images,
        validation_images=validation_images,
        patch_shape=patch_shape,
        validation_shape=validation_shape,
        masker=masker,
        device=device,
        precision=precision,
        seeds=tuple(int(s) for s in seeds),
        batch_size=int(params["batch_size"]),
        n_devices=params["n_devices"] if params["n_devices"] == "torchrun" else int(params["n_devices"]),
        max_epochs=int(params["max_epochs"] or DEFAULT_EPOCHS[ndim]),
        steps_per_epoch=int(params["steps_per_epoch"]),
        learning_rate=float(params["learning_rate"]),
        noise=noise,
        learn_noise=isinstance(params["noise_model"], str),
        data_range=(low, high),
    )


def _patch_shapes(requested, data, train_images, validation_images, network, masker, blind, batch_size, asked=False):
    """The training and validation patch shapes (``requested``, shrunk to fit the images;
    validation patches only need to fit the held-out part, a thin strip of a single
    image, or ``None`` without validation), checked against the network, the masker
    and batch norm."""
    sides = [im.shape[1:] for im in train_images]
    patch_shape = fit_patch_shape(requested, sides)
    _check_patch_fits_network(patch_shape, requested, data, sides, network["depth"])
    _check_kernel_fits_patch(network["kernel_size"], patch_shape, requested)
    _warn_shrunk_patch(requested, patch_shape, asked)  # said once the patches can train
    if blind:
        _warn_small_blind_patch(patch_shape, sides + [im.shape[1:] for im in validation_images])
    masker.check_patch(patch_shape)
    check_batch_norm(network, batch_size, patch_shape)
    if not validation_images:
        return patch_shape, None
    validation_shape = fit_patch_shape(patch_shape, [im.shape[1:] for im in validation_images])
    masker.check_patch(validation_shape)
    return patch_shape, validation_shape


def _manipulator(params, kind, blind):
    """The manipulator the masker uses, after refusing settings that contradict each other:
    structN2V with a noise model or a blind-spot network; a probabilistic masked network's
    manipulator must hide each pixel's own value (its prior is combined with it)."""
    if kind is not None and params["struct_mask"] is not None:
        raise ValueError(
            f"noise_model={params['noise_model']!r} assumes noise independent from pixel to pixel, and "
            "struct_mask is for noise correlated along a line; set noise_model=None for structN2V."
        )
    if blind and params["struct_mask"] is not None:
        raise ValueError(
            "blind_spot='network' hides exactly one pixel from the network, and struct_mask hides a line of "
            "them (for noise correlated along it); set blind_spot='mask' for structN2V."
        )
    if kind is None or blind:
        return params["manipulator"]
    try:  # the prior is combined with each pixel's own value: it must never see it
        return hiding_manipulator(params["manipulator"])
    except ValueError as exc:
        raise ValueError(
            f"noise_model={params['noise_model']!r} combines a prior with each pixel's own value, and {exc} "
            "Use 'uniform_withCP' (the default) or another manipulator that hides it."
        ) from None


def _statistics(pixels, previous):
    """``(mean, std, (low, high))`` per channel: the training data's normalisation (a
    continued fit keeps the previous one, which must represent this data) and range
    (widened by the previous fit's)."""
    if previous is not None:
        mean, std = previous.mean, previous.std
        for part in pixels if isinstance(pixels, list) else [pixels]:
            check_representable(part, mean, std)  # statistics of this data always can
    else:
        mean, std = channel_stats(pixels)
    low, high = channel_range(pixels)
    if previous is not None and previous.data_range is not None:
        low, high = np.minimum(low, previous.data_range[0]), np.maximum(high, previous.data_range[1])
    return mean, std, (low, high)


def _first_noise(noise_model, kind, pixels, n_channels, previous):
    """The noise model's starting parameters: a known sigma as given, else a robust estimate
    from the data; ``None`` without a noise model or when continuing (the network holds them)."""
    if kind is not None and kind != noise_model:
        return {"sigma": np.full(n_channels, float(noise_model))}
    if kind is not None and previous is None:
        return estimate_noise(pixels, kind)
    return None


def _seeds(random_state, previous):
    """Three seeds (weights, patches, blind spots) from ``random_state``; a continued fit
    shifts them by its epochs, so that it draws new patches and blind spots, not a replay."""
    seeds = check_random_state(random_state).randint(0, 2**31 - 1, size=3)
    if previous is not None:
        seeds = (seeds + 7919 * previous.n_epochs) % (2**31 - 1)
    return seeds


class _TrainingData(NamedTuple):
    """What ``fit`` trains on: its layout (``axes`` of the first image, ``channels``,
    ``n_features`` of a 2D array, whether it is ``one_2d_array``), the ``pixels``
    the statistics and the noise estimate are taken from (a canonical array, or
    a list of them), and ``split(mean, std, fraction)``, the normalised
    training and validation images."""

    axes: str
    channels: int
    n_features: int | None
    one_2d_array: bool
    pixels: object
    split: Callable


def _training_data(X, axes, image_shape):
    """Read ``X`` (an array, a list of arrays of different sizes, or arrays read
    on demand: zarr or dask) as :class:`_TrainingData`, checking its layout."""
    items = X if is_image_list(X, image_shape, axes) else [X]
    if image_shape is None and any(is_on_demand(x) for x in items):
        images, layouts = [], []
        for i, item in enumerate(items):
            try:
                found, layout = on_demand_images(item, axes)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"X[{i}]: {exc}" if items is X else str(exc)) from exc
            if images:
                check_same_layout(layouts[0], images[0].shape[0], layout, found[0].shape[0], i)
            images += found
            layouts.append(layout)

        def split(mean, std, fraction):
            return split_validation([image.normalized(mean, std) for image in images], fraction)

        one_2d_array = len(items) == 1 and len(items[0].shape) == 2 and len(layouts[0]) == 2  # as for numpy
        return _TrainingData(layouts[0], images[0].shape[0], None, one_2d_array, sample_blocks(images), split)
    if items is X:
        parts = read_image_list(X, axes)
        pixels = [part.canonical for part in parts]
    else:
        parts = [read_images(X, axes, image_shape)]
        pixels = parts[0].canonical  # one array stays one array, as it always was

    def split(mean, std, fraction):
        normalized = [image for part in parts for image in normalize(part.canonical, mean, std)]
        return split_validation(normalized, fraction)

    first = parts[0]
    one_2d_array = len(parts) == 1 and first.array.ndim == 2 and len(first.axes) == 2
    n_features = first.n_features if len(parts) == 1 else None
    return _TrainingData(first.axes, first.canonical.shape[1], n_features, one_2d_array, pixels, split)


def _holding_patches(images, requested):
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


def _warn_no_validation(fraction, images):
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


def _warn_rows_as_folds(shape):
    """A search or cross-validation split one 2D image by its rows: say what each fold then fits."""
    warnings.warn(
        f"Fitted inside scikit-learn's model selection on one 2D image ({shape[0]}x{shape[1]} here): "
        "the splitter takes its rows for samples, so each fold trains on some of the image's rows, "
        "stacked together, and scores on the others. To search or cross-validate over images, pass a "
        "stack of images (axes='SYX': folds split along S) or flattened images with image_shape.",
        UserWarning,
        stacklevel=4,
    )


def _check_learning_rate(learning_rate):
    """Refuse a learning rate that cannot train (see :data:`MAX_LEARNING_RATE`)."""
    if not MIN_LEARNING_RATE <= learning_rate <= MAX_LEARNING_RATE:  # also refuses inf and nan
        raise ValueError(
            f"learning_rate={learning_rate!r} cannot train: Adam changes every weight by about the learning "
            f"rate each step, so it must lie between {MIN_LEARNING_RATE:.3g} (the smallest normal float32) "
            f"and {MAX_LEARNING_RATE:g}; 1e-4 to 1e-2 train well (default 1e-3)."
        )


def _warn_small_blind_patch(patch_shape, image_shapes):
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


def _check_kernel_fits_patch(kernel_size, patch_shape, requested):
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


def _check_patch_fits_network(patch_shape, requested, data, sides, depth):
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
        if data.one_2d_array:
            # One 2D image: its rows are what scikit-learn calls samples, its columns features.
            kind = "sample(s)" if axes.index(letter) == 0 else "feature(s)"
            message += f" (X is one image; found array with {side} {kind})"
        raise ValueError(message + ".")


# What this process has said of the settings it changed for the user (:func:`_say_once`): a grid search
# fits a clone per fold and setting, and hears each once, not once per fold.
_SAID = set()


def _say_once(key, message):
    """``message`` as a UserWarning, unless this process said the one of ``key`` already."""
    if key in _SAID:
        return
    _SAID.add(key)
    warnings.warn(message, UserWarning, stacklevel=5)


def _warn_stack_of_2d(shape):
    """A 3D array with ``axes=None`` is a stack of 2D images, as documented; say so (once for images of
    this size: a search's folds differ only in their number), as it may be a volume."""
    what = f"X of shape {tuple(shape)}" if shape is not None else "X"
    count = f"{shape[0]} " if shape is not None else ""
    _say_once(
        ("stack", None if shape is None else tuple(shape[1:])),
        f"{what} with axes=None is trained as a stack of {count}separate 2D images (axes='SYX'), not as a "
        "volume: pass axes='ZYX' (--axes ZYX on the command line) for a volume, or axes='SYX' to say it is a stack.",
    )


def _warn_shrunk_patch(requested, patch_shape, asked):
    """Patches the user ``asked`` for (``patch_size`` set), larger than the images, are cut to them:
    say so once (the default patches fit themselves to small images, as documented)."""
    if asked and tuple(requested) != tuple(patch_shape):
        _say_once(
            ("patch", tuple(requested), tuple(patch_shape)),
            f"patch_size {tuple(requested)} is larger than the training images: patches of {tuple(patch_shape)} "
            "are trained instead (set patch_size to at most the images' size to silence this).",
        )
