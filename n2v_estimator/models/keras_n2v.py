"""Models of the TensorFlow n2v package (0.2, 0.3): its ``config.json`` mapped to this estimator's
parameters, its Keras HDF5 weights read with h5py (no TensorFlow; nothing executed or unpickled)
and laid out as this package's U-Net in n2v's layout (:data:`n2v_estimator.nets.unet.LAYOUTS`).

The import writes an ordinary model file (in a temporary folder) and reads it back with
``load``, so an imported model passes every check a saved one does.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._extras import install_command
from .._version import __version__
from ..data.manipulators import MANIPULATORS
from ..gateway import hdf5
from ..gateway.budget import MAX_EXPANSION
from ..gateway.text import shown
from ..nets.builder import expected_state
from ..nets.unet import network_description
from ..runtime.memory import network_values

if TYPE_CHECKING:
    import h5py
    from numpy.typing import NDArray

    from .._typing import Description, Float64Array, Params, PathLike, Shape

# A config.json is a few kB; anything far larger is not one.
MAX_CONFIG_BYTES = 1 << 20
# Settings of n2v's N2VConfig and what they are here. "train" keys matter for training only.
_KNOWN = {
    "means",
    "stds",
    "n_dim",
    "axes",
    "n_channel_in",
    "n_channel_out",
    "unet_residual",
    "unet_n_depth",
    "unet_kern_size",
    "unet_n_first",
    "unet_last_activation",
    "unet_input_shape",
    "train_loss",
    "train_epochs",
    "train_steps_per_epoch",
    "train_learning_rate",
    "train_batch_size",
    "train_tensorboard",
    "train_checkpoint",
    "train_reduce_lr",
    "batch_norm",
    "n2v_perc_pix",
    "n2v_patch_shape",
    "n2v_manipulator",
    "n2v_neighborhood_radius",
    "single_net_per_channel",
    "blurpool",
    "skip_skipone",
    "structN2Vmask",
    "probabilistic",
}


class N2VModelError(ValueError):
    """An n2v model folder or configuration this package cannot read or represent; the message names it."""


def read_config(config: Mapping[str, Any] | PathLike) -> dict[str, Any]:
    """An n2v configuration as a dict: a dict (a mapping) as it is, or a ``config.json`` (or the model
    folder holding one) parsed as plain JSON. In a folder, a link to a file outside it is refused."""
    if isinstance(config, Mapping):
        return dict(config)
    path = Path(config)
    if path.is_dir():
        path = _in_folder(path, "config.json")
    if not path.is_file():
        raise N2VModelError(f"{path} does not exist: an n2v model folder holds config.json and weights_best.h5.")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise N2VModelError(f"{path} is {path.stat().st_size} bytes, not an n2v config.json (a few kB).")
    try:
        parsed = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise N2VModelError(f"{path} is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise N2VModelError(f"{path} holds a {type(parsed).__name__}, not an n2v configuration (a JSON object).")
    return parsed


def _in_folder(folder: PathLike, name: str) -> Path:
    """``folder / name``, refused where it is a link to something outside ``folder``."""
    path = Path(folder) / name
    if os.path.lexists(path) and not os.path.realpath(path).startswith(os.path.join(os.path.realpath(folder), "")):
        raise N2VModelError(f"{path} is a link to a file outside {folder}: only the folder's own files are read.")
    return path


def _count(low: int, high: int) -> tuple[Callable[[int], bool], str]:
    """A check of an int setting that a config could make absurd (``unet_n_first=10**400``)."""
    return (lambda v: low <= v <= high), f"an int from {low} to {high}"


def _checked_setting(
    config: Mapping[str, Any],
    key: str,
    kinds: type | tuple[type, ...],
    check: Callable[[Any], bool] | None = None,
    what: str = "",
) -> Any:
    """``config[key]``, checked to be of ``kinds`` (a bool is not an int here) and to pass ``check``."""
    value = config.get(key)
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds) or (check and not check(value)):
        raise N2VModelError(f"n2v setting {key}={shown(repr(value), 80)} is not {what or 'valid'}.")
    return value


def _effective_percentage(perc_pix: float, n_dim: int) -> float:
    """The share of blind spots n2v trains with at ``n2v_perc_pix``: one per box of side
    ``round(sqrt(100 / perc_pix))`` along every axis, in 2D and, as n2v computes it, in 3D too
    (a cube root would be right there: n2v places far fewer than it asks for). 0.198 is 0.2066%
    in 2D (22x22 boxes) and 0.0094% in 3D (22x22x22)."""
    box = round(math.sqrt(100 / perc_pix))  # numpy's round, as n2v's np.round: half to even
    return 100 / box**n_dim


def config_parameters(config: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The estimator parameters an n2v configuration stands for, and the differences that remain.

    Returns
    -------
    params : dict
        Constructor arguments of :class:`~n2v_estimator.Noise2VoidDenoiser`.
    differences : list of str
        What trains differently here (each also said in the docs' mapping table).

    Raises
    ------
    N2VModelError
        For a setting this package cannot represent, naming it.
    """
    unknown = sorted(set(config) - _KNOWN)
    if unknown:
        raise N2VModelError(f"n2v settings {unknown} are unknown to this import (n2v 0.2-0.3 has {sorted(_KNOWN)}).")
    if config.get("probabilistic"):
        raise N2VModelError(
            "probabilistic=True (n2v's PN2V output) cannot be represented; this import reads N2V models."
        )
    activation = config.get("unet_last_activation", "linear")
    if activation != "linear":
        raise N2VModelError(f"unet_last_activation={activation!r} cannot be represented: the output here is linear.")
    n_dim = _checked_setting(config, "n_dim", int, lambda v: v in (2, 3), "2 or 3")
    channels = _checked_setting(config, "n_channel_in", int, *_count(1, 4096))
    if config.get("n_channel_out", channels) != channels:
        raise N2VModelError(
            f"n_channel_out={config.get('n_channel_out')!r} differs from n_channel_in={channels}: "
            "a denoiser here gives back the channels it gets."
        )
    axes = _checked_setting(config, "axes", str, lambda v: v in ("YXC", "ZYXC"), "'YXC' or 'ZYXC' (channels last)")
    if len(axes) != n_dim + 1:
        raise N2VModelError(f"axes={axes!r} does not have n_dim={n_dim} spatial axes.")
    manipulator = _checked_setting(
        config, "n2v_manipulator", str, lambda v: v in MANIPULATORS, f"one of {list(MANIPULATORS)}"
    )
    patch = _checked_setting(
        config,
        "n2v_patch_shape",
        (list, tuple),
        lambda v: len(v) == n_dim and all(type(p) is int and 0 < p <= 2**16 for p in v),
        f"{n_dim} positive ints up to {2**16}",
    )
    struct = config.get("structN2Vmask")
    if struct is not None:
        struct = np.asarray(struct)
        if struct.ndim != n_dim or not np.isin(struct, (0, 1)).all():
            raise N2VModelError(f"structN2Vmask is not a {n_dim}D array of 0 and 1.")
    params = dict(
        axes=axes if channels > 1 else axes[:-1],
        patch_size=tuple(patch),
        batch_size=_checked_setting(config, "train_batch_size", int, *_count(1, 2**16)),
        max_epochs=_checked_setting(config, "train_epochs", int, *_count(1, 10**6)),
        steps_per_epoch=_checked_setting(config, "train_steps_per_epoch", int, *_count(1, 10**7)),
        learning_rate=float(
            _checked_setting(config, "train_learning_rate", (int, float), lambda v: 0 < v <= 1, "in (0, 1]")
        ),
        masked_pixel_percentage=_effective_percentage(
            _checked_setting(config, "n2v_perc_pix", (int, float), lambda v: 0 < v <= 100, "in (0, 100]"), n_dim
        ),
        manipulator=manipulator,
        neighborhood_radius=_checked_setting(config, "n2v_neighborhood_radius", int, *_count(1, 1024)),
        struct_mask=struct,
        depth=_checked_setting(config, "unet_n_depth", int, lambda v: 1 <= v <= 8, "an int from 1 to 8"),
        n_filters=_checked_setting(config, "unet_n_first", int, *_count(1, 4096)),
        kernel_size=_checked_setting(
            config, "unet_kern_size", int, lambda v: 1 <= v <= 31 and v % 2 == 1, "an odd int from 1 to 31"
        ),
        batch_norm=_checked_setting(config, "batch_norm", bool, what="a bool"),
        residual=_checked_setting(config, "unet_residual", bool, what="a bool"),
        blurpool=bool(config.get("blurpool", False)),
        skip_skipone=bool(config.get("skip_skipone", False)),
        independent_channels=bool(config.get("single_net_per_channel", True)),
        blind_spot="mask",
    )
    if params["blurpool"] and n_dim == 3:
        raise N2VModelError("blurpool=True in 3D: n2v itself has no 3D blur-pool (it raises NotImplementedError).")
    if params["residual"] and channels > 1 and not params["independent_channels"]:
        raise N2VModelError("unet_residual=True with a joint network of several channels: n2v refuses it too.")
    differences = []
    loss = config.get("train_loss", "mae")
    if loss != "mse":
        differences.append(f"train_loss={loss!r}: this package trains with the mean squared error on the blind spots")
    if config.get("train_reduce_lr") is not None:
        differences.append(
            "train_reduce_lr (plateau schedule): this package warms up, then decays the rate on a cosine"
        )
    return params, differences


