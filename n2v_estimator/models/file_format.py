"""The model file's container, read without torch: its header, its JSON document, its tensors' places.

A model file (:mod:`n2v_estimator.models.weights` writes it) is a safetensors file whose
string metadata holds a JSON document: the format version, the estimator's
parameters and its fitted state. :class:`ModelFile` judges a file by its header
(capped in size and nesting) before any tensor is read, and reads a tensor only on
request; :func:`decode_document` checks the document. Neither needs torch or
scikit-learn, so that ``n2v-estimator info`` describes a model in a fraction of a
second; loading the network (torch) is :func:`n2v_estimator.models.weights.read_estimator`.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..fit.calibration import check_record
from ..gateway.errors import ModelFileError
from ..images.metadata import check_calibration

if TYPE_CHECKING:
    import torch

    from .._typing import Array, Float64Array, Params, PathLike, Shape
    from ..fit.calibration import CalibrationRecord
    from ..images.metadata import Calibration

FORMAT_NAME = "n2v_estimator"
# Version 2 describes the network in its own versioned schema (see nets.unet);
# version 1 files (the network without a schema) are read as schema 1.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# Parameters that may hold a tuple of ints (a model file stores it as a JSON list).
SHAPE_PARAMS = ("patch_size", "tile_size", "tile_overlap", "image_shape")
# A model's header is a few kB plus ~120 bytes per epoch of history: 4 MiB (some
# 30 000 epochs) is far beyond any real one and parses in well under a second.
# write_model refuses to write a larger one, so every file it writes loads.
MAX_HEADER_BYTES = 4 * 2**20
MAX_NESTING = 32
# The safetensors dtypes a model file may hold: their torch names and sizes in bytes.
DTYPES = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}
# The same as numpy types, where numpy has one (bfloat16 it has not: see ModelFile.array).
_NUMPY_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}


def _to_json(value: Any) -> Any:
    """``value`` with numpy arrays and scalars, and tuples, as the JSON values (lists, numbers) they hold."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):  # numpy bools, ints and floats from a parameter grid
        return value.item()
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


