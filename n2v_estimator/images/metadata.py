"""The physical calibration of image files: pixel sizes and units, the frame interval, channel names.

Each format says it its own way: ImageJ TIFF in its description (``unit``,
``spacing``, ``finterval``) and its resolution tags (pixels per unit), OME-TIFF
in the ``Pixels`` element of its XML (``PhysicalSizeX``, ``TimeIncrement``,
``Channel Name``), OME-Zarr in its ``multiscales`` axes (units) and scale
transformations and its ``omero`` channel labels, a plain TIFF in its resolution
tags alone. :func:`tiff_calibration` and :func:`zarr_calibration` read them into
one neutral record, keyed by our axis letters::

    {"scale": {"Y": 0.1, "X": 0.1, "Z": 0.5, "S": 2.0},
     "unit": {"Y": "micrometer", "X": "micrometer", "Z": "micrometer", "S": "second"},
     "channel_names": ["DAPI", "GFP"]}

(every entry optional; units as OME-Zarr spells them, the UDUNITS-2 names;
``S`` is calibrated only where it is time). The writers render it back:
:func:`imagej_options`, :func:`ome_tiff_metadata`, :func:`resolution_options`
and :func:`ome_zarr_entries`. Display settings (LUTs, display ranges, OME
windows) are not carried: a denoised image needs its own.

Everything read from a file is a stranger's and is checked before it is kept:
scales finite and positive, units among those known here, channel names plain
text (:func:`n2v_estimator.gateway.text.plain`) of at most 256 characters and at most
4096 of them, ImageJ's other entries numbers or bounded plain text. What fails is
left out of the record (and so of every output), and said: ``dropped`` collects a
line for each. A crafted file cannot make a record that fails to save, a model
file that fails to load, or an output that carries its strings.
"""

from __future__ import annotations

import html
import math
import re

from ..gateway.budget import pixels_element
from ..gateway.text import MAX_TEXT, plain, shown