def _weights_of(group: h5py.Group, name: str) -> dict[str, h5py.Dataset]:
    """``{"kernel": dataset, ...}`` of the Keras layer ``name``, each checked to be stored in the
    file as it declares (:mod:`n2v_estimator.gateway.hdf5`) before anything of it is read."""
    layer = hdf5.child(group, name)
    return {
        weight.rsplit("/", 1)[-1].split(":")[0]: hdf5.checked_dataset(hdf5.child(layer, weight), f"{name}/{weight}")
        for weight in hdf5.names(layer, "weight_names")
    }


def _suffix(name: str) -> int:
    """The number Keras appends to a layer's name (``conv2d_3``: 3; none: 0)."""
    match = re.search(r"_(\d+)$", name)
    return int(match.group(1)) if match else 0


def _conv_names(depth: int, prefix: str) -> list[str]:
    """The names n2v gives the convolutions of one channel's U-Net (``prefix``): down, middle, then up."""
    down = [f"{prefix}down_level_{n}_no_{i}" for n in range(depth) for i in (0, 1)]
    up = [f"{prefix}up_level_{n}_no_{i}" for n in reversed(range(depth)) for i in (0, 2)]
    return down + [f"{prefix}middle_0", f"{prefix}middle_2"] + up


def _read_array(dataset: h5py.Dataset, shape: Sequence[int], name: str) -> NDArray[np.float32]:
    """The weight ``name`` as float32, checked to have ``shape`` and finite values."""
    if tuple(dataset.shape) != tuple(shape):
        raise N2VModelError(
            f"weight {shown(name, 120)} has shape {tuple(dataset.shape)}, the network described needs {tuple(shape)}."
        )
    array = np.asarray(dataset[()], dtype=np.float32)
    if not np.isfinite(array).all():
        raise N2VModelError(f"weight {name} holds values that are not finite.")
    return array