# A JSON string, or an unterminated one running to the end; possessive, so that no
# input makes the scan backtrack (quadratic time on a crafted header).
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*+(?:"|\Z)', re.S)


def _nesting(text: str) -> int:
    """How deeply the lists and objects of the JSON ``text`` nest, found at C speed
    (strings removed, then a running count of brackets) before anything is parsed."""
    brackets = np.frombuffer(_JSON_STRING.sub("", text).encode(), dtype=np.uint8)
    steps = np.isin(brackets, (ord("["), ord("{"))).astype(np.int64) - np.isin(brackets, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max(initial=0))


def _parse_json(text: str | bytes, what: str, source: PathLike) -> Any:
    """The JSON value of ``text`` (the ``what`` of the file ``source``), or :class:`ModelFileError`."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if _nesting(text) > MAX_NESTING:
            raise ModelFileError(f"{source}: the {what} is nested more than {MAX_NESTING} levels deep.")
        return json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"{source} holds a malformed JSON {what}: {exc}") from exc


class ModelFile:
    """A model file written by :func:`n2v_estimator.models.weights.write_model`, open for reading: its header is
    read and checked on opening, and tensors are read on request from the same open
    file, so that a file replaced meanwhile cannot mix into what is read.

    Attributes
    ----------
    entries : dict
        Tensor name -> ``{"dtype", "shape", "data_offsets"}`` as the file declares them.
    document : dict
        The JSON document, format fields checked.

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    ModelFileError
        If ``path`` is not a regular file, not a safetensors file made by this
        package, its header is over :data:`MAX_HEADER_BYTES` or nested deeper than
        :data:`MAX_NESTING`, or its format version is not one this version reads.
    """

    entries: dict[str, Any]
    document: dict[str, Any]

    def __init__(self, path: PathLike) -> None:
        self.path = path
        # Non-blocking, so that a named pipe cannot block the open; refused just below.
        self._fd: int | None = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            self._read_header()
        except BaseException:
            self.close()
            raise

    def _read_header(self) -> None:
        path = self.path
        info = os.fstat(self._open_fd)
        if not stat.S_ISREG(info.st_mode):
            raise ModelFileError(f"{path} is not a regular file (a directory, a pipe or a device); give a model file.")
        prefix = self._read_at(0, 8)
        size = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 < size <= min(MAX_HEADER_BYTES, info.st_size - 8):
            kind = _file_kind(prefix)
            raise ModelFileError(
                f"{path} is {kind + ', not' if kind else 'not'} an n2v-estimator model file (a safetensors file "
                f"written by 'n2v-estimator fit' or Noise2VoidDenoiser.save; its header size field says {size} bytes, "
                f"the file has {info.st_size}, at most {MAX_HEADER_BYTES} are read)."
            )
        self._data_start, self._data_size = 8 + size, info.st_size - 8 - size
        header = _parse_json(self._read_at(8, size), "header", path)
        if not isinstance(header, dict):
            raise ModelFileError(f"{path} is not a readable safetensors model file: its header is not a mapping.")
        metadata = header.pop("__metadata__", None)
        if not isinstance(metadata, dict) or FORMAT_NAME not in metadata:
            raise ModelFileError(f"{path} is a safetensors file but was not written by n2v_estimator.")
        if not isinstance(metadata[FORMAT_NAME], str):
            raise ModelFileError(f"{path} does not hold an n2v_estimator document.")
        document = _parse_json(metadata[FORMAT_NAME], "document", path)
        if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
            raise ModelFileError(f"{path} does not hold an n2v_estimator document.")
        version = document.get("format_version")
        if type(version) is not int or version not in READABLE_VERSIONS:
            raise ModelFileError(
                f"{path} has format version {version!r}; this version of n2v_estimator reads "
                f"versions {list(READABLE_VERSIONS)}. Upgrade the package to load newer files."
            )
        self.entries, self.document = header, document

    @property
    def _open_fd(self) -> int:
        """The file's descriptor, while it is open."""
        if self._fd is None:
            raise ValueError(f"The model file {self.path} is closed; open it again to read it.")
        return self._fd

    def _read_at(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset`` (fewer only at the end of the file)."""
        fd = self._open_fd
        os.lseek(fd, offset, os.SEEK_SET)
        chunks = []
        while size > 0:
            chunk = os.read(fd, min(size, 2**30))
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def declared(self, name: str) -> tuple[str, Shape, int, int]:
        """``(dtype, shape, begin, end)`` of the tensor ``name`` as the header declares it,
        checked: a known dtype, a shape of non-negative ints, and as many bytes, inside the data."""
        entry: Any = self.entries.get(name)  # anything a stranger's header holds, judged below
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            count = 1
            for side in shape:
                if type(side) is not int or side < 0:
                    raise ValueError(f"shape {shape}")
                count *= side
            if not (type(begin) is type(end) is int and 0 <= begin <= end <= self._data_size):
                raise ValueError(f"data offsets {begin}, {end} outside the {self._data_size} bytes of data")
            if end - begin != count * DTYPES[dtype][1]:
                raise ValueError(f"{end - begin} bytes for {count} {dtype} values")
        except (TypeError, KeyError, ValueError) as exc:
            raise ModelFileError(f"{self.path}: tensor {name!r} is malformed ({exc}).") from exc
        return dtype, tuple(shape), begin, end

    def value_count(self) -> int:
        """How many values the file's tensors hold (weights and running statistics), every one declared well."""
        return sum(math.prod(self.declared(name)[1]) for name in self.entries)

    def _bytes(self, name: str) -> tuple[bytearray, str, Shape]:
        """The bytes of the tensor ``name``, its dtype and its shape, as :meth:`declared` checks them."""
        dtype, shape, begin, end = self.declared(name)
        data = bytearray(self._read_at(self._data_start + begin, end - begin))
        if len(data) != end - begin:
            raise ModelFileError(f"{self.path}: tensor {name!r} is cut short.")
        return data, dtype, shape

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor ``name`` (torch), checked against its declared dtype, shape and place in the file."""
        import torch  # the loaders have it already; describing a file (array, value_count) does not need it

        data, dtype, shape = self._bytes(name)
        torch_dtype = getattr(torch, DTYPES[dtype][0])
        if not data:
            return torch.empty(shape, dtype=torch_dtype)
        return torch.frombuffer(data, dtype=torch_dtype).reshape(shape)

    def array(self, name: str) -> Array:
        """The tensor ``name`` as a numpy array (bfloat16 widened to float32), checked as :meth:`tensor` checks it."""
        data, dtype, shape = self._bytes(name)
        if dtype == "BF16":  # the upper half of a float32
            return (np.frombuffer(data, "<u2").astype("<u4") << 16).view("<f4").reshape(shape)
        return np.frombuffer(data, _NUMPY_DTYPES[dtype]).reshape(shape)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ModelFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# The first bytes of files that users give for a model by mistake.
_MAGIC = {
    b"II*\x00": "a TIFF image",
    b"MM\x00*": "a TIFF image",
    b"II+\x00": "a BigTIFF image",
    b"MM\x00+": "a BigTIFF image",
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"\x93NUMPY": "a NumPy .npy file",
    b"PK\x03\x04": "a zip archive (a .npz file, or a BioImage Model Zoo package: Noise2VoidDenoiser.from_bioimageio)",
    b"\x89HDF": "an HDF5 file (a Keras model?)",
}


def _file_kind(prefix: bytes) -> str:
    """What a file starting with ``prefix`` is, where it is a kind users mistake for a model, else ``""``."""
    if not prefix:
        return "an empty file"
    return next((kind for magic, kind in _MAGIC.items() if prefix.startswith(magic)), "")


def non_default_parameters(params: Params, defaults: Params) -> list[str]:
    """The names of ``params`` whose values differ from ``defaults``, compared as JSON (an array
    against its list, a tuple against its list: what a model file stores)."""
    return [name for name, value in params.items() if _to_json(value) != _to_json(defaults.get(name))]


def estimator_document(params: Params, attributes: Mapping[str, Any], package_version: str) -> dict[str, Any]:
    """The JSON document :func:`n2v_estimator.models.weights.write_model` stores for a fitted estimator.

    ``params`` are the estimator's parameters (a ``random_state`` that is not
    an int is stored as ``None``, a device as its name) and ``attributes`` its
    ``vars()``, from which the fitted state (all but the weights) is taken.
    """
    params = dict(params)
    if not isinstance(params["random_state"], (int, np.integer, type(None))):
        params["random_state"] = None
    params["device"] = str(params["device"])
    fitted = {
        "network": attributes["model_"].description,
        **{
            key: attributes[key + "_"]
            for key in ("mean", "std", "n_channels", "spatial_ndim", "patch_shape", "history")
        },
    }
    if "n_features_in_" in attributes:
        fitted["n_features_in"] = attributes["n_features_in_"]
    if "data_min_" in attributes:
        fitted["data_range"] = [attributes["data_min_"], attributes["data_max_"]]
    for key in ("calibration", "image_calibration"):
        if key + "_" in attributes:
            fitted[key] = attributes[key + "_"]
    return {"package_version": package_version, "params": params, "fitted": fitted}


def decode_document(
    document: Mapping[str, Any], param_names: Iterable[str], source: PathLike
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parameters and fitted state from a document written by :func:`estimator_document`.

    Returns
    -------
    params : dict
        Constructor arguments, shape parameters as tuples (not yet validated).
    fitted : dict
        ``network`` (the description, unchecked), ``mean`` and ``std``
        (float64 arrays of ``n_channels``), ``patch_shape`` (tuple),
        ``history`` (list), ``n_features`` (``n_features_in_``: int or None) and
        ``data_range`` (the training data's per-channel minimum and maximum, or None)
        and ``calibration`` (a probabilistic model's, or None) and
        ``image_calibration`` (the training files' pixel sizes, or None).

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
        # Written before blind_spot existed: its networks mask pixels. Written while None picked by noise
        # model (2D Poisson-Gaussian: the blind-spot network): the network says which it has.
        params.setdefault("blind_spot", "mask")
        if params["blind_spot"] is None:
            params["blind_spot"] = document["fitted"]["network"].get("blind_spot", "mask")
        for key in SHAPE_PARAMS:
            if isinstance(params.get(key), list):
                params[key] = tuple(params[key])
        struct = params.get("struct_mask")
        if isinstance(struct, list):
            is_short = len(struct) == 2 and isinstance(struct[0], str)
            params["struct_mask"] = tuple(struct) if is_short else np.asarray(struct)
        saved = document["fitted"]
        n_channels, spatial_ndim = saved["n_channels"], saved["spatial_ndim"]
        if not (type(n_channels) is int and n_channels >= 1 and type(spatial_ndim) is int and spatial_ndim in (2, 3)):
            raise ModelFileError(
                f"{source}: n_channels={n_channels!r}, spatial_ndim={spatial_ndim!r} are not a data layout."
            )
        patch_shape, history = saved["patch_shape"], saved["history"]
        if not (
            isinstance(patch_shape, list)
            and len(patch_shape) == spatial_ndim
            and all(type(p) is int and p >= 1 for p in patch_shape)
        ):
            raise ModelFileError(f"{source}: patch_shape={patch_shape!r} is not {spatial_ndim} positive ints.")
        if not (isinstance(history, list) and all(isinstance(record, dict) for record in history)):
            raise ModelFileError(f"{source}: the training history is not a list of records.")
        mean = np.asarray(saved["mean"], dtype=np.float64).reshape(n_channels)
        std = np.asarray(saved["std"], dtype=np.float64).reshape(n_channels)
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ModelFileError(
                f"{source}: the normalisation statistics mean={mean.tolist()[:8]}, std={std.tolist()[:8]} "
                "are out of range (each must be finite, and std > 0)."
            )
        fitted = {
            "network": saved["network"],
            "mean": mean,
            "std": std,
            "patch_shape": tuple(patch_shape),
            "history": history,
            "n_features": int(saved["n_features_in"]) if "n_features_in" in saved else None,
            "data_range": _data_range(saved.get("data_range"), n_channels, source),
            "calibration": _calibration(saved.get("calibration"), n_channels, source),
            "image_calibration": _image_calibration(saved.get("image_calibration"), source),
        }
        if (n_channels, spatial_ndim) != (
            saved["network"].get("in_channels"),
            saved["network"].get("ndim"),
        ):
            raise ModelFileError(f"{source}: the network does not match the described data layout.")
    except ModelFileError:
        raise
    except Exception as exc:
        raise ModelFileError(f"{source} holds an invalid model description: {exc!r}") from exc
    return params, fitted


def _data_range(saved: Any, n_channels: int, source: PathLike) -> tuple[Float64Array, Float64Array] | None:
    """The training data's ``(min, max)`` per channel, or ``None`` (files written before it was recorded)."""
    if saved is None:
        return None
    low, high = (np.asarray(r, dtype=np.float64).reshape(n_channels) for r in saved)
    if not (np.isfinite(low).all() and np.isfinite(high).all() and (low <= high).all()):
        raise ModelFileError(
            f"{source}: the training data's range {low.tolist()[:8]} to {high.tolist()[:8]} is not finite."
        )
    return low, high


def _calibration(saved: Any, n_channels: int, source: PathLike) -> CalibrationRecord | None:
    """A probabilistic model's calibration record (:func:`n2v_estimator.fit.calibration.check_record`),
    or ``None`` for files without one."""
    if saved is None:
        return None
    try:
        return check_record(saved, n_channels)
    except ValueError as exc:
        raise ModelFileError(f"{source}: the calibration record is malformed: {exc}.") from None


def _image_calibration(saved: Any, source: PathLike) -> Calibration | None:
    """The training images' pixel sizes, units and channel names (:mod:`n2v_estimator.images.metadata`), checked."""
    try:
        return check_calibration(saved, source)
    except ValueError as exc:
        raise ModelFileError(str(exc)) from exc
