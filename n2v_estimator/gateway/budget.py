"""What an image file may declare, relative to what it stores and to the machine.

A file's header names the size of its image, and a few bytes can declare
terabytes: a 400-byte ``.zarray`` of 10**9 x 10**9 pixels, a 35 KB deflated TIFF
of 65536**2, an OME-TIFF whose XML says ``SizeZ="200000000"``. Read as declared,
such a file costs minutes to hours and gigabytes before anything fails. Noisy
images, what this package reads, barely compress (noise is incompressible), so
a file that declares far more pixels than it stores is refused here, from its
header alone, in well under a second, with the numbers and the option that
reads it anyway (``trust_declared_size``, ``--trust-declared-size``).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import stat
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, Literal

    from numpy.typing import DTypeLike

    from .._typing import PathLike, Shape

# Declared bytes per stored byte beyond which a file is refused. Noisy images compress
# 1.5-4x (their noise is incompressible); 256 leaves room for mostly empty images and for
# zarr stores with missing chunks, and is far below what crafted files declare (10**5 and more).
MAX_EXPANSION = 256
# Declared sizes up to this are read whatever the file stores: costs a few seconds at most.
FREE_BYTES = 16 * 2**20
# A zarr store cut into more than MANY_CHUNKS chunks of under SMALL_CHUNK_BYTES each reads
# one file (or request) per few pixels: hours for a large image.
MANY_CHUNKS = 2**16
SMALL_CHUNK_BYTES = 4096
TRUST_HINT = "trust_declared_size=True (on the command line: --trust-declared-size)"


# An image file's metadata (an ImageJ description, its IJMetadata tag, an OME-Zarr .zattrs) is a
# few KB, an OME-XML or a plate's .zattrs some hundreds; parsed, a crafted 71 MB .zattrs took 9 s
# and 1 GB, a 5-million-line ImageJ description 7 s and 1.2 GB.
MAX_METADATA_BYTES = 16 * 2**20
# The zarr files that hold metadata (format 2 and 3).
ZARR_METADATA_FILES = (".zattrs", ".zgroup", ".zarray", "zarr.json")


def check_metadata_size(path: PathLike, what: str, size: int, trust: bool = False) -> None:
    """Refuse metadata of ``size`` bytes, ``what`` of the file ``path``, over :data:`MAX_METADATA_BYTES`
    (``trust`` reads it), before it is parsed."""
    if size > MAX_METADATA_BYTES and not trust:
        raise DeclaredSizeError(
            f"{path}: its {what} is {size:,} bytes, over the {MAX_METADATA_BYTES:,} read (an image's metadata "
            f"is a few KB: crafted or damaged); {TRUST_HINT} reads it."
        )


# TIFF tags whose values tifffile reads as it opens a file: ImageDescription, IJMetadataByteCounts, IJMetadata.
TIFF_TEXT_TAGS = {270: "description", 50838: "ImageJ metadata byte counts", 50839: "ImageJ metadata tag"}
# Bytes per value of each TIFF field type (1 BYTE ... 18 IFD8).
_TIFF_TYPE_BYTES = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 1,
    7: 1,
    8: 2,
    9: 4,
    10: 8,
    11: 4,
    12: 8,
    13: 4,
    16: 8,
    17: 8,
    18: 8,
}
# A TIFF file's first two bytes: its byte order.
_TIFF_BYTE_ORDERS: dict[bytes, Literal["little", "big"]] = {b"II": "little", b"MM": "big"}


def check_tiff_metadata(path: PathLike, trust: bool = False) -> None:
    """:func:`check_metadata_size` of the text tags of a TIFF file's first image (its description,
    ImageJ's tags), from their declared counts in the file's first directory, before tifffile reads
    them (it reads them whole as it opens the file). Not a TIFF: nothing (tifffile says so)."""
    with open(path, "rb") as file:
        head = file.read(16)
        order = _TIFF_BYTE_ORDERS.get(head[:2])
        if order is None or len(head) < 16:
            return
        version = int.from_bytes(head[2:4], order)
        if version == 42:  # classic: 2-byte count, 12-byte entries, 4-byte counts
            offset, count_size, entry_size, number_size = int.from_bytes(head[4:8], order), 2, 12, 4
        elif version == 43:  # BigTIFF
            offset, count_size, entry_size, number_size = int.from_bytes(head[8:16], order), 8, 20, 8
        else:
            return
        file.seek(offset)
        n_entries = int.from_bytes(file.read(count_size), order)
        entries = file.read(min(n_entries, 4096) * entry_size)
    for start in range(0, len(entries) - entry_size + 1, entry_size):
        code = int.from_bytes(entries[start : start + 2], order)
        if code in TIFF_TEXT_TAGS:
            kind = int.from_bytes(entries[start + 2 : start + 4], order)
            count = int.from_bytes(entries[start + 4 : start + 4 + number_size], order)
            check_metadata_size(path, TIFF_TEXT_TAGS[code], count * _TIFF_TYPE_BYTES.get(kind, 1), trust)


def check_zarr_metadata(folder: PathLike, trust: bool = False) -> None:
    """:func:`check_metadata_size` of the zarr metadata files in ``folder`` (not following links)."""
    for name in ZARR_METADATA_FILES:
        try:
            info = os.lstat(os.path.join(folder, name))
        except OSError:
            continue
        check_metadata_size(folder, name, info.st_size, trust)


class DeclaredSizeError(ValueError):
    """A file declares an image far larger than it can hold, or than the machine can."""


def _allocated(info: os.stat_result) -> int:
    """Bytes a file occupies on disk: its size, or less for a sparse file (holes cost nothing to
    declare, and read back as zeros)."""
    blocks = getattr(info, "st_blocks", None)
    return info.st_size if blocks is None else min(info.st_size, blocks * 512)


def stored_bytes(path: PathLike, enough: int | None = None) -> int:
    """Bytes ``path`` (a file, or a folder such as a zarr store) occupies on disk; for a folder
    the walk stops once ``enough`` bytes are counted (a real store has many files)."""
    info = os.stat(path)
    if not stat.S_ISDIR(info.st_mode):
        return _allocated(info) if stat.S_ISREG(info.st_mode) else 0
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                entry = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            if stat.S_ISREG(entry.st_mode):
                total += _allocated(entry)
        if enough is not None and total >= enough:
            break
    return total


def declared_bytes(shape: Sequence[int], dtype: DTypeLike) -> int:
    """Bytes of an array of ``shape`` and ``dtype``, in Python integers (never overflowing)."""
    return math.prod(int(n) for n in shape) * np.dtype(dtype).itemsize


def check_declared(
    path: PathLike, shape: Sequence[int], dtype: DTypeLike, chunks: Sequence[int] | None = None, trust: bool = False
) -> None:
    """Refuse an image ``path`` declares as ``shape`` and ``dtype`` (and ``chunks``, for zarr)
    when it declares over :data:`MAX_EXPANSION` times what it stores (beyond
    :data:`FREE_BYTES`), or many tiny chunks; ``trust`` skips the check.

    Raises
    ------
    DeclaredSizeError
        Naming the declared shape and size, what the file stores, and how to read it anyway.
    """
    if trust:
        return
    wanted = declared_bytes(shape, dtype)
    described = (
        f"{path} declares an image of shape {tuple(int(n) for n in shape)}, {np.dtype(dtype)} ({format_bytes(wanted)})"
    )
    if wanted > FREE_BYTES:
        stored = stored_bytes(path, enough=-(-wanted // MAX_EXPANSION))
        if wanted > MAX_EXPANSION * stored:
            raise DeclaredSizeError(
                f"{described}, but stores {format_bytes(stored)}: {wanted / max(stored, 1):,.0f} times more than it "
                f"holds, where noisy images compress less than {MAX_EXPANSION} to 1. Refused as a crafted or "
                f"damaged file; if the image is real (mostly empty, or with missing chunks), pass {TRUST_HINT}."
            )
    if chunks is not None:
        count = math.prod(-(-int(n) // max(1, int(c))) for n, c in zip(shape, chunks))
        each = declared_bytes(chunks, dtype)
        if count > MANY_CHUNKS and each < SMALL_CHUNK_BYTES:
            raise DeclaredSizeError(
                f"{described} in {count:,} chunks of {tuple(int(c) for c in chunks)} ({each} bytes each): reading it "
                f"would take one request per {each} bytes. Rechunk the store into chunks of at least "
                f"{SMALL_CHUNK_BYTES} bytes (e.g. 256 x 256), or pass {TRUST_HINT}."
            )


def check_in_memory(path: PathLike, shape: Sequence[int], dtype: DTypeLike) -> None:
    """Refuse reading ``path`` whole when its image is larger than the memory available now."""
    wanted = declared_bytes(shape, dtype)
    available = available_memory()
    if available is not None and wanted > available:
        raise DeclaredSizeError(
            f"{path} holds an image of shape {tuple(int(n) for n in shape)}, {np.dtype(dtype)} ({format_bytes(wanted)}), "
            f"more than the {format_bytes(available)} of memory available to read it whole."
        )


def check_free_space(path: PathLike, n_bytes: int) -> None:
    """Refuse writing ``n_bytes`` to ``path`` when its folder's file system has less room."""
    try:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path)) or ".").free
    except OSError:
        return
    if n_bytes > free:
        raise DeclaredSizeError(
            f"Writing {path} needs {format_bytes(n_bytes)}, and its file system has {format_bytes(free)} free: "
            "free some space, write elsewhere, or ask for a smaller output (--dtype input keeps the input's dtype)."
        )


