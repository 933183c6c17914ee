"""The estimator's exchanges with files and other tools, written beside it: its model file (save, load),
pickling that travels between machines, BioImage Model Zoo packages, and the TensorFlow n2v's model folders.

These are :class:`n2v_estimator.Noise2VoidDenoiser`'s own methods (mixins of it): they turn the estimator
into plain values and callables (:class:`n2v_estimator.models.zoo_export.ExportedDenoiser`, a model file's
tensors and document, a ``load``) for the modules of ``models/``, which never see the estimator.
"""

from __future__ import annotations

import copy
import inspect
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from ._typing import ImagesLike, PathLike
from ._version import __version__
from .gateway.atomic import check_replace
from .models.file_format import estimator_document
from .models.keras_n2v import config_parameters, model_document, read_config
from .models.weights import portable_network, read_estimator, unet_with_weights, write_model
from .models.zoo_export import ExportedDenoiser, check_exportable, export
from .models.zoo_import import from_package
from .nets.unet import UNet

if TYPE_CHECKING:
    from typing_extensions import Self

    from .data.axes import Images
    from .nets.blindnet import BlindSpotNetwork


class _Estimator:
    """What the mixins use of the estimator they are part of, declared for the type checker (the
    estimator defines all of it); nothing at run time."""

    if TYPE_CHECKING:
        model_: UNet | BlindSpotNetwork
        mean_: np.ndarray
        std_: np.ndarray
        patch_shape_: tuple[int, ...]
        spatial_ndim_: int
        history_: list[dict[str, Any]]
        tta: bool

        def __init__(self, **params: Any) -> None: ...
        def get_params(self, deep: bool = True) -> dict[str, Any]: ...
        def set_params(self, **params: Any) -> Self: ...
        def transform(self, X: ImagesLike, return_std: bool = False) -> Any: ...
        def _validate_params(self) -> None: ...
        @classmethod
        def _get_param_names(cls) -> list[str]: ...
        def _fitted_images(self, X: ImagesLike) -> Images: ...
        def _set_fitted(self, *args: Any, **kwargs: Any) -> None: ...
        def save(self, path: PathLike, *, overwrite: bool = False) -> None: ...
        @classmethod
        def load(cls, path: PathLike, *, device: str | torch.device | None = None) -> Self: ...
        def __getstate__(self) -> dict[str, Any]: ...
        def __setstate__(self, state: dict[str, Any]) -> None: ...


