"""Models shared through the BioImage Model Zoo (bioimage.io, model spec 0.5).

A fitted denoiser becomes a zip that Fiji/deepImageJ, napari, ilastik, QuPath
and ``bioimageio.core`` run. What the zoo's runtime computes is what
``transform`` computes: it extends the input by a mirrored halo (declared as
the output's ``halo``: the network's :func:`n2v_estimator.nets.geometry.border_width`), runs the
network (in tiles of ``2**depth``-multiples, each with that halo), and crops;
``transform`` extends images the same way (:func:`n2v_estimator.predict.tiling.predict_tiled`), so
the two agree to float32 rounding, everywhere in the image.

The package holds the network twice for the zoo (``pytorch_state_dict`` with a
standalone copy of the U-Net's source, and ``torchscript``) and once for us:
the estimator's own model file (:meth:`Noise2VoidDenoiser.save`, safetensors
and JSON) as an attachment, which :func:`n2v_estimator.models.zoo_import.from_package`
loads, so that nothing in a package is unpickled. ``bioimageio.spec`` and ``bioimageio.core`` are an
optional extra, imported inside the functions only.
"""

from __future__ import annotations

import contextlib
import json
import textwrap
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import torch

from .._extras import install_command
from .._typing import PathLike
from .._version import __version__
from ..data.normalize import denormalize, normalize
from ..gateway.atomic import remove, replace, temporary_beside
from ..images.metadata import make_calibration
from ..nets.geometry import NetworkGeometry, round_up
from ..nets.standalone import unet_source
from ..nets.unet import FIELDS, UNet
from ..predict.tiling import augmentations, mirror_index, predict_tiled
from .file_format import non_default_parameters

if TYPE_CHECKING:
    from types import ModuleType

    from numpy.typing import NDArray

    from .._typing import Array, Description, Float64Array, Params

#: Who made a model, as ``export`` takes them: a name, a record (``name``, ``affiliation``, ...), or a list of those.
Authors: TypeAlias = str | Mapping[str, str] | Sequence[str | Mapping[str, str]]

# Names inside the package.
ARCHITECTURE_FILE = "n2v_unet.py"
MODEL_FILE = "n2v_estimator_model.safetensors"
# The key of the package's config that marks a package we made.
CONFIG_KEY = "n2v_estimator"
# Longest side of the test image kept in the package, per spatial axis (2D, 3D).
TEST_SIDE = {2: 256, 3: 64}
CITATIONS = {
    "n2v": (
        "Krull, Buchholz, Jug. Noise2Void - Learning Denoising from Single Noisy Images. CVPR 2019.",
        "10.1109/CVPR.2019.00223",
    ),
    "n2v2": (
        "Höck, Buchholz, Jug et al. N2V2 - Fixing Noise2Void Checkerboard Artifacts with Modified Sampling "
        "Strategies and a Tweaked Network Architecture. ECCV Workshops 2022.",
        "10.48550/arXiv.2211.08512",
    ),
    "structn2v": (
        "Broaddus, Krull, Weigert, Schmidt, Myers. Removing Structured Noise with Self-Supervised "
        "Blind-Spot Networks. ISBI 2020.",
        "10.1109/ISBI45749.2020.9098336",
    ),
}


@dataclass(frozen=True)
class ExportedDenoiser:
    """A fitted denoiser as a package is made of it: values, and two callables of the estimator's.

    ``params`` and ``defaults`` are its parameters and their defaults; ``model`` its network as the zoo's
    runtime computes it (float32, on the CPU, in eval mode); ``mean``/``std`` the per-channel
    normalisation; ``history`` its epochs; ``image_calibration`` the training files' pixel sizes
    (``None``: unknown); ``test_images`` the test image as the estimator's entrance read it, canonical
    ``(S, C, *spatial)``. ``transform`` denoises canonical images as the estimator's ``transform`` does
    on that CPU copy; ``save`` writes the estimator's model file.
    """

    params: Params
    defaults: Params
    model: UNet
    mean: Float64Array
    std: Float64Array
    patch_shape: tuple[int, ...]
    history: Sequence[Mapping[str, Any]]
    image_calibration: Mapping[str, Any] | None
    test_images: Array
    transform: Callable[[Array], Array]
    save: Callable[[Path], None]

    @property
    def network(self) -> Description:
        """The network's description (:func:`n2v_estimator.nets.unet.network_description`)."""
        return self.model.description


