"""The scikit-learn estimator. It only orchestrates the modules beside it."""

from __future__ import annotations

from numbers import Integral, Real
from pathlib import Path

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
from ._tiling import predict_tiled
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


def _round_up(value, multiple):
    return -(-value // multiple) * multiple


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
        Overlap between tiles; ``None``: ``12 * 2**depth``, enough for tiled and
        whole-image predictions to agree to about 1e-6.
    tta : bool, default=False
        Test-time augmentation: average the predictions of the 8 flips and
        quarter turns (flips only in 3D).
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
        "depth": [Interval(Integral, 1, None, closed="left")],
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
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None):
        """Train the denoiser on noisy images.

        Parameters
        ----------
        X : array-like
            Noisy images laid out as ``axes`` says (integer or float).
        y : None
            Ignored.

        Returns
        -------
        self : Noise2VoidDenoiser
            Fitted. If training is interrupted (``KeyboardInterrupt``), the
            best weights so far are kept and the estimator is usable.
        """
        self._validate_params()
        X = check_image_array(X)
        axes = resolve_axes(self.axes, X.ndim)
        ndim = spatial_ndim(axes)
        self._check_hyperparameters()
        device = _resolve_device(self.device)
        images = to_canonical(X, axes)
        seeds = check_random_state(self.random_state).randint(0, 2**31 - 1, size=3)

        mean, std = channel_stats(images)
        normed = normalize(images, mean, std)
        train_images, validation_images = split_validation(normed, self.validation_fraction)
        requested = self._patch_shape(ndim)
        patch_shape = fit_patch_shape(
            requested, [im.shape[1:] for im in train_images + validation_images]
        )
        masker = BlindSpotMasker(
            ndim,
            self.masked_pixel_percentage,
            self.manipulator,
            self.neighborhood_radius,
            resolve_struct_mask(self.struct_mask, ndim),
        )
        model = self._build_network(images.shape[1], ndim, seed=int(seeds[0])).to(device)

        self.mean_, self.std_ = mean, std
        self.n_channels_ = int(images.shape[1])
        self.spatial_ndim_ = ndim
        self.patch_shape_ = patch_shape
        self.model_ = model
        self.history_ = []
        validation = []
        if validation_images:
            validation = make_validation_set(
                PatchSampler(validation_images, patch_shape, augment=False),
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
        if self.skip_skipone and self.depth < 1:
            raise ValueError("skip_skipone needs depth >= 1.")

    def _patch_shape(self, ndim):
        if ndim == 3 and isinstance(self.patch_size, (Integral, np.integer)):
            shape = (max(1, int(self.patch_size) // 2), int(self.patch_size), int(self.patch_size))
        else:
            shape = _per_axis(self.patch_size, ndim, "patch_size")
        return shape

    def _build_network(self, n_channels, ndim, seed):
        # The global RNG is forked so that seeding the initial weights leaves no trace.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return UNet(ndim=ndim, in_channels=n_channels, **{k: getattr(self, k) for k in _ARCHITECTURE})

    # ------------------------------------------------------------ transform
    def transform(self, X):
        """Denoise images.

        Parameters
        ----------
        X : array-like
            Images laid out as ``axes`` says, with the channels seen in ``fit``;
            any spatial size.

        Returns
        -------
        ndarray
            Same shape as ``X``; float64 for float64 input, else float32.
            ``X`` itself is never modified.
        """
        check_is_fitted(self, "model_")
        X = check_image_array(X)
        axes = resolve_axes(self.axes, X.ndim)
        ndim = spatial_ndim(axes)
        if ndim != self.spatial_ndim_:
            raise ValueError(
                f"The denoiser was fitted on {self.spatial_ndim_}D images but X is {ndim}D (axes {axes!r})."
            )
        images = to_canonical(X, axes)
        if images.shape[1] != self.n_channels_:
            raise ValueError(
                f"X has {images.shape[1]} channel(s) but the denoiser was fitted on {self.n_channels_}."
            )
        device = _resolve_device(self.device)
        model = self.model_.to(device)
        tile_shape, overlap = self._tiles(ndim)
        pixels_per_batch = self.batch_size * int(np.prod(self.patch_shape_))
        prediction = predict_tiled(
            model,
            normalize(images, self.mean_, self.std_),
            tile_shape,
            overlap,
            batch_size=max(1, pixels_per_batch // int(np.prod(tile_shape))),
            device=device,
            multiple=2**self.depth,
            tta=bool(self.tta),
            verbose=bool(self.verbose),
        )
        dtype = np.float64 if X.dtype == np.float64 else np.float32
        out = denormalize(prediction, self.mean_, self.std_, dtype=dtype)
        return np.ascontiguousarray(from_canonical(out, axes))

    def _tiles(self, ndim):
        multiple = 2**self.depth
        if self.tile_size is None:
            tile = (256, 256) if ndim == 2 else (64, 128, 128)
        else:
            tile = _per_axis(self.tile_size, ndim, "tile_size")
        tile = tuple(_round_up(t, multiple) for t in tile)
        if self.tile_overlap is None:
            overlap = tuple(min(12 * multiple, (t // 2) // multiple * multiple) for t in tile)
        else:
            overlap = tuple(_round_up(o, multiple) for o in _per_axis(self.tile_overlap, ndim, "tile_overlap"))
            for t, o in zip(tile, overlap):
                if o >= t:
                    raise ValueError(
                        f"tile_overlap {self.tile_overlap!r} (rounded up to {overlap}) must be smaller "
                        f"than tile_size (rounded up to {tile}); both are multiples of 2**depth={multiple}."
                    )
        return tile, overlap

    # ---------------------------------------------------------- persistence
    def save(self, path):
        """Write the fitted denoiser to ``path`` (one safetensors file, no pickle).

        The file is written under a temporary name and renamed into place, so
        an existing file is never left half-written.
        """
        check_is_fitted(self, "model_")
        params = self.get_params(deep=False)
        if not isinstance(params["random_state"], (Integral, type(None))):
            params["random_state"] = None
        params["device"] = str(params["device"])
        document = {
            "package_version": __version__,
            "params": params,
            "fitted": {
                "mean": self.mean_,
                "std": self.std_,
                "n_channels": self.n_channels_,
                "spatial_ndim": self.spatial_ndim_,
                "patch_shape": self.patch_shape_,
                "history": self.history_,
            },
        }
        write_model(path, self.model_.state_dict(), document)

    @classmethod
    def load(cls, path):
        """Read a denoiser written by :meth:`save`.

        Only tensors and JSON are read; nothing in the file is executed.

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
            known = set(cls._get_param_names())
            unknown = sorted(set(params) - known)
            if unknown:
                raise ModelFileError(f"{path} names unknown parameters {unknown}.")
            for key in ("patch_size", "tile_size", "tile_overlap", "struct_mask"):
                if isinstance(params.get(key), list):
                    params[key] = tuple(params[key]) if key != "struct_mask" else np.asarray(params[key])
            if isinstance(params.get("struct_mask"), np.ndarray) and params["struct_mask"].dtype.kind == "U":
                params["struct_mask"] = tuple(document["params"]["struct_mask"])
            estimator = cls(**params)
            estimator._validate_params()
            n_channels = int(fitted["n_channels"])
            ndim = int(fitted["spatial_ndim"])
            estimator.mean_ = np.asarray(fitted["mean"], dtype=np.float64).reshape(n_channels)
            estimator.std_ = np.asarray(fitted["std"], dtype=np.float64).reshape(n_channels)
            estimator.n_channels_ = n_channels
            estimator.spatial_ndim_ = ndim
            estimator.patch_shape_ = tuple(int(p) for p in fitted["patch_shape"])
            estimator.history_ = list(fitted["history"])
        except ModelFileError:
            raise
        except Exception as exc:
            raise ModelFileError(f"{path} holds an invalid model description: {exc!r}") from exc
        model = estimator._build_network(n_channels, ndim, seed=0)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing or extra:
            raise ModelFileError(f"{path}: tensors missing {missing[:5]}, unexpected {extra[:5]}.")
        for name, tensor in expected.items():
            if tuple(tensors[name].shape) != tuple(tensor.shape) or tensors[name].dtype != tensor.dtype:
                raise ModelFileError(
                    f"{path}: tensor {name!r} has shape {tuple(tensors[name].shape)} and dtype "
                    f"{tensors[name].dtype}, the network needs {tuple(tensor.shape)} {tensor.dtype}."
                )
        model.load_state_dict(tensors)
        estimator.model_ = model.eval()
        return estimator

    # ------------------------------------------------------------- pickling
    def __getstate__(self):
        state = super().__getstate__()
        if "model_" in state:
            # Pickles made on a GPU load on a CPU-only machine.
            state["model_"] = {k: v.detach().cpu() for k, v in self.model_.state_dict().items()}
        return state

    def __setstate__(self, state):
        weights = state.get("model_")
        super().__setstate__(state)
        if isinstance(weights, dict):
            model = self._build_network(self.n_channels_, self.spatial_ndim_, seed=0)
            model.load_state_dict(weights)
            self.model_ = model.eval()
