"""Checks of a BioImage Model Zoo package from a stranger, before anything reads it.

A package is a zip whose ``rdf.yaml`` ``bioimageio.spec`` parses and whose
members it hashes. A hostile zip can hold a YAML alias bomb (seconds to
minutes and GiBs of memory for a few KB), a huge ``rdf.yaml`` compressed to
almost nothing, a member that inflates to GiBs, paths that leave the folder
they are extracted to, or YAML tags that ask for Python objects.
:func:`check_package` judges the zip from its central directory and its YAML
members with a linear-time event pass, reading at most :data:`MAX_YAML_BYTES`
and writing nothing, so that a hostile package is refused in a fraction of a
second.
"""

from __future__ import annotations

import re
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from .._extras import install_command
from .errors import ModelFileError

if TYPE_CHECKING:
    from collections.abc import Collection
    from types import ModuleType

    from .._typing import PathLike

# Our packages hold about 9 files; a few hundred leaves room for other tools' extras.
MAX_MEMBERS = 256
# Our packages hold float32 weights and arrays, which barely compress: what the
# members declare, in all, is at most this many times the zip's size on disk...
MAX_EXPANSION = 16
# ...or this much, for small zips of small files that compress well (text, PNG).
MIN_UNCOMPRESSED_BUDGET = 64 * 2**20
# A member over RATIO_CHECKED_FROM bytes that compresses more than MAX_COMPRESSION_RATIO
# times is a bomb (deflate reaches ~1000x on runs of zeros); smaller ones are harmless.
MAX_COMPRESSION_RATIO = 100
RATIO_CHECKED_FROM = 2**20
# Our rdf.yaml is a few KB: every YAML member together (bioimageio.spec picks its
# rdf among several names, and reads conda environment files) is at most 1 MiB.
MAX_YAML_BYTES = 2**20
# Our rdf.yaml nests about 6 levels; deeper input overflows recursive YAML loaders.
MAX_YAML_NESTING = 32
# Our rdf.yaml parses to about 330 events; bioimageio.spec's pure-Python loader (ruyaml)
# takes ~70 us an event, so a dense 1 MiB would take it a minute, and 10 000 under a second.
MAX_YAML_EVENTS = 10_000
# The estimator's model file: weights and a header of at most 4 MiB. 1 GiB is a
# U-Net of some 250 million float32 parameters, far beyond any denoiser.
MAX_MODEL_BYTES = 2**30
# The tags of YAML's core schema: all that a package's description needs.
CORE_TAGS = frozenset(f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float", "str", "seq", "map"))
_DRIVE = re.compile(r"^[A-Za-z]:")
# Where a package names a file: bioimageio.spec fetches a URL to hash it, and opens a path as it is
# (an absolute one anywhere on the machine, whose sha256 its error would then print). What our
# packages name there is a member of the zip, by its relative name; a value at these keys must be one.
SOURCE_KEYS = frozenset({"source", "documentation", "covers", "attachments", "icon", "test_tensor", "sample_tensor"})
# A value that is not a relative path inside the package, whatever its key: a URL in any spelling
# (https://x, http:host:port/x, FILE:/etc, s3://b), an absolute, home or drive path, a parent step.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")


def _is_yaml(name: str) -> bool:
    return name.lower().endswith((".yaml", ".yml"))


def _check_name(path: Path, name: str, seen: set[str]) -> None:
    parts = re.split(r"[/\\]", name)
    if name.startswith(("/", "\\")) or _DRIVE.match(name) or ".." in parts:
        raise ModelFileError(
            f"{path}: the member {name!r} has an absolute path or a '..' component, which would be written "
            "outside the folder the package is extracted to; a BioImage Model Zoo package holds relative paths only."
        )
    if name in seen:
        raise ModelFileError(
            f"{path}: the member {name!r} is in the zip twice, so readers may disagree about which one is meant; "
            "a BioImage Model Zoo package holds each file once."
        )
    seen.add(name)


def check_members(archive: zipfile.ZipFile, path: Path, model_file: str) -> list[zipfile.ZipInfo]:
    """Refuse a zip whose central directory describes a bomb or paths that escape.

    Parameters
    ----------
    archive : zipfile.ZipFile
        The package, opened for reading; no member is read.
    path : pathlib.Path
        The package's file: its size on disk bounds what the members may declare.
    model_file : str
        The name of the estimator's model file inside the package, capped at
        :data:`MAX_MODEL_BYTES`.

    Returns
    -------
    list of zipfile.ZipInfo
        The YAML members (``.yaml``/``.yml``), to be checked by :func:`check_yaml`.

    Raises
    ------
    ModelFileError
        For more than :data:`MAX_MEMBERS` members, an absolute or ``..`` path,
        a name twice, an encrypted member, YAML over :data:`MAX_YAML_BYTES` in
        all, a model file over :data:`MAX_MODEL_BYTES`, or members declaring
        more than ``max(MIN_UNCOMPRESSED_BUDGET, MAX_EXPANSION * zip size)``
        bytes (alone or together) or compressed over
        :data:`MAX_COMPRESSION_RATIO` times.
    """
    members = archive.infolist()
    if len(members) > MAX_MEMBERS:
        raise ModelFileError(
            f"{path} holds {len(members)} files, more than the {MAX_MEMBERS} read from a BioImage Model Zoo "
            "package (n2v-estimator's hold about 9): it is not a package we made."
        )
    on_disk = path.stat().st_size
    budget = max(MIN_UNCOMPRESSED_BUDGET, MAX_EXPANSION * on_disk)
    too_much = (
        f"a zip of {on_disk} bytes may hold at most {budget} (a package's weights and arrays barely "
        "compress): it is a zip bomb, or a package damaged on its way to you"
    )
    seen: set[str] = set()
    yaml_members: list[zipfile.ZipInfo] = []
    yaml_bytes = total = 0
    for info in members:
        name, size = info.filename, info.file_size
        _check_name(path, name, seen)
        if info.flag_bits & 0x1:
            raise ModelFileError(f"{path}: the member {name!r} is encrypted; a BioImage Model Zoo package is not.")
        if _is_yaml(name):
            yaml_members.append(info)
            yaml_bytes += size
            if yaml_bytes > MAX_YAML_BYTES:
                raise ModelFileError(
                    f"{path}: the YAML member {name!r} declares {size} bytes ({yaml_bytes} with the package's other "
                    f"YAML files), more than the {MAX_YAML_BYTES} read: a package's rdf.yaml is a few KB."
                )
        if name == model_file and size > MAX_MODEL_BYTES:
            raise ModelFileError(
                f"{path}: the model file {name!r} declares {size} bytes, more than the {MAX_MODEL_BYTES} of the "
                "largest network n2v-estimator reads; a denoiser's model file is tens of MB."
            )
        if size > budget:
            raise ModelFileError(f"{path}: the member {name!r} declares {size} bytes uncompressed, but {too_much}.")
        if size > RATIO_CHECKED_FROM and size > MAX_COMPRESSION_RATIO * info.compress_size:
            raise ModelFileError(
                f"{path}: the member {name!r} declares {size} bytes compressed to {info.compress_size}, more than "
                f"{MAX_COMPRESSION_RATIO} times, but a package's weights and arrays barely compress: it is a zip bomb."
            )
        total += size
    if total > budget:
        raise ModelFileError(
            f"{path}: its {len(members)} members declare {total} bytes uncompressed in all, but {too_much}."
        )
    return yaml_members


def _import_yaml() -> ModuleType:
    try:
        import yaml
    except ImportError as exc:  # bioimageio.spec reads YAML with ruyaml; this check needs PyYAML
        raise ImportError(
            f"reading BioImage Model Zoo packages needs PyYAML ({exc}); install it with: "
            f"{install_command('bioimageio')}"
        ) from exc
    return yaml


def check_yaml(text: str, path: Path, name: str) -> None:
    """Refuse YAML that could expand, nest without bound, or construct objects.

    One pass over the parser's events (no document is built, so the time is
    linear in the text's length): no anchors or aliases (the alias bomb's
    means), no tag outside :data:`CORE_TAGS` (such as
    ``!!python/object/apply``), no value that names a place outside the package
    (a URL of any spelling, which ``bioimageio.spec`` would download to hash it;
    an absolute path, which it would open), at most :data:`MAX_YAML_NESTING`
    levels and :data:`MAX_YAML_EVENTS` events.

    Parameters
    ----------
    text : str
        The YAML document.
    path : pathlib.Path
        The package, for the messages.
    name : str
        The member's name, for the messages.

    Raises
    ------
    ModelFileError
        For invalid YAML, an anchor, an alias, a non-core tag, deep nesting
        or too many events.
    """
    yaml = _import_yaml()
    where = f"{path}: {name}"
    depth = 0
    try:
        events = yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        for count, event in enumerate(events, 1):
            mark = event.start_mark.line + 1 if event.start_mark is not None else "?"
            if count > MAX_YAML_EVENTS:
                raise ModelFileError(
                    f"{where} has more than {MAX_YAML_EVENTS} YAML events (line {mark}); a package's rdf.yaml has "
                    "a few hundred (its values, lists and mappings)."
                )
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise ModelFileError(
                    f"{where} uses the YAML anchor or alias {event.anchor!r} (line {mark}); aliases can expand a "
                    "few KB into GiBs (a 'billion laughs' bomb), and a package's rdf.yaml needs none: write the "
                    "values out in full."
                )
            tag = getattr(event, "tag", None)
            if tag is not None and tag not in CORE_TAGS:
                raise ModelFileError(
                    f"{where} has the YAML tag {tag!r} (line {mark}); a package's rdf.yaml holds plain values "
                    "(strings, numbers, booleans, null, lists, mappings) and no tags that construct objects."
                )
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_YAML_NESTING:
                    raise ModelFileError(
                        f"{where} is nested more than {MAX_YAML_NESTING} levels deep (line {mark}); a package's "
                        "rdf.yaml nests a few levels."
                    )
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            elif isinstance(event, yaml.ScalarEvent) and _outside(event.value):
                raise ModelFileError(
                    f"{where} names the file {event.value[:120]!r} (line {mark}), which is not a relative path inside "
                    "the package: bioimageio.spec would download it (of any size) or open it on this machine; a "
                    "package made by n2v-estimator holds all of its files."
                )
    except yaml.YAMLError as exc:
        raise ModelFileError(f"{where} is not valid YAML: {' '.join(str(exc).split())[:300]}") from exc


def _outside(value: str) -> bool:
    """Whether the YAML scalar ``value`` names a place outside the package: a URL of any spelling,
    an absolute, home or drive path, or a path with a ``..`` step. Text with spaces (a
    description, a citation) names no file."""
    text = value.strip()
    if not text or any(c.isspace() for c in text):
        return False
    return bool(_SCHEME.match(text) or text.startswith(("/", "\\", "~")) or ".." in re.split(r"[/\\]", text))


def check_sources(document: object, members: Collection[str], path: Path, name: str) -> None:
    """Refuse a YAML document (parsed) that names, at one of :data:`SOURCE_KEYS`, a file that is
    not a member of the package (by its relative name)."""

    def walk(node: object, key: object) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list):
            for item in node:
                walk(item, key)
        elif key in SOURCE_KEYS and isinstance(node, str) and node not in members:
            raise ModelFileError(
                f"{path}: {name} names {key} {node[:120]!r}, which is not a file of the package; a package "
                "made by n2v-estimator names its own files only."
            )

    walk(document, None)


def check_package(path: PathLike, model_file: str) -> list[str]:
    """Check the zip ``path`` as :func:`check_members` and every YAML member as
    :func:`check_yaml` and :func:`check_sources`; reads at most :data:`MAX_YAML_BYTES`,
    writes nothing.

    Returns
    -------
    list of str
        The names of the package's members.

    Raises
    ------
    ModelFileError
        For a zip that cannot be read, or any of the faults those functions refuse.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            for info in check_members(archive, path, model_file):
                with archive.open(info) as member:
                    # The declared size was checked; zipfile enforces it while reading.
                    data = member.read(MAX_YAML_BYTES + 1)
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ModelFileError(f"{path}: {info.filename} is not UTF-8 text ({exc}).") from exc
                check_yaml(text, path, info.filename)
                # Checked above to be bounded, alias- and tag-free: safe to build.
                yaml = _import_yaml()
                document = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
                check_sources(document, set(names), path, info.filename)
        return names
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        zlib.error,
        NotImplementedError,
        RuntimeError,
        OSError,
        EOFError,
    ) as exc:
        raise ModelFileError(
            f"{path} cannot be read as a zip file ({type(exc).__name__}: {exc}); it is damaged: copy it again."
        ) from exc