def _keras_kernel(dataset: h5py.Dataset, torch_shape: Shape, name: str) -> NDArray[np.float32]:
    """A Keras kernel (spatial..., in, out) as PyTorch's (out, in, spatial...)."""
    ndim = len(torch_shape) - 2
    keras_shape = (*torch_shape[2:], torch_shape[1], torch_shape[0])
    return np.moveaxis(_read_array(dataset, keras_shape, name), (ndim + 1, ndim), (0, 1))


def read_weights(path: PathLike, description: Description) -> dict[str, torch.Tensor]:
    """The state dict of this package's U-Net ``description`` (layout ``"n2v-tf"``) from n2v's
    Keras HDF5 weights at ``path``. Every layer is checked by name, kind and shape before it is
    read; a missing, extra or misshapen weight is refused with its name."""
    try:
        import h5py
    except ImportError as exc:
        raise ImportError(f"reading n2v's Keras weights needs h5py ({exc}): {install_command('n2v')}") from exc
    del h5py  # imported to say which extra is missing; gateway.hdf5 reads the file
    # The weights must be in the file: a network far larger than it holds is refused before it is
    # described to torch (a 94 KB folder whose config asked for 1024 filters took 3.4 GB).
    size = os.stat(path).st_size
    declared = network_values(description) * 4
    if declared > max(size, hdf5.FREE_BYTES) * MAX_EXPANSION:
        raise N2VModelError(
            f"the network config.json describes holds {declared:,} bytes of weights; "
            f"{path} has {size:,}: it cannot hold them."
        )
    expected = expected_state(description)
    groups = description["in_channels"] if description["independent_channels"] else 1
    depth, batch_norm = description["depth"], description["batch_norm"]
    try:
        with hdf5.open_file(path) as file:
            return _read_state(file, path, description, expected, groups, depth, batch_norm)
    except hdf5.HDF5Error as exc:
        raise N2VModelError(f"{path}: {exc}") from None
    except N2VModelError:
        raise
    except (KeyError, TypeError, ValueError, OSError, AttributeError, IndexError) as exc:  # a crafted file's structure
        raise N2VModelError(
            f"{path} is not a Keras weights file this import can read: {shown(repr(exc), 300)}"
        ) from None