def available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``), else the machine's total, or None."""
    available = meminfo("MemAvailable")
    return available if available is not None else physical_memory()


# ---------------------------------------------------------------- OME-TIFF
# Found with searches that look at each character a bounded number of times: an XML of
# "<Pixels a" repeated 40 000 times took 112 s with one regular expression for the element.
_PIXELS = re.compile(r"<(?:\w+:)?Pixels\b")
_PIXELS_END = re.compile(r"</(?:\w+:)?Pixels\s*>")
MAX_TAG_CHARS = 2**16  # a Pixels start tag holds some 20 attributes: a few hundred characters
_ATTRIBUTE = re.compile(r'\b(Size[XYZCT]|Type)\s*=\s*["\']([^"\']{0,64})["\']')
_OME_TYPES = {
    "int8": "i1",
    "int16": "i2",
    "int32": "i4",
    "uint8": "u1",
    "uint16": "u2",
    "uint32": "u4",
    "float": "f4",
    "double": "f8",
    "bit": "u1",
    "complex": "c8",
    "double-complex": "c16",
}


def pixels_element(description: str | None) -> tuple[str, str] | None:
    """``(attributes, content)`` of the first ``Pixels`` element of an OME-XML
    ``description``: the text of its start tag (at most :data:`MAX_TAG_CHARS`) and
    what it holds (to its end tag, or the end of the text); ``None`` where there is none."""
    text = description or ""
    match = _PIXELS.search(text)
    if match is None:
        return None
    close = text.find(">", match.end(), match.end() + MAX_TAG_CHARS)
    if close < 0:
        return None
    end = _PIXELS_END.search(text, close)
    return text[match.end() : close], text[close + 1 : end.start() if end else len(text)]


