"""Saving and loading fitted denoisers: safetensors weights + JSON, no pickle.

One file holds everything: the network's tensors in the safetensors format
and, in its string metadata, a JSON document with the format version, the
estimator's parameters and its fitted state. Reading it never executes code,
and a file is judged by its header (capped in size and nesting) before any
tensor is read (:mod:`n2v_estimator.models.file_format`, which reads the container
without torch): a hostile file is refused in a fraction of a second.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save as safetensors_bytes

from .._constraints import InvalidParameterError
from ..gateway.atomic import atomic_write
from ..nets.builder import build_unet, expected_state
from ..nets.unet import check_description
from .file_format import (
    DTYPES,
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_HEADER_BYTES,
    ModelFile,
    ModelFileError,
    _to_json,
    decode_document,
)

if TYPE_CHECKING:
    from .._typing import Description, PathLike
    from ..nets.blindnet import BlindSpotNetwork
    from ..nets.unet import UNet

# torch's dtypes by their safetensors names.
_DTYPES = {getattr(torch, torch_name): name for name, (torch_name, _) in DTYPES.items()}


def _write_all(fd: int, data: bytes) -> None:
    """Write ``data`` to the file descriptor ``fd`` (a seam for tests of a crash mid-write)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _target(path: PathLike) -> Path:
    """``path`` as a :class:`Path` a model can be written to, or ``ValueError``."""
    if not str(path):
        raise ValueError("The model path is empty; give a file name such as 'model.safetensors'.")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give a file name such as {path / 'model.safetensors'}.")
    return path


def write_model(path: PathLike, tensors: Mapping[str, torch.Tensor], document: Mapping[str, Any]) -> None:
    """Atomically write ``tensors`` (name -> tensor) and ``document`` (JSON-able dict).

    The file is written next to ``path`` under a temporary name and renamed
    into place, so an existing file at ``path`` survives a crash mid-write; the
    temporary files of writers killed earlier are removed. A new file gets the
    usual permissions (``0o666`` less the umask); a replaced file keeps its own.

    Raises
    ------
    ValueError
        If ``path`` is empty or a directory.
    OSError
        Naming ``path``, if the file cannot be written.
    """
    path = _target(path)
    payload = dict(_to_json(document), format=FORMAT_NAME, format_version=FORMAT_VERSION)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    data = safetensors_bytes(tensors, metadata={FORMAT_NAME: json.dumps(payload)})
    if int.from_bytes(data[:8], "little") > MAX_HEADER_BYTES:
        raise ValueError(
            f"The model's description is over {MAX_HEADER_BYTES} bytes (a history of tens of thousands "
            "of epochs?), more than load reads; shorten history_ before saving."
        )
    try:
        with atomic_write(path) as tmp, open(tmp, "wb") as file:
            _write_all(file.fileno(), data)
    except OSError as exc:
        raise OSError(exc.errno, f"Cannot save the model to {path}: {exc.strerror or exc}") from exc


def read_model(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`write_model`: ``(tensors, document)``.

    See :class:`n2v_estimator.models.file_format.ModelFile` for what is refused.
    """
    with ModelFile(path) as file:
        return {name: file.tensor(name) for name in file.entries}, file.document


def read_estimator(
    path: PathLike,
    param_names: Iterable[str],
    validate: Callable[[dict[str, Any]], None],
    device: str | torch.device | None = None,
) -> tuple[dict[str, Any], UNet | BlindSpotNetwork, dict[str, Any]]:
    """A fitted estimator's parts from a file written by its ``save``: ``(params, model, fitted)``.

    ``param_names`` are the estimator's parameters; ``validate(params)`` checks them
    against its constraints (the estimator's own rules) before any tensor is read,
    and the network is then checked against the file. ``fitted`` holds the keyword
    arguments of the estimator's ``_set_fitted`` besides the model.
    """
    with ModelFile(path) as file:
        params, fitted = decode_document(file.document, param_names, path)
        if device is not None:
            params["device"] = device
        try:
            validate(params)
        except InvalidParameterError as exc:
            raise ModelFileError(f"{path} holds an invalid parameter: {exc}") from exc
        model = network_from_file(fitted.pop("network"), file)
    return params, model, fitted


def network_from_file(description: Any, file: ModelFile) -> UNet | BlindSpotNetwork:
    """Rebuild the network ``description`` (as a file holds it, unchecked) describes from the open
    :class:`n2v_estimator.models.file_format.ModelFile`.

    The description is checked against the same constraints as the estimator's
    parameters; the file's header entries must then name exactly the tensors the
    description implies, with their dtypes and shapes (computed on the meta
    device, with no memory spent), before any tensor is read. The tensors read must be finite, batch-norm variances and counts
    non-negative, and a noise model's normalisation scale positive.

    Raises
    ------
    ModelFileError
        Naming ``path``, on invalid settings and on missing, unexpected,
        mis-shaped or out-of-range tensors.
    """
    path, entries = file.path, file.entries
    try:
        description = check_description(description)
        expected = expected_state(description)
    except ValueError as exc:  # sklearn's InvalidParameterError is a ValueError too
        raise ModelFileError(f"{path}: {exc}") from exc
    missing = sorted(set(expected) - set(entries))
    extra = sorted(set(entries) - set(expected))
    if missing or extra:
        raise ModelFileError(
            f"{path}: tensors missing {missing[:5]}, unexpected {extra[:5]}"
            + (f" (and {len(extra) - 5} more)" if len(extra) > 5 else "")
            + "."
        )
    for name, (shape, dtype) in expected.items():
        entry = entries[name]
        declared = (entry.get("shape"), entry.get("dtype")) if isinstance(entry, dict) else (None, None)
        if declared != (list(shape), _DTYPES[dtype]):
            raise ModelFileError(
                f"{path}: tensor {name!r} has shape {declared[0]} and dtype {declared[1]}, "
                f"the network {description} needs {list(shape)} {_DTYPES[dtype]}."
            )
    weights = {name: file.tensor(name) for name in expected}
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelFileError(f"{path}: tensor {name!r} holds non-finite values.")
        if name.endswith(("running_var", "num_batches_tracked")) and (tensor < 0).any():
            raise ModelFileError(f"{path}: tensor {name!r} holds negative values.")
        if name == "noise.std" and (tensor <= 0).any():  # the noise model divides by it
            raise ModelFileError(f"{path}: tensor {name!r} holds values that are not positive.")
    return unet_with_weights(description, weights)


def unet_with_weights(description: Description, weights: Mapping[str, torch.Tensor]) -> UNet | BlindSpotNetwork:
    """A network built from a checked ``description`` holding ``weights``, in eval mode."""
    model = build_unet(description)
    model.load_state_dict(weights)
    return model.eval()


def portable_network(model: UNet | BlindSpotNetwork) -> dict[str, Any]:
    """``{"description", "weights"}`` of ``model``, its weights as CPU tensors:
    what a pickle holds (one made on a GPU loads on a CPU-only machine) and
    what ``warm_start`` continues from."""
    return {"description": model.description, "weights": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
