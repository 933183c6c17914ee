"""Saving and loading fitted denoisers: safetensors weights + JSON, no pickle.

One file holds everything: the network's tensors in the safetensors format
and, in its string metadata, a JSON document with the format version, the
estimator's parameters and its fitted state. Reading it never executes code.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT_NAME = "n2v_estimator"
FORMAT_VERSION = 1


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
    """
    path = Path(path)
    payload = dict(_to_json(document), format=FORMAT_NAME, format_version=FORMAT_VERSION)
    metadata = {FORMAT_NAME: json.dumps(payload)}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        # On disk before the rename, so a power cut cannot leave an empty file at ``path``.
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp creates the file private (0600); give it the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
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
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has format version {version!r}; this version of n2v_estimator reads "
            f"version {FORMAT_VERSION}. Upgrade the package to load newer files."
        )
    return tensors, document
