"""What ``transform`` computes: the network's prediction (plain Noise2Void), or
the Bayesian posterior of probabilistic Noise2Void.

A probabilistic network predicts, for every pixel, a prior ``N(mu, tau**2)``
of its clean signal from its surroundings. Combining that prior with the
pixel's own noisy value by Bayes' rule (:func:`n2v_estimator.nets.noise.posterior`) is only
right if the prior has not seen that value: applied to the plain image, the
network partly has. So the prior is predicted blind, as in training:
:func:`blind_prior` masks one phase of a regular grid at a time (stride
:data:`BLIND_STRIDE`), replaces the masked values as the training masker does
(never with the pixel itself), and keeps the network's prediction at the
masked pixels only. That costs ``stride**ndim`` passes over the images (16 in
2D, 27 in 3D), each as costly as a plain ``transform``. A blind-spot network
(:mod:`n2v_estimator.nets.blindnet`) never sees the pixel it predicts: its prior takes one pass.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import torch

from ..data.manipulators import hiding_manipulator
from ..data.masking import BlindSpotMasker
from ..data.normalize import check_finite_output, check_representable, denormalize, normalize
from ..nets.geometry import NetworkGeometry
from ..nets.noise import posterior
from ..runtime.compute import resolve_precision
from ..runtime.devices import resolve_device
from ..runtime.memory import check_prediction_memory
from ..runtime.progress import progress_bar
from .scoring import all_phases, phase_window
from .tiling import predict_tiled, tile_geometry, tiles_per_batch, warn_if_seams

if TYPE_CHECKING:
    from numpy.typing import DTypeLike, NDArray

    from .._typing import Array, Float64Array, Params
    from ..nets.blindnet import BlindSpotNetwork
    from ..nets.unet import UNet

# Grid stride of the blind phases of the prior, per spatial dimensionality: a
# 4x4 grid masks 6% of the pixels in a pass (training masks 2%, but with
# random-neighbour replacement the density hardly matters), a 3x3x3 grid 3.7%.
BLIND_STRIDE = {2: 4, 3: 3}
# Blind spots times neighbourhood offsets masked at once (their coordinates are held).
_MAX_NEIGHBOURS = 2**22


def blind_stride(ndim: int, neighborhood_radius: int) -> int:
    """The grid stride of the blind phases: :data:`BLIND_STRIDE`, and more than
    ``neighborhood_radius``, so that no replacement is drawn from another blind
    spot of the same phase (which would show that spot its own value)."""
    return max(BLIND_STRIDE[ndim], neighborhood_radius + 1)


def _check_neighbours(spatial: Sequence[int]) -> None:
    """A prior is predicted from a pixel's neighbours (a blind spot's replacement is drawn from
    them, a blind-spot network sees only them); a lone pixel has none, and a prior predicted
    from nothing would be combined with the pixel as if it knew its surroundings."""
    if math.prod(spatial) < 2:
        raise ValueError(
            f"A probabilistic model (noise_model) predicts each pixel's prior from its neighbours, the pixel "
            f"hidden; images of {'x'.join(map(str, spatial))} pixel have none: at least 2 pixels are needed "
            "(along any axis)."
        )


def blind_prior(
    predict: Callable[[NDArray[np.float32]], Array],
    x: NDArray[np.float32],
    manipulator: str,
    neighborhood_radius: int,
    stride: int,
    seed: int = 0,
    verbose: bool | int | str = False,
) -> NDArray[np.float32]:
    """The network's prior for every pixel, predicted with that pixel hidden.

    Parameters
    ----------
    predict : callable
        Maps normalised ``(S, C, *spatial)`` float32 images to the network's
        ``(S, 2C, *spatial)`` prior (mean and standard deviation).
    x : ndarray of shape (S, C, *spatial), float32
        Normalised images.
    manipulator : str
        The training manipulator; ``"uniform_withCP"`` becomes
        ``"uniform_withoutCP"`` so that no blind spot keeps its value.
    neighborhood_radius : int
    stride : int
        Grid stride per axis: ``stride**ndim`` passes of ``predict``.
    seed : int
        Of the replacement draws, so that the result is deterministic.
    verbose : bool or "auto"
        One progress bar over the phases.

    Returns
    -------
    ndarray of shape (S, 2C, *spatial), float32

    Raises
    ------
    ValueError
        For images of a single pixel: the pixel has no neighbour to hide it behind.
    """
    n_samples, channels, *spatial = x.shape
    _check_neighbours(spatial)
    masker = BlindSpotMasker(len(spatial), 100.0, hiding_manipulator(manipulator), neighborhood_radius)
    generator = torch.Generator().manual_seed(seed)
    images = torch.from_numpy(x)
    prior = np.empty((n_samples, 2 * channels, *spatial), dtype=np.float32)
    phases = all_phases(len(spatial), stride)
    for phase in progress_bar(phases, desc="predict (blind prior)", unit="phase", verbose=verbose):
        grid = [torch.arange(n)[p::stride] for p, n in zip(phase, spatial)]  # (arange(p, n) raises for p > n)
        if any(len(g) == 0 for g in grid):  # an axis shorter than the stride
            continue
        masked = images.clone()
        # The masker holds (spots x neighbourhood) offsets: bound them by masking in slabs.
        per_slab = n_samples * channels * math.prod(len(g) for g in grid[1:]) * len(masker.offsets)
        rows = max(1, _MAX_NEIGHBOURS // per_slab)
        for first in range(0, len(grid[0]), rows):
            axes = [torch.arange(n_samples), torch.arange(channels), grid[0][first : first + rows], *grid[1:]]
            spots = torch.stack([a.flatten() for a in torch.meshgrid(*axes, indexing="ij")], dim=1)
            masked[tuple(spots.T)] = masker.replacements(images, spots, generator)
        prediction = predict(masked.numpy())
        window = phase_window(phase, stride)
        prior[window] = prediction[window]
    return prior


@dataclass(frozen=True)
class PredictPlan:
    """What ``transform`` predicts with, resolved once from the estimator's parameters
    (as ``fit`` has its :class:`n2v_estimator.fit.plan.FitPlan`).

    ``batch_pixels`` is the number of pixels per batch of tiles; ``device`` and
    ``precision`` are resolved (``"auto"`` decided: float32, the same output on
    every machine); the others are the
    estimator's parameters of the same names.
    """

    tile_size: int | Sequence[int] | None
    tile_overlap: int | Sequence[int] | None
    batch_pixels: int
    device: torch.device
    precision: str
    tta: bool
    verbose: bool | int | str
    manipulator: str
    neighborhood_radius: int

    @classmethod
    def of(
        cls, params: Params, patch_shape: Sequence[int], spatial_ndim: int, verbose: bool | int | str | None = None
    ) -> PredictPlan:
        """The plan for an estimator's ``params`` (``get_params()``), trained on ``patch_shape``
        (a batch of tiles holds as many pixels as a training batch); ``verbose`` overrides the parameter."""
        device = resolve_device(params["device"])
        return cls(
            tile_size=params["tile_size"],
            tile_overlap=params["tile_overlap"],
            batch_pixels=params["batch_size"] * math.prod(int(p) for p in patch_shape),
            device=device,
            precision=resolve_precision(params["precision"], device, spatial_ndim, training=False),
            tta=bool(params["tta"]),
            verbose=params["verbose"] if verbose is None else verbose,
            manipulator=params["manipulator"],
            neighborhood_radius=params["neighborhood_radius"],
        )


@dataclass
class Denoiser:
    """A fitted network and what it denoises with, as values: what ``transform``, ``score`` and each
    chunk of a dask array call, built once per call of theirs.

    ``settings`` are the estimator's parameters (``get_params()``), ``patch_shape`` the training
    patches' shape and ``data_range`` the training data's per-channel ``(min, max)`` (``None`` for
    model files of earlier versions). The :class:`PredictPlan` is resolved once, where the denoiser
    runs: a dask worker that unpickles it resolves its own device. It pickles with its network on
    the CPU, so that one made on a GPU runs on a machine without one.
    """

    model: UNet | BlindSpotNetwork
    mean: Float64Array
    std: Float64Array
    data_range: tuple[Float64Array, Float64Array] | None
    settings: Params
    patch_shape: tuple[int, ...]

    @cached_property
    def plan(self) -> PredictPlan:
        return PredictPlan.of(self.settings, self.patch_shape, self.model.description["ndim"])

    @property
    def neighborhood_radius(self) -> int:
        return int(self.settings["neighborhood_radius"])

    # The result's type follows return_std: the denoised images, or them and their spread.
    @overload
    def __call__(
        self,
        images: Array,
        dtype: DTypeLike = ...,
        return_std: Literal[False] = ...,
        prior_only: bool = ...,
        verbose: bool | int | str | None = ...,
        grid_phase: Sequence[int] | None = ...,
    ) -> Array: ...
    @overload
    def __call__(
        self,
        images: Array,
        dtype: DTypeLike = ...,
        *,
        return_std: Literal[True],
        prior_only: bool = ...,
        verbose: bool | int | str | None = ...,
        grid_phase: Sequence[int] | None = ...,
    ) -> tuple[Array, Array]: ...
    @overload
    def __call__(
        self,
        images: Array,
        dtype: DTypeLike = ...,
        return_std: bool = ...,
        prior_only: bool = ...,
        verbose: bool | int | str | None = ...,
        grid_phase: Sequence[int] | None = ...,
    ) -> Array | tuple[Array, Array]: ...
    def __call__(
        self,
        images: Array,
        dtype: DTypeLike = np.float32,
        return_std: bool = False,
        prior_only: bool = False,
        verbose: bool | int | str | None = None,
        grid_phase: Sequence[int] | None = None,
    ) -> Array | tuple[Array, Array]:
        """Denoise canonical ``(S, C, *spatial)`` images (original units in and out), after checking that
        the network's float32 arithmetic can represent them (:func:`n2v_estimator.data.normalize.check_representable`);
        ``verbose`` overrides the parameter, ``grid_phase`` the pooling grid's (a chunk of a larger image's,
        for an imported n2v network). See :func:`denoise`."""
        check_representable(images, self.mean, self.std, data_range=self.data_range)
        plan = self.plan if verbose is None else replace(self.plan, verbose=verbose)
        return denoise(
            self.model.to(plan.device), images, self.mean, self.std, plan, dtype, return_std, prior_only, grid_phase
        )

    def __getstate__(self) -> dict[str, Any]:
        state = {key: value for key, value in self.__dict__.items() if key != "plan"}  # resolved where it runs
        if any(t.device.type != "cpu" for t in self.model.state_dict().values()):
            state["model"] = copy.deepcopy(self.model).cpu()
        return state


# The result's type follows return_std: the denoised images, or them and their spread.
@overload
def denoise(
    model: UNet | BlindSpotNetwork,
    images: Array,
    mean: Float64Array,
    std: Float64Array,
    plan: PredictPlan,
    dtype: DTypeLike = ...,
    return_std: Literal[False] = ...,
    prior_only: bool = ...,
    grid_phase: Sequence[int] | None = ...,
) -> Array: ...
@overload
def denoise(
    model: UNet | BlindSpotNetwork,
    images: Array,
    mean: Float64Array,
    std: Float64Array,
    plan: PredictPlan,
    dtype: DTypeLike = ...,
    *,
    return_std: Literal[True],
    prior_only: bool = ...,
    grid_phase: Sequence[int] | None = ...,
) -> tuple[Array, Array]: ...
@overload
def denoise(
    model: UNet | BlindSpotNetwork,
    images: Array,
    mean: Float64Array,
    std: Float64Array,
    plan: PredictPlan,
    dtype: DTypeLike = ...,
    return_std: bool = ...,
    prior_only: bool = ...,
    grid_phase: Sequence[int] | None = ...,
) -> Array | tuple[Array, Array]: ...
def denoise(
    model: UNet | BlindSpotNetwork,
    images: Array,
    mean: Float64Array,
    std: Float64Array,
    plan: PredictPlan,
    dtype: DTypeLike = np.float32,
    return_std: bool = False,
    prior_only: bool = False,
    grid_phase: Sequence[int] | None = None,
) -> Array | tuple[Array, Array]:
    """Denoise canonical ``(S, C, *spatial)`` images, in the images' units.

    Parameters
    ----------
    model : UNet or BlindSpotNetwork
        In eval mode, on ``plan.device``.
    images : ndarray of shape (S, C, *spatial)
    mean, std : ndarray of shape (C,)
        The normalisation the model was trained with.
    plan : PredictPlan
        Tiles, batches, device, precision, TTA, progress bars and the blind prior's masking.
    dtype : numpy dtype
        Of the results.
    return_std : bool
        Also return the posterior standard deviation (probabilistic models only).
    prior_only : bool
        Return the prior mean of a probabilistic model, predicted on the plain
        images (the network alone, as for plain Noise2Void).

    Returns
    -------
    ndarray of images' shape, or (mean, std) with ``return_std``

    Raises
    ------
    ValueError
        For a non-finite result, ``return_std`` with a plain model, or
        batches of tiles larger than the device's memory.
    """
    network = model.description
    geometry = NetworkGeometry.of(network)
    tile_shape, overlap = tile_geometry(plan.tile_size, plan.tile_overlap, geometry)
    # Mirrored pixels (before, after) each axis: the halo, and before it the grid's phase.
    if grid_phase is None:
        grid_phase = [geometry.grid_phase(n) for n in images.shape[2:]]
    border = tuple((geometry.border + phase, geometry.border) for phase in grid_phase)
    extended = [n + before + after for n, (before, after) in zip(images.shape[2:], border)]
    warn_if_seams(tile_shape, overlap, extended, geometry, plan.tile_overlap)
    tiles = tiles_per_batch(tile_shape, extended, plan.batch_pixels)
    check_prediction_memory(
        network,
        [min(t, n) for t, n in zip(tile_shape, extended)],
        tiles,
        plan.device,
        precision=plan.precision,
    )

    def run(batch: Array, **kwargs: Any) -> Array:
        return predict_tiled(
            model,
            batch,
            tile_shape,
            overlap,
            border=border,
            batch_size=tiles,
            device=plan.device,
            multiple=geometry.pooling,
            tta=plan.tta,
            precision=plan.precision,
            **{"verbose": plan.verbose, **kwargs},
        )

    if model.noise is None or prior_only:
        if return_std:
            raise ValueError("return_std=True needs a probabilistic model: fit with noise_model set.")
        channels = slice(0, images.shape[1])
        out = run(
            images,
            prepare=lambda batch: normalize(batch, mean, std),
            finish=lambda batch: denormalize(batch[:, channels], mean, std, dtype=dtype),
            dtype=dtype,
        )
        check_finite_output(out)
        return out
    x = normalize(images, mean, std)
    if geometry.blind:  # blind by its architecture: one pass
        _check_neighbours(images.shape[2:])
        prior = run(x, out_channels=2 * images.shape[1])
    else:
        prior = blind_prior(
            partial(run, out_channels=2 * images.shape[1], verbose=False),
            x,
            plan.manipulator,
            plan.neighborhood_radius,
            blind_stride(network["ndim"], plan.neighborhood_radius),
            verbose=plan.verbose,
        )
    noise = copy.deepcopy(model.noise).cpu().float()
    with torch.no_grad():
        post_mean, post_std = (t.numpy() for t in posterior(torch.from_numpy(prior), torch.from_numpy(x), noise))
    out = denormalize(post_mean, mean, std, dtype=dtype)
    check_finite_output(out)
    if not return_std:
        return out
    spread = denormalize(post_std, 0.0, std, dtype=dtype)  # a spread scales with std alone
    return out, spread
