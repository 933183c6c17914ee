"""The calibration in OME-Zarr's own words, read and written: its ``multiscales`` axes (units), its scale
transformations and its ``omero`` channel labels.

:func:`zarr_calibration` reads them into the record of :mod:`n2v_estimator.images.metadata`;
:func:`ome_zarr_entries` renders a record back as the entries of an OME-Zarr 0.4 image.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .metadata import UNITS, make_calibration

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .metadata import Calibration


def _scales(transformations: Any) -> list[Any] | None:
    """The ``scale`` of a list of OME-Zarr coordinate transformations, or ``None``."""
    for item in transformations or []:
        if isinstance(item, dict) and item.get("type") == "scale" and isinstance(item.get("scale"), list):
            return item["scale"]
    return None


def zarr_calibration(
    multiscale: Mapping[str, Any], omero: Mapping[str, Any] | None, axes: str | None, dropped: list[str] | None = None
) -> Calibration:
    """The calibration of an OME-Zarr image: its ``multiscale`` entry's axis units and
    its first dataset's scale (times the multiscale's own), the ``omero`` channel labels;
    what is left out is said in ``dropped`` (a list)."""
    if axes is None:
        return {}
    entries = multiscale.get("axes") or []
    datasets = multiscale.get("datasets") or [{}]
    level = _scales(datasets[0].get("coordinateTransformations") if isinstance(datasets[0], dict) else None)
    whole = _scales(multiscale.get("coordinateTransformations"))
    scale, unit = {}, {}
    for k, letter in enumerate(axes):
        entry = entries[k] if k < len(entries) and isinstance(entries[k], dict) else {}
        factors = [s[k] for s in (level, whole) if s is not None and len(s) == len(axes)]
        try:
            value = math.prod(float(f) for f in factors)
        except (TypeError, ValueError, OverflowError):
            if dropped is not None:
                dropped.append(f"the scale of {letter} (not a number)")
            continue
        if letter != "C" and (value != 1.0 or "unit" in entry):  # a scale of 1 without a unit says nothing
            scale[letter], unit[letter] = value, entry.get("unit")
    channels = (omero or {}).get("channels") if isinstance(omero, dict) else None
    names = [c.get("label") if isinstance(c, dict) else None for c in channels] if isinstance(channels, list) else None
    return make_calibration(scale, unit, names if names and None not in names else None, axes, dropped)


def ome_zarr_entries(
    record: Mapping[str, Any], axes: str, types: Mapping[str, str]
) -> tuple[list[dict[str, str]], list[float], dict[str, list[dict[str, str]]] | None]:
    """``(axis entries, scale, omero)`` of an OME-Zarr 0.4 image with ``axes`` (in OME's
    order) calibrated as ``record`` says; ``types`` maps our letters to OME axis types."""
    scale, unit = record.get("scale", {}), record.get("unit", {})
    entries = []
    for letter in axes:
        entry = {"name": "t" if letter == "S" else letter.lower(), "type": types[letter]}
        if letter != "C" and unit.get(letter) in UNITS:
            entry["unit"] = unit[letter]
        entries.append(entry)
    scales = [float(scale.get(letter, 1.0)) if letter != "C" else 1.0 for letter in axes]
    names = record.get("channel_names")
    omero = {"channels": [{"label": name} for name in names]} if names else None
    return entries, scales, omero
