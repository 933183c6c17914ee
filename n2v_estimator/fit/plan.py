"""The fit plan: everything ``fit`` needs, derived from the parameters and the
data, and validated, before any training starts and without touching the estimator.

``fit`` is then all-or-nothing: :func:`make_plan` raises for every bad setting
or input (:mod:`n2v_estimator.fit.checks`, in the order a user is told of them);
:meth:`FitPlan.run` trains a network of its own (a fresh one, or a copy of the
previous one for ``warm_start``); only after that does the estimator take the result.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from ..data.axes import spatial_ndim
from ..data.masking import BlindSpotMasker
from ..data.patches import PatchSampler, requested_patch_shape
from ..data.struct_mask import resolve_struct_mask
from ..nets.blindnet import every_pixel
from ..nets.builder import build_unet
from ..nets.geometry import NetworkGeometry
from ..nets.noise import PRIOR_SCALE_START, blind_spot_loss, noise_kind, posterior_risk
from ..nets.unet import network_description, resolve_blind_spot
from ..predict.tiling import tile_geometry
from ..runtime.compute import fastest_layout, resolve_precision
from ..runtime.devices import resolve_device
from ..runtime.memory import check_fit_memory
from ..runtime.progress import inside_model_selection
from .calibration import blind_spot_calibration, warn_if_uncalibrated
from .checks import (
    check_learning_rate,
    check_time_alone,
    checked_manipulator,
    checked_patch_shapes,
    warn_no_validation,
    warn_rows_as_folds,
    warn_stack_of_2d,
)
from .distributed import check_devices, run_distributed, run_joined
from .ranks import average_over_ranks, batch_norm_over_ranks, rank_seed
from .starting_point import fit_seeds, initial_noise, starting_statistics
from .training import make_validation_set, train
from .training_data import images_holding_patches, read_training_data

if TYPE_CHECKING:
    import torch

    from .._typing import Description, Float64Array, ImagesLike, Params, Shape
    from ..nets.blindnet import BlindSpotNetwork
    from ..nets.unet import UNet
    from .calibration import CalibrationRecord
    from .ranks import Rank
    from .starting_point import WarmStartState
    from .training import MaskedBatch, Masker, TrainingResult
    from .training_data import TrainingImage

# Default budget (x 50 steps per epoch): 1500 steps in 2D; in 3D the default
# 16x32x32 patches hold 4 times the blind spots of 64x64 ones and a step costs about
# 1.8 s on one CPU thread, so 300 steps (minutes) train as far.
DEFAULT_EPOCHS = {2: 30, 3: 6}
# Validation patches per batch of training patches; drawn once per fit.
_VALIDATION_BATCHES = 4


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
        ``max_epochs`` is ``None`` for a fit given a time alone (``max_time``).
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
    max_time : float or None
        Seconds of training, or ``None``: the steps decide alone.
    """

    network: Description
    initial_weights: dict[str, torch.Tensor] | None
    mean: Float64Array
    std: Float64Array
    n_features: int | None
    train_images: list[TrainingImage]
    validation_images: list[TrainingImage]
    patch_shape: Shape
    validation_shape: Shape | None
    masker: Masker
    device: torch.device
    precision: str
    seeds: tuple[int, int, int]
    batch_size: int
    max_epochs: int | None
    steps_per_epoch: int
    learning_rate: float
    noise: dict[str, Float64Array] | None = None
    learn_noise: bool = True
    data_range: tuple[Float64Array, Float64Array] | None = None
    n_devices: int | Literal["torchrun"] = 1
    max_time: float | None = None

    @property
    def continuing(self) -> bool:
        """Whether this fit continues a previous one (``warm_start``)."""
        return self.initial_weights is not None

    def build_network(self, device: torch.device | None = None) -> UNet | BlindSpotNetwork:
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

    def run(
        self, verbose: bool | int | str = False, rank: Rank | None = None
    ) -> tuple[UNet | BlindSpotNetwork, TrainingResult]:
        """Train as planned; return ``(model, TrainingResult)``. With ``n_devices > 1`` in
        several processes (:func:`n2v_estimator.fit.distributed.run_distributed`), each of which
        calls this with its :class:`n2v_estimator.fit.distributed.Rank`."""
        if rank is None:
            if self.n_devices == "torchrun":
                return run_joined(self, verbose)
            if self.n_devices > 1:
                return run_distributed(self, self.n_devices, verbose)
        device = self.device if rank is None else rank.device
        model = self.build_network(device)
        validation: list[MaskedBatch] = []
        if self.validation_shape is not None:  # there are validation images
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
            max_time=self.max_time,
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

    def _share(self, model: torch.nn.Module, rank: Rank | None) -> dict[str, Any]:
        """A rank's part of the work: the whole batch and seed in one process; with several, its
        share of the batch, its own patch stream, averaged gradients (DDP) and epoch losses."""
        if rank is None:
            return {"batch_size": self.batch_size, "seed": self.seeds[1]}
        from torch.nn.parallel import DistributedDataParallel

        fastest_layout(model, self.precision)  # before DDP records the parameters' layout
        # Batch norm over the whole batch, as in one process (per-rank statistics of a smaller
        # batch cost 0.6 dB on camera).
        forward = DistributedDataParallel(
            batch_norm_over_ranks(model), device_ids=[rank.device.index] if rank.device.type == "cuda" else None
        )
        share = {"batch_size": self.batch_size // rank.world_size, "reduce": average_over_ranks, "forward": forward}
        if rank.same_patches:
            return {**share, "seed": self.seeds[1], "shard": (rank.number, rank.world_size)}
        return {**share, "seed": rank_seed(self.seeds[1], rank.number)}

    def _calibrate(
        self, model: UNet | BlindSpotNetwork, validation: list[MaskedBatch], device: torch.device
    ) -> CalibrationRecord:
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
    def _objective(model: UNet | BlindSpotNetwork) -> dict[str, Any]:
        """The loss, and the history's extra fields, of plain or probabilistic N2V."""
        if model.noise is None:
            return {}  # the mean squared error
        noise = model.noise

        def record() -> dict[str, Any]:
            return {f"noise_{k}": v.tolist() for k, v in noise.parameters_in_input_units().items()}

        return {
            "loss": partial(blind_spot_loss, noise=noise),
            "validation_loss": partial(posterior_risk, noise=noise),
            "record": record,
        }


def make_plan(params: Params, X: ImagesLike, previous_fit: WarmStartState | None = None) -> FitPlan:
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
    previous_fit : WarmStartState or None
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
    check_learning_rate(params["learning_rate"])
    check_time_alone(params["max_time"], params["n_devices"])
    data = read_training_data(X, params["axes"], params["image_shape"])
    if params["axes"] is None and params["image_shape"] is None and data.axes == "SYX":
        warn_stack_of_2d(getattr(X, "shape", None))
    ndim = spatial_ndim(data.axes)
    device = resolve_device(params["device"])
    check_devices(params["n_devices"], device, params["batch_size"])
    precision = resolve_precision(params["precision"], device, ndim)
    network_noise = noise_kind(params["noise_model"])  # the network's noise model: None, or its kind
    blind_network = resolve_blind_spot(params["blind_spot"]) == "network"
    manipulator = checked_manipulator(params, network_noise, blind_network)
    # A continued fit keeps its network's layout (n2v's, for a network imported from n2v).
    layout = previous_fit.network.get("layout", "n2v-estimator") if previous_fit is not None else "n2v-estimator"
    network = network_description(ndim, data.channels, params, network_noise, layout)
    if previous_fit is not None and previous_fit.network != network:
        raise ValueError(
            "warm_start=True needs the same network and data layout as the previous fit: "
            f"was {previous_fit.network}, now {network}."
        )
    requested = requested_patch_shape(params["patch_size"], ndim)
    # A blind-spot network masks nothing: every pixel of a patch is a training target.
    masker: Masker = (
        every_pixel
        if blind_network
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

    mean, std, (low, high) = starting_statistics(data.pixels, previous_fit)
    train_images, validation_images = data.split(mean, std, params["validation_fraction"])
    if params["validation_fraction"] > 0 and not validation_images:
        warn_no_validation(params["validation_fraction"], train_images)
    if data.one_2d_array_shape is not None and inside_model_selection():
        warn_rows_as_folds(data.one_2d_array_shape)
    train_images = images_holding_patches(train_images, requested)
    patch_shape, validation_shape = checked_patch_shapes(
        requested,
        data,
        train_images,
        validation_images,
        network,
        masker,
        blind_network,
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
        masked_pixel_percentage=0.0 if blind_network else params["masked_pixel_percentage"],
        offsets_per_spot=_offsets_per_spot(masker),
    )
    noise = initial_noise(params["noise_model"], network_noise, data.pixels, len(mean), previous_fit)
    seeds = fit_seeds(params["random_state"], previous_fit)  # drawn last: a refused fit leaves a RandomState untouched
    return FitPlan(
        network=network,
        initial_weights=None if previous_fit is None else copy.deepcopy(previous_fit.weights),
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
        seeds=seeds,
        batch_size=int(params["batch_size"]),
        n_devices=params["n_devices"] if params["n_devices"] == "torchrun" else int(params["n_devices"]),
        max_epochs=_epochs(params, ndim),
        max_time=None if params["max_time"] is None else float(params["max_time"]),
        steps_per_epoch=int(params["steps_per_epoch"]),
        learning_rate=float(params["learning_rate"]),
        noise=noise,
        learn_noise=isinstance(params["noise_model"], str),
        data_range=(low, high),
    )


def _epochs(params: Params, ndim: int) -> int | None:
    """The epochs asked for; with ``max_time`` alone none (the time decides), else the default budget."""
    if params["max_epochs"] is not None:
        return int(params["max_epochs"])
    return None if params["max_time"] is not None else DEFAULT_EPOCHS[ndim]


def _offsets_per_spot(masker: Masker) -> int:
    """The neighbours a blind spot's replacement and struct mask read (none for a blind-spot network)."""
    if isinstance(masker, BlindSpotMasker):
        return len(masker.offsets) + len(masker.struct_offsets)
    return 0