def _read_state(
    file: h5py.File,
    path: PathLike,
    description: Description,
    expected: Mapping[str, tuple[Shape, torch.dtype]],
    groups: int,
    depth: int,
    batch_norm: bool,
) -> dict[str, torch.Tensor]:
    """:func:`read_weights` on the open HDF5 ``file``."""
    root = hdf5.child(file, "model_weights") if "model_weights" in file else file
    names = hdf5.names(root, "layer_names")
    with_weights = [n for n in names if len(hdf5.names(hdf5.child(root, n), "weight_names")) > 0]
    norms = sorted((n for n in with_weights if n.startswith("batch_normalization")), key=_suffix)
    heads = sorted((n for n in with_weights if re.fullmatch(r"conv[23]d(_\d+)?", n)), key=_suffix)
    blurs = [f"channel_{i}max_{n}" for i in range(groups) for n in range(depth)] if description["blurpool"] else []
    convs = [name for i in range(groups) for name in _conv_names(depth, f"channel_{i}")]
    wanted = set(convs) | set(heads) | set(blurs) | set(norms)
    if len(heads) != groups or (batch_norm and len(norms) != len(convs)) or (not batch_norm and norms):
        raise N2VModelError(
            f"{path} holds {len(heads)} output and {len(norms)} batch-norm layer(s); the network "
            f"its config.json describes has {groups} and {len(convs) if batch_norm else 0}."
        )
    missing = sorted((set(convs) | set(blurs)) - set(with_weights))
    extra = sorted(set(with_weights) - wanted)
    if missing or extra:
        raise N2VModelError(
            f"{path} does not hold the network its config.json describes: "
            f"missing layers {shown(missing[:6], 300)}, unknown layers {shown(extra[:6], 300)}."
        )
    per_group: dict[str, list[tuple[h5py.Dataset, str]]] = {}  # our weight -> each group's dataset and its name
    for i in range(groups):
        modules = _module_names(depth, batch_norm)
        layers = _conv_names(depth, f"channel_{i}")
        for layer, (conv, norm) in zip(layers, modules):
            weights = _weights_of(root, layer)
            if set(weights) != {"kernel", "bias"}:
                raise N2VModelError(f"layer {layer} holds {sorted(weights)}, a convolution holds kernel and bias.")
            per_group.setdefault(conv + ".weight", []).append((weights["kernel"], layer + "/kernel"))
            per_group.setdefault(conv + ".bias", []).append((weights["bias"], layer + "/bias"))
            if batch_norm:
                bn_name = norms[i * len(layers) + layers.index(layer)]
                stats = _weights_of(root, bn_name)
                if set(stats) != {"gamma", "beta", "moving_mean", "moving_variance"}:
                    raise N2VModelError(f"layer {bn_name} holds {sorted(stats)}, not batch-norm statistics.")
                for ours, theirs in (
                    ("weight", "gamma"),
                    ("bias", "beta"),
                    ("running_mean", "moving_mean"),
                    ("running_var", "moving_variance"),
                ):
                    per_group.setdefault(f"{norm}.{ours}", []).append((stats[theirs], f"{bn_name}/{theirs}"))
        head = _weights_of(root, heads[i])
        if set(head) != {"kernel", "bias"}:
            raise N2VModelError(f"layer {heads[i]} holds {sorted(head)}, the output convolution holds kernel and bias.")
        per_group.setdefault("head.weight", []).append((head["kernel"], heads[i] + "/kernel"))
        per_group.setdefault("head.bias", []).append((head["bias"], heads[i] + "/bias"))
        for n in range(depth) if description["blurpool"] else ():
            _check_blur(root, f"channel_{i}max_{n}", description["n_filters"] * 2**n)
    state = {}
    for name, (shape, _) in expected.items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.zeros((), dtype=torch.long)
            continue
        parts = per_group[name]
        rows = shape[0] // len(parts)
        arrays = [
            _keras_kernel(d, (rows, *shape[1:]), n)
            if name.endswith("weight") and len(shape) > 1
            else _read_array(d, (rows,), n)
            for d, n in parts
        ]
        state[name] = torch.from_numpy(np.ascontiguousarray(np.concatenate(arrays)))
    return state