def ome_declared(description: str | None) -> tuple[Shape, np.dtype[Any]] | None:
    """``(shape, dtype)`` of the first image an OME-XML ``description`` declares, read with two
    regular expressions (tifffile builds its series with one entry per declared plane: minutes
    for a crafted ``SizeZ``), or ``None`` where it declares none."""
    element = pixels_element(description)
    if element is None:
        return None
    attributes = dict(_ATTRIBUTE.findall(element[0]))
    try:
        shape = tuple(int(attributes.get(f"Size{a}", 1)) for a in "TCZYX")
    except ValueError:
        return None
    return shape, np.dtype(_OME_TYPES.get(attributes.get("Type", "uint8").lower(), "u1"))


def physical_memory() -> int | None:
    """Total physical memory in bytes, or ``None`` where it cannot be read."""
    try:
        page, pages = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_PHYS_PAGES")
        if page > 0 and pages > 0:  # -1: unknown here
            return page * pages
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        pass
    return meminfo("MemTotal")


def meminfo(field: str) -> int | None:
    """A Linux ``/proc/meminfo`` field in bytes (``"MemTotal"``, ``"MemAvailable"``), or ``None``."""
    try:
        with open("/proc/meminfo") as lines:
            for line in lines:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def format_bytes(n: int) -> str:
    """``n`` bytes for a message: ``"2.6 GiB"``; beyond 1024 PiB ``"9.6e+25 bytes"``."""
    if n >= 2**60:  # from the digits: a float cannot hold every int
        digits = str(n)
        return f"{digits[0]}.{digits[1:3]}e+{len(digits) - 1} bytes"
    for power, unit in ((50, "PiB"), (40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n >= 2**power:
            return f"{n / 2**power:.1f} {unit}"
    return f"{n} bytes"
