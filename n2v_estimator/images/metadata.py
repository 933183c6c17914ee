"""The physical calibration of an image: pixel sizes and units, the frame interval, channel names, in one record.

Every format says it its own way (:mod:`n2v_estimator.images.tiff_calibration` reads and writes TIFF's, ImageJ's
and OME-TIFF's words, :mod:`n2v_estimator.images.zarr_calibration` OME-Zarr's); here is the one neutral record
they read into and write from, keyed by our axis letters::

    {"scale": {"Y": 0.1, "X": 0.1, "Z": 0.5, "S": 2.0},
     "unit": {"Y": "micrometer", "X": "micrometer", "Z": "micrometer", "S": "second"},
     "channel_names": ["DAPI", "GFP"]}

(every entry optional; units as OME-Zarr spells them, the UDUNITS-2 names;
``S`` is calibrated only where it is time), with what is done to it: made and
checked (:func:`make_calibration`, :func:`check_calibration` for a model file's),
shared by several images (:func:`common_calibration`), limited to an image's axes
(:func:`for_axes`), said in a line (:func:`describe`) and compared
(:func:`differs`). Display settings (LUTs, display ranges, OME windows) are not
carried: a denoised image needs its own.

Everything read from a file is a stranger's and is checked before it is kept:
scales finite and positive, units among those known here, channel names plain
text (:func:`n2v_estimator.gateway.text.plain`) of at most 256 characters and at most
4096 of them. What fails is left out of the record (and so of every output), and
said: ``dropped`` collects a line for each. A crafted file cannot make a record that
fails to save, a model file that fails to load, or an output that carries its strings.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, TypeAlias

from ..gateway.text import MAX_TEXT, plain, shown

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

#: A checked calibration record: ``scale`` (floats) and ``unit`` (OME-Zarr's unit names), each keyed by our
#: axis letters, and ``channel_names`` (strings); every entry optional.
Calibration: TypeAlias = dict[str, Any]

# Unit names (OME-Zarr's) -> (OME-TIFF symbol, ImageJ spelling, size in metres or seconds).
LENGTH_UNITS = {
    "picometer": ("pm", "pm", 1e-12),
    "angstrom": ("Å", "angstrom", 1e-10),
    "nanometer": ("nm", "nm", 1e-9),
    "micrometer": ("µm", "micron", 1e-6),
    "millimeter": ("mm", "mm", 1e-3),
    "centimeter": ("cm", "cm", 1e-2),
    "meter": ("m", "m", 1.0),
    "inch": ("in", "inch", 0.0254),
}
TIME_UNITS = {
    "nanosecond": ("ns", "ns", 1e-9),
    "microsecond": ("µs", "us", 1e-6),
    "millisecond": ("ms", "ms", 1e-3),
    "second": ("s", "sec", 1.0),
    "minute": ("min", "min", 60.0),
    "hour": ("h", "hour", 3600.0),
    "day": ("d", "day", 86400.0),
}
UNITS = {**LENGTH_UNITS, **TIME_UNITS}
# Other spellings seen in files (lower case; "µ" as the micro sign and as the Greek mu).
_ALIASES = {
    **{name: name for name in UNITS},
    **{f"{name}s": name for name in UNITS},
    **{symbol.lower(): name for name, (symbol, _, _) in UNITS.items()},
    **{spelling.lower(): name for name, (_, spelling, _) in UNITS.items()},
    "um": "micrometer",
    "μm": "micrometer",
    "microns": "micrometer",
    "micrometre": "micrometer",
    "nanometre": "nanometer",
    "millimetre": "millimeter",
    "centimetre": "centimeter",
    "metre": "meter",
    "å": "angstrom",
    "a": "angstrom",
    "μs": "microsecond",
    "us": "microsecond",
    "msec": "millisecond",
    "sec": "second",
    "secs": "second",
    "mins": "minute",
    "hr": "hour",
    "hrs": "hour",
    "hours": "hour",
}
# What "no unit" looks like in ImageJ files: the axis is not calibrated.
_UNCALIBRATED = {"", "pixel", "pixels", "px"}
MAX_CHANNEL_NAMES = 4096
_LETTERS = "SCZYX"


def unit_name(text: object) -> str | None:
    """The OME-Zarr name of a unit as a file spells it (``"um"``, ``"micron"``,
    ``"\\u00B5m"``, ``"µm"``, ``"sec"``...), the text itself where it is none we
    know, ``None`` for "no unit" (``"pixel"``, empty).

    >>> unit_name("micron"), unit_name("\\\\u00B5m"), unit_name("sec"), unit_name("pixel"), unit_name("furlong")
    ('micrometer', 'micrometer', 'second', None, 'furlong')
    """
    if not isinstance(text, str):
        return None
    text = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text.strip())[:MAX_TEXT]
    if text.lower() in _UNCALIBRATED:
        return None
    return _ALIASES.get(text.lower(), text)


def unit_symbol(name: str) -> str:
    """The short symbol of a unit (``"micrometer"`` -> ``"µm"``), or the name itself."""
    return UNITS[name][0] if name in UNITS else name


def checked_scale(value: Any) -> float | None:
    """``value`` as a pixel size: a finite positive float, or ``None``."""
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def make_calibration(
    scale: Mapping[str, Any] | None = None,
    unit: Mapping[str, Any] | None = None,
    channel_names: Iterable[Any] | None = None,
    axes: str | None = None,
    dropped: list[str] | None = None,
) -> Calibration:
    """A checked record from what a file says. Left out: scales that are not finite and
    positive, units not among those known here (:func:`unit_name`), letters not in ``axes``,
    and the channel names unless all are plain text of at most 256 characters, at most 4096.
    Each thing left out that said something is a line appended to ``dropped`` (a list).
    Empty entries are left out."""
    letters = axes if axes is not None else _LETTERS
    dropped = [] if dropped is None else dropped
    record: Calibration = {}
    scales: dict[str, float] = {}
    units: dict[str, str] = {}
    for a, v in (scale or {}).items():
        if a in letters:
            if (value := checked_scale(v)) is not None:
                scales[a] = value
            else:
                dropped.append(f"the scale {shown(v, 40)} of {shown(a, 8)} (not a finite positive number)")
    for a, v in (unit or {}).items():
        if a in letters and (name := unit_name(v)) is not None:
            if name in UNITS:
                units[a] = name
            else:
                dropped.append(f"the unit {shown(v, 40)} of {shown(a, 8)} (not one known here)")
    if scales:
        record["scale"] = scales
    if units:
        record["unit"] = units
    names = list(channel_names or [])
    if names and len(names) <= MAX_CHANNEL_NAMES and all(plain(n) for n in names):
        record["channel_names"] = names
    elif names:
        dropped.append(
            f"the {len(names)} channel names (at most {MAX_CHANNEL_NAMES}, each plain text of at most "
            f"{MAX_TEXT} characters)"
        )
    return record


def check_calibration(saved: Any, source: object) -> Calibration | None:
    """A record read back from a model file, or ``ValueError`` naming ``source``. Plain units
    this version does not know (files written before units were checked) are left out."""
    if saved is None:
        return None
    ok = isinstance(saved, dict) and set(saved) <= {"scale", "unit", "channel_names"}
    ok = ok and all(
        isinstance(saved.get(key, {}), dict) and set(saved.get(key, {})) <= set(_LETTERS) for key in ("scale", "unit")
    )
    if ok:
        record = make_calibration(saved.get("scale"), saved.get("unit"), saved.get("channel_names"))
        known = {a: u for a, u in saved.get("unit", {}).items() if u in UNITS or not plain(u)}
        if record == {k: v for k, v in {**saved, "unit": known}.items() if v}:
            return record
    raise ValueError(f"{source}: the training images' calibration record is malformed.")


def common_calibration(records: Iterable[Mapping[str, Any] | None]) -> Calibration | None:
    """What every record of ``records`` says alike: an axis's scale or unit, or the
    channel names, where all agree; ``None`` when they agree on nothing."""
    present = [r or {} for r in records]
    if not present:
        return None
    common: Calibration = {}
    for key in ("scale", "unit"):
        shared = {a: v for a, v in present[0].get(key, {}).items() if all(r.get(key, {}).get(a) == v for r in present)}
        if shared:
            common[key] = shared
    names = present[0].get("channel_names")
    if names and all(r.get("channel_names") == names for r in present):
        common["channel_names"] = names
    return common or None


def for_axes(record: Mapping[str, Any] | None, axes: str, n_channels: int | None = None) -> Calibration:
    """``record`` limited to the letters of ``axes`` (channel names only for ``n_channels``)."""
    if not record:
        return {}
    names = record.get("channel_names")
    names = names if names and "C" in axes and len(names) == n_channels else None
    return make_calibration(record.get("scale"), record.get("unit"), names, axes)


def describe(record: Mapping[str, Any] | None) -> str:
    """One line saying ``record``: ``"Y 0.1 µm, X 0.1 µm, S 2 s; channels DAPI, GFP"``.

    >>> describe({"scale": {"Y": 0.1, "X": 0.1}, "unit": {"Y": "micrometer", "X": "micrometer"}})
    'pixel size Y 0.1 µm, X 0.1 µm'
    """
    if not record:
        return "none"
    scale, unit = record.get("scale", {}), record.get("unit", {})
    axes = [a for a in _LETTERS if a in scale or a in unit]
    parts = []
    sizes = [
        f"{a} {format(scale[a], '.6g') if a in scale else '1'} {unit_symbol(unit[a]) if a in unit else '(no unit)'}"
        for a in axes
        if a != "S"
    ]
    if sizes:
        parts.append("pixel size " + ", ".join(sizes))
    if "S" in axes:
        parts.append(f"frame interval {format(scale.get('S', 1), '.6g')} {unit_symbol(unit.get('S', '(no unit)'))}")
    text = "; ".join(parts) or "no pixel size"
    if record.get("channel_names"):
        text += "; channels " + ", ".join(record["channel_names"])
    return text


def differs(
    trained: Mapping[str, Any] | None, given: Mapping[str, Any] | None, tolerance: float = 1.25
) -> list[tuple[str, float, float, str | None]]:
    """The spatial axes whose pixel size in ``given`` differs from ``trained`` (same units)
    by more than ``tolerance`` times, as ``[(letter, trained, given, unit)]``."""
    out = []
    for a in "ZYX":
        units = [(r or {}).get("unit", {}).get(a) for r in (trained, given)]
        scales = [(r or {}).get("scale", {}).get(a) for r in (trained, given)]
        if None not in scales and units[0] == units[1] and max(scales) > tolerance * min(scales):
            out.append((a, scales[0], scales[1], units[0]))
    return out
