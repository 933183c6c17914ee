"""The calibration in TIFF files' own words, read and written: ImageJ's, OME-TIFF's and a plain TIFF's.

ImageJ TIFF says it in its description (``unit``, ``spacing``, ``finterval``) and
its resolution tags (pixels per unit), OME-TIFF in the ``Pixels`` element of its
XML (``PhysicalSizeX``, ``TimeIncrement``, ``Channel Name``), a plain TIFF in its
resolution tags alone. :func:`tiff_calibration` reads them into the record of
:mod:`n2v_estimator.images.metadata`, with the ImageJ entries an ImageJ output keeps
(origins, value calibration, slice labels, info, properties: numbers or bounded
plain text, checked; what fails is said in ``dropped``). The writers render a
record back as tifffile's options: :func:`imagej_options`,
:func:`ome_tiff_metadata` and :func:`resolution_options`.
"""

from __future__ import annotations

import html
import math
import re
from typing import TYPE_CHECKING, Any

from ..gateway.budget import pixels_element
from ..gateway.text import plain
from .metadata import (
    LENGTH_UNITS,
    MAX_CHANNEL_NAMES,
    TIME_UNITS,
    UNITS,
    checked_scale,
    make_calibration,
    unit_name,
    unit_symbol,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from numpy.typing import DTypeLike
    from tifffile import TiffFile

    from .metadata import Calibration

# ImageJ description entries carried from an ImageJ input to an ImageJ output, checked: origins
# and the value calibration (a 16-bit file's signed offset: numbers, and its unit); the IJMetadata
# tag's slice labels, info and properties (bounded plain text). Not LUTs or display ranges.
_IMAGEJ_NUMBERS = ("xorigin", "yorigin", "zorigin", "cf", *(f"c{k}" for k in range(10)))
_IMAGEJ_KEPT = (*_IMAGEJ_NUMBERS, "vunit", "Labels", "Info", "Properties")
MAX_LABELS = 2**16  # slice labels: one per plane
MAX_INFO = 2**16  # ImageJ's Info: free text of a few lines
MAX_PROPERTIES = 256
_IMAGEJ_DTYPES = ("uint8", "uint16", "float32")

_CHANNEL = re.compile(r"<(?:\w+:)?Channel\b")
_ATTRIBUTE = re.compile(r'\b([A-Za-z]+)\s*=\s*(?:"([^"]{0,1024})"|\'([^\']{0,1024})\')')
_CHANNEL_TAG_CHARS = 4096


def _attributes(text: str) -> dict[str, str]:
    return {key: html.unescape(a if a or not b else b) for key, a, b in _ATTRIBUTE.findall(text)}


def _channel_tags(content: str) -> list[str]:
    """The attribute texts of the ``Channel`` elements in ``content``, each at most
    :data:`_CHANNEL_TAG_CHARS` long, at most one more than :data:`MAX_CHANNEL_NAMES`."""
    tags: list[str] = []
    for match in _CHANNEL.finditer(content):
        close = content.find(">", match.end(), match.end() + _CHANNEL_TAG_CHARS)
        if close < 0 or len(tags) > MAX_CHANNEL_NAMES:
            break
        tags.append(content[match.end() : close])
    return tags


def _ome_tiff_record(
    description: str | None, tiff_axes: str, axes: str | None, dropped: list[str] | None = None
) -> Calibration:
    """The calibration in an OME-XML ``description`` (its first ``Pixels`` element)."""
    element = pixels_element(description)
    if element is None:
        return {}
    pixels = _attributes(element[0])
    scale, unit = {}, {}
    for letter in "ZYX":
        if f"PhysicalSize{letter}" in pixels:
            scale[letter] = pixels[f"PhysicalSize{letter}"]
            unit[letter] = pixels.get(f"PhysicalSize{letter}Unit", "µm")  # OME's default
    if tiff_axes.startswith("T") and "TimeIncrement" in pixels:
        scale["S"], unit["S"] = pixels["TimeIncrement"], pixels.get("TimeIncrementUnit", "s")
    channels = [_attributes(tag) for tag in _channel_tags(element[1])]
    names = [c.get("Name") for c in channels] if channels and all("Name" in c for c in channels) else None
    return make_calibration(scale, unit, names, axes, dropped)


def _imagej_record(
    imagej: Mapping[str, Any],
    resolution: Sequence[float] | None,
    tiff_axes: str,
    axes: str | None,
    dropped: list[str] | None = None,
) -> Calibration:
    """The calibration in an ImageJ description (as tifffile parses it) and resolution tags."""
    unit = unit_name(imagej.get("unit"))
    scale, units = {}, {}
    if unit is not None and resolution is not None:
        for letter, pixels_per_unit, key in (("X", resolution[0], "unit"), ("Y", resolution[1], "yunit")):
            size = checked_scale(pixels_per_unit)
            if size is not None:
                scale[letter], units[letter] = 1 / size, unit_name(imagej.get(key)) or unit
    if unit is not None and "spacing" in imagej:
        scale["Z"], units["Z"] = imagej["spacing"], unit_name(imagej.get("zunit")) or unit
    if tiff_axes.startswith("T") and "finterval" in imagej:
        scale["S"], units["S"] = imagej["finterval"], unit_name(imagej.get("tunit")) or "second"
    return make_calibration(scale, units, None, axes, dropped)


def _resolution_record(
    resolution: Sequence[float] | None, resolution_unit: int | None, axes: str | None
) -> Calibration:
    """The pixel size in a plain TIFF's resolution tags, where they name inches or centimetres."""
    unit = {2: "inch", 3: "centimeter"}.get(int(resolution_unit or 1))
    if unit is None or resolution is None:
        return {}
    sizes = [size for size in (checked_scale(r) for r in resolution) if size is not None]
    if len(sizes) < len(resolution):  # one is not a finite positive number
        return {}
    return make_calibration({"X": 1 / sizes[0], "Y": 1 / sizes[1]}, {"X": unit, "Y": unit}, None, axes)


def _imagej_extras(imagej: Mapping[str, Any], dropped: list[str]) -> dict[str, Any]:
    """The entries of :data:`_IMAGEJ_KEPT` in ``imagej`` that pass their checks; what fails is said
    in ``dropped``."""
    extras = {}
    for key in _IMAGEJ_KEPT:
        if key not in imagej:
            continue
        value = imagej[key]
        if key in _IMAGEJ_NUMBERS:
            ok = type(value) in (int, float) and math.isfinite(value)
        elif key == "vunit":
            ok = plain(value, 64)
        elif key == "Labels":  # one label reads as a string
            ok = plain(value) or isinstance(value, list) and len(value) <= MAX_LABELS and all(plain(v) for v in value)
        elif key == "Info":
            ok = plain(value, MAX_INFO, lines=True)
        else:  # Properties
            ok = (
                isinstance(value, dict)
                and len(value) <= MAX_PROPERTIES
                and all(plain(k) and plain(v, 4096, lines=True) for k, v in value.items())
            )
        if ok:
            extras[key] = value
        else:
            dropped.append(
                f"ImageJ's {key} (not {'a finite number' if key in _IMAGEJ_NUMBERS else 'bounded plain text'})"
            )
    return extras


def tiff_calibration(
    tif: TiffFile, tiff_axes: str, axes: str | None, dropped: list[str] | None = None
) -> tuple[Calibration, dict[str, Any]]:
    """``(record, imagej_extras)`` for the open ``tifffile.TiffFile`` ``tif`` whose first
    series has ``tiff_axes`` (tifffile's letters) and ``axes`` (ours; ``None``: nothing is read).

    OME-XML wins over the resolution tags; ImageJ's description says what the
    resolution tags' unit is. ``imagej_extras`` are the ImageJ entries an ImageJ
    output keeps (origins, value calibration, slice labels, info), checked. What is
    left out is said in ``dropped`` (a list).
    """
    dropped = [] if dropped is None else dropped
    if axes is None:
        return {}, {}
    page = tif.pages.first
    try:
        resolution, resolution_unit = page.resolution, page.resolutionunit
    except (ArithmeticError, ValueError, TypeError, KeyError, IndexError, AttributeError):  # a damaged tag
        resolution, resolution_unit = None, None
    if tif.is_ome:
        return _ome_tiff_record(page.description, tiff_axes, axes, dropped), {}
    if tif.is_imagej:
        imagej = tif.imagej_metadata or {}
        return _imagej_record(imagej, resolution, tiff_axes, axes, dropped), _imagej_extras(imagej, dropped)
    return _resolution_record(resolution, resolution_unit, axes), {}


def _ascii(value: Any) -> Any:
    """ImageJ's description is ASCII lines of ``key=value``: other characters as ImageJ writes
    them, ``\\uXXXX``, and control characters (a line break would start another entry) as spaces."""
    if not isinstance(value, str):
        return value
    return "".join(" " if ord(c) < 32 or ord(c) == 127 else c if ord(c) < 128 else f"\\u{ord(c):04X}" for c in value)


def imagej_options(
    record: Mapping[str, Any], extras: Mapping[str, Any], tiff_axes: str, dtype: DTypeLike
) -> dict[str, Any] | None:
    """tifffile options writing an ImageJ TIFF with ``record``'s calibration and the
    input's ``extras``, or ``None`` where ImageJ cannot hold the data (its axes are
    not in ImageJ's order ``TZCYXS``, its type is not 8-bit, 16-bit or float32, or it
    is colour (``S``) other than 8-bit)."""
    if str(dtype) not in _IMAGEJ_DTYPES or not _in_order(tiff_axes, "TZCYXS"):
        return None
    if "S" in tiff_axes and str(dtype) != "uint8":  # ImageJ's colour images are 8-bit RGB
        return None
    scale, unit = record.get("scale", {}), record.get("unit", {})
    metadata = {"axes": tiff_axes}
    options = {}
    space = [a for a in "XYZ" if a in scale and unit.get(a) is not None]
    if space:
        metadata["unit"] = _ascii(_imagej_unit(unit[space[0]]))
        for a in space[1:]:
            if unit[a] != unit[space[0]]:
                metadata[f"{a.lower()}unit"] = _ascii(_imagej_unit(unit[a]))
    if "X" in space and "Y" in space:
        options["resolution"] = (1 / scale["X"], 1 / scale["Y"])
    if "Z" in space:
        metadata["spacing"] = scale["Z"]
    if "S" in scale and "T" in tiff_axes:
        metadata["finterval"] = scale["S"]
        if unit.get("S") not in (None, "second"):
            metadata["tunit"] = _ascii(_imagej_unit(unit["S"]))
    metadata.update({k: _ascii(v) if k not in ("Labels", "Info", "Properties") else v for k, v in extras.items()})
    return {"imagej": True, "metadata": metadata, **options}


def _imagej_unit(name: str) -> str:
    return UNITS[name][1] if name in UNITS else name


def _in_order(letters: str, order: str) -> bool:
    positions = [order.find(a) for a in letters]
    return -1 not in positions and positions == sorted(positions)


def ome_tiff_metadata(record: Mapping[str, Any], n_channels: int | None) -> dict[str, Any]:
    """Entries for tifffile's OME-XML metadata: ``PhysicalSize*`` (with units),
    ``TimeIncrement`` and channel names. A unit OME has no symbol for is left out,
    with its size (OME would read it as micrometres)."""
    scale, unit = record.get("scale", {}), record.get("unit", {})
    metadata = {}
    for letter in "XYZ":
        if letter in scale and unit.get(letter) in LENGTH_UNITS:
            metadata[f"PhysicalSize{letter}"] = scale[letter]
            metadata[f"PhysicalSize{letter}Unit"] = unit_symbol(unit[letter])
    if "S" in scale and unit.get("S", "second") in TIME_UNITS:
        metadata["TimeIncrement"] = scale["S"]
        metadata["TimeIncrementUnit"] = unit_symbol(unit.get("S", "second"))
    names = record.get("channel_names")
    if names and len(names) == n_channels:
        metadata["Channel"] = {"Name": list(names)}
    return metadata


def resolution_options(record: Mapping[str, Any]) -> dict[str, Any]:
    """tifffile's ``resolution`` in pixels per centimetre (the TIFF tags every reader
    knows) where ``X`` and ``Y`` have lengths, else nothing."""
    scale, unit = record.get("scale", {}), record.get("unit", {})
    if not all(a in scale and unit.get(a) in LENGTH_UNITS for a in "XY"):
        return {}
    per_cm = [0.01 / (scale[a] * LENGTH_UNITS[unit[a]][2]) for a in "XY"]
    return {"resolution": tuple(per_cm), "resolutionunit": "CENTIMETER"}
