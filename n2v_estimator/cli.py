"""The ``n2v-estimator`` command: train a denoiser on image files, denoise files, describe a model file.

Every estimator parameter is an option of ``fit``, generated from
``Noise2VoidDenoiser``'s constructor with its help taken from the class
docstring's Parameters section, so the command line never lags behind the
estimator. Both are read from the estimator's source, not imported: torch and
scikit-learn take seconds to import, and ``--help``, a usage error and ``info``
need neither (each command imports what it needs). Errors a user can make are
one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import glob
import inspect
import json
import os
import re
import sys
import textwrap
import warnings
from contextlib import contextmanager, nullcontext
from functools import lru_cache
from pathlib import Path

import numpy as np

from ._version import __version__
from .data.axes import is_dask_array, resolve_axes
from .fit.calibration import calibration_problems
from .gateway.budget import MAX_EXPANSION, check_free_space, declared_bytes
from .gateway.text import shown
from .images.files import (
    READ_FORMATS,
    WRITE_FORMATS,
    check_output_apart,
    check_output_path,
    input_format,
    is_zarr_store,
    read_image,
    rechunk_for_axes,
    write_image,
)
from .images.metadata import common_calibration, describe, differs, for_axes, unit_symbol
from .models.file_format import ModelFile, decode_document, non_default_parameters

PROG = "n2v-estimator"
# Exit status of a run stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130
# Errors a user can make (files, formats, axes, parameter values, model files, missing extras,
# a diverging fit): one line and exit status 2. Anything else is a bug and keeps its traceback.
USER_ERRORS = (OSError, ValueError, TypeError, ImportError, ArithmeticError)
# Parameters with an option of their own (their meaning on the command line differs).
_OWN_OPTIONS = ("axes",)
# Parameters that also apply when denoising with a saved model (transform takes them).
_TRANSFORM_PARAMS = ("tile_size", "tile_overlap", "device", "precision", "dtype")
# A --model that names a folder (an existing one, or any path ending in a separator) means this file in it.
MODEL_NAME = "model.safetensors"
# Words a yes-or-no option takes (--tta, --tta true, --tta=false); the option alone means yes.
_BOOL = "[BOOL]"
_BOOLEAN_WORDS = {
    "true": True,
    "false": False,
    "yes": True,
    "no": False,
    "on": True,
    "off": False,
    "1": True,
    "0": False,
}

ABOUT = """\
Noise2Void: self-supervised denoising of images, trained on the noisy images alone.
A few pixels of every training patch are hidden and a U-Net learns to predict them
from their surroundings; since the noise is independent from pixel to pixel and the
signal is not, it learns the signal, and then denoises images of any size.
"""

EXAMPLES = {
    "fit": """\
  # train on every noisy TIFF of the folder (sizes may differ), 10 epochs
  n2v-estimator fit noisy_*.tif --model model.safetensors --max-epochs 10
  # a 3D stack without axes metadata, structN2V for horizontal stripes
  n2v-estimator fit stack.npy --axes ZYX --struct-mask "('x', 5)" --model model.safetensors""",
    "transform": """\
  # one file; the output's suffix (.tif, .tiff, .zarr, .npy) chooses the format
  n2v-estimator transform --model model.safetensors noisy_01.tif --output denoised_01.tif
  # a large OME-Zarr image, read, denoised and written chunk by chunk
  n2v-estimator transform --model model.safetensors big.ome.zarr --output denoised.ome.zarr
  # several files into a folder, each named after its input, with test-time augmentation
  n2v-estimator transform --model model.safetensors noisy_*.tif --output denoised --tta""",
    "export": """\
  # a BioImage Model Zoo package for Fiji/deepImageJ, napari, ilastik, QuPath
  n2v-estimator export --model model.safetensors --test-image noisy_01.tif --output model.zip \\
      --name "Noise2Void for my confocal stacks" --description "Denoises 2D confocal images." \\
      --author "Jane Doe" --author "John Roe\"""",
    "import-n2v": """\
  # a model folder of the TensorFlow n2v (config.json, weights_best.h5), no TensorFlow needed
  n2v-estimator import-n2v models/n2v_bsd68 --model bsd68.safetensors""",
    "info": """\
  n2v-estimator info model.safetensors
  n2v-estimator info model.safetensors --json""",
}


# ------------------------------------------------------------------ options
class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; the commands' names and their help on one line."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=30)
        # argparse measures a command's name without its indent: room for "    transform".
        self._action_max_length = len("    transform")


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line too, as every other error of the command, with the closest
    option for a misspelled one; yes-or-no options with or without a value."""

    boolean_options = frozenset()  # set on the top-level parser by build_parser
    commands = {}

    def error(self, message):
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(_with_boolean_values(args, self.boolean_options), namespace)

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = self.commands.get(getattr(parsed, "command", None), self)
            command.error(f"unrecognized arguments: {' '.join(extras)}{_suggestion(extras, command)}")
        return parsed


def _with_boolean_values(argv, names):
    """``argv`` with every yes-or-no option given its value: ``--tta`` -> ``--tta=true``,
    ``--tta false`` -> ``--tta=false``; left as it is after ``--``."""
    out, k = [], 0
    while k < len(argv):
        token = str(argv[k])
        if token == "--":
            return out + argv[k:]
        if token in names:
            following = str(argv[k + 1]).lower() if k + 1 < len(argv) else None
            given = following in _BOOLEAN_WORDS
            out.append(f"{token}={following if given else 'true'}")
            k += 2 if given else 1
            continue
        out.append(token)
        k += 1
    return out


def _boolean(text):
    """A yes-or-no option's value."""
    try:
        return _BOOLEAN_WORDS[str(text).strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"{text!r} is not true or false") from None


