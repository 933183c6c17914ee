"""The scikit-learn estimator. It only orchestrates the modules beside it."""

from __future__ import annotations

import inspect
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from . import __version__
from ._axes import check_image_array, from_canonical, resolve_axes, spatial_ndim, to_canonical
from ._masking import MANIPULATORS, BlindSpotMasker, resolve_struct_mask
from ._normalize import channel_stats, denormalize, normalize
from ._patches import PatchSampler, fit_patch_shape, split_validation
from ._persistence import ModelFileError, read_model, write_model
from ._scoring import j_invariant_mse
from ._tiling import predict_tiled, round_up
from ._training import make_validation_set, train
from ._unet import UNet

_ARCHITECTURE = (
    "depth",
    "n_filters",
    "kernel_size",
    "batch_norm",
    "residual",
    "blurpool",
    "skip_skipone",
    "independent_channels",
)
# Parameters that may hold a tuple of ints (a model file stores it as a JSON list).
_SHAPE_PARAMS = ("patch_size", "tile_size", "tile_overlap", "image_shape")


def _resolve_device(device):
    """``"auto"`` -> CUDA if available, else Apple MPS, else CPU; anything else as given."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a torch device; use 'auto', 'cpu' or 'cuda'.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for, but CUDA is not available here; use device='auto'.")
    return resolved


def _per_axis(value, ndim, name):
    """An int, or a sequence of one int per spatial axis, as a tuple of ``ndim`` ints."""
    if isinstance(value, (Integral, np.integer)):
        return (int(value),) * ndim
    value = tuple(value)
    if len(value) != ndim or not all(isinstance(v, (Integral, np.integer)) for v in value):
        raise ValueError(f"{name}={value!r} must be an int or {ndim} ints (one per spatial axis).")
    return tuple(int(v) for v in value)


def _seeded_network(config, seed):
    """Build a :class:`UNet` from its ``config``; ``seed`` decides the initial weights.

    The global RNG is forked, so seeding leaves no trace outside.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet(**config)


# Bounds on a saved network's settings, so that a hostile file cannot make
# ``load`` allocate an absurd network before its tensors are checked.
_NETWORK_LIMITS = {
    "ndim": (2, 3),
    "in_channels": (1, 4096),
    "depth": (1, 8),
    "n_filters": (1, 4096),
    "kernel_size": (1, 31),
}


def _network_from_weights(config, weights, source):
    """Rebuild a network from ``config`` and load ``weights``, checking every tensor.

    Raises :class:`ModelFileError` (naming ``source``) on unknown or out-of-range
    settings, and on missing, unexpected or mis-shaped tensors.
    """
    expected_keys = set(inspect.signature(UNet).parameters)
    if not isinstance(config, dict) or set(config) != expected_keys:
        raise ModelFileError(f"{source}: the network description {config!r} is not a U-Net's.")
    for key, value in config.items():
        if key in _NETWORK_LIMITS:
            low, high = _NETWORK_LIMITS[key]
            if type(value) is not int or not low <= value <= high:
                raise ModelFileError(f"{source}: network setting {key}={value!r} is not an int in [{low}, {high}].")
        elif type(value) is not bool:
            raise ModelFileError(f"{source}: network setting {key}={value!r} is not a bool.")
    # Shapes are compared on the meta device (no memory), before any real allocation.
    with torch.device("meta"):
        expected = UNet(**config).state_dict()
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        raise ModelFileError(f"{source}: tensors missing {missing[:5]}, unexpected {extra[:5]}.")
    for name, tensor in expected.items():
        if tuple(weights[name].shape) != tuple(tensor.shape) or weights[name].dtype != tensor.dtype:
            raise ModelFileError(
                f"{source}: tensor {name!r} has shape {tuple(weights[name].shape)} and dtype "
                f"{weights[name].dtype}, the network needs {tuple(tensor.shape)} {tensor.dtype}."
            )
    return _unet_with_weights(config, weights)


def _unet_with_weights(config, weights):
    """A :class:`UNet` built from ``config`` holding ``weights``, in eval mode."""
    model = UNet(**config)
    model.load_state_dict(weights)
    return model.eval()


