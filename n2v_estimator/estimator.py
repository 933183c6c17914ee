"""The scikit-learn estimator. It only orchestrates the modules beside it."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ._constraints import Interval, Options, StrOptions
from ._typing import ImagesLike
from .data.axes import Images, UnreadImages, feature_names_out, fitted_images, from_canonical, is_image_list
from .data.manipulators import MANIPULATORS
from .data.normalize import in_requested_dtype, output_dtype
from .exchange import BioImageIOMixin, ModelFileMixin, N2VImportMixin, PortablePickling
from .fit.plan import make_plan
from .fit.starting_point import WarmStartState
from .models.weights import portable_network
from .nets.unet import ARCHITECTURE_CONSTRAINTS
from .predict.denoise import Denoiser
from .predict.lazy import transform_lazy
from .predict.scoring import clean_images, j_invariant_mse, pooled_score
from .runtime.compute import PRECISIONS

if TYPE_CHECKING:
    from .nets.blindnet import BlindSpotNetwork
    from .nets.unet import UNet


class Noise2VoidDenoiser(
    N2VImportMixin, BioImageIOMixin, ModelFileMixin, PortablePickling, TransformerMixin, BaseEstimator
):
    """Self-supervised Noise2Void denoising of images, trained on the noisy images alone.

    ``fit`` trains a U-Net to predict each pixel from its surroundings with the
    pixel itself hidden (a blind spot): since the noise is independent from
    pixel to pixel and the signal is not, the network learns the signal.
    ``transform`` then denoises images of any size, tile by tile.

    Parameters
    ----------
    axes : str or None, default=None
        Meaning of the input's axes, letters from ``S`` (samples), ``T`` (time:
        trained as samples, kept in place), ``C`` (channels), ``Z``, ``Y``, ``X``
        in array order, e.g. ``"YXC"``, ``"TYX"``. ``None``: a 2D array is one
        image (``"YX"``), a 3D array a stack of images (``"SYX"``).
    patch_size : int, tuple of int or None, default=None
        Side of the random training patches; ``None``: 64x64 in 2D, 16x32x32
        in 3D (minutes on a CPU). In 3D an int ``p`` means ``(p // 2, p, p)``.
        Shrunk to fit small images.
    batch_size : int, default=16
        Patches per optimizer step.
    max_epochs : int or None, default=None
        Epochs (one validation pass and ``history_`` record each); ``None``:
        30 in 2D, 6 in 3D (whose patches hold 4 times more blind spots), or with ``max_time`` as many as it allows.
    max_time : float or None, default=None
        Seconds of training (as Lightning's ``max_time``): the step that spends them is the last (its short
        epoch validated), the best weights so far are kept, and the schedule is laid out over the time, not
        cut short. With ``max_epochs`` too, whichever ends first. How many steps fit depends on the machine.
    steps_per_epoch : int, default=50
        Optimizer steps per epoch. Total steps = ``max_epochs * steps_per_epoch``.
    learning_rate : float, default=1e-3
        Peak learning rate of Adam; linear warm-up over 5% of the steps (or of the time), then cosine decay
        to 1% of the peak.
    masked_pixel_percentage : float, default=2.0
        Percentage of pixels of each patch made blind (n2v's ``perc_pix``; its
        0.198 converges far less in short runs on one image).
    manipulator : str, default="uniform_withCP"
        How a blind spot's value is replaced: ``"uniform_withCP"``,
        ``"uniform_withoutCP"``, ``"normal_withoutCP"``, ``"normal_additive"``,
        ``"normal_fitted"``, ``"mean"``, ``"median"`` or ``"identity"``.
    neighborhood_radius : int, default=2
        Half side of the neighbourhood the replacement is drawn from (the
        Gaussian sigma for ``"normal_additive"``, as in n2v).
    struct_mask : None, array-like or (str, int), default=None
        structN2V: neighbours masked with every blind spot, as a 0/1 array
        centred on it, or ``(axis, span)`` such as ``("x", 5)``.
    depth : int, default=2
        Down-sampling steps of the U-Net.
    n_filters : int, default=32
        Feature maps at the U-Net's top level, doubled at each level.
    kernel_size : int, default=3
        Odd convolution kernel side.
    batch_norm : bool or None, default=None
        Batch normalisation after each convolution; ``None``: on, but off for
        ``blind_spot="network"`` (where it cost 1.5 dB on moon, Poisson noise).
    residual : bool, default=False
        The network predicts a correction added to its input.
    blurpool : bool, default=False
        N2V2 max-blur-pool down-sampling.
    skip_skipone : bool, default=False
        N2V2: no skip connection at the top level.
    independent_channels : bool, default=True
        One network per channel (grouped convolutions) rather than a joint one.
    blind_spot : {"mask", "network"} or None, default="mask"
        How the network is kept from seeing the pixel it predicts: ``"mask"``, Noise2Void's
        masked pixels (the settings above); ``"network"``, a blind-spot architecture (Laine et
        al. 2019) that learns from every pixel, a step costing 3-6x: a better prior per step, a worse
        one per minute of training (docs: guide/probabilistic). ``None``: ``"mask"``.
    validation_fraction : float, default=0.1
        Held out (whole images, else a strip of each): the last weights not clearly worse on it than
        the best so far are kept (2 standard errors); with 0, the last weights are kept.
    tile_size : int, tuple of int or None, default=None
        Side of the tiles ``transform`` predicts at once; ``None``: 256 (2D) or
        ``(64, 128, 128)`` (3D), at least twice the overlap; multiples of ``2**depth``.
    tile_overlap : int, tuple of int or None, default=None
        Overlap between tiles; ``None``: twice the network's halo (its reach,
        rounded up to a multiple of ``2**depth``: 56 by default, 96 for
        ``blind_spot="network"``), at most half a tile (else a warning); tiled
        and whole-image predictions then agree to float rounding. ``transform`` extends images
        by a halo of mirrored pixels at their edges (not a blind-spot network's).
    tta : bool, default=False
        Average the predictions of the 8 flips and quarter turns (3D: flips).
    noise_model : None, "gaussian", "poisson_gaussian" or float, default=None
        Probabilistic Noise2Void: the network predicts a prior (mean and std) of
        each pixel's clean signal from its surroundings, a noise model is fitted
        with it (noisy data alone), and ``transform`` combines the prior with the
        pixel's own value by Bayes' rule (the posterior mean). ``"gaussian"``: one
        sigma per channel; ``"poisson_gaussian"``: variance ``a * signal + b``; a
        number: a known Gaussian sigma, input units. ``None``: plain Noise2Void.
    image_shape : tuple of int or None, default=None
        For flattened images, as scikit-learn data often is: ``X`` of shape
        ``(n_samples, prod(image_shape))`` holds one image per row, laid out as
        ``axes`` says (default ``"YX"`` or ``"ZYX"``; no ``S``), and
        ``transform`` returns the same flattened shape.
    dtype : {"float", "input"}, default="float"
        What ``transform`` returns: ``"float"``, float32 (float64 for float64
        input and integers wider than 16 bits), with values beyond the input's
        range (uint8 input may give -9 or 290); ``"input"``, the input's dtype:
        for integers rounded to the nearest and clipped to the dtype's range.
    warm_start : bool, default=False
        ``fit`` trains the current network further (same normalisation, a new
        learning-rate schedule).
    n_score_phases : int, default=4
        Grid phases evaluated by the self-supervised :meth:`score`; each costs
        one denoising pass over ``X`` and scores 1/16 of the pixels (1/64 in 3D).
    n_devices : int or "torchrun", default=1
        Devices that train together (DistributedDataParallel, one process each: CUDA devices
        with ``device="cuda"``, else CPU processes), sharing ``batch_size``; ``"torchrun"``:
        this process and the others torchrun started, on one or several machines (docs: guide/large-data).
    random_state : int, RandomState instance or None, default=None
        Seeds weights, patches and blind spots: the same int gives identical
        weights on CPU.
    device : str or torch.device, default="auto"
        ``"auto"`` picks CUDA, then Apple MPS, then CPU.
    precision : {"auto", "32", "bf16", "16-mixed"}, default="auto"
        Arithmetic of the network (weights, loss and normalisation stay
        float32). ``"auto"`` trains in ``"16-mixed"`` (float16 with gradient
        scaling) on CUDA, ``"bf16"`` in 2D on CPUs with native bfloat16, else
        ``"32"``, and predicts in ``"32"`` (the same output on every machine).
        Any other value applies to both.
    verbose : bool or "auto", default="auto"
        Progress bars for training and prediction: ``"auto"`` once a call has
        run 5 seconds (quiet for short calls and inside searches and
        cross-validation), ``True`` at once, ``False`` never.

    Attributes
    ----------
    model_ : torch.nn.Module
        The trained U-Net (in eval mode).
    mean_, std_ : ndarray of shape (n_channels,)
        Per-channel normalisation statistics of the training data.
    data_min_, data_max_ : ndarray of shape (n_channels,)
        Per-channel range of the training data; ``transform`` warns far beyond it.
    n_channels_ : int
        Number of channels seen in ``fit``.
    spatial_ndim_ : int
        2 or 3.
    patch_shape_ : tuple of int
        The patch shape used, after fitting it to the images.
    history_ : list of dict
        One record per epoch: ``epoch``, ``train_loss``, ``val_loss``, ``learning_rate``, ``seconds``,
        ``steps`` (and the noise parameters, as below). With a ``noise_model``, ``train_loss`` adds the blind
        spots' NLL; ``val_loss`` is the posterior's squared error plus the noise variance, as plain N2V's.
    noise_sigma_ : ndarray of shape (n_channels,)
        ``noise_model="gaussian"`` or a number: the noise sigma, input units.
    noise_a_, noise_b_ : ndarray of shape (n_channels,)
        ``noise_model="poisson_gaussian"``: the noise variance is
        ``noise_a_ * signal + noise_b_``, input units.
    calibration_ : dict
        With a ``noise_model``: how well it and the prior explain held-out blind
        spots, per intensity bin; ``fit`` warns (``CalibrationWarning``) when they do not.
    image_calibration_ : dict
        Only from the command line: the pixel sizes, units and channel names its training files share.
    n_features_in_ : int
        Values per row of ``X``, only set for 2D ``X`` (flattened images with
        ``image_shape``, or one 2D image, whose rows are then its lines).

    Examples
    --------
    >>> import numpy as np
    >>> from skimage import data
    >>> from n2v_estimator import Noise2VoidDenoiser
    >>> clean = data.camera().astype(np.float32)
    >>> noisy = clean + np.random.default_rng(0).normal(0, 25, clean.shape)
    >>> denoiser = Noise2VoidDenoiser(max_epochs=2, steps_per_epoch=10, random_state=0)
    >>> denoised = denoiser.fit_transform(noisy)
    >>> denoised.shape
    (512, 512)
    """

    _parameter_constraints = {
        "axes": [str, None],
        "patch_size": [Interval(Integral, 1, None, closed="left"), tuple, list, None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left"), None],
        "max_time": [Interval(Real, 0, None, closed="neither"), None],
        "steps_per_epoch": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "masked_pixel_percentage": [Interval(Real, 0, 100, closed="right")],
        "manipulator": [StrOptions(set(MANIPULATORS))],
        "neighborhood_radius": [Interval(Integral, 1, None, closed="left")],
        "struct_mask": [None, "array-like", tuple],
        **ARCHITECTURE_CONSTRAINTS,
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "tile_size": [Interval(Integral, 1, None, closed="left"), tuple, list, None],
        "tile_overlap": [Interval(Integral, 0, None, closed="left"), tuple, list, None],
        "tta": ["boolean"],
        "noise_model": [None, StrOptions({"gaussian", "poisson_gaussian"}), Interval(Real, 0, None, closed="neither")],
        "image_shape": [tuple, list, None],
        "dtype": [StrOptions({"float", "input"})],
        "warm_start": ["boolean"],
        "n_score_phases": [Interval(Integral, 1, None, closed="left")],
        "n_devices": [Interval(Integral, 1, None, closed="left"), StrOptions({"torchrun"})],
        "random_state": ["random_state"],
        "device": [str, torch.device],
        "precision": [StrOptions(set(PRECISIONS)), Options(Integral, {32})],
        "verbose": ["verbose", StrOptions({"auto"})],
    }

    # As scikit-learn asks: one keyword per parameter, stored as given; validation happens in fit.
    def __init__(
        self,
        *,
        axes: str | None = None,
        patch_size: int | Sequence[int] | None = None,
        batch_size: int = 16,
        max_epochs: int | None = None,
        max_time: float | None = None,
        steps_per_epoch: int = 50,
        learning_rate: float = 1e-3,
        masked_pixel_percentage: float = 2.0,
        manipulator: str = "uniform_withCP",
        neighborhood_radius: int = 2,
        struct_mask: ArrayLike | None = None,
        depth: int = 2,
        n_filters: int = 32,
        kernel_size: int = 3,
        batch_norm: bool | None = None,
        residual: bool = False,
        blurpool: bool = False,
        skip_skipone: bool = False,
        independent_channels: bool = True,
        blind_spot: str | None = "mask",
        validation_fraction: float = 0.1,
        tile_size: int | Sequence[int] | None = None,
        tile_overlap: int | Sequence[int] | None = None,
        tta: bool = False,
        noise_model: str | float | None = None,
        image_shape: Sequence[int] | None = None,
        dtype: str = "float",
        warm_start: bool = False,
        n_score_phases: int = 4,
        n_devices: int | str = 1,
        random_state: int | np.random.RandomState | None = None,
        device: str | torch.device = "auto",
        precision: str | int = "auto",
        verbose: bool | int | str = "auto",
    ) -> None:
        self.axes = axes
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.max_time = max_time
        self.steps_per_epoch = steps_per_epoch
        self.learning_rate = learning_rate
        self.masked_pixel_percentage = masked_pixel_percentage
        self.manipulator = manipulator
        self.neighborhood_radius = neighborhood_radius
        self.struct_mask = struct_mask
        self.depth = depth
        self.n_filters = n_filters
        self.kernel_size = kernel_size
        self.batch_norm = batch_norm
        self.residual = residual
        self.blurpool = blurpool
        self.skip_skipone = skip_skipone
        self.independent_channels = independent_channels
        self.blind_spot = blind_spot
        self.validation_fraction = validation_fraction
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.tta = tta
        self.noise_model = noise_model
        self.image_shape = image_shape
        self.dtype = dtype
        self.warm_start = warm_start
        self.n_score_phases = n_score_phases
        self.n_devices = n_devices
        self.random_state = random_state
        self.device = device
        self.precision = precision
        self.verbose = verbose

    # ------------------------------------------------------------------- fit
    def fit(self, X: ImagesLike, y: object = None) -> Noise2VoidDenoiser:
        """Train the denoiser on noisy images.

        Parameters
        ----------
        X : array-like, list of arrays, zarr or dask array
            Noisy images laid out as ``axes`` says (integer or float); a list
            (or tuple) of images that share their axes but not their sizes
            (patches drawn in proportion to size); a zarr or dask array, read
            patch by patch, never whole (docs: guide/large-data).
        y : None
            Ignored: training is self-supervised. Accepted so that
            ``GridSearchCV(...).fit(noisy, clean)`` can score against clean images.

        Returns
        -------
        self : Noise2VoidDenoiser
            Fitted.

        Raises
        ------
        KeyboardInterrupt, NonFiniteLossError
            On Ctrl-C, or when the loss or weights become non-finite: the best
            weights of the complete epochs are kept (if none completed, the
            estimator is left as it was), and a warning or the message says which.

        Notes
        -----
        All-or-nothing: settings and input are checked before training, which
        works on a network of its own; the fitted attributes are set only at
        the end. A fit that raises anything else leaves the estimator as it was.
        """
        self._validate_params()
        plan = make_plan(self.get_params(), X, self._previous())
        model, result = plan.run(verbose=self.verbose)
        was_fitted = hasattr(self, "model_")
        if result.history:
            history = (self.history_ if plan.continuing else []) + result.history
            statistics = (plan.mean, plan.std, plan.patch_shape)
            self._set_fitted(model, *statistics, history, plan.n_features, plan.data_range, result.calibration)
        result.raise_if_stopped_early(was_fitted)
        return self

    def _previous(self):
        """The fitted state a ``warm_start`` fit continues from, or ``None``."""
        if self.warm_start and hasattr(self, "model_"):
            network = portable_network(self.model_)
            data_range = (self.data_min_, self.data_max_) if hasattr(self, "data_min_") else None
            return WarmStartState(
                network["description"], network["weights"], self.mean_, self.std_, len(self.history_), data_range
            )

    def _set_fitted(
        self,
        model: UNet | BlindSpotNetwork,
        mean: np.ndarray,
        std: np.ndarray,
        patch_shape: Sequence[int],
        history: Sequence[dict[str, Any]],
        n_features: int | None = None,
        data_range: tuple[ArrayLike, ArrayLike] | None = None,
        calibration: dict[str, Any] | None = None,
        image_calibration: dict[str, Any] | None = None,
    ) -> None:
        """Set every fitted attribute, in one place (``fit`` and ``load``) and one step: the previous ones go."""
        fitted = {
            "model_": model.eval(),
            "mean_": mean,
            "std_": std,
            "patch_shape_": tuple(patch_shape),
            "n_channels_": model.description["in_channels"],
            "spatial_ndim_": model.description["ndim"],
            "history_": list(history),
            "n_features_in_": n_features,
            "calibration_": calibration,
            "image_calibration_": image_calibration,
        }
        if data_range is not None:  # model files of earlier versions have none
            fitted["data_min_"], fitted["data_max_"] = (np.asarray(r, dtype=np.float64) for r in data_range)
        if model.noise is not None:
            fitted.update({f"noise_{k}_": v for k, v in model.noise.parameters_in_input_units().items()})
        state = {k: v for k, v in self.__dict__.items() if not (k.endswith("_") and not k.startswith("_"))}
        self.__dict__ = {**state, **{k: v for k, v in fitted.items() if v is not None}}

    # ------------------------------------------------------------- transform
    def transform(self, X: ImagesLike, return_std: bool = False) -> Any:
        """Denoise images.

        Parameters
        ----------
        X : array-like, list of arrays, or dask array
            Images laid out as ``axes`` says, with the channels seen in ``fit``;
            any spatial size (rows of ``image_shape`` under ``image_shape``).
            A list gives a list; a ``dask.array.Array`` gives a lazy dask
            array, denoised chunk by chunk (docs: guide/large-data).
        return_std : bool, default=False
            With a ``noise_model``: also return the posterior std of every pixel (an uncertainty map).

        Returns
        -------
        ndarray, or (ndarray, ndarray) with ``return_std``
            Of ``X``'s shape (lists of them for a list, dask arrays for a dask
            array): float64 for float64 input and for integers wider than 16
            bits (whose signal float32 would lose), else float32; with
            ``dtype="input"``, ``X``'s dtype (the std stays float); ``X`` is never modified. With a
            ``noise_model``, the posterior mean, its prior predicted blind (one pass for a blind-spot
            network; ``4**2`` masked passes in 2D, ``3**3`` in 3D for ``blind_spot="mask"``).

        Raises
        ------
        ValueError
            If ``X`` holds values too far from the training data's range for
            the network's float32 arithmetic: never a non-finite output.
        """
        if is_image_list(X, self.image_shape, self.axes):
            out = [self.transform(x, return_std) for x in X]
            return tuple(list(o) for o in zip(*out)) if return_std else out
        images = fitted_images(X, self.axes, self.image_shape, self._fitted(), lazy=True)
        denoise = self._denoiser()
        if isinstance(images, UnreadImages):  # a dask array: denoised chunk by chunk, when computed
            return in_requested_dtype(transform_lazy(images, denoise, return_std), X.dtype, self.dtype)
        denoised = denoise(images.canonical, output_dtype(images.array.dtype), return_std=return_std)
        parts = denoised if isinstance(denoised, tuple) else (denoised,)  # (mean, std) with return_std
        out = [np.ascontiguousarray(from_canonical(o, images.axes)).reshape(images.array.shape) for o in parts]
        return in_requested_dtype(tuple(out) if return_std else out[0], images.array.dtype, self.dtype)

    def get_feature_names_out(self, input_features: ArrayLike | None = None) -> np.ndarray:
        """Column names of ``transform``'s output of flattened images (``image_shape``): ``x0``, ``x1``, ..."""
        check_is_fitted(self, "model_")
        return feature_names_out(self.image_shape, getattr(self, "n_features_in_", None), input_features)

    def _fitted(self) -> tuple[int, int, int | None, str]:
        """What a fitted denoiser takes: ``(ndim, n_channels, row length under image_shape or None, name)``."""
        check_is_fitted(self, "model_")
        expected_row = getattr(self, "n_features_in_", None) if self.image_shape is not None else None
        return self.spatial_ndim_, self.n_channels_, expected_row, type(self).__name__

    def _fitted_images(self, X: ImagesLike) -> Images:
        """``X`` read as images a fitted denoiser can take."""
        return fitted_images(X, self.axes, self.image_shape, self._fitted())

    def _denoiser(self) -> Denoiser:
        """The fitted network and what it denoises with, as values (``transform``, ``score``, dask chunks)."""
        data_range = (self.data_min_, self.data_max_) if hasattr(self, "data_min_") else None
        return Denoiser(self.model_, self.mean_, self.std_, data_range, self.get_params(), self.patch_shape_)

    # ----------------------------------------------------------------- score
    def score(self, X: ImagesLike, y: ArrayLike | None = None) -> float:
        """How well the denoiser fits ``X``; higher is better.

        Parameters
        ----------
        X : array-like, or a list of arrays
            Noisy images, laid out as for :meth:`transform`; a list is scored
            as one (``y``: None, or a list of clean images of the same shapes).
        y : array-like or None
            ``None``: the negative self-supervised J-invariant loss (Noise2Self):
            the network is made blind on a fixed grid of pixels (stride 4, their
            values replaced by the mean of their neighbours, ``n_score_phases``
            phases of the grid), and the mean squared difference between its
            output and ``X`` on those pixels is returned, negated. With
            independent zero-mean noise it equals the true MSE plus the noise
            variance, so it ranks settings like the true MSE, without clean data.
            The grid does not depend on the mask settings. With a ``noise_model``
            it scores the prior mean (the posterior uses the pixel's own value).
            Clean images of ``X``'s shape: the negative MSE of ``transform(X)``
            against them. One label per row of ``X`` (a 1D ``y``, as a pipeline
            passes along) is ignored, as ``y=None``; any other ``y`` is refused.

        Returns
        -------
        float
            In squared intensity units of ``X``, negated.
        """
        check_is_fitted(self, "model_")
        if is_image_list(X, self.image_shape, self.axes):
            return pooled_score(self.score, X, y)
        clean = clean_images(X, y)
        if clean is not None:
            return -float(np.mean((self.transform(X).astype(np.float64) - clean) ** 2))
        images = self._fitted_images(X)
        blind = partial(self._denoiser(), dtype=output_dtype(images.array.dtype), prior_only=True)
        return -j_invariant_mse(blind, images.canonical, self.n_score_phases)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