def _suggestion(extras, parser):
    """``"; did you mean --max-epochs?"`` for options of ``extras`` close to one of ``parser``'s."""
    known = [option for option in parser._option_string_actions if option.startswith("--")]
    close = {}
    for extra in extras:
        if extra.startswith("--"):
            found = difflib.get_close_matches(extra.split("=")[0], known, n=1, cutoff=0.6)
            if found:
                close[extra.split("=")[0]] = found[0]
    return "".join(f"; did you mean {right} (not {wrong})?" for wrong, right in close.items())


def parameter_help(docstring):
    """``{name: help}`` from the numpydoc ``Parameters`` section of ``docstring``:
    the description on one line, followed by the type line in brackets."""
    text = inspect.cleandoc(docstring or "")
    match = re.search(r"^Parameters\n-+\n(.*?)(?=^\S[^\n]*\n-+\n|\Z)", text, re.M | re.S)
    helps = {}
    for entry in re.split(r"\n(?=\S)", match.group(1).strip()) if match else []:
        header, _, body = entry.partition("\n")
        names, _, kind = header.partition(" : ")
        description = re.sub(r":\w+:`~?([^`]*)`", r"\1", " ".join(body.split())).replace("``", "")
        for name in names.split(","):
            helps[name.strip()] = f"{description} [{kind.strip()}]"
    return helps


def _escaped(text):
    """``text`` as argparse help, which formats ``%``."""
    return text.replace("%", "%%")


def parameter_value(text):
    """An option's value: a Python literal (``64``, ``(16, 64, 64)``, ``None``,
    ``True``; also ``true``, ``false``, ``none``) or, failing that, the string."""
    spelled = {"true": True, "false": False, "none": None, "null": None}
    if text.strip().lower() in spelled:
        return spelled[text.strip().lower()]
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _add_parameter_options(parser, names, helps, defaults):
    group = parser.add_argument_group(
        "estimator parameters",
        "Noise2VoidDenoiser's parameters (docs: guide/parameters); values are Python literals or strings.",
    )
    for name in names:
        spellings = dict.fromkeys([f"--{name.replace('_', '-')}", f"--{name}"])
        yes_or_no = isinstance(defaults[name], bool)
        group.add_argument(
            *spellings,
            dest=f"param_{name}",
            metavar=_BOOL if yes_or_no else "VALUE",
            default=argparse.SUPPRESS,
            type=_boolean if yes_or_no else parameter_value,
            help=_escaped(helps.get(name) or f"(default: {defaults[name]!r})"),
        )


def _add_flag(parser, *spellings, help, default=False):
    """A yes-or-no option: alone it means yes; ``true`` or ``false`` may follow."""
    parser.add_argument(*spellings, type=_boolean, default=default, metavar=_BOOL, help=help)


def _add_overwrite_option(parser, what):
    _add_flag(parser, "--overwrite", help=f"replace {what} where it exists (without it, an existing one is refused)")


def _add_trust_option(parser):
    _add_flag(
        parser,
        "--trust-declared-size",
        help=f"read image files that declare over {MAX_EXPANSION} times more pixels than they store (refused "
        "by default as crafted or damaged: noisy images barely compress)",
    )


def _given_parameters(args):
    return {key[len("param_") :]: value for key, value in vars(args).items() if key.startswith("param_")}