class Noise2VoidDenoiser(TransformerMixin, BaseEstimator):
    """Self-supervised Noise2Void denoising of images, trained on the noisy images alone.

    ``fit`` trains a U-Net to predict each pixel from its surroundings with the
    pixel itself hidden (a blind spot): since the noise is independent from
    pixel to pixel and the signal is not, the network learns the signal.
    ``transform`` then denoises images of any size, tile by tile.

    Parameters
    ----------
    axes : str or None, default=None
        Meaning of the input's axes, letters from ``S`` (samples), ``C``
        (channels), ``Z``, ``Y``, ``X`` in array order, e.g. ``"YXC"`` or
        ``"SZYX"``. ``None``: a 2D array is one image (``"YX"``), a 3D array a
        stack of images (``"SYX"``).
    patch_size : int or tuple of int, default=64
        Side of the random training patches. In 3D an int ``p`` means
        ``(p // 2, p, p)`` (Z, Y, X). Shrunk to fit small images.
    batch_size : int, default=16
        Patches per optimizer step.
    max_epochs : int, default=30
        Number of epochs; one validation pass and one ``history_`` record each.
    steps_per_epoch : int, default=50
        Optimizer steps per epoch. Total steps = ``max_epochs * steps_per_epoch``.
    learning_rate : float, default=1e-3
        Peak learning rate of Adam; linear warm-up over 5% of the steps, then
        cosine decay to 1% of the peak.
    masked_pixel_percentage : float, default=2.0
        Percentage of pixels of each patch made blind (n2v's ``perc_pix``).
        Higher than n2v's 0.198 because more blind spots per step make short
        runs on one image converge much further.
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
    batch_norm : bool, default=True
        Batch normalisation after each convolution.
    residual : bool, default=False
        The network predicts a correction added to its input.
    blurpool : bool, default=False
        N2V2 max-blur-pool down-sampling.
    skip_skipone : bool, default=False
        N2V2: no skip connection at the top level.
    independent_channels : bool, default=True
        One network per channel (grouped convolutions) rather than a joint one.
    validation_fraction : float, default=0.1
        Data held out for validation (whole images when there are several,
        else a strip of each image). The weights with the lowest validation
        loss are kept; with 0, the last weights are kept.
    tile_size : int, tuple of int or None, default=None
        Side of the tiles ``transform`` predicts at once; ``None``: 256 in 2D,
        ``(64, 128, 128)`` in 3D. Rounded up to a multiple of ``2**depth``.
    tile_overlap : int, tuple of int or None, default=None
        Overlap between tiles; ``None``: ``12 * 2**depth * (kernel_size - 1) // 2``
        (at most half a tile), enough for tiled and whole-image predictions to
        agree to about 1e-6.
    tta : bool, default=False
        Test-time augmentation: average the predictions of the 8 flips and
        quarter turns (flips only in 3D).
    image_shape : tuple of int or None, default=None
        For flattened images, as scikit-learn data often is: ``X`` of shape
        ``(n_samples, prod(image_shape))`` holds one image per row, laid out as
        ``axes`` says (default ``"YX"`` or ``"ZYX"``; no ``S``), and
        ``transform`` returns the same flattened shape.
    warm_start : bool, default=False
        ``fit`` continues training the current network (same normalisation,
        a new learning-rate schedule) instead of starting afresh.
    n_score_phases : int, default=4
        Grid phases evaluated by the self-supervised :meth:`score`; each costs
        one denoising pass over ``X`` and scores 1/16 of the pixels (1/64 in 3D).
    random_state : int, RandomState instance or None, default=None
        Seeds weights, patches and blind spots. Two fits with the same int seed
        on the same device type give identical weights on CPU.
    device : str or torch.device, default="auto"
        ``"auto"`` picks CUDA, then Apple MPS, then CPU.
    verbose : bool, default=False
        Show progress bars for training and prediction.

    Attributes
    ----------
    model_ : torch.nn.Module
        The trained U-Net (in eval mode).
    mean_, std_ : ndarray of shape (n_channels,)
        Per-channel normalisation statistics of the training data.
    n_channels_ : int
        Number of channels seen in ``fit``.
    spatial_ndim_ : int
        2 or 3.
    patch_shape_ : tuple of int
        The patch shape used, after fitting it to the images.
    history_ : list of dict
        One record per epoch: ``epoch``, ``train_loss``, ``val_loss``,
        ``learning_rate``, ``seconds``.
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
        "patch_size": [Interval(Integral, 1, None, closed="left"), tuple, list],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "steps_per_epoch": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "masked_pixel_percentage": [Interval(Real, 0, 100, closed="right")],
        "manipulator": [StrOptions(set(MANIPULATORS))],
        "neighborhood_radius": [Interval(Integral, 1, None, closed="left")],
        "struct_mask": [None, "array-like", tuple],
        "depth": [Interval(Integral, 1, 8, closed="both")],
        "n_filters": [Interval(Integral, 1, None, closed="left")],
        "kernel_size": [Interval(Integral, 1, None, closed="left")],
        "batch_norm": ["boolean"],
        "residual": ["boolean"],
        "blurpool": ["boolean"],
        "skip_skipone": ["boolean"],
        "independent_channels": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "tile_size": [Interval(Integral, 1, None, closed="left"), tuple, list, None],
        "tile_overlap": [Interval(Integral, 0, None, closed="left"), tuple, list, None],
        "tta": ["boolean"],
        "image_shape": [tuple, list, None],
        "warm_start": ["boolean"],
        "n_score_phases": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "device": [str, torch.device],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        axes=None,
        patch_size=64,
        batch_size=16,
        max_epochs=30,
        steps_per_epoch=50,
        learning_rate=1e-3,
        masked_pixel_percentage=2.0,
        manipulator="uniform_withCP",
        neighborhood_radius=2,
        struct_mask=None,
        depth=2,
        n_filters=32,
        kernel_size=3,
        batch_norm=True,
        residual=False,
        blurpool=False,
        skip_skipone=False,
        independent_channels=True,
        validation_fraction=0.1,
        tile_size=None,
        tile_overlap=None,
        tta=False,
        image_shape=None,
        warm_start=False,
        n_score_phases=4,
        random_state=None,
        device="auto",
        verbose=False,
    ):
        self.axes = axes
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.max_epochs = max_epochs
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
        self.validation_fraction = validation_fraction
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.tta = tta
        self.image_shape = image_shape
        self.warm_start = warm_start
        self.n_score_phases = n_score_phases
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    # ----------------------------------------------------------------- input
    def _images(self, X, fitting):
        """Validate ``X`` and return ``(images, axes, array)``: ``images`` is the
        canonical ``(S, C, *spatial)`` view of ``X``, ``axes`` the layout of ``X``
        (each row's image, prefixed with ``S``, under ``image_shape``) and
        ``array`` the validated ``X`` as an ndarray."""
        X = array = check_image_array(X)
        if self.image_shape is None:
            axes = resolve_axes(self.axes, X.ndim)
        else:
            shape = tuple(self.image_shape)
            if not shape or not all(isinstance(n, (Integral, np.integer)) and n > 0 for n in shape):
                raise ValueError(f"image_shape={self.image_shape!r} must be a tuple of positive ints.")
            if X.ndim != 2:
                raise ValueError(
                    f"With image_shape={shape}, X must be 2D (n_samples, {int(np.prod(shape))}), "
                    f"one flattened image per row; got shape {X.shape}."
                )
            if X.shape[1] != int(np.prod(shape)):
                raise ValueError(
                    f"X has rows of {X.shape[1]} values, but image_shape={shape} needs "
                    f"{int(np.prod(shape))} values per row."
                )
            default = "YX" if len(shape) == 2 else "ZYX" if len(shape) == 3 else None
            image_axes = resolve_axes(self.axes if self.axes is not None else default, len(shape))
            if "S" in image_axes:
                raise ValueError(f"With image_shape, axes={self.axes!r} describes one row's image and has no S.")
            axes = "S" + image_axes
            X = X.reshape((X.shape[0],) + shape)
        if X.ndim == 2 or self.image_shape is not None:
            n_features = int(np.prod(X.shape[1:]))
            if fitting:
                self.n_features_in_ = n_features
            elif self.image_shape is not None and n_features != getattr(self, "n_features_in_", n_features):
                raise ValueError(
                    f"X has {n_features} features, but {type(self).__name__} is expecting "
                    f"{self.n_features_in_} features as input."
                )
        elif fitting and hasattr(self, "n_features_in_"):
            del self.n_features_in_
        return to_canonical(X, axes), axes, array

    def _fitted_images(self, X):
        """:meth:`_images` for a fitted denoiser: also checks that ``X`` has the
        dimensionality and channels it was fitted on."""
        check_is_fitted(self, "model_")
        images, axes, array = self._images(X, fitting=False)
        ndim = spatial_ndim(axes)
        if ndim != self.spatial_ndim_:
            raise ValueError(
                f"The denoiser was fitted on {self.spatial_ndim_}D images but X is {ndim}D (axes {axes!r})."
            )
        if images.shape[1] != self.n_channels_:
            raise ValueError(
                f"X has {images.shape[1]} channel(s) (axes {axes!r}) but the denoiser was fitted "
                f"on {self.n_channels_}."
            )
        return images, axes, array

    # ------------------------------------------------------------------- fit
    def fit(self, X, y=None):
        """Train the denoiser on noisy images.

        Parameters
        ----------
        X : array-like
            Noisy images laid out as ``axes`` says (integer or float).
        y : None
            Ignored: training is self-supervised. Accepted so that
            ``GridSearchCV(...).fit(noisy, clean)`` can score against clean images.

        Returns
        -------
        self : Noise2VoidDenoiser
            Fitted. If training is interrupted (``KeyboardInterrupt``), the
            best weights so far are kept and the estimator is usable.
        """
        self._validate_params()
        self._check_hyperparameters()
        images, axes, _ = self._images(X, fitting=True)
        ndim = spatial_ndim(axes)
        self._tiles(ndim, 2**self.depth)  # refuse bad tile settings before training, not after
        neighbourhood = (2 * self.neighborhood_radius + 1) ** ndim
        if neighbourhood > 4096:
            raise ValueError(
                f"neighborhood_radius={self.neighborhood_radius} spans {neighbourhood} pixels in "
                f"{ndim}D; at most 4096 are allowed (radius <= 31 in 2D, <= 7 in 3D)."
            )
        device = _resolve_device(self.device)
        seeds = check_random_state(self.random_state).randint(0, 2**31 - 1, size=3)
        if self.warm_start and hasattr(self, "history_"):
            # Continued training draws new patches and blind spots, not a replay.
            seeds = (seeds + 7919 * len(self.history_)) % (2**31 - 1)
        config = {
            "ndim": ndim,
            "in_channels": int(images.shape[1]),
            **{k: getattr(self, k) for k in _ARCHITECTURE},
        }
        continuing = self.warm_start and hasattr(self, "model_")
        if continuing:
            if self.model_.config != config:
                raise ValueError(
                    "warm_start=True needs the same network and data layout as the previous fit: "
                    f"was {self.model_.config}, now {config}."
                )
            model, mean, std = self.model_, self.mean_, self.std_
        else:
            model = _seeded_network(config, int(seeds[0]))
            mean, std = channel_stats(images)
        model = model.to(device)

        normed = normalize(images, mean, std)
        train_images, validation_images = split_validation(normed, self.validation_fraction)
        patch_shape = fit_patch_shape(self._patch_shape(ndim), [im.shape[1:] for im in train_images])
        self._check_batch_statistics(patch_shape)
        masker = BlindSpotMasker(
            ndim,
            self.masked_pixel_percentage,
            self.manipulator,
            self.neighborhood_radius,
            resolve_struct_mask(self.struct_mask, ndim),
        )
        # Fitted state is in place before training, so that an interrupted or
        # failed fit leaves a usable estimator with the weights kept by `train`.
        self.model_ = model
        self.mean_, self.std_ = mean, std
        self.n_channels_ = int(images.shape[1])
        self.spatial_ndim_ = ndim
        self.patch_shape_ = patch_shape
        if not continuing:
            self.history_ = []
        validation = []
        if validation_images:
            # Validation patches only need to fit the held-out part (a thin strip of a single image).
            validation_shape = fit_patch_shape(patch_shape, [im.shape[1:] for im in validation_images])
            validation = make_validation_set(
                PatchSampler(validation_images, validation_shape, augment=False),
                masker,
                n_patches=4 * self.batch_size,
                batch_size=self.batch_size,
                device=device,
                seed=int(seeds[2]),
            )
        train(
            model,
            PatchSampler(train_images, patch_shape),
            masker,
            validation=validation,
            history=self.history_,
            max_epochs=self.max_epochs,
            steps_per_epoch=self.steps_per_epoch,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            device=device,
            seed=int(seeds[1]),
            verbose=bool(self.verbose),
        )
        return self

    def _check_hyperparameters(self):
        """Checks that go beyond the declared constraints."""
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}.")
        for name in ("patch_size", "tile_size", "tile_overlap"):  # image_shape: checked with X in _images
            value = getattr(self, name)
            if isinstance(value, (tuple, list)) and not all(
                isinstance(v, (Integral, np.integer)) and v >= (0 if name == "tile_overlap" else 1) for v in value
            ):
                raise ValueError(f"{name}={value!r} must hold positive ints.")

    def _check_batch_statistics(self, patch_shape):
        """Batch normalisation needs more than one value per channel at the U-Net's bottom."""
        bottom = int(np.prod([-(-p // 2**self.depth) for p in patch_shape]))
        if self.batch_norm and self.batch_size * bottom < 2:
            raise ValueError(
                f"batch_size={self.batch_size} with patches of {patch_shape} leaves a single value "
                f"per channel at depth {self.depth}, too few for batch normalisation; raise "
                "batch_size, lower depth or set batch_norm=False."
            )

    def _patch_shape(self, ndim):
        if ndim == 3 and isinstance(self.patch_size, (Integral, np.integer)):
            return (max(1, int(self.patch_size) // 2), int(self.patch_size), int(self.patch_size))
        return _per_axis(self.patch_size, ndim, "patch_size")

    # ------------------------------------------------------------- transform
    def transform(self, X):
        """Denoise images.

        Parameters
        ----------
        X : array-like
            Images laid out as ``axes`` says, with the channels seen in ``fit``;
            any spatial size (rows of ``image_shape`` under ``image_shape``).

        Returns
        -------
        ndarray
            Same shape as ``X``; float64 for float64 input, else float32.
            ``X`` itself is never modified.
        """
        images, axes, array = self._fitted_images(X)
        dtype = np.float64 if array.dtype == np.float64 else np.float32
        out = self._denoise(images, dtype)
        return np.ascontiguousarray(from_canonical(out, axes)).reshape(array.shape)

    def _denoise(self, images, dtype=np.float32):
        """Denoise canonical ``(S, C, *spatial)`` images (original units in and out)."""
        device = _resolve_device(self.device)
        model = self.model_.to(device)
        ndim = images.ndim - 2
        tile_shape, overlap = self._tiles(ndim, 2**model.depth)
        # Tiles per batch: as many pixels as a training batch, and at least one
        # default tile's worth (prediction needs far less memory than training),
        # so that stacks of small images are predicted many at a time.
        pixel_budget = max(self.batch_size * int(np.prod(self.patch_shape_)), 256 * 256)
        tile_pixels = int(np.prod([min(t, n) for t, n in zip(tile_shape, images.shape[2:])]))
        return predict_tiled(
            model,
            images,
            tile_shape,
            overlap,
            batch_size=max(1, pixel_budget // tile_pixels),
            device=device,
            multiple=2**model.depth,
            tta=bool(self.tta),
            verbose=bool(self.verbose),
            prepare=lambda batch: normalize(batch, self.mean_, self.std_),
            finish=lambda batch: denormalize(batch, self.mean_, self.std_, dtype=dtype),
            dtype=dtype,
        )

    def _tiles(self, ndim, multiple):
        if self.tile_size is None:
            tile = (256, 256) if ndim == 2 else (64, 128, 128)
        else:
            tile = _per_axis(self.tile_size, ndim, "tile_size")
        tile = tuple(round_up(t, multiple) for t in tile)
        if self.tile_overlap is None:
            # The receptive field grows with the kernel: 12 * 2**depth covers kernel 3.
            reach = 12 * multiple * max(1, (self.kernel_size - 1) // 2)
            overlap = tuple(min(reach, (t // 2) // multiple * multiple) for t in tile)
        else:
            overlap = tuple(round_up(o, multiple) for o in _per_axis(self.tile_overlap, ndim, "tile_overlap"))
            for t, o in zip(tile, overlap):
                if o >= t:
                    raise ValueError(
                        f"tile_overlap={self.tile_overlap!r} (rounded up to {overlap}) must be smaller "
                        f"than tile_size (rounded up to {tile}); both are multiples of 2**depth={multiple}."
                    )
        return tile, overlap

    # ----------------------------------------------------------------- score
    def score(self, X, y=None):
        """How well the denoiser fits ``X``; higher is better.

        Parameters
        ----------
        X : array-like
            Noisy images, laid out as for :meth:`transform`.
        y : array-like or None
            ``None``: the negative self-supervised J-invariant loss (Noise2Self):
            the network is made blind on a fixed grid of pixels (stride 4, their
            values replaced by the mean of their neighbours, ``n_score_phases``
            phases of the grid), and the mean squared difference between its
            output and ``X`` on those pixels is returned, negated. With
            independent zero-mean noise it equals the true MSE plus the noise
            variance, so it ranks settings like the true MSE, without clean data.
            The grid does not depend on the estimator's mask settings.
            Clean images of ``X``'s shape: the negative MSE of ``transform(X)``
            against them. A ``y`` of any other shape (class labels passed along
            by a pipeline or a search) is not clean images and is ignored.

        Returns
        -------
        float
            In squared intensity units of ``X``, negated.
        """
        check_is_fitted(self, "model_")
        if y is not None and np.asarray(y).shape == np.asarray(X).shape:
            clean = check_image_array(y, name="y").astype(np.float64)
            return -float(np.mean((self.transform(X).astype(np.float64) - clean) ** 2))
        images, _, _ = self._fitted_images(X)
        return -j_invariant_mse(self._denoise, images, self.n_score_phases)

    # ----------------------------------------------------------- persistence
    def save(self, path):
        """Write the fitted denoiser to ``path`` (one safetensors file, no pickle).

        The file is written under a temporary name in the same folder and
        renamed into place, so an existing file is never left half-written.
        """
        check_is_fitted(self, "model_")
        params = self.get_params(deep=False)
        if not isinstance(params["random_state"], (Integral, type(None))):
            params["random_state"] = None
        params["device"] = str(params["device"])
        fitted = {
            "network": self.model_.config,
            "mean": self.mean_,
            "std": self.std_,
            "n_channels": self.n_channels_,
            "spatial_ndim": self.spatial_ndim_,
            "patch_shape": self.patch_shape_,
            "history": self.history_,
        }
        if hasattr(self, "n_features_in_"):
            fitted["n_features_in"] = self.n_features_in_
        document = {"package_version": __version__, "params": params, "fitted": fitted}
        write_model(path, self.model_.state_dict(), document)

    @classmethod
    def load(cls, path, *, device=None):
        """Read a denoiser written by :meth:`save`.

        Only tensors and JSON are read; nothing in the file is executed.

        Parameters
        ----------
        path : str or path-like
            A file written by :meth:`save`.
        device : str or torch.device, optional
            Where the loaded denoiser computes. ``None`` keeps the saved
            setting; pass ``"auto"`` (or ``"cpu"``) to use a model saved with
            ``device="cuda"`` on a machine without a GPU.

        Returns
        -------
        Noise2VoidDenoiser
            Fitted, ready for :meth:`transform`.

        Raises
        ------
        ModelFileError
            If the file is malformed, of another format version, names unknown
            parameters, or its tensors do not match the network it describes.
        """
        tensors, document = read_model(path)
        try:
            params = dict(document["params"])
            fitted = document["fitted"]
            unknown = sorted(set(params) - set(cls._get_param_names()))
            if unknown:
                raise ModelFileError(f"{path} names unknown parameters {unknown}.")
            for key in _SHAPE_PARAMS:
                if isinstance(params.get(key), list):
                    params[key] = tuple(params[key])
            struct = params.get("struct_mask")
            if isinstance(struct, list):
                is_short = len(struct) == 2 and isinstance(struct[0], str)
                params["struct_mask"] = tuple(struct) if is_short else np.asarray(struct)
            if device is not None:
                params["device"] = device
            estimator = cls(**params)
            estimator._validate_params()
            n_channels = int(fitted["n_channels"])
            estimator.mean_ = np.asarray(fitted["mean"], dtype=np.float64).reshape(n_channels)
            estimator.std_ = np.asarray(fitted["std"], dtype=np.float64).reshape(n_channels)
            estimator.n_channels_ = n_channels
            estimator.spatial_ndim_ = int(fitted["spatial_ndim"])
            estimator.patch_shape_ = tuple(int(p) for p in fitted["patch_shape"])
            estimator.history_ = list(fitted["history"])
            if "n_features_in" in fitted:
                estimator.n_features_in_ = int(fitted["n_features_in"])
            network = fitted["network"]
        except ModelFileError:
            raise
        except Exception as exc:
            raise ModelFileError(f"{path} holds an invalid model description: {exc!r}") from exc
        estimator.model_ = _network_from_weights(network, tensors, path)
        if (estimator.model_.config["in_channels"], estimator.model_.config["ndim"]) != (
            estimator.n_channels_,
            estimator.spatial_ndim_,
        ):
            raise ModelFileError(f"{path}: the network does not match the described data layout.")
        return estimator

    # -------------------------------------------------------------- pickling
    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: object.__getstate__ returns __dict__ itself
        if "model_" in state:
            # Plain CPU tensors: a pickle made on a GPU loads on a CPU-only machine.
            state["model_"] = {
                "config": self.model_.config,
                "weights": {k: v.detach().cpu() for k, v in self.model_.state_dict().items()},
            }
        return state

    def __setstate__(self, state):
        network = state.get("model_")
        super().__setstate__(state)
        if isinstance(network, dict):
            self.model_ = _unet_with_weights(network["config"], network["weights"])

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
