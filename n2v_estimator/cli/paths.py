"""The files a command names: inputs found, the model file located, outputs refused before any work.

Every name is checked before the estimator is imported or an image read: a missing input, a
model file that cannot be written, an output that would replace an input or an existing file
(without ``--overwrite``) is one line at once, not an error after minutes of training.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..images.files import check_output_apart, check_output_path, input_format, is_zarr_store
from ..models.file_format import ModelFile
from .messages import PROG

if TYPE_CHECKING:
    from .._typing import PathLike

# A --model that names a folder (an existing one, or any path ending in a separator) means this file in it.
MODEL_NAME = "model.safetensors"


def expand_inputs(patterns: Sequence[str]) -> list[Path]:
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


def model_path(text: str) -> Path:
    """The model file ``--model text`` names: ``text/model.safetensors`` where ``text``
    ends in a path separator or names an existing folder, else ``text`` itself."""
    path = Path(text)
    return path / MODEL_NAME if str(text).endswith(("/", os.sep)) or path.is_dir() else path


def model_to_read(text: str, option: str = "--model") -> Path:
    """The model file ``text`` names (:func:`model_path`), or a FileNotFoundError that says
    where it was looked for and how to make one."""
    path = model_path(text)
    if not os.path.lexists(path):
        raise FileNotFoundError(
            f"{option} {text}: no model file at {path}; '{PROG} fit INPUT... --model {path}' trains one."
        )
    return path


def refuse_existing(option: str, paths: Sequence[PathLike], replace: bool) -> None:
    """Refuse, in one line naming ``option`` and --overwrite, to write over the first of ``paths``
    that exists, unless ``replace``: no command replaces a file without being told to."""
    existing = [path for path in paths if os.path.lexists(path)]
    if existing and not replace:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise FileExistsError(
            f"{option} {existing[0]}{more} exists: add --overwrite to replace it, or choose another name."
        )


def check_model_path(text: str, inputs: Sequence[PathLike], replace: bool = False) -> Path:
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
    refuse_existing("--model", [path], replace)
    return path


def _is_model_file(path: Path) -> bool:
    """Whether ``path`` opens as a model file (its header and document checked)."""
    try:
        with ModelFile(path):
            return True
    except (OSError, ValueError):
        return False


def output_paths(
    inputs: Sequence[Path], text: str, protected: Sequence[PathLike] = (), replace: bool = False
) -> list[Path]:
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
    refuse_existing("--output", outputs, replace)
    for path in outputs:
        check_output_path(path)
    return outputs
