"""The ``transform`` command: denoise image files with a saved model, each into a file of its own.

Large inputs (zarr, big TIFF or ``.npy`` files) are read, denoised and written chunk by chunk; the
input's axes and calibration are kept, and a result whose pixels differ in size from the training
images' is warned about.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.axes import is_dask_array
from ..gateway.budget import check_free_space, declared_bytes
from ..images.chunks import is_lazy
from ..images.files import WRITE_FORMATS, read_image, rechunk_for_axes, write_image
from ..images.metadata import describe, differs, for_axes, unit_symbol
from .messages import PROG, print_on_stderr
from .options import (
    add_flag,
    add_overwrite_option,
    add_parameter_options,
    add_trust_option,
    escaped,
    given_parameters,
)
from .paths import expand_inputs, model_to_read, output_paths
from .reading import axes_to_read_with, checked_axes, warn_of_dropped_metadata

if TYPE_CHECKING:
    import argparse

    from numpy.typing import DTypeLike

    from .._typing import Params, PathLike
    from .options import CommandFactory

# Parameters that also apply when denoising with a saved model (transform takes them).
PREDICTION_PARAMETERS = ("tile_size", "tile_overlap", "device", "precision", "dtype")


def add_transform_command(
    new_command: CommandFactory, helps: Mapping[str, str], defaults: Params, axes_help: str
) -> None:
    """The ``transform`` command: inputs, --model, --output, --axes, --tta and the prediction parameters."""
    transform = new_command(
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
    transform.add_argument("--axes", metavar="AXES", help=escaped(f"{axes_help} Last, the model's axes (if they fit)."))
    add_flag(transform, "--tta", help=escaped(helps.get("tta", "")), default=None)
    add_flag(transform, "--quiet", help="no progress bar and no summary")
    add_overwrite_option(transform, "the output files")
    add_trust_option(transform)
    add_parameter_options(transform, PREDICTION_PARAMETERS, helps, defaults)
    transform.set_defaults(run=run_transform)


def run_transform(args: argparse.Namespace) -> int:
    """Denoise each of ``args.inputs`` into its output with the model ``args.model``; return the exit status (0)."""
    paths = expand_inputs(args.inputs)
    model = model_to_read(args.model)
    from ..estimator import Noise2VoidDenoiser

    overrides = given_parameters(args)
    denoiser = Noise2VoidDenoiser.load(model, device=overrides.pop("device", None))
    model_axes = denoiser.axes  # before set_params: --axes may name others
    denoiser.set_params(**overrides, verbose=not args.quiet, **({"tta": args.tta} if args.tta is not None else {}))
    denoiser._validate_params()  # a bad --tile-overlap and the like, in the estimator's words
    outputs = output_paths(paths, args.output, protected=[model], replace=args.overwrite)
    for path, output in zip(paths, outputs):
        array, found, metadata = read_image(
            path, lazy=True, return_metadata=True, trust_declared_size=args.trust_declared_size
        )
        warn_of_dropped_metadata(path, metadata)
        named = axes_to_read_with(args.axes, found, model_axes, array)
        axes = checked_axes(named, array, path)
        if is_lazy(array) and axes != found:
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
            print_on_stderr(
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


def _check_calibration(
    path: Path, output: Path, trained: Mapping[str, Any] | None, calibration: Mapping[str, Any] | None
) -> None:
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


def _output_note(
    input_dtype: DTypeLike, output_dtype: DTypeLike, calibration: Mapping[str, Any] | None, output: PathLike
) -> str:
    """``float32; the input is uint16: --dtype input keeps it; calibration kept: ...``."""
    notes = [str(output_dtype)]
    if np.dtype(input_dtype).kind in "ui" and np.dtype(output_dtype).kind == "f":
        notes.append(f"the input is {input_dtype}: --dtype input keeps its type, rounded")
    if calibration and Path(output).suffix.lower() != ".npy":
        notes.append(f"calibration kept: {describe(calibration)}")
    return "; ".join(notes)


@contextmanager
def _dask_scheduler(lazy: bool, progress: bool) -> Iterator[None]:
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