def import_bioimageio() -> tuple[ModuleType, ModuleType]:
    """``bioimageio.spec`` and its model spec ``v0_5``, or an ``ImportError`` saying how to install them."""
    try:
        import bioimageio.spec as spec
        from bioimageio.spec.model import v0_5
    except ImportError as exc:
        raise ImportError(
            f"BioImage Model Zoo export and import need bioimageio.spec and bioimageio.core ({exc}); "
            f"install them with: {install_command('bioimageio')}"
        ) from exc
    return spec, v0_5


# ------------------------------------------------------------ architecture
_TTA = '''

class Noise2VoidNetwork(UNet):
    """The U-Net, averaged over the test-time augmentations when ``tta``."""

    def __init__(self, tta=False, **kwargs):
        super().__init__(**kwargs)
        self.tta = tta

    def forward(self, x):
        if not self.tta:
            return super().forward(x)
        predict, transforms = super().forward, augmentations(self.ndim)
        return sum(inverse(predict(forward(x))) for forward, inverse in transforms) / len(transforms)
'''


def architecture_source() -> str:
    """A standalone Python module (torch only) defining ``Noise2VoidNetwork``:
    the package's U-Net (:class:`n2v_estimator.nets.unet.UNet`) with test-time augmentation
    (:func:`n2v_estimator.predict.tiling.augmentations`), both copied from their source, as
    ``transform`` applies them."""
    title = '"""The U-Net of n2v-estimator (a standalone copy for the BioImage Model Zoo; needs torch only)."""'
    return title + "\n\n" + unet_source(augmentations) + _TTA


def architecture_kwargs(network: Mapping[str, Any], tta: bool) -> dict[str, Any]:
    """The keyword arguments of ``Noise2VoidNetwork`` for a ``network`` description (a masked U-Net:
    blind-spot networks are not exported), averaged over the augmentations with ``tta``."""
    return {**{key: network[key] for key in FIELDS if key != "blind_spot"}, "tta": bool(tta)}


# ------------------------------------------------------------------ export
def check_exportable(network: Description) -> None:
    """Refuse what the zoo's runtime cannot run: a probabilistic model, a blind-spot network."""
    if network["noise_model"] is not None:
        raise ValueError(
            f"noise_model={network['noise_model']!r}: a probabilistic Noise2Void model cannot be exported to the "
            "BioImage Model Zoo: transform combines a prior predicted in many masked network passes with the noise "
            "model by Bayes' rule, which the zoo's runtime (one network pass per tile) cannot run. Export a plain "
            "model (noise_model=None), or share the model file that save() writes."
        )
    if NetworkGeometry.of(network).blind:
        raise ValueError(
            "blind_spot='network': a blind-spot network cannot be exported to the BioImage Model Zoo yet: the "
            "zoo's runtime extends images by mirroring, which shows the network the pixels near the edge it must "
            "not see, and the package's architecture file holds the masked U-Net only. Export a model fitted with "
            "blind_spot='mask', or share the model file that save() writes."
        )