@lru_cache(maxsize=1)
def estimator_signature():
    """``(defaults, docstring)`` of :class:`Noise2VoidDenoiser`: ``get_params()`` of a default
    estimator (names sorted) and the class docstring, read from ``estimator.py`` with :mod:`ast`
    rather than imported (torch and scikit-learn take seconds to import). Where the source cannot
    be read (an install without it), the class is imported instead."""
    try:
        tree = ast.parse(Path(__file__).with_name("estimator.py").read_text(encoding="utf-8"))
        (cls,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Noise2VoidDenoiser"]
        (init,) = [node for node in cls.body if isinstance(node, ast.FunctionDef) and node.name == "__init__"]
        names = [arg.arg for arg in init.args.kwonlyargs]
        defaults = {name: ast.literal_eval(value) for name, value in zip(names, init.args.kw_defaults, strict=True)}
        return dict(sorted(defaults.items())), ast.get_docstring(cls, clean=False)
    except (OSError, SyntaxError, ValueError, TypeError):
        from .estimator import Noise2VoidDenoiser

        return Noise2VoidDenoiser().get_params(), Noise2VoidDenoiser.__doc__


def build_parser():
    """The ``n2v-estimator`` argument parser, its options generated from the estimator."""
    defaults, docstring = estimator_signature()
    helps = parameter_help(docstring)
    axes_help = (
        f"{helps.get('axes', '')} Default: the axes in the files' metadata (OME-TIFF, ImageJ, OME-Zarr, "
        "tifffile), else 2D YX and 3D SYX."
    )
    examples = "\n".join(EXAMPLES.values())
    parser = _Parser(
        prog=PROG,
        description=ABOUT,
        formatter_class=_Formatter,
        allow_abbrev=False,
        epilog=f"Examples:\n{examples}\n\nRun '{PROG} COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name, summary, description, usage=None):
        return commands.add_parser(
            name,
            help=summary,
            description=f"{ABOUT}\n{textwrap.fill(description, 88)}",
            usage=usage,
            epilog=f"Examples:\n{EXAMPLES[name]}",
            formatter_class=_Formatter,
            allow_abbrev=False,
        )

    _add_fit(command, helps, defaults, axes_help)

    _add_transform(command, helps, defaults, axes_help)

    _add_export(command, helps, defaults, axes_help)

    _add_import_n2v(command)

    _add_info(command, helps, defaults, axes_help)
    parser.commands = {name: commands.choices[name] for name in commands.choices}
    parser.boolean_options = frozenset(
        option
        for command in parser.commands.values()
        for action in command._actions
        if action.type is _boolean
        for option in action.option_strings
    )
    return parser


def _add_fit(command, helps, defaults, axes_help):
    """The ``fit`` command: inputs, --model, --axes, and every estimator parameter as an option."""
    fit = command(
        "fit",
        "train a denoiser on noisy images and save it",
        f"fit: train on the noisy INPUT images (files, zarr folders or glob patterns; {READ_FORMATS}) "
        "and write the model to --model (one safetensors file).",
        usage=f"{PROG} fit INPUT... --model PATH [--axes AXES] [--PARAMETER VALUE ...] [--quiet]",
    )
    fit.add_argument("inputs", nargs="+", metavar="INPUT", help="noisy images: files, zarr folders or glob patterns")
    fit.add_argument("--model", required=True, metavar="PATH", help="the model file to write (e.g. model.safetensors)")
    fit.add_argument("--axes", metavar="AXES", help=_escaped(axes_help))
    _add_flag(fit, "--quiet", help="no progress bar and no summary")
    _add_overwrite_option(fit, "the model file (--warm-start updates it without)")
    _add_trust_option(fit)
    order = list(helps)  # the docstring's order (the constructor's), not get_params' alphabetical one
    names = [n for n in defaults if n not in _OWN_OPTIONS]
    names.sort(key=lambda n: order.index(n) if n in order else len(order))
    _add_parameter_options(fit, names, helps, defaults)
    fit.set_defaults(run=_fit)


def _add_transform(command, helps, defaults, axes_help):
    """The ``transform`` command: inputs, --model, --output, --axes, --tta and the prediction parameters."""
    transform = command(
        "transform",
        "denoise images with a saved model",
        "transform: denoise the INPUT images with the model. One INPUT: --output is a file whose suffix "
        f"chooses its format ({WRITE_FORMATS}); several: --output is a folder, each result named after "
        "its input (as TIFF unless the input is TIFF or zarr). Zarr inputs and TIFF or .npy inputs over "
        "512 MiB are read, denoised and written chunk by chunk, in bounded memory. The input's axes and "
        "calibration (pixel sizes, frame interval, channel names) are kept, an ImageJ TIFF written as ImageJ. "
        "Results are float32 (float64 for float64 input); --dtype input keeps the input's type.",
        usage=f"{PROG} transform --model PATH INPUT... --output PATH [--axes AXES] [--tta] [--quiet] [--PARAMETER VALUE]",
    )
    transform.add_argument("inputs", nargs="+", metavar="INPUT", help="images: files, zarr folders or glob patterns")
    transform.add_argument("--model", required=True, metavar="PATH", help="a model written by 'n2v-estimator fit'")
    transform.add_argument(
        "--output", required=True, metavar="PATH", help="the output file (one INPUT) or folder (several)"
    )
    transform.add_argument(
        "--axes", metavar="AXES", help=_escaped(f"{axes_help} Last, the model's axes (if they fit).")
    )
    _add_flag(transform, "--tta", help=_escaped(helps.get("tta", "")), default=None)
    _add_flag(transform, "--quiet", help="no progress bar and no summary")
    _add_overwrite_option(transform, "the output files")
    _add_trust_option(transform)
    _add_parameter_options(transform, _TRANSFORM_PARAMS, helps, defaults)
    transform.set_defaults(run=_transform)


def _add_import_n2v(command):
    """The ``import-n2v`` command: a model folder of the TensorFlow n2v as a model file."""
    imported = command(
        "import-n2v",
        "convert a model folder of the TensorFlow n2v into a model file",
        "import-n2v: read a model folder of the TensorFlow n2v package (config.json and Keras HDF5 weights, "
        "read with h5py: the [n2v] extra; no TensorFlow, nothing executed) and write it as a model file that "
        "'transform' uses and 'fit --warm-start' trains further. An existing file is replaced only with --overwrite.",
        usage=f"{PROG} import-n2v FOLDER --model PATH [--weights best|last|FILE.h5] [--overwrite]",
    )
    imported.add_argument("folder", metavar="FOLDER", help="the n2v model folder")
    imported.add_argument("--model", required=True, metavar="PATH", help="the model file to write (.safetensors)")
    imported.add_argument(
        "--weights",
        default="best",
        metavar="WHICH",
        help="best (weights_best.h5, default), last (weights_last.h5) or an .h5 file of the folder",
    )
    _add_overwrite_option(imported, "the model file")
    imported.set_defaults(run=_import_n2v)


def _import_n2v(args):
    from .estimator import Noise2VoidDenoiser

    model = _check_model_path(args.model, [args.folder], replace=args.overwrite)
    replaced = os.path.lexists(model)
    denoiser = Noise2VoidDenoiser.from_n2v(args.folder, weights=args.weights)
    denoiser.save(model, overwrite=True)  # checked by _check_model_path
    print(
        f"imported {args.folder} ({denoiser.spatial_ndim_}D, {denoiser.n_channels_} channel(s), axes "
        f"{denoiser.axes}) into {model}{' (replaced)' if replaced else ''}"
    )
    return 0


def _add_export(command, helps, defaults, axes_help):
    """The ``export`` command: a saved model as a BioImage Model Zoo package."""
    export = command(
        "export",
        "write a saved model as a BioImage Model Zoo package",
        "export: write the model as a BioImage Model Zoo package (a zip, model spec 0.5) that Fiji/deepImageJ, "
        "napari, ilastik, QuPath and bioimageio.core run; --test-image (a noisy image like the training data) "
        "gives its test data and cover. Needs the [bioimageio] extra. Probabilistic models are refused.",
        usage=f"{PROG} export --model PATH --test-image PATH --output PATH.zip --name NAME --description TEXT "
        "--author NAME [--author NAME ...] [--license SPDX] [--tag TAG ...] [--axes AXES]",
    )
    export.add_argument("--model", required=True, metavar="PATH", help="a model written by 'n2v-estimator fit'")
    export.add_argument("--test-image", required=True, metavar="PATH", help="a noisy image like the training data")
    export.add_argument("--output", required=True, metavar="PATH", help="the package to write (a .zip)")
    export.add_argument("--name", required=True, help="the model's name (at least 5 characters)")
    export.add_argument("--description", required=True, help="what images the model is for")
    export.add_argument(
        "--author",
        required=True,
        action="append",
        dest="authors",
        metavar="NAME",
        help="an author (repeat for several)",
    )
    export.add_argument(
        "--license", default="CC-BY-4.0", metavar="SPDX", help="the model's license (default: CC-BY-4.0)"
    )
    export.add_argument(
        "--tag", action="append", dest="tags", default=[], metavar="TAG", help="a tag (repeat for several)"
    )
    export.add_argument("--axes", metavar="AXES", help=_escaped(f"{axes_help} Last, the model's axes (if they fit)."))
    _add_overwrite_option(export, "the package")
    _add_trust_option(export)
    export.set_defaults(run=_export)


def _add_info(command, helps, defaults, axes_help):
    """The ``info`` command: what a model file holds."""
    info = command(
        "info",
        "describe a model file",
        "info: what a model file holds: parameters (those that differ from the defaults marked), "
        "axes, channels, patch shape, normalisation, training history and noise model.",
    )
    info.add_argument("path", metavar="PATH", help="a model written by 'n2v-estimator fit'")
    _add_flag(info, "--json", help="print one JSON object instead")
    info.set_defaults(run=_info)


# ------------------------------------------------------------------- inputs
def expand_inputs(patterns):
    """File and folder names, glob patterns expanded (sorted); a pattern that
    matches nothing is an error. A name that exists is taken as it is. Each must
    be an image of a format :func:`read_image` reads: a missing file or an unknown
    format is named at once, before the estimator is imported or a model read."""
    paths = []
    for pattern in patterns:
        if os.path.exists(pattern) or not re.search(r"[*?[]", pattern):
            paths.append(Path(pattern))
            continue
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise FileNotFoundError(f"{pattern} matches no file.")
        paths.extend(Path(match) for match in matches)
    for path in paths:
        input_format(path)
    return paths


def _check_axes(axes, array, path):
    """``axes`` resolved for ``array`` of ``path``, or a ValueError that names the file."""
    try:
        return resolve_axes(axes, array.ndim)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path} has shape {tuple(array.shape)}: {exc} Pass --axes to name its axes.") from exc


def _fit_axes(given, paths, images):
    """The axes to fit with: ``--axes``, else those all the files name (``None`` when none names
    any: the estimator's own inference, 2D YX and 3D SYX)."""
    if given is None:
        named = {path: axes for path, (_, axes) in zip(paths, images) if axes is not None}
        if len(set(named.values())) > 1:
            listed = ", ".join(f"{path}: {axes}" for path, axes in named.items())
            raise ValueError(f"The inputs' metadata name different axes ({listed}); name the common axes with --axes.")
        given = next(iter(named.values()), None)
    for path, (array, _) in zip(paths, images):
        _check_axes(given, array, path)
    return given


# --------------------------------------------------------------------- fit
def _fit(args):
    paths = expand_inputs(args.inputs)
    given = _given_parameters(args)
    # A fit that continues the model it names (--warm-start) updates it; else only with --overwrite.
    model = _check_model_path(args.model, paths, replace=args.overwrite or bool(given.get("warm_start")))
    existed = os.path.lexists(model)
    from .estimator import Noise2VoidDenoiser
    from .fit.training import NonFiniteLossError

    writer = _torchrun_share(given)  # torchrun's variables checked before the inputs are read

    # Zarr stores and large files as dask arrays: fit reads only the patches it samples.
    read = [
        read_image(path, lazy=True, return_metadata=True, trust_declared_size=args.trust_declared_size)
        for path in paths
    ]
    for path, (_, _, metadata) in zip(paths, read):
        _say_dropped(path, metadata)
    images = _with_common_axes([(array, found) for array, found, _ in read])
    if not writer:  # a rank of torchrun's other than 0: trains its share, says and writes nothing
        args.quiet = True
    previous = None
    if given.get("warm_start") and os.path.isfile(model):  # continue training the saved model
        previous = Noise2VoidDenoiser.load(model)
    axes = _fit_axes(
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
        if not writer:
            return INTERRUPTED if interrupted else 2
        if epochs <= 0:
            _say(f"training {stopped} before any epoch completed; nothing was saved.")
        else:
            _save(denoiser, model, given.get("verbose", "auto"), calibration)
            _say(f"training {stopped} after {epochs} complete epoch(s); {_kept(denoiser)} were saved to {model}.")
        return INTERRUPTED if interrupted else 2
    except ValueError as exc:  # the images cannot be trained as read: name them
        raise ValueError(f"{_inputs_context(paths, images, args.axes, axes)}: {exc}") from exc
    if not writer:
        return 0
    _save(denoiser, model, given.get("verbose", "auto"), calibration)
    if not args.quiet:
        print(f"{'Replaced' if existed else 'Saved'} {model}: {_history_line(_history_summary(denoiser.history_))}")
        if calibration:
            print(f"  training images: {describe(calibration)}")
    return 0


def _torchrun_share(given):
    """With ``--n-devices torchrun``, torchrun's variables checked (one line for a wrong one) and
    whether this process writes the model (rank 0); else ``True``: torchrun's variables in the
    environment (a step of a torchrun or cluster job) do not make this process join anything."""
    if given.get("n_devices") != "torchrun":
        from .fit.distributed import launched_by_torchrun

        if launched_by_torchrun():
            _say(
                "note: torchrun's variables (RANK, WORLD_SIZE, ...) are set but --n-devices torchrun is not given: "
                "this process trains on its own."
            )
        return True
    from .fit.distributed import torchrun_ranks

    return torchrun_ranks()[0] == 0


def model_path(text):
    """The model file ``--model text`` names: ``text/model.safetensors`` where ``text``
    ends in a path separator or names an existing folder, else ``text`` itself."""
    path = Path(text)
    return path / MODEL_NAME if str(text).endswith(("/", os.sep)) or path.is_dir() else path


def _model_to_read(text, option="--model"):
    """The model file ``text`` names (:func:`model_path`), or a FileNotFoundError that says
    where it was looked for and how to make one."""
    path = model_path(text)
    if not os.path.lexists(path):
        raise FileNotFoundError(
            f"{option} {text}: no model file at {path}; '{PROG} fit INPUT... --model {path}' trains one."
        )
    return path


def _refuse_existing(option, paths, replace):
    """Refuse, in one line naming ``option`` and --overwrite, to write over the first of ``paths``
    that exists, unless ``replace``: no command replaces a file without being told to."""
    existing = [path for path in paths if os.path.lexists(path)]
    if existing and not replace:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise FileExistsError(
            f"{option} {existing[0]}{more} exists: add --overwrite to replace it, or choose another name."
        )


def _check_model_path(text, inputs, replace=False):
    """The model file to write for ``--model text`` (:func:`model_path`), refused before any
    work where it cannot be written, would replace or change an input, holds something other
    than a model file, exists (unless ``replace``: --overwrite, or a fit that continues it), or
    is not a ``.safetensors`` name. A folder named with a trailing separator is made when the
    model is saved (its parent must exist)."""
    path = model_path(text)
    folder = path.parent
    made_later = path.name == MODEL_NAME and str(text).endswith(("/", os.sep)) and folder.parent.is_dir()
    if not folder.is_dir() and not made_later:
        raise FileNotFoundError(f"Cannot write the model {path}: the folder {folder} does not exist.")
    existing = folder if folder.is_dir() else folder.parent
    if not os.access(existing, os.W_OK):
        raise PermissionError(f"Cannot write the model {path}: the folder {existing} is not writable.")
    check_output_apart(path, inputs, option="--model")
    if os.path.lexists(path) and not _is_model_file(path):
        raise ValueError(
            f"--model {path} exists and is not an n2v-estimator model file: writing the model would replace it. "
            "Choose another name, or remove the file first."
        )
    if path.suffix.lower() != ".safetensors":
        raise ValueError(
            f"--model {text}: a model is written as one safetensors file; name it "
            f"{path.with_suffix('.safetensors')}, or give a folder (for {path / MODEL_NAME})."
        )
    _refuse_existing("--model", [path], replace)
    return path


def _is_model_file(path):
    try:
        with ModelFile(path):
            return True
    except (OSError, ValueError):
        return False


def _say_dropped(path, metadata):
    """A warning naming what of ``path``'s metadata failed its checks and is carried nowhere."""
    dropped = metadata.get("dropped") or []
    if dropped:
        more = f" and {len(dropped) - 4} more" if len(dropped) > 4 else ""
        warnings.warn(
            f"{path}: left out of its calibration and of the outputs: {'; '.join(dropped[:4])}{more}.",
            UserWarning,
            stacklevel=2,
        )


def _training_calibration(read, images, axes):
    """What the training files' calibrations (pixel sizes, units, channel names) say alike,
    for the files read with the axes their metadata names; ``None`` where nothing is known."""
    records = []
    for (_, _, metadata), (array, found) in zip(read, images):
        used = axes or resolve_axes(None, array.ndim)
        channels = array.shape[used.index("C")] if "C" in used else None
        records.append(for_axes(metadata.get("calibration"), used, channels) if found == used else {})
    return common_calibration(records)


def _inputs_context(paths, images, given, axes):
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


def _with_common_axes(images):
    """Files whose metadata name the same axes but for a leading ``S`` (a stack beside
    single images): the single images get a length-1 ``S``, so that one ``axes`` fits all."""
    named = {found for _, found in images if found is not None}
    stacked = {found for found in named if found.startswith("S")}
    if len(named) != 2 or len(stacked) != 1 or {next(iter(stacked))[1:]} != named - stacked:
        return images
    with_s = next(iter(stacked))
    return [(array[None], with_s) if found == with_s[1:] else (array, found) for array, found in images]


def _save(denoiser, path, verbose, calibration=None):
    """Save the fitted ``denoiser`` with the user's ``verbose`` (not this command's progress bar)
    and the training files' ``calibration``; a folder named for it is made now."""
    Path(path).parent.mkdir(exist_ok=True)
    denoiser.__dict__.pop("image_calibration_", None)
    if calibration:
        denoiser.image_calibration_ = calibration
    denoiser.set_params(verbose=verbose).save(path, overwrite=True)  # checked by _check_model_path


def _kept(denoiser):
    has_validation = denoiser.history_ and denoiser.history_[-1].get("val_loss") is not None
    return "the best validation weights" if has_validation else "the weights of the last complete epoch"


# --------------------------------------------------------------- transform
def _output_paths(inputs, text, protected=(), replace=False):
    """One output per input: ``output`` itself for one input (unless it names a folder); else a
    file in the folder ``output`` named after each input (a TIFF or zarr input's name, else the
    input's stem with .tif). An output that is, holds or lies inside any input (or a
    ``protected`` path, such as the model file) is refused, and so is one that exists unless
    ``replace`` (--overwrite): all are checked before anything is written."""
    output = Path(text)
    is_folder = text.endswith(("/", os.sep)) or (output.is_dir() and not is_zarr_store(output))
    if len(inputs) == 1 and not is_folder:
        outputs = [output]
    else:
        if output.exists() and not output.is_dir():
            raise ValueError(f"--output {output} must be a folder for {len(inputs)} inputs, and is a file.")
        names = [
            path.name if path.suffix.lower() in (".tif", ".tiff", ".zarr") else path.stem + ".tif" for path in inputs
        ]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"Several inputs would be written to the same file in {output}: {', '.join(repeated)}.")
        outputs = [output / name for name in names]
    for result in outputs:  # none may be, hold or lie inside any input (or the model file)
        check_output_apart(result, [*inputs, *protected])
    if len(outputs) > 1 or is_folder:
        check_output_apart(output, [*inputs, *protected])
        output.mkdir(parents=True, exist_ok=True)
    _refuse_existing("--output", outputs, replace)
    for path in outputs:
        check_output_path(path)
    return outputs


def _named_axes(given, found, model_axes, array):
    """The axes to read ``array`` with: ``--axes``, else the file's, then the model's
    where they fit; ``None``: the estimator infers them (and refuses a colour image)."""
    return given or found or (model_axes if model_axes and len(model_axes) == array.ndim else None)


def _transform(args):
    paths = expand_inputs(args.inputs)
    model = _model_to_read(args.model)
    from .estimator import Noise2VoidDenoiser

    overrides = _given_parameters(args)
    denoiser = Noise2VoidDenoiser.load(model, device=overrides.pop("device", None))
    model_axes = denoiser.axes  # before set_params: --axes may name others
    denoiser.set_params(**overrides, verbose=not args.quiet, **({"tta": args.tta} if args.tta is not None else {}))
    denoiser._validate_params()  # a bad --tile-overlap and the like, in the estimator's words
    outputs = _output_paths(paths, args.output, protected=[model], replace=args.overwrite)
    for path, output in zip(paths, outputs):
        array, found, metadata = read_image(
            path, lazy=True, return_metadata=True, trust_declared_size=args.trust_declared_size
        )
        _say_dropped(path, metadata)
        named = _named_axes(args.axes, found, model_axes, array)
        axes = _check_axes(named, array, path)
        if is_dask_array(array) and axes != found:
            array = rechunk_for_axes(array, axes)
        # The file's calibration, where its axes are read as the file names them.
        channels = array.shape[axes.index("C")] if "C" in axes else None
        metadata["calibration"] = for_axes(metadata.get("calibration"), axes, channels) if found == axes else {}
        _check_calibration(path, output, getattr(denoiser, "image_calibration_", None), metadata["calibration"])
        denoiser.set_params(axes=named)
        result = denoiser.transform(array)
        size = declared_bytes(result.shape, result.dtype)
        check_free_space(output, size)
        if is_dask_array(result) and not args.quiet:
            _say(
                f"{path}: denoising {tuple(result.shape)} pixels chunk by chunk into {output} "
                f"({result.dtype}, {size / 2**20:,.0f} MiB)."
            )
        replaced = os.path.lexists(output)
        with _dask_scheduler(is_dask_array(result), progress=not args.quiet):
            write_image(output, result, axes, metadata)
        if not args.quiet:
            arrow = "-> (replaced)" if replaced else "->"
            print(
                f"{path} {arrow} {output} ({_output_note(array.dtype, result.dtype, metadata['calibration'], output)})"
            )
    return 0


def _check_calibration(path, output, trained, calibration):
    """Warn where the result will not keep ``path``'s calibration (a ``.npy`` output holds
    none), and where its pixels are not the size the model was trained on."""
    if calibration and Path(output).suffix.lower() == ".npy":
        warnings.warn(
            f"{output}: a .npy file keeps no calibration, and {path} has one ({describe(calibration)}); "
            "write .tif or .zarr to keep it.",
            stacklevel=2,
        )
    for letter, was, now, unit in differs(trained, calibration):
        unit = unit_symbol(unit) if unit else "(no unit)"
        warnings.warn(
            f"{path} has pixels of {now:.4g} {unit} along {letter}; the model was trained on "
            f"{was:.4g} {unit}: Noise2Void denoises best at the pixel size it learnt.",
            stacklevel=2,
        )


def _output_note(input_dtype, output_dtype, calibration, output):
    """``float32; the input is uint16: --dtype input keeps it; calibration kept: ...``."""
    notes = [str(output_dtype)]
    if np.dtype(input_dtype).kind in "ui" and np.dtype(output_dtype).kind == "f":
        notes.append(f"the input is {input_dtype}: --dtype input keeps its type, rounded")
    if calibration and Path(output).suffix.lower() != ".npy":
        notes.append(f"calibration kept: {describe(calibration)}")
    return "; ".join(notes)


def _export(args):
    from .estimator import Noise2VoidDenoiser
    from .models.zoo import TEST_SIDE

    model = _model_to_read(args.model)
    denoiser = Noise2VoidDenoiser.load(model, device="cpu")
    if Path(args.output).suffix.lower() != ".zip":
        raise ValueError(f"--output {args.output}: a BioImage Model Zoo package is a .zip file.")
    check_output_apart(args.output, [model, args.test_image])
    _refuse_existing("--output", [args.output], args.overwrite)
    # Lazily: the package keeps a crop of the test image, which is all that is read.
    array, found = read_image(args.test_image, lazy=True, lazy_bytes=0, trust_declared_size=args.trust_declared_size)
    named = _named_axes(args.axes, found, denoiser.axes, array)
    _check_axes(named, array, args.test_image)
    array = np.asarray(_central_crop(array, resolve_axes(named, array.ndim), 2 * TEST_SIDE[denoiser.spatial_ndim_]))
    denoiser.set_params(axes=named)
    replaced = os.path.lexists(args.output)
    path = denoiser.export_bioimageio(
        args.output,
        array,
        name=args.name,
        description=args.description,
        authors=args.authors,
        license=args.license,
        tags=args.tags,
        overwrite=True,  # checked above
    )
    print(f"{model} {'-> (replaced)' if replaced else '->'} {path}")
    return 0


def _central_crop(array, axes, side):
    """The first sample of ``array`` (kept as a length-1 axis) and at most ``side`` pixels
    around the centre of each spatial axis; all channels."""
    index = []
    for letter, n in zip(axes, array.shape):
        if letter == "S":
            index.append(slice(0, 1))
        elif letter == "C":
            index.append(slice(None))
        else:
            start = max(0, n - side) // 2
            index.append(slice(start, start + min(n, side)))
    return array[tuple(index)]


@contextmanager
def _dask_scheduler(lazy, progress):
    """For a dask result: its chunks computed one at a time, the U-Net using every core in each,
    so that memory stays at about one chunk's worth; dask's progress bar on stderr."""
    if not lazy:
        yield
        return
    import dask
    from dask.diagnostics import ProgressBar

    bar = ProgressBar(minimum=1.0, out=sys.stderr) if progress else nullcontext()
    with dask.config.set(scheduler="threads", num_workers=1), bar:
        yield


# -------------------------------------------------------------------- info
def _history_summary(history):
    """Epochs, first and last train loss, best validation loss and its epoch, seconds."""
    summary = {"epochs": len(history), "seconds": float(sum(r.get("seconds", 0.0) for r in history))}
    if history:
        summary["first_train_loss"] = history[0].get("train_loss")
        summary["last_train_loss"] = history[-1].get("train_loss")
        validated = [r for r in history if r.get("val_loss") is not None]
        best = min(validated, key=lambda r: r["val_loss"]) if validated else None
        summary["best_val_loss"] = best["val_loss"] if best else None
        summary["best_val_epoch"] = best.get("epoch") if best else None
    return summary


def _history_line(summary):
    if not summary["epochs"]:
        return "no training history."
    line = (
        f"{summary['epochs']} epoch(s) in {summary['seconds']:.1f} s, train loss "
        f"{summary['first_train_loss']:.4g} -> {summary['last_train_loss']:.4g}"
    )
    if summary["best_val_loss"] is not None:
        line += f", best validation loss {summary['best_val_loss']:.4g} (epoch {summary['best_val_epoch']})"
    return line + "."


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def describe_model(path):
    """What the model file ``path`` holds, as one JSON-able dict (``info --json`` prints it).

    Read from the file's header and document, checked as loading checks them (a known format
    version, bounded JSON, a valid fitted state, every tensor declared inside the file), without
    torch: the network itself is built, and its weights checked against it, when a command or
    :meth:`Noise2VoidDenoiser.load` loads the model.
    """
    defaults, _ = estimator_signature()
    with ModelFile(path) as file:
        document = file.document
        params, fitted = decode_document(document, defaults, path)
        n_values = file.value_count()
        noise = {
            name[len("noise.log_") :]: np.exp(file.array(name).astype(np.float64)).tolist()
            for name in ("noise.log_sigma", "noise.log_a", "noise.log_b")
            if name in file.entries
        }
    saved = _jsonable(document.get("params", {}))
    network = fitted["network"]
    return {
        "path": str(path),
        "package_version": document.get("package_version"),
        "format_version": document.get("format_version"),
        "parameters": saved,
        "non_default_parameters": sorted(non_default_parameters(saved, _jsonable(defaults))),
        "axes": params.get("axes"),
        "spatial_ndim": network["ndim"],
        "n_channels": network["in_channels"],
        "patch_shape": list(fitted["patch_shape"]),
        "mean": fitted["mean"].tolist(),
        "std": fitted["std"].tolist(),
        "n_values": n_values,
        "history": _history_summary(fitted["history"]),
        "noise": noise or None,
        "calibration": fitted["calibration"],
        "image_calibration": fitted["image_calibration"],
    }


def _calibration_lines(calibration):
    """``info``'s lines on a probabilistic model's calibration (:mod:`n2v_estimator.fit.calibration`)."""
    lines = [
        (
            f"calibration:   residual / predicted variance of held-out blind spots ({calibration['patches']} "
            "patches), per intensity bin; 1 is exact"
        )
    ]
    for c, edges in enumerate(calibration["edges"]):
        bins = [
            f"{edges[k]:.4g}-{edges[k + 1]:.4g}: {ratio if ratio is None else format(ratio, '.2f')}"
            for k, ratio in enumerate(calibration["ratio"][c])
        ]
        lines.append(
            f"               {'channel ' + str(c) + ': ' if len(calibration['edges']) > 1 else ''}" + "; ".join(bins)
        )
    problems = calibration_problems(calibration)
    lines.append("               " + ("off: " + "; ".join(problems) if problems else "within tolerance"))
    return lines


def _numbers(values):
    return ", ".join(f"{v:.6g}" for v in values)


def _info(args):
    about = describe_model(_model_to_read(args.path, "info"))
    if args.json:
        print(json.dumps(about))
        return 0
    # Strings of the file are a stranger's: shown escaped (parameters below are shown as reprs).
    axes = shown(about["axes"], 40) if about["axes"] is not None else "None (2D arrays YX, 3D arrays SYX)"
    lines = [
        f"{about['path']}: n2v-estimator model (format {about['format_version']}, "
        f"written by version {shown(about['package_version'], 40)})",
        f"images:        {about['spatial_ndim']}D, {about['n_channels']} channel(s), axes {axes}",
        f"network:       {about['spatial_ndim']}D U-Net, {about['n_values']:,} values (weights and running "
        "statistics); patches " + " x ".join(map(str, about["patch_shape"])),
        f"normalisation: mean {_numbers(about['mean'])}; std {_numbers(about['std'])} (per channel)",
        f"training:      {_history_line(about['history'])}",
    ]
    if about["image_calibration"]:
        lines.append(f"trained on:    {describe(about['image_calibration'])}")
    if about["noise"]:
        lines.append("noise model:   " + "; ".join(f"{name} {_numbers(v)}" for name, v in about["noise"].items()))
    if about["calibration"]:
        lines.extend(_calibration_lines(about["calibration"]))
    lines.append("parameters (* differs from the default):")
    for name, value in about["parameters"].items():
        lines.append(f"  {'*' if name in about['non_default_parameters'] else ' '} {name} = {value!r}")
    print("\n".join(lines))
    return 0


# -------------------------------------------------------------------- main
# A message's length on the terminal: names and values from files are cut before it, this is the last guard.
MAX_MESSAGE = 600


def _one_line(message):
    """``message`` on one line of at most :data:`MAX_MESSAGE` characters, anything from a file in it
    escaped (:func:`n2v_estimator.gateway.text.shown`)."""
    return shown(" ".join(str(message).split()), MAX_MESSAGE)


def _say(message):
    """``message`` on stderr, as :func:`_one_line`."""
    print(f"{PROG}: {_one_line(message)}", file=sys.stderr)


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"{PROG}: warning: {_one_line(message)}", file=sys.stderr if file is None else file)


def main(argv=None):
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); return the exit status:
    0, 2 for an error a user can make (one line on stderr), 130 when interrupted."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse has printed
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            return args.run(args)
        except KeyboardInterrupt:
            _say("interrupted.")
            return INTERRUPTED
        except MemoryError as exc:
            detail = " ".join(str(exc).split())
            _say(
                f"error: out of memory{f' ({detail})' if detail else ''}; use smaller inputs, tiles "
                "(--tile-size) or batches (--batch-size), or a machine with more memory."
            )
            return 2
        except USER_ERRORS as exc:
            _say(f"error: {str(exc) or type(exc).__name__}")
            return 2
        except RuntimeError as exc:  # a rank that failed or could not join: its one line
            distributed = sys.modules.get("n2v_estimator.fit.distributed")
            if distributed is None or not isinstance(exc, distributed.DistributedTrainingError):
                raise
            _say(f"error: {exc}")
            return 2


if __name__ == "__main__":
    sys.exit(main())