def _module_names(depth: int, batch_norm: bool) -> list[tuple[str, str]]:
    """Our (conv, batch norm) module names in the order of :func:`_conv_names`."""
    step = 3 if batch_norm else 2
    blocks = [f"down.{n}" for n in range(depth)]
    pairs = [(f"{block}.{j * step}", f"{block}.{j * step + 1}") for block in blocks for j in (0, 1)]
    pairs += [(f"bottom.{j * step}", f"bottom.{j * step + 1}") for j in (0, 1)]
    pairs += [(f"up.{k}.{j * step}", f"up.{k}.{j * step + 1}") for k in range(depth) for j in (0, 1)]
    return pairs


def _check_blur(root: h5py.Group, name: str, channels: int) -> None:
    """n2v's blur-pool stores its fixed binomial kernel; a different one cannot be represented."""
    weights = _weights_of(root, name)
    kernel = (
        _read_array(weights.get("blur_kernel"), (3, 3, channels, 1), name + "/blur_kernel")
        if "blur_kernel" in weights
        else None
    )
    binomial = np.outer([1, 2, 1], [1, 2, 1]) / 16
    if kernel is None or not np.allclose(kernel[..., 0], binomial[..., None], atol=1e-6):
        raise N2VModelError(f"layer {name}'s blur kernel is not n2v's fixed binomial one; it cannot be represented.")


def _statistics(config: Mapping[str, Any], key: str, channels: int) -> Float64Array:
    """The per-channel normalisation ``config[key]`` (n2v stores numbers as strings), checked."""
    values: Any = config.get(key)  # anything a stranger's config holds, judged below
    try:
        array = np.asarray([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise N2VModelError(f"config.json's {key} {shown(values, 80)} are not numbers.") from None
    if array.shape != (channels,) or not np.isfinite(array).all():
        raise N2VModelError(
            f"config.json's {key} {shown(values, 80)} are not {channels} finite number(s), one per channel."
        )
    return array


def model_document(
    folder: PathLike, weights: str, default_params: Params
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, document)`` of the model file an n2v model folder stands for."""
    folder = Path(folder)
    config = read_config(folder)
    params, _ = config_parameters(config)
    channels = config["n_channel_in"]
    mean, std = (_statistics(config, key, channels) for key in ("means", "stds"))
    if not (std > 0).all():
        raise N2VModelError(f"config.json's stds {std.tolist()} must all be positive: the images are divided by them.")
    name = {"best": "weights_best.h5", "last": "weights_last.h5"}.get(weights, weights)
    path = folder / name
    # Only a name in the folder; anything that exists there is gateway.hdf5's to judge (a pipe: without blocking).
    if Path(name).name != name or not os.path.lexists(path := _in_folder(folder, name)):
        raise N2VModelError(
            f"{path} does not exist: weights is 'best', 'last' or the name of a .h5 file in the folder."
        )
    description = network_description(config["n_dim"], channels, params, None, layout="n2v-tf")
    if channels > 1 and params["independent_channels"]:
        # n2v 0.3 cuts each channel out with Lambda(lambda x: x[..., i:i+1]) in a loop: the lambda
        # reads i when the graph runs, after the loop, so every channel's network was trained on,
        # and predicts from, the last channel (seen in n2v 0.3.3's own predictions).
        raise N2VModelError(
            f"{folder.name}: n2v trained this model's {channels} per-channel networks (single_net_per_channel=True) "
            "all on its last channel, and predicts every channel from it (a late-binding lambda in n2v 0.3); "
            "its networks do not denoise the other channels. Retrain here: "
            "Noise2VoidDenoiser.from_n2v_config(folder).fit(images), or import a joint network "
            "(single_net_per_channel=False) or a single-channel one."
        )
    tensors = read_weights(path, description)
    fitted = {
        "network": description,
        "mean": mean.tolist(),
        "std": std.tolist(),
        "n_channels": channels,
        "spatial_ndim": config["n_dim"],
        "patch_shape": list(params["patch_size"]),
        "history": [],
    }
    document_params = {**default_params, **params}
    document_params["struct_mask"] = None if params["struct_mask"] is None else params["struct_mask"].tolist()
    return tensors, {"package_version": __version__, "params": document_params, "fitted": fitted}