def _test_arrays(source: ExportedDenoiser, minimum: int) -> tuple[NDArray[np.float32], Array, Array]:
    """The package's test data, each ``(1, C, *spatial)`` float32.

    Returns the test input: the first of ``source.test_images``, cropped around its centre to at
    most :data:`TEST_SIDE` a side and a multiple of ``2**depth`` (mirrored up to ``minimum`` if
    smaller); the network's output on exactly that input, which ``bioimageio.core``'s model test
    reproduces (it neither extends nor crops); and the input's ``transform``, for the cover.
    """
    images = source.test_images[:1]
    multiple = NetworkGeometry.of(source.network).pooling
    index = []
    for n in images.shape[2:]:
        side = max(min(n, TEST_SIDE[source.network["ndim"]]) // multiple * multiple, minimum)
        start = max(0, n - side) // 2 // multiple * multiple
        index.append(mirror_index(start, start + side, n))
    images = np.ascontiguousarray(images[0][(slice(None),) + np.ix_(*index)][None], dtype=np.float32)
    # What the zoo's runtime computes: float32 on a CPU, no progress bar.
    network = predict_tiled(
        source.model,
        images,
        images.shape[2:],
        (0,) * (images.ndim - 2),
        1,
        torch.device("cpu"),
        multiple=multiple,
        tta=bool(source.params["tta"]),
        prepare=lambda batch: normalize(batch, source.mean, source.std),
        finish=lambda batch: denormalize(batch, source.mean, source.std, dtype=np.float32),
    )
    return images, network, source.transform(images)


def _cover(test_input: Array, test_output: Array, path: Path) -> None:
    """Noisy and denoised side by side (the middle slice of a volume), as an 8-bit PNG."""
    from skimage import io

    def picture(a: Array) -> Array:
        a = a[0]
        if a.ndim == 4:  # C, Z, Y, X
            a = a[:, a.shape[1] // 2]
        a = np.moveaxis(a, 0, -1) if a.shape[0] == 3 else a[0]
        return a

    before, after = picture(test_input), picture(test_output)
    low, high = np.percentile(before, (0.5, 99.5))
    scale = lambda a: (np.clip((a - low) / max(high - low, 1e-12), 0, 1) * 255).astype(np.uint8)  # noqa: E731
    gap = np.full((before.shape[0], max(2, before.shape[1] // 32)) + before.shape[2:], 255, np.uint8)
    io.imsave(path, np.concatenate([scale(before), gap, scale(after)], axis=1), check_contrast=False)


def axis_calibration(saved: Mapping[str, Any] | None, spatial: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per spatial axis id (``"y"``, ``"x"``, ``"z"``) the spec's ``scale`` and ``unit`` from the
    model's training calibration ``saved`` (``image_calibration_``, written by the command line), checked as
    any record is (:func:`n2v_estimator.images.metadata.make_calibration`: finite positive sizes,
    known units), a unit kept only where it is one of the spec's space units; ``{}`` where unknown."""
    from typing import get_args

    from bioimageio.spec.model import v0_5

    saved = saved or {}
    letters = "".join(axis.upper() for axis in spatial)
    record = make_calibration(saved.get("scale"), saved.get("unit"), None, letters)
    scale, unit = record.get("scale", {}), record.get("unit", {})
    space = set(get_args(v0_5.SpaceUnit))
    return {
        axis: {**({"scale": scale[a]} if a in scale else {}), **({"unit": unit[a]} if unit.get(a) in space else {})}
        for axis, a in zip(spatial, letters)
    }


def _documentation(source: ExportedDenoiser, name: str, description: str, halo: int, step: int, minimum: int) -> str:
    """The package's README: what the model is, how it was trained, how to run it."""
    params = source.params
    changed = {k: params[k] for k in non_default_parameters(params, source.defaults)}
    history = source.history
    ndim, channels = source.network["ndim"], source.network["in_channels"]
    last = history[-1] if history else {}
    best = min((h["val_loss"] for h in history if h.get("val_loss") is not None), default=None)
    spatial = "ZYX"[-ndim:]
    return textwrap.dedent(f"""\
        # {name}

        {description}

        A Noise2Void denoiser: a U-Net trained self-supervised, from the noisy images alone, to predict
        each pixel from its surroundings (blind-spot training). It was trained and exported with
        n2v-estimator {__version__} (Noise2Void as a scikit-learn estimator on PyTorch).

        ## Input and output
        - `raw`: {channels} channel(s), {ndim}D, axes batch, channel, {", ".join(spatial.lower())}.
          Any numeric type; it is normalised with the training data's per-channel mean
          {[round(float(m), 6) for m in source.mean]} and standard deviation {[round(float(s), 6) for s in source.std]}.
        - `denoised`: the same shape, in the input's intensity units (float32).
        - The network sees {halo} pixels around each output pixel (the halo): the runtime extends the image by
          that many mirrored pixels at its edges and tiles with that overlap, exactly as `transform` does.
          Image sides must be multiples of {step} pixels, at least {minimum} (the runtime's tiles too).

        ## Training
        - Parameters that differ from the defaults: `{json.dumps(changed, default=str)}`.
        - Network: `{json.dumps(architecture_kwargs(source.network, params["tta"]))}`.
        - Patches {"x".join(map(str, source.patch_shape))}; {len(history)} epochs; last training loss
          {last.get("train_loss", float("nan")):.4g}; best validation loss {"n/a" if best is None else f"{best:.4g}"}.

        ## Use
        - Fiji (deepImageJ), napari, ilastik or QuPath: open this zip as a BioImage Model Zoo model.
        - Python: `bioimageio.core.predict(model="this.zip", inputs=image)`, or
          `Noise2VoidDenoiser.from_bioimageio("this.zip").transform(image)` with n2v-estimator.

        ## Limitations
        Noise2Void assumes noise that is independent from pixel to pixel given the signal (shot and read noise);
        correlated noise (stripes, compression artefacts) is kept. It learns the images it was trained on:
        check its output on new data, for instance against a region you know.
        """)


def _authors(authors: Authors, v0_5: ModuleType) -> list[Any]:
    """The spec's ``Author`` records of ``authors``: a name, a record, or a list of those; at least one."""
    if isinstance(authors, (str, dict)):
        authors = [authors]
    if not authors:
        raise ValueError(
            "authors must name at least one author, e.g. authors=['Jane Doe'] or "
            "authors=[{'name': 'Jane Doe', 'affiliation': 'Example Lab'}]."
        )
    return [v0_5.Author(name=a) if isinstance(a, str) else v0_5.Author(**a) for a in authors]


def export(
    source: ExportedDenoiser,
    path: PathLike,
    *,
    name: str,
    description: str,
    authors: Authors,
    license: str = "CC-BY-4.0",
    tags: Sequence[str] = (),
) -> Path:
    """Write the package of ``source`` to ``path`` (the work of :meth:`Noise2VoidDenoiser.export_bioimageio`,
    whose documentation says what it holds); returns the path written. ``source`` holds a network the zoo
    can run (:func:`check_exportable`, which the estimator asks before it reads the test image)."""
    spec, v0_5 = import_bioimageio()

    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {path.parent} does not exist.")
    geometry = NetworkGeometry.of(source.network)
    halo, step = geometry.halo, geometry.pooling
    # The spec wants more than two halos per side; the runtime checks the sides of
    # the image as given (before it adds the halo): multiples of the step from there.
    minimum = round_up(2 * halo + 1, step)
    test_input, test_output, cover_output = _test_arrays(source, minimum)
    kwargs = architecture_kwargs(source.network, source.params["tta"])
    architecture = architecture_source()
    # The zoo's state dict is the standalone architecture's: the same keys as ours.
    network_module: dict[str, Any] = {}
    exec(compile(architecture, ARCHITECTURE_FILE, "exec"), network_module)  # our own source
    standalone = network_module["Noise2VoidNetwork"](**kwargs)
    standalone.load_state_dict(source.model.state_dict())
    standalone.eval()

    # The package's files are gathered in a locked temporary folder beside `path` (removed by the
    # next export to `path` if this one is killed), and the zip written there is renamed into place.
    with temporary_beside(path, folder=True) as work, _removed_after(work):
        np.save(work / "test_input.npy", test_input)
        np.save(work / "test_output.npy", test_output)
        (work / ARCHITECTURE_FILE).write_text(architecture)
        torch.save(standalone.state_dict(), work / "weights.pt")
        # TorchScript is the zoo's format, deprecated in torch but read by deepImageJ. The trace keeps
        # the size branches of an input of the declared step, which the runtime always gives.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(standalone, torch.from_numpy(test_input), check_trace=False)
        traced.save(str(work / "weights_torchscript.pt"))
        source.save(work / MODEL_FILE)
        _cover(test_input, cover_output, work / "cover.png")
        (work / "README.md").write_text(_documentation(source, name, description, halo, step, minimum))

        descr = _description(
            v0_5, work, source, kwargs, (name, description, authors, license, tags), (minimum, step, halo)
        )
        # Written whole under a temporary name beside `path`, then renamed into place.
        partial = work / "package.zip"
        spec.save_bioimageio_package(descr, output_path=partial)
        replace(partial, path)
    return path


def _description(
    v0_5: ModuleType,
    work: Path,
    source: ExportedDenoiser,
    kwargs: Mapping[str, Any],
    about: tuple[str, str, Authors, str, Sequence[str]],
    sizes: tuple[int, int, int],
) -> Any:
    """The package's model description (spec 0.5) over the files in ``work``: ``about`` is
    ``(name, description, authors, license, tags)``, ``sizes`` the input's ``(minimum, step)``
    per side and the output's ``halo``; ``kwargs`` the architecture's arguments. Long: it is
    one literal, as the spec nests it."""
    name, description, authors, license, tags = about
    minimum, step, halo = sizes
    network = source.network
    ndim, channels = network["ndim"], network["in_channels"]
    torch_version = v0_5.Version(torch.__version__.split("+")[0])
    names = [v0_5.Identifier(f"channel{i}") for i in range(channels)]
    spatial = [v0_5.AxisId(a) for a in "zyx"[-ndim:]]
    calibrated = axis_calibration(source.image_calibration, spatial)  # the training files' pixel sizes, on the axes
    raw, denoised = v0_5.TensorId("raw"), v0_5.TensorId("denoised")
    along_channels = dict(axis=v0_5.AxisId("channel"))
    mean, std = [float(m) for m in source.mean], [float(s) for s in source.std]
    variant = (
        ["n2v"]
        + (["n2v2"] if network["blurpool"] or network["skip_skipone"] else [])
        + (["structn2v"] if source.params["struct_mask"] is not None else [])
    )
    return v0_5.ModelDescr(
        name=name,
        description=description,
        authors=_authors(authors, v0_5),
        cite=[v0_5.CiteEntry(text=CITATIONS[k][0], doi=v0_5.Doi(CITATIONS[k][1])) for k in variant],
        license=v0_5.LicenseId(license),
        documentation=v0_5.FileDescr(source=work / "README.md"),
        covers=[v0_5.FileDescr(source=work / "cover.png")],
        tags=[
            "denoising",
            "noise2void",
            "self-supervised",
            f"{ndim}d",
            "pytorch",
            "n2v-estimator",
            *variant[1:],
            *tags,
        ],
        attachments=[v0_5.FileDescr(source=work / MODEL_FILE)],
        config={CONFIG_KEY: {"version": __version__, "model_file": MODEL_FILE}},
        inputs=[
            v0_5.InputTensorDescr(
                id=raw,
                axes=[v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=names)]
                + [
                    v0_5.SpaceInputAxis(id=a, size=v0_5.ParameterizedSize(min=minimum, step=step), **calibrated[a])
                    for a in spatial
                ],
                test_tensor=v0_5.FileDescr(source=work / "test_input.npy"),
                data=v0_5.IntervalOrRatioDataDescr(type="float32"),
                # No `pad`: the runtime's default is "symmetric", as ours. (bioimageio.spec 0.5.12 writes an
                # explicit SymmetricPadding as `pad: {}`, which reads back as constant zeros.)
                preprocessing=[
                    v0_5.FixedZeroMeanUnitVarianceDescr(
                        kwargs=v0_5.FixedZeroMeanUnitVarianceAlongAxisKwargs(**along_channels, mean=mean, std=std)
                    )
                ],
            )
        ],
        outputs=[
            v0_5.OutputTensorDescr(
                id=denoised,
                axes=[v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=names)]
                + [
                    v0_5.SpaceOutputAxisWithHalo(
                        id=a, size=v0_5.SizeReference(tensor_id=raw, axis_id=a), halo=halo, **calibrated[a]
                    )
                    for a in spatial
                ],
                test_tensor=v0_5.FileDescr(source=work / "test_output.npy"),
                data=v0_5.IntervalOrRatioDataDescr(type="float32"),
                postprocessing=[
                    v0_5.ScaleLinearDescr(
                        kwargs=v0_5.ScaleLinearAlongAxisKwargs(**along_channels, gain=std, offset=mean)
                    )
                ],
            )
        ],
        weights=v0_5.WeightsDescr(
            pytorch_state_dict=v0_5.PytorchStateDictWeightsDescr(
                source=work / "weights.pt",
                pytorch_version=torch_version,
                architecture=v0_5.ArchitectureFromFileDescr(
                    source=work / ARCHITECTURE_FILE, callable=v0_5.Identifier("Noise2VoidNetwork"), kwargs=kwargs
                ),
            ),
            torchscript=v0_5.TorchscriptWeightsDescr(
                source=work / "weights_torchscript.pt", pytorch_version=torch_version, parent="pytorch_state_dict"
            ),
        ),
    )


@contextlib.contextmanager
def _removed_after(folder: Path) -> Iterator[None]:
    try:
        yield
    finally:
        remove(folder)
