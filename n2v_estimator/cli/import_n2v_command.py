"""The ``import-n2v`` command: a model folder of the TensorFlow n2v written as one of our model files.

The folder's config.json and Keras HDF5 weights are read with h5py (:mod:`n2v_estimator.models.keras_n2v`):
no TensorFlow, nothing of the folder executed.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .messages import PROG
from .options import add_overwrite_option
from .paths import check_model_path

if TYPE_CHECKING:
    import argparse

    from .options import CommandFactory


def add_import_n2v_command(new_command: CommandFactory) -> None:
    """The ``import-n2v`` command: a model folder of the TensorFlow n2v as a model file."""
    imported = new_command(
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
    add_overwrite_option(imported, "the model file")
    imported.set_defaults(run=run_import_n2v)


def run_import_n2v(args: argparse.Namespace) -> int:
    """Write the n2v model folder ``args.folder`` as the model file ``args.model``; return the exit status (0)."""
    from ..estimator import Noise2VoidDenoiser

    model = check_model_path(args.model, [args.folder], replace=args.overwrite)
    replaced = os.path.lexists(model)
    denoiser = Noise2VoidDenoiser.from_n2v(args.folder, weights=args.weights)
    denoiser.save(model, overwrite=True)  # checked by check_model_path
    print(
        f"imported {args.folder} ({denoiser.spatial_ndim_}D, {denoiser.n_channels_} channel(s), axes "
        f"{denoiser.axes}) into {model}{' (replaced)' if replaced else ''}"
    )
    return 0
