"""The ``n2v-estimator`` argument parser: the command's description and examples, and its commands.

Each command's options and what it runs are in its own module (``fit_command``, ``transform_command``,
``export_command``, ``import_n2v_command``, ``info_command``); none imports torch or scikit-learn
before it runs.
"""

from __future__ import annotations

import textwrap

from .._version import __version__
from .export_command import add_export_command
from .fit_command import add_fit_command
from .import_n2v_command import add_import_n2v_command
from .info_command import add_info_command
from .messages import PROG
from .options import HelpFormatter, OneLineErrorParser, boolean, estimator_signature, parameter_help
from .transform_command import add_transform_command

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


def build_parser() -> OneLineErrorParser:
    """The ``n2v-estimator`` argument parser, its options generated from the estimator."""
    defaults, docstring = estimator_signature()
    helps = parameter_help(docstring)
    axes_help = (
        f"{helps.get('axes', '')} Default: the axes in the files' metadata (OME-TIFF, ImageJ, OME-Zarr, "
        "tifffile), else 2D YX and 3D SYX."
    )
    examples = "\n".join(EXAMPLES.values())
    parser = OneLineErrorParser(
        prog=PROG,
        description=ABOUT,
        formatter_class=HelpFormatter,
        allow_abbrev=False,
        epilog=f"Examples:\n{examples}\n\nRun '{PROG} COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def new_command(name: str, summary: str, description: str, usage: str | None = None) -> OneLineErrorParser:
        return commands.add_parser(
            name,
            help=summary,
            description=f"{ABOUT}\n{textwrap.fill(description, 88)}",
            usage=usage,
            epilog=f"Examples:\n{EXAMPLES[name]}",
            formatter_class=HelpFormatter,
            allow_abbrev=False,
        )

    add_fit_command(new_command, helps, defaults, axes_help)
    add_transform_command(new_command, helps, defaults, axes_help)
    add_export_command(new_command, axes_help)
    add_import_n2v_command(new_command)
    add_info_command(new_command)
    parser.commands = {name: commands.choices[name] for name in commands.choices}
    parser.boolean_options = frozenset(
        option
        for command in parser.commands.values()
        for action in command._actions
        if action.type is boolean
        for option in action.option_strings
    )
    return parser