# Unit names (OME-Zarr's) -> (OME-TIFF symbol, ImageJ spelling, size in metres or seconds).
_LENGTH = {
    "picometer": ("pm", "pm", 1e-12),
    "angstrom": ("Å", "angstrom", 1e-10),
    "nanometer": ("nm", "nm", 1e-9),
    "micrometer": ("µm", "micron", 1e-6),
    "millimeter": ("mm", "mm", 1e-3),
    "centimeter": ("cm", "cm", 1e-2),
    "meter": ("m", "m", 1.0),
    "inch": ("in", "inch", 0.0254),
}
_TIME = {
    "nanosecond": ("ns", "ns", 1e-9),
    "microsecond": ("µs", "us", 1e-6),
    "millisecond": ("ms", "ms", 1e-3),
    "second": ("s", "sec", 1.0),
    "minute": ("min", "min", 60.0),
    "hour": ("h", "hour", 3600.0),
    "day": ("d", "day", 86400.0),
}
_UNITS = {**_LENGTH, **_TIME}
# Other spellings seen in files (lower case; "µ" as the micro sign and as the Greek mu).
_ALIASES = {
    **{name: name for name in _UNITS},
    **{f"{name}s": name for name in _UNITS},
    **{symbol.lower(): name for name, (symbol, _, _) in _UNITS.items()},
    **{spelling.lower(): name for name, (_, spelling, _) in _UNITS.items()},
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
# ImageJ description entries carried from an ImageJ input to an ImageJ output, checked: origins
# and the value calibration (a 16-bit file's signed offset: numbers, and its unit); the IJMetadata
# tag's slice labels, info and properties (bounded plain text). Not LUTs or display ranges.
_IMAGEJ_NUMBERS = ("xorigin", "yorigin", "zorigin", "cf", *(f"c{k}" for k in range(10)))
_IMAGEJ_KEPT = (*_IMAGEJ_NUMBERS, "vunit", "Labels", "Info", "Properties")
MAX_LABELS = 2**16  # slice labels: one per plane
MAX_INFO = 2**16  # ImageJ's Info: free text of a few lines
MAX_PROPERTIES = 256
_IMAGEJ_DTYPES = ("uint8", "uint16", "float32")


def unit_name(text):
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


def unit_symbol(name):
    """The short symbol of a unit (``"micrometer"`` -> ``"µm"``), or the name itself."""
    return _UNITS[name][0] if name in _UNITS else name


# ------------------------------------------------------------ the record
def _scale(value):
    """``value`` as a pixel size: a finite positive float, or ``None``."""
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def make_calibration(scale=None, unit=None, channel_names=None, axes=None, dropped=None):
    """A checked record from what a file says. Left out: scales that are not finite and
    positive, units not among those known here (:func:`unit_name`), letters not in ``axes``,
    and the channel names unless all are plain text of at most 256 characters, at most 4096.
    Each thing left out that said something is a line appended to ``dropped`` (a list).
    Empty entries are left out."""
    letters = axes if axes is not None else _LETTERS
    dropped = [] if dropped is None else dropped
    record, scales, units = {}, {}, {}
    for a, v in (scale or {}).items():
        if a in letters:
            if (value := _scale(v)) is not None:
                scales[a] = value
            else:
                dropped.append(f"the scale {shown(v, 40)} of {shown(a, 8)} (not a finite positive number)")
    for a, v in (unit or {}).items():
        if a in letters and (name := unit_name(v)) is not None:
            if name in _UNITS:
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


def check_calibration(saved, source):
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
        known = {a: u for a, u in saved.get("unit", {}).items() if u in _UNITS or not plain(u)}
        if record == {k: v for k, v in {**saved, "unit": known}.items() if v}:
            return record
    raise ValueError(f"{source}: the training images' calibration record is malformed.")


def common_calibration(records):
    """What every record of ``records`` says alike: an axis's scale or unit, or the
    channel names, where all agree; ``None`` when they agree on nothing."""
    records = [r or {} for r in records]
    if not records:
        return None
    common = {}
    for key in ("scale", "unit"):
        shared = {a: v for a, v in records[0].get(key, {}).items() if all(r.get(key, {}).get(a) == v for r in records)}
        if shared:
            common[key] = shared
    names = records[0].get("channel_names")
    if names and all(r.get("channel_names") == names for r in records):
        common["channel_names"] = names
    return common or None


def for_axes(record, axes, n_channels=None):
    """``record`` limited to the letters of ``axes`` (channel names only for ``n_channels``)."""
    if not record:
        return {}
    names = record.get("channel_names")
    names = names if names and "C" in axes and len(names) == n_channels else None
    return make_calibration(record.get("scale"), record.get("unit"), names, axes)


def describe(record):
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


def differs(trained, given, tolerance=1.25):
    """The spatial axes whose pixel size in ``given`` differs from ``trained`` (same units)
    by more than ``tolerance`` times, as ``[(letter, trained, given, unit)]``."""
    out = []
    for a in "ZYX":
        units = [(r or {}).get("unit", {}).get(a) for r in (trained, given)]
        scales = [(r or {}).get("scale", {}).get(a) for r in (trained, given)]
        if None not in scales and units[0] == units[1] and max(scales) > tolerance * min(scales):
            out.append((a, scales[0], scales[1], units[0]))
    return out


# ------------------------------------------------------------------ TIFF
_CHANNEL = re.compile(r"<(?:\w+:)?Channel\b")
_ATTRIBUTE = re.compile(r'\b([A-Za-z]+)\s*=\s*(?:"([^"]{0,1024})"|\'([^\']{0,1024})\')')
_CHANNEL_TAG_CHARS = 4096


def _attributes(text):
    return {key: html.unescape(a if a or not b else b) for key, a, b in _ATTRIBUTE.findall(text)}


def _channel_tags(content):
    """The attribute texts of the ``Channel`` elements in ``content``, each at most
    :data:`_CHANNEL_TAG_CHARS` long, at most one more than :data:`MAX_CHANNEL_NAMES`."""
    tags = []
    for match in _CHANNEL.finditer(content):
        close = content.find(">", match.end(), match.end() + _CHANNEL_TAG_CHARS)
        if close < 0 or len(tags) > MAX_CHANNEL_NAMES:
            break
        tags.append(content[match.end() : close])
    return tags


def _ome_tiff_record(description, tiff_axes, axes, dropped=None):
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


def _imagej_record(imagej, resolution, tiff_axes, axes, dropped=None):
    """The calibration in an ImageJ description (as tifffile parses it) and resolution tags."""
    unit = unit_name(imagej.get("unit"))
    scale, units = {}, {}
    if unit is not None and resolution is not None:
        for letter, pixels_per_unit, key in (("X", resolution[0], "unit"), ("Y", resolution[1], "yunit")):
            size = _scale(pixels_per_unit)
            if size is not None:
                scale[letter], units[letter] = 1 / size, unit_name(imagej.get(key)) or unit
    if unit is not None and "spacing" in imagej:
        scale["Z"], units["Z"] = imagej["spacing"], unit_name(imagej.get("zunit")) or unit
    if tiff_axes.startswith("T") and "finterval" in imagej:
        scale["S"], units["S"] = imagej["finterval"], unit_name(imagej.get("tunit")) or "second"
    return make_calibration(scale, units, None, axes, dropped)


def _resolution_record(resolution, resolution_unit, axes):
    """The pixel size in a plain TIFF's resolution tags, where they name inches or centimetres."""
    unit = {2: "inch", 3: "centimeter"}.get(int(resolution_unit or 1))
    if unit is None or resolution is None:
        return {}
    sizes = [_scale(r) for r in resolution]
    if None in sizes:
        return {}
    return make_calibration({"X": 1 / sizes[0], "Y": 1 / sizes[1]}, {"X": unit, "Y": unit}, None, axes)


def _imagej_extras(imagej, dropped):
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


def tiff_calibration(tif, tiff_axes, axes, dropped=None):
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


def _ascii(value):
    """ImageJ's description is ASCII lines of ``key=value``: other characters as ImageJ writes
    them, ``\\uXXXX``, and control characters (a line break would start another entry) as spaces."""
    if not isinstance(value, str):
        return value
    return "".join(" " if ord(c) < 32 or ord(c) == 127 else c if ord(c) < 128 else f"\\u{ord(c):04X}" for c in value)


def imagej_options(record, extras, tiff_axes, dtype):
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


def _imagej_unit(name):
    return _UNITS[name][1] if name in _UNITS else name


def _in_order(letters, order):
    positions = [order.find(a) for a in letters]
    return -1 not in positions and positions == sorted(positions)


def ome_tiff_metadata(record, n_channels):
    """Entries for tifffile's OME-XML metadata: ``PhysicalSize*`` (with units),
    ``TimeIncrement`` and channel names. A unit OME has no symbol for is left out,
    with its size (OME would read it as micrometres)."""
    scale, unit = record.get("scale", {}), record.get("unit", {})
    metadata = {}
    for letter in "XYZ":
        if letter in scale and unit.get(letter) in _LENGTH:
            metadata[f"PhysicalSize{letter}"] = scale[letter]
            metadata[f"PhysicalSize{letter}Unit"] = unit_symbol(unit[letter])
    if "S" in scale and unit.get("S", "second") in _TIME:
        metadata["TimeIncrement"] = scale["S"]
        metadata["TimeIncrementUnit"] = unit_symbol(unit.get("S", "second"))
    names = record.get("channel_names")
    if names and len(names) == n_channels:
        metadata["Channel"] = {"Name": list(names)}
    return metadata


def resolution_options(record):
    """tifffile's ``resolution`` in pixels per centimetre (the TIFF tags every reader
    knows) where ``X`` and ``Y`` have lengths, else nothing."""
    scale, unit = record.get("scale", {}), record.get("unit", {})
    if not all(a in scale and unit.get(a) in _LENGTH for a in "XY"):
        return {}
    per_cm = [0.01 / (scale[a] * _LENGTH[unit[a]][2]) for a in "XY"]
    return {"resolution": tuple(per_cm), "resolutionunit": "CENTIMETER"}


# -------------------------------------------------------------- OME-Zarr
def _scales(transformations):
    """The ``scale`` of a list of OME-Zarr coordinate transformations, or ``None``."""
    for item in transformations or []:
        if isinstance(item, dict) and item.get("type") == "scale" and isinstance(item.get("scale"), list):
            return item["scale"]
    return None


def zarr_calibration(multiscale, omero, axes, dropped=None):
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


def ome_zarr_entries(record, axes, types):
    """``(axis entries, scale, omero)`` of an OME-Zarr 0.4 image with ``axes`` (in OME's
    order) calibrated as ``record`` says; ``types`` maps our letters to OME axis types."""
    scale, unit = record.get("scale", {}), record.get("unit", {})
    entries = []
    for letter in axes:
        entry = {"name": "t" if letter == "S" else letter.lower(), "type": types[letter]}
        if letter != "C" and unit.get(letter) in _UNITS:
            entry["unit"] = unit[letter]
        entries.append(entry)
    scales = [float(scale.get(letter, 1.0)) if letter != "C" else 1.0 for letter in axes]
    names = record.get("channel_names")
    omero = {"channels": [{"label": name} for name in names]} if names else None
    return entries, scales, omero
