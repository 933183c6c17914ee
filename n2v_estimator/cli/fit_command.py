"""The ``fit`` command: train a denoiser on image files and save it as one model file.

Every estimator parameter is an option (:mod:`.options`). The inputs' axes come from ``--axes`` or
their metadata, their calibration goes into the model file, and a fit stopped by Ctrl-C or a
diverging loss saves the weights of its complete epochs. Under torchrun, rank 0 alone writes.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.axes import resolve_axes
from ..images.files import READ_FORMATS, read_image
from ..images.metadata import common_calibration, describe, for_axes
from .info_command import history_line, history_summary
from .messages import INTERRUPTED, PROG, print_on_stderr
from .options import (
    add_flag,
    add_overwrite_option,
    add_parameter_options,
    add_trust_option,
    escaped,
    given_parameters,
)
from .paths import check_model_path, expand_inputs
from .reading import checked_axes, warn_of_dropped_metadata

if TYPE_CHECKING:
    import argparse

    from .._typing import ImagesLike, Params
    from ..estimator import Noise2VoidDenoiser
    from .options import CommandFactory

    # An image as read (a NumPy array, or a dask array read on demand) and the axes its metadata names.
    ReadImage = tuple[ImagesLike, str | None]

# Parameters with an option of their own (their meaning on the command line differs).
PARAMETERS_WITH_OWN_OPTIONS = ("axes",)


def add_fit_command(new_command: CommandFactory, helps: Mapping[str, str], defaults: Params, axes_help: str) -> None:
    """The ``fit`` command: inputs, --model, --axes, and every estimator parameter as an option."""
    fit = new_command(
        "fit",
        "train a denoiser on noisy images and save it",
        f"fit: train on the noisy INPUT images (files, zarr folders or glob patterns; {READ_FORMATS}) "
        "and write the model to --model (one safetensors file).",
        usage=f"{PROG} fit INPUT... --model PATH [--axes AXES] [--PARAMETER VALUE ...] [--quiet]",
    )
    fit.add_argument("inputs", nargs="+", metavar="INPUT", help="noisy images: files, zarr folders or glob patterns")
    fit.add_argument("--model", required=True, metavar="PATH", help="the model file to write (e.g. model.safetensors)")
    fit.add_argument("--axes", metavar="AXES", help=escaped(axes_help))
    add_flag(fit, "--quiet", help="no progress bar and no summary")
    add_overwrite_option(fit, "the model file (--warm-start updates it without)")
    add_trust_option(fit)
    order = list(helps)  # the docstring's order (the constructor's), not get_params' alphabetical one
    names = [n for n in defaults if n not in PARAMETERS_WITH_OWN_OPTIONS]
    names.sort(key=lambda n: order.index(n) if n in order else len(order))
    add_parameter_options(fit, names, helps, defaults)
    fit.set_defaults(run=run_fit)


def run_fit(args: argparse.Namespace) -> int:
    """Train on ``args.inputs`` and save the model to ``args.model``; return the exit status
    (0, 2 for a diverging fit, 130 when interrupted: both save the complete epochs' weights)."""
    paths = expand_inputs(args.inputs)
    given = given_parameters(args)
    # A fit that continues the model it names (--warm-start) updates it; else only with --overwrite.
    model = check_model_path(args.model, paths, replace=args.overwrite or bool(given.get("warm_start")))
    existed = os.path.lexists(model)
    from ..estimator import Noise2VoidDenoiser
    from ..fit.training import NonFiniteLossError

    writes_model = _writes_the_model(given)  # torchrun's variables checked before the inputs are read

    # Zarr stores and large files as dask arrays: fit reads only the patches it samples.
    read = [
        read_image(path, lazy=True, return_metadata=True, trust_declared_size=args.trust_declared_size)
        for path in paths
    ]
    for path, (_, _, metadata) in zip(paths, read):
        warn_of_dropped_metadata(path, metadata)
    images = _with_common_axes([(array, found) for array, found, _ in read])
    if not writes_model:  # a rank of torchrun's other than 0: trains its share, says and writes nothing
        args.quiet = True
    previous = None
    if given.get("warm_start") and os.path.isfile(model):  # continue training the saved model
        previous = Noise2VoidDenoiser.load(model)
    axes = _axes_to_fit_with(
        args.axes or (None if any(found for _, found in images) else getattr(previous, "axes", None)), paths, images
    )
    params = {**given, "axes": axes, "verbose": False if args.quiet else given.get("verbose", True)}
    if previous is not None:
        denoiser = previous.set_params(**params)
    else:
        denoiser = Noise2VoidDenoiser(**params)
    denoiser._validate_params()  # a bad value named now, in the estimator's words
    arrays = [array for array, _ in images]
    calibration = _training_calibration(read, images, axes)
    epochs_before = len(getattr(denoiser, "history_", []))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Training interrupted")  # said below, with what was saved
            denoiser.fit(arrays[0] if len(arrays) == 1 else arrays)
    except (KeyboardInterrupt, NonFiniteLossError) as exc:
        # fit keeps the best weights of the complete epochs, then re-raises: save them.
        interrupted = isinstance(exc, KeyboardInterrupt)
        stopped = "interrupted" if interrupted else f"stopped ({' '.join(str(exc.__cause__ or exc).split())})"
        epochs = len(getattr(denoiser, "history_", [])) - epochs_before
        if not writes_model:
            return INTERRUPTED if interrupted else 2
        if epochs <= 0:
            print_on_stderr(f"training {stopped} before any epoch completed; nothing was saved.")
        else:
            _save(denoiser, model, given.get("verbose", "auto"), calibration)
            print_on_stderr(
                f"training {stopped} after {epochs} complete epoch(s); {_kept_weights(denoiser)} were saved to {model}."
            )
        return INTERRUPTED if interrupted else 2
    except ValueError as exc:  # the images cannot be trained as read: name them
        raise ValueError(f"{_inputs_as_read(paths, images, args.axes, axes)}: {exc}") from exc
    if not writes_model:
        return 0
    _save(denoiser, model, given.get("verbose", "auto"), calibration)
    if not args.quiet:
        print(f"{'Replaced' if existed else 'Saved'} {model}: {history_line(history_summary(denoiser.history_))}")
        if calibration:
            print(f"  training images: {describe(calibration)}")
    return 0


def _writes_the_model(given: Mapping[str, Any]) -> bool:
    """With ``--n-devices torchrun``, torchrun's variables checked (one line for a wrong one) and
    whether this process writes the model (rank 0); else ``True``: torchrun's variables in the
    environment (a step of a torchrun or cluster job) do not make this process join anything."""
    if given.get("n_devices") != "torchrun":
        from ..fit.distributed import launched_by_torchrun

        if launched_by_torchrun():
            print_on_stderr(
                "note: torchrun's variables (RANK, WORLD_SIZE, ...) are set but --n-devices torchrun is not given: "
                "this process trains on its own."
            )
        return True
    from ..fit.distributed import torchrun_ranks

    return torchrun_ranks()[0] == 0


def _axes_to_fit_with(given: str | None, paths: Sequence[Path], images: Sequence[ReadImage]) -> str | None:
    """The axes to fit with: ``--axes``, else those all the files name (``None`` when none names
    any: the estimator's own inference, 2D YX and 3D SYX)."""
    if given is None:
        named = {path: axes for path, (_, axes) in zip(paths, images) if axes is not None}
        if len(set(named.values())) > 1:
            listed = ", ".join(f"{path}: {axes}" for path, axes in named.items())
            raise ValueError(f"The inputs' metadata name different axes ({listed}); name the common axes with --axes.")
        given = next(iter(named.values()), None)
    for path, (array, _) in zip(paths, images):
        checked_axes(given, array, path)
    return given


def _with_common_axes(images: list[ReadImage]) -> list[ReadImage]:
    """Files whose metadata name the same axes but for a leading ``S`` (a stack beside
    single images): the single images get a length-1 ``S``, so that one ``axes`` fits all."""
    named = {found for _, found in images if found is not None}
    stacked = {found for found in named if found.startswith("S")}
    if len(named) != 2 or len(stacked) != 1 or {next(iter(stacked))[1:]} != named - stacked:
        return images
    with_s = next(iter(stacked))
    return [(array[None], with_s) if found == with_s[1:] else (array, found) for array, found in images]


def _training_calibration(
    read: Sequence[tuple[ImagesLike, str | None, Mapping[str, Any]]], images: Sequence[ReadImage], axes: str | None
) -> dict[str, Any] | None:
    """What the training files' calibrations (pixel sizes, units, channel names) say alike,
    for the files read with the axes their metadata names; ``None`` where nothing is known."""
    records = []
    for (_, _, metadata), (array, found) in zip(read, images):
        used = axes or resolve_axes(None, array.ndim)
        channels = array.shape[used.index("C")] if "C" in used else None
        records.append(for_axes(metadata.get("calibration"), used, channels) if found == used else {})
    return common_calibration(records)


def _inputs_as_read(paths: Sequence[Path], images: Sequence[ReadImage], given: str | None, axes: str | None) -> str:
    """``noisy.tif (shape (2, 512, 512), axes YXC from --axes; its metadata names CYX)``: what the
    inputs were read as, for an error about them."""
    parts = []
    for path, (array, found) in list(zip(paths, images))[:3]:
        used = given or found or axes
        source = "from --axes" if given else "from its metadata" if found else "as for a 2D or 3D array without axes"
        text = f"{path} (shape {tuple(array.shape)}, axes {used or ('YX' if array.ndim == 2 else 'SYX')} {source}"
        if given and found and found != given:
            text += f"; its metadata names {found}: leave out --axes to use them"
        else:
            text += "; give the right ones with --axes"
        parts.append(text + ")")
    more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
    return ", ".join(parts) + more


def _save(
    denoiser: Noise2VoidDenoiser, path: Path, verbose: bool | str, calibration: Mapping[str, Any] | None = None
) -> None:
    """Save the fitted ``denoiser`` with the user's ``verbose`` (not this command's progress bar)
    and the training files' ``calibration``; a folder named for it is made now."""
    Path(path).parent.mkdir(exist_ok=True)
    denoiser.__dict__.pop("image_calibration_", None)
    if calibration:
        denoiser.image_calibration_ = calibration
    denoiser.set_params(verbose=verbose).save(path, overwrite=True)  # checked by check_model_path


def _kept_weights(denoiser: Noise2VoidDenoiser) -> str:
    """Which weights a stopped fit kept, in words: the best validation weights where it validated."""
    has_validation = denoiser.history_ and denoiser.history_[-1].get("val_loss") is not None
    return "the best validation weights" if has_validation else "the weights of the last complete epoch"
