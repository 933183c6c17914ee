"""Saving and loading fitted denoisers: safetensors weights + JSON, no pickle.

One file holds everything: the network's tensors in the safetensors format
and, in its string metadata, a JSON document with the format version, the
estimator's parameters and its fitted state. Reading it never executes code.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.torch import save_file

from ._unet import build_unet, check_description, expected_state

FORMAT_NAME = "n2v_estimator"
# Version 2 describes the network in its own versioned schema (see _unet);
# version 1 files (the network without a schema) are read as schema 1.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# Parameters that may hold a tuple of ints (a model file stores it as a JSON list).
SHAPE_PARAMS = ("patch_size", "tile_size", "tile_overlap", "image_shape")


class ModelFileError(ValueError):
    """A model file is malformed, of an unknown version, or does not match its network."""


def _to_json(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def write_model(path, tensors, document):
    """Atomically write ``tensors`` (name -> CPU tensor) and ``document`` (JSON-able dict).

    The file is written next to ``path`` under a temporary name and renamed
    into place, so an existing file at ``path`` survives a crash mid-write.
    A new file gets the usual permissions (``0o666`` less the umask); a
    replaced file keeps its own.
    """
    path = Path(path)
    payload = dict(_to_json(document), format=FORMAT_NAME, format_version=FORMAT_VERSION)
    metadata = {FORMAT_NAME: json.dumps(payload)}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    # Created by us with mode 0o666, so that the kernel applies the umask and
    # tells us the usual mode, without changing the process umask (racy under threads).
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        mode = stat.S_IMODE((path if path.exists() else tmp).stat().st_mode)
        save_file(tensors, str(tmp), metadata=metadata)  # may recreate the file with its own mode
        # On disk before the rename, so a power cut cannot leave an empty file at ``path``.
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_model(path):
    """Read a file written by :func:`write_model`.

    Returns
    -------
    tensors : dict of str -> torch.Tensor
    document : dict
        The JSON document, format fields checked.

    Raises
    ------
    ModelFileError
        If the file is not a safetensors file made by this package, or its
        format version is not one this version reads.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ModelFileError(f"{path} is not a readable safetensors model file: {exc}") from exc
    if FORMAT_NAME not in metadata:
        raise ModelFileError(f"{path} is a safetensors file but was not written by n2v_estimator.")
    try:
        document = json.loads(metadata[FORMAT_NAME])
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path} holds a malformed JSON document: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path} does not hold an n2v_estimator document.")
    version = document.get("format_version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise ModelFileError(
            f"{path} has format version {version!r}; this version of n2v_estimator reads "
            f"versions {list(READABLE_VERSIONS)}. Upgrade the package to load newer files."
        )
    return tensors, document


def estimator_document(params, network, fitted, package_version):
    """The JSON document :func:`write_model` stores for a fitted estimator.

    ``params`` are the estimator's parameters (a ``random_state`` that is not
    an int is stored as ``None``, a device as its name), ``network`` the
    network's description and ``fitted`` its other fitted state.
    """
    params = dict(params)
    if not isinstance(params["random_state"], (int, np.integer, type(None))):
        params["random_state"] = None
    params["device"] = str(params["device"])
    return {"package_version": package_version, "params": params, "fitted": {"network": network, **fitted}}


def decode_document(document, param_names, source):
    """Parameters and fitted state from a document written by :func:`estimator_document`.

    Returns
    -------
    params : dict
        Constructor arguments, shape parameters as tuples (not yet validated).
    fitted : dict
        ``network`` (the description, unchecked), ``mean`` and ``std``
        (float64 arrays of ``n_channels``), ``patch_shape`` (tuple),
        ``history`` (list) and ``n_features_in`` (int or None).

    Raises
    ------
    ModelFileError
        If parameters are unknown or the fitted state is malformed.
    """
    try:
        params = dict(document["params"])
        unknown = sorted(set(params) - set(param_names))
        if unknown:
            raise ModelFileError(f"{source} names unknown parameters {unknown}.")
        for key in SHAPE_PARAMS:
            if isinstance(params.get(key), list):
                params[key] = tuple(params[key])
        struct = params.get("struct_mask")
        if isinstance(struct, list):
            is_short = len(struct) == 2 and isinstance(struct[0], str)
            params["struct_mask"] = tuple(struct) if is_short else np.asarray(struct)
        saved = document["fitted"]
        n_channels = int(saved["n_channels"])
        fitted = {
            "network": saved["network"],
            "mean": np.asarray(saved["mean"], dtype=np.float64).reshape(n_channels),
            "std": np.asarray(saved["std"], dtype=np.float64).reshape(n_channels),
            "patch_shape": tuple(int(p) for p in saved["patch_shape"]),
            "history": list(saved["history"]),
            "n_features_in": int(saved["n_features_in"]) if "n_features_in" in saved else None,
        }
        if (n_channels, int(saved["spatial_ndim"])) != (
            saved["network"].get("in_channels"),
            saved["network"].get("ndim"),
        ):
            raise ModelFileError(f"{source}: the network does not match the described data layout.")
    except ModelFileError:
        raise
    except Exception as exc:
        raise ModelFileError(f"{source} holds an invalid model description: {exc!r}") from exc
    return params, fitted


def network_from_weights(description, weights, source):
    """Rebuild a network from its ``description`` and load ``weights``, checking every tensor.

    The description is checked against the same constraints as the estimator's
    parameters, and the tensors' names, shapes and dtypes are compared with
    those the description implies (on the meta device, with no memory spent)
    before any network is allocated.

    Raises
    ------
    ModelFileError
        Naming ``source``, on invalid settings and on missing, unexpected or
        mis-shaped tensors.
    """
    try:
        description = check_description(description)
        expected = expected_state(description)
    except ValueError as exc:  # sklearn's InvalidParameterError is a ValueError too
        raise ModelFileError(f"{source}: {exc}") from exc
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        raise ModelFileError(f"{source}: tensors missing {missing[:5]}, unexpected {extra[:5]}.")
    for name, (shape, dtype) in expected.items():
        if tuple(weights[name].shape) != shape or weights[name].dtype != dtype:
            raise ModelFileError(
                f"{source}: tensor {name!r} has shape {tuple(weights[name].shape)} and dtype "
                f"{weights[name].dtype}, the network {description} needs {shape} {dtype}."
            )
    return unet_with_weights(description, weights)


def unet_with_weights(description, weights):
    """A network built from a checked ``description`` holding ``weights``, in eval mode."""
    model = build_unet(description)
    model.load_state_dict(weights)
    return model.eval()
