"""Images as the commands read them: the axes they are read with, checked against each file, and
the metadata a file's checks left out, named."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.axes import resolve_axes

if TYPE_CHECKING:
    from .._typing import ImagesLike, PathLike


def checked_axes(axes: str | None, array: ImagesLike, path: PathLike) -> str:
    """``axes`` resolved for ``array`` of ``path``, or a ValueError that names the file."""
    try:
        return resolve_axes(axes, array.ndim)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path} has shape {tuple(array.shape)}: {exc} Pass --axes to name its axes.") from exc


def axes_to_read_with(given: str | None, found: str | None, model_axes: str | None, array: ImagesLike) -> str | None:
    """The axes to read ``array`` with: ``--axes``, else the file's, then the model's
    where they fit; ``None``: the estimator infers them (and refuses a colour image)."""
    return given or found or (model_axes if model_axes and len(model_axes) == array.ndim else None)


def warn_of_dropped_metadata(path: Path, metadata: Mapping[str, Any]) -> None:
    """A warning naming what of ``path``'s metadata failed its checks and is carried nowhere."""
    dropped = metadata.get("dropped") or []
    if dropped:
        more = f" and {len(dropped) - 4} more" if len(dropped) > 4 else ""
        warnings.warn(
            f"{path}: left out of its calibration and of the outputs: {'; '.join(dropped[:4])}{more}.",
            UserWarning,
            stacklevel=2,
        )