class ModelFileMixin(_Estimator):
    """``save`` and ``load``: one safetensors file (weights and a JSON document), no pickle."""

    def save(self, path: PathLike, *, overwrite: bool = False) -> None:
        """Write the fitted denoiser to ``path`` (one safetensors file, no pickle); an existing file
        only with ``overwrite=True``, replaced whole (written beside it, then renamed into place)."""
        check_is_fitted(self, "model_")
        check_replace(path, overwrite)
        document = estimator_document(self.get_params(deep=False), vars(self), __version__)
        write_model(path, self.model_.state_dict(), document)

    @classmethod
    def load(cls, path: PathLike, *, device: str | torch.device | None = None) -> Self:
        """Read a denoiser written by :meth:`save`.

        Only tensors and JSON are read; nothing in the file is executed. Every
        parameter comes back as saved, ``verbose`` included (``set_params`` changes it).

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
        params, model, fitted = read_estimator(
            path, cls._get_param_names(), lambda p: cls(**p)._validate_params(), device
        )
        estimator = cls(**params)
        estimator._set_fitted(model, **fitted)
        return estimator


class PortablePickling(_Estimator):
    """Pickling for an estimator that holds its network as ``model_``: the network travels
    as its description and CPU weights (:func:`portable_network`), so that a pickle made
    on a GPU loads on a machine without one, and is rebuilt on unpickling."""

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())  # a copy: object.__getstate__ returns __dict__ itself
        if "model_" in state:
            state["model_"] = portable_network(self.model_)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        network = state.get("model_")
        super().__setstate__(state)
        if isinstance(network, dict):
            self.model_ = unet_with_weights(network["description"], network["weights"])


class BioImageIOMixin(_Estimator):
    """BioImage Model Zoo export and import for :class:`Noise2VoidDenoiser`."""

    def export_bioimageio(
        self,
        path: PathLike,
        test_image: ImagesLike,
        *,
        name: str,
        description: str,
        authors: str | Mapping[str, str] | Sequence[str | Mapping[str, str]],
        license: str = "CC-BY-4.0",
        tags: Sequence[str] = (),
        overwrite: bool = False,
    ) -> Path:
        """Write the fitted denoiser as a BioImage Model Zoo model (a zip, spec 0.5).

        Fiji (deepImageJ), napari, ilastik, QuPath and ``bioimageio.core`` run
        the package; their prediction is this denoiser's ``transform`` with
        ``precision="32"`` (to float32 rounding), tiles and image edges
        included. Needs the ``[bioimageio]`` extra; works offline.

        Parameters
        ----------
        path : str or path-like
            The zip to write; written under a temporary name and renamed into
            place, so an existing file is never left half-written.
        test_image : array-like
            An image laid out as in ``fit`` (e.g. one of the training images);
            its first image, cropped around its centre to at most 256 pixels a
            side (64 in 3D), and its ``transform`` become the package's test
            data and cover picture (noisy beside denoised).
        name : str
            The model's name (at least 5 characters).
        description : str
            One or two sentences: what images the model is for.
        authors : str, dict or list of those
            Names, or dicts with ``name`` and optionally ``affiliation``,
            ``email``, ``github_user``, ``orcid``.
        license : str, default="CC-BY-4.0"
            An SPDX license identifier for the model.
        tags : sequence of str, default=()
            Tags beside the ones added for the method and dimensionality.
        overwrite : bool, default=False
            Replace an existing ``path``; without it, an existing one is refused
            (``FileExistsError``) before any work.

        Returns
        -------
        pathlib.Path
            ``path``.

        Raises
        ------
        ValueError
            For a probabilistic model (``noise_model`` set: ``transform`` needs
            many masked passes and the noise model, which the zoo's runtime
            cannot run), or a ``test_image`` unlike the training data.
        ImportError
            Without ``bioimageio.spec``/``bioimageio.core``.

        Notes
        -----
        The package holds the network as ``pytorch_state_dict`` (with a
        standalone copy of the U-Net's source, torch only) and
        ``torchscript``; the normalisation with the fitted ``mean_`` and
        ``std_`` as preprocessing and its inverse as ``scale_linear``
        postprocessing; the halo (the network's reach, rounded up to a
        multiple of ``2**depth``) on each spatial output axis and the tile
        step ``2**depth``; with ``tta=True``, the averaging over the 8
        augmentations inside the network; a README with the training
        parameters and history; and the denoiser's own model file, which
        :meth:`from_bioimageio` reads.

        Examples
        --------
        >>> import numpy as np
        >>> from n2v_estimator import Noise2VoidDenoiser
        >>> noisy = np.random.default_rng(0).normal(100, 10, (64, 64)).astype("float32")
        >>> est = Noise2VoidDenoiser(max_epochs=1, steps_per_epoch=2, batch_size=2, patch_size=32,
        ...                          n_filters=4, verbose=False, random_state=0).fit(noisy)
        >>> import tempfile, os
        >>> folder = tempfile.mkdtemp()
        >>> est.export_bioimageio(os.path.join(folder, "model.zip"), noisy, name="Noise2Void demo",
        ...                       description="Denoises a demo image.", authors="Jane Doe")  # doctest: +ELLIPSIS
        PosixPath('.../model.zip')
        >>> again = Noise2VoidDenoiser.from_bioimageio(os.path.join(folder, "model.zip"))
        >>> bool((again.transform(noisy) == est.transform(noisy)).all())
        True
        """
        check_replace(path, overwrite)
        check_is_fitted(self, "model_")
        check_exportable(self.model_.description)
        return export(
            self._exported(test_image),
            path,
            name=name,
            description=description,
            authors=authors,
            license=license,
            tags=tags,
        )

    def _exported(self, test_image: ImagesLike) -> ExportedDenoiser:
        """This denoiser as a package is made of it (:class:`ExportedDenoiser`): its values, its test image read
        at its entrance, and a float32 CPU twin's ``transform``, as the zoo's runtime computes."""
        network = copy.deepcopy(self.model_).cpu().float().eval()
        if not isinstance(network, UNet):  # refused before by check_exportable: a blind-spot network
            raise TypeError(f"{type(network).__name__} is not exported to the BioImage Model Zoo.")
        twin = copy.copy(self)
        twin.model_ = network
        axes = "SC" + "ZYX"[-self.spatial_ndim_ :]
        twin.set_params(device="cpu", precision="32", verbose=False, axes=axes, image_shape=None)
        return ExportedDenoiser(
            params=self.get_params(deep=False),
            defaults={k: p.default for k, p in inspect.signature(type(self)).parameters.items()},
            model=network,
            mean=self.mean_,
            std=self.std_,
            patch_shape=self.patch_shape_,
            history=self.history_,
            image_calibration=getattr(self, "image_calibration_", None),
            test_images=self._fitted_images(test_image).canonical,
            transform=twin.transform,
            save=self.save,
        )

    @classmethod
    def from_bioimageio(cls, path: PathLike, *, device: str | torch.device | None = None) -> Self:
        """Read a BioImage Model Zoo package written by :meth:`export_bioimageio`.

        The zip is first judged from its directory and its YAML without
        extracting anything (:mod:`n2v_estimator.gateway.zipcheck`: member count, paths, declared
        sizes and compression ratios, no YAML anchors, aliases or non-core
        tags), so a hostile package is refused in a fraction of a second;
        then it is validated by ``bioimageio.spec`` (every file's checksum
        included), and the denoiser is read from the model file it carries,
        as :meth:`load` reads it: tensors and JSON only, nothing unpickled.
        Its ``transform`` is the exported denoiser's, bit for bit.

        Parameters
        ----------
        path : str or path-like
            The package (zip).
        device : str or torch.device, optional
            As in :meth:`load`.

        Returns
        -------
        Noise2VoidDenoiser
            Fitted.

        Raises
        ------
        ModelFileError
            For a file that is not a valid spec 0.5 model package, a zip
            bomb, unsafe paths or YAML (see :func:`n2v_estimator.gateway.zipcheck.check_package`),
            or a package not exported by n2v-estimator (another architecture
            cannot be represented: run it with ``bioimageio.core``).
        ImportError
            Without ``bioimageio.spec`` or PyYAML.
        """
        return from_package(path, partial(cls.load, device=device))


class N2VImportMixin(_Estimator):
    """``from_n2v`` and ``from_n2v_config`` for the estimator."""

    @classmethod
    def from_n2v(cls, folder: PathLike, *, weights: str = "best", device: str | torch.device | None = None) -> Self:
        """A fitted denoiser from a model folder of the TensorFlow ``n2v`` package.

        Reads ``config.json`` and the Keras HDF5 weights with ``h5py`` (the ``[n2v]``
        extra; TensorFlow is not needed, nothing is executed or unpickled), maps every
        setting (docs: guide/from-n2v) and converts the weights, batch-norm statistics,
        residual and output layer into this package's U-Net in n2v's layout. Its
        ``transform`` gives n2v's ``predict`` (to float32 rounding) except within the
        network's reach of the image's edges, where n2v's convolutions see zeros and
        this package a mirrored halo. ``warm_start=True`` trains it further.

        Parameters
        ----------
        folder : str or path-like
            An n2v model folder (``config.json`` and ``weights_best.h5``).
        weights : {"best", "last"} or str, default="best"
            ``weights_best.h5``, ``weights_last.h5``, or the name of another ``.h5`` in the folder.
        device : str or torch.device, optional
            As in :meth:`load`.

        Returns
        -------
        Noise2VoidDenoiser
            Fitted; ``axes`` is ``"YX"`` or ``"ZYX"`` (``"YXC"``, ``"ZYXC"`` with channels).

        Raises
        ------
        N2VModelError
            For a folder, setting or weight this package cannot read or represent, named.
        """
        tensors, document = model_document(folder, weights, cls().get_params(deep=False))
        with tempfile.TemporaryDirectory() as temporary:
            path = Path(temporary) / "model.safetensors"
            write_model(path, tensors, document)
            return cls.load(path, device=device)

    @classmethod
    def from_n2v_config(cls, config: Mapping[str, Any] | PathLike) -> Self:
        """An unfitted denoiser with the training settings of an n2v ``N2VConfig``.

        Parameters
        ----------
        config : dict, str or path-like
            The configuration as a dict (``vars(N2VConfig(...))``), a ``config.json``, or
            the model folder holding one.

        Returns
        -------
        Noise2VoidDenoiser
            Unfitted. What still trains differently (n2v's default mean absolute error
            loss, its plateau schedule) is said in a warning and in the docs' table.
        """
        params, differences = config_parameters(read_config(config))
        if differences:
            warnings.warn("From the n2v configuration, " + "; ".join(differences) + ".", UserWarning, stacklevel=2)
        return cls(**params)
