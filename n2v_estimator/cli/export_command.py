"""The ``export`` command: a saved model as a BioImage Model Zoo package, with a crop of a test image."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.axes import resolve_axes
from ..images.files import check_output_apart, read_image
from .messages import PROG
from .options import add_overwrite_option, add_trust_option, escaped
from .paths import model_to_read, refuse_existing
from .reading import axes_to_read_with, checked_axes

if TYPE_CHECKING:
    import argparse

    from .._typing import ImagesLike
    from .options import CommandFactory


def add_export_command(new_command: CommandFactory, axes_help: str) -> None:
    """The ``export`` command: a saved model as a BioImage Model Zoo package."""
    export = new_command(
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
    export.add_argument("--axes", metavar="AXES", help=escaped(f"{axes_help} Last, the model's axes (if they fit)."))
    add_overwrite_option(export, "the package")
    add_trust_option(export)
    export.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Write the model ``args.model`` as the package ``args.output``; return the exit status (0)."""
    from ..estimator import Noise2VoidDenoiser
    from ..models.zoo_export import TEST_SIDE

    model = model_to_read(args.model)
    denoiser = Noise2VoidDenoiser.load(model, device="cpu")
    if Path(args.output).suffix.lower() != ".zip":
        raise ValueError(f"--output {args.output}: a BioImage Model Zoo package is a .zip file.")
    check_output_apart(args.output, [model, args.test_image])
    refuse_existing("--output", [args.output], args.overwrite)
    # Lazily: the package keeps a crop of the test image, which is all that is read.
    array, found = read_image(args.test_image, lazy=True, lazy_bytes=0, trust_declared_size=args.trust_declared_size)
    named = axes_to_read_with(args.axes, found, denoiser.axes, array)
    checked_axes(named, array, args.test_image)
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


def _central_crop(array: ImagesLike, axes: str, side: int) -> ImagesLike:
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
