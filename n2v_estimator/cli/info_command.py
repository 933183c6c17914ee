"""The ``info`` command: what a model file holds (:func:`describe_model`), as lines or one JSON object.

Read without torch from the file's header and document (:mod:`n2v_estimator.models.file_format`),
so that ``info`` answers at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..fit.calibration import calibration_problems
from ..gateway.text import shown
from ..images.metadata import describe
from ..models.file_format import ModelFile, decode_document, non_default_parameters
from .options import add_flag, estimator_signature
from .paths import model_to_read

if TYPE_CHECKING:
    import argparse

    from .._typing import PathLike
    from .options import CommandFactory


def add_info_command(new_command: CommandFactory) -> None:
    """The ``info`` command: what a model file holds."""
    info = new_command(
        "info",
        "describe a model file",
        "info: what a model file holds: parameters (those that differ from the defaults marked), "
        "axes, channels, patch shape, normalisation, training history and noise model.",
    )
    info.add_argument("path", metavar="PATH", help="a model written by 'n2v-estimator fit'")
    add_flag(info, "--json", help="print one JSON object instead")
    info.set_defaults(run=run_info)


def history_summary(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Epochs, first and last train loss, best validation loss and its epoch, seconds."""
    summary: dict[str, Any] = {"epochs": len(history), "seconds": float(sum(r.get("seconds", 0.0) for r in history))}
    if history:
        summary["first_train_loss"] = history[0].get("train_loss")
        summary["last_train_loss"] = history[-1].get("train_loss")
        validated = [r for r in history if r.get("val_loss") is not None]
        best = min(validated, key=lambda r: r["val_loss"]) if validated else None
        summary["best_val_loss"] = best["val_loss"] if best else None
        summary["best_val_epoch"] = best.get("epoch") if best else None
    return summary


def history_line(summary: Mapping[str, Any]) -> str:
    """``3 epoch(s) in 1.2 s, train loss 0.9 -> 0.4, best validation loss 0.5 (epoch 2).``"""
    if not summary["epochs"]:
        return "no training history."
    line = (
        f"{summary['epochs']} epoch(s) in {summary['seconds']:.1f} s, train loss "
        f"{summary['first_train_loss']:.4g} -> {summary['last_train_loss']:.4g}"
    )
    if summary["best_val_loss"] is not None:
        line += f", best validation loss {summary['best_val_loss']:.4g} (epoch {summary['best_val_epoch']})"
    return line + "."


def _jsonable(value: object) -> Any:
    """``value`` as JSON reads it back: arrays as lists, anything else unknown as its string."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def describe_model(path: PathLike) -> dict[str, Any]:
    """What the model file ``path`` holds, as one JSON-able dict (``info --json`` prints it).

    Read from the file's header and document, checked as loading checks them (a known format
    version, bounded JSON, a valid fitted state, every tensor declared inside the file), without
    torch: the network itself is built, and its weights checked against it, when a command or
    :meth:`Noise2VoidDenoiser.load` loads the model.
    """
    defaults, _ = estimator_signature()
    with ModelFile(path) as file:
        document = file.document
        params, fitted = decode_document(document, defaults, path)
        n_values = file.value_count()
        noise = {
            name[len("noise.log_") :]: np.exp(file.array(name).astype(np.float64)).tolist()
            for name in ("noise.log_sigma", "noise.log_a", "noise.log_b")
            if name in file.entries
        }
    saved = _jsonable(document.get("params", {}))
    network = fitted["network"]
    return {
        "path": str(path),
        "package_version": document.get("package_version"),
        "format_version": document.get("format_version"),
        "parameters": saved,
        "non_default_parameters": sorted(non_default_parameters(saved, _jsonable(defaults))),
        "axes": params.get("axes"),
        "spatial_ndim": network["ndim"],
        "n_channels": network["in_channels"],
        "patch_shape": list(fitted["patch_shape"]),
        "mean": fitted["mean"].tolist(),
        "std": fitted["std"].tolist(),
        "n_values": n_values,
        "history": history_summary(fitted["history"]),
        "noise": noise or None,
        "calibration": fitted["calibration"],
        "image_calibration": fitted["image_calibration"],
    }


def _calibration_lines(calibration: Mapping[str, Any]) -> list[str]:
    """``info``'s lines on a probabilistic model's calibration (:mod:`n2v_estimator.fit.calibration`)."""
    lines = [
        (
            f"calibration:   residual / predicted variance of held-out blind spots ({calibration['patches']} "
            "patches), per intensity bin; 1 is exact"
        )
    ]
    for c, edges in enumerate(calibration["edges"]):
        bins = [
            f"{edges[k]:.4g}-{edges[k + 1]:.4g}: {ratio if ratio is None else format(ratio, '.2f')}"
            for k, ratio in enumerate(calibration["ratio"][c])
        ]
        lines.append(
            f"               {'channel ' + str(c) + ': ' if len(calibration['edges']) > 1 else ''}" + "; ".join(bins)
        )
    problems = calibration_problems(calibration)
    lines.append("               " + ("off: " + "; ".join(problems) if problems else "within tolerance"))
    return lines


def _listed_numbers(values: Iterable[float]) -> str:
    """``0.5, 1.25``: numbers to six significant digits."""
    return ", ".join(f"{v:.6g}" for v in values)


def run_info(args: argparse.Namespace) -> int:
    """Print what the model file ``args.path`` holds; return the exit status (0)."""
    about = describe_model(model_to_read(args.path, "info"))
    if args.json:
        print(json.dumps(about))
        return 0
    # Strings of the file are a stranger's: shown escaped (parameters below are shown as reprs).
    axes = shown(about["axes"], 40) if about["axes"] is not None else "None (2D arrays YX, 3D arrays SYX)"
    lines = [
        f"{about['path']}: n2v-estimator model (format {about['format_version']}, "
        f"written by version {shown(about['package_version'], 40)})",
        f"images:        {about['spatial_ndim']}D, {about['n_channels']} channel(s), axes {axes}",
        f"network:       {about['spatial_ndim']}D U-Net, {about['n_values']:,} values (weights and running "
        "statistics); patches " + " x ".join(map(str, about["patch_shape"])),
        f"normalisation: mean {_listed_numbers(about['mean'])}; std {_listed_numbers(about['std'])} (per channel)",
        f"training:      {history_line(about['history'])}",
    ]
    if about["image_calibration"]:
        lines.append(f"trained on:    {describe(about['image_calibration'])}")
    if about["noise"]:
        lines.append(
            "noise model:   " + "; ".join(f"{name} {_listed_numbers(v)}" for name, v in about["noise"].items())
        )
    if about["calibration"]:
        lines.extend(_calibration_lines(about["calibration"]))
    lines.append("parameters (* differs from the default):")
    for name, value in about["parameters"].items():
        lines.append(f"  {'*' if name in about['non_default_parameters'] else ' '} {name} = {value!r}")
    print("\n".join(lines))
    return 0
