"""Atomic writes: a temporary beside the target, locked while it is written, renamed into place.

Every file or folder the package writes (model files, images, zarr stores, zoo
packages) is first written as ``.<name>.<16 hex digits>.tmp`` beside its
target and renamed over it only once complete, so that a failed or interrupted
write leaves whatever was there. The writer holds an exclusive ``flock`` on its
temporary (the file, or the folder itself) while it writes: a writer killed
with ``kill -9`` leaves an unlocked temporary behind, which the next write to
the same target removes (:func:`remove_stale`), and a live writer's is left
alone. Only names of exactly that pattern are ever removed, never through a
symbolic link, and only once a few seconds old (a writer that has just created
its temporary and not yet locked it keeps it).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import shutil
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING

try:  # POSIX: a writer holds a lock on its temporary, so that a dead one's can be told apart
    import fcntl

    _CAN_LOCK = True
except ImportError:  # pragma: no cover - Windows
    _CAN_LOCK = False

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .._typing import PathLike

# Temporaries of killed writers are removed once unlocked and this old.
STALE_SECONDS = 2.0
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def check_replace(path: PathLike, overwrite: bool) -> None:
    """Refuse to write ``path`` where something exists there, unless ``overwrite``: nothing a user
    has is replaced without their saying so (``save``, ``export_bioimageio``; the command line
    checks its targets itself, naming --overwrite)."""
    if not overwrite and os.path.lexists(path) and not os.path.isdir(path):  # a folder: the writer says why
        raise FileExistsError(f"{path} exists: pass overwrite=True to replace it, or choose another name.")


def temporary_name(path: PathLike, suffix: str = "tmp") -> Path:
    """``.<name>.<16 hex digits>.<suffix>`` beside ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.{suffix}")


def _ours(path: PathLike) -> re.Pattern[str]:
    return re.compile(re.escape(f".{Path(path).name}.") + r"[0-9a-f]{16}\.(tmp|old)")


def lock(fd: int) -> None:
    """Hold an exclusive lock on the open file or folder ``fd`` (until it is closed); a file
    system without locks is written all the same."""
    if _CAN_LOCK:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass


def remove_stale(path: PathLike) -> None:
    """Remove the temporaries that killed writers of ``path`` left behind: those named as
    :func:`temporary_name` names them, not locked by a live writer, and not brand new.
    A set-aside old version (``.old``, see :func:`replace`) goes back into place if
    nothing is at ``path``, else it is removed."""
    if not _CAN_LOCK:  # pragma: no cover
        return
    path = Path(path)
    pattern = _ours(path)
    for candidate in path.parent.glob(glob.escape(f".{path.name}.") + "*"):
        match = pattern.fullmatch(candidate.name)
        if match is None:
            continue
        try:
            # Never follow a link, never block on a pipe someone named like our files.
            fd = os.open(candidate, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW)
        except OSError:
            continue
        try:
            info = os.fstat(fd)
            folder = stat.S_ISDIR(info.st_mode)
            if not (folder or stat.S_ISREG(info.st_mode)) or time.time() - info.st_mtime < STALE_SECONDS:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if a live writer holds it
            if match.group(1) == "old" and not os.path.lexists(path):
                os.replace(candidate, path)  # the previous version, set aside by a writer killed mid-swap
            elif folder:
                shutil.rmtree(candidate)
            else:
                candidate.unlink()
        except OSError:
            pass  # locked (a live writer's), or gone meanwhile
        finally:
            os.close(fd)


@contextlib.contextmanager
def temporary_beside(path: PathLike, folder: bool = False) -> Iterator[Path]:
    """A locked temporary file (or empty folder) beside ``path`` for the duration of the
    block, removed if the block raises; stale temporaries of ``path`` are removed first.
    Yields its :class:`~pathlib.Path`; the caller moves it into place (:func:`replace`)."""
    path = Path(path)
    remove_stale(path)
    temporary = temporary_name(path)
    if folder:
        os.mkdir(temporary)
        fd = os.open(temporary, os.O_RDONLY | _DIRECTORY)
    else:
        # Mode 0o666, so that the kernel applies the umask (not a racy process-wide umask change).
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        lock(fd)
        yield temporary
    except BaseException:
        remove(temporary)
        raise
    finally:
        os.close(fd)


def remove(path: PathLike) -> None:
    """Remove a file, link or folder (tree) of ours, if it is there."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace(temporary: PathLike, path: PathLike) -> None:
    """Rename ``temporary`` to ``path``. A folder (zarr) in the way is set aside first (as a
    ``.old`` temporary) and removed only once the new one is in place."""
    temporary, path = Path(temporary), Path(path)
    if not (temporary.is_dir() and path.exists()):
        os.replace(temporary, path)
        return
    old = temporary_name(path, "old")
    os.replace(path, old)
    try:
        os.replace(temporary, path)
    except BaseException:
        os.replace(old, path)
        raise
    remove(old)


@contextlib.contextmanager
def atomic_write(path: PathLike, folder: bool = False) -> Iterator[Path]:
    """The one way the package writes a file or folder: ``with atomic_write(path) as temporary:``
    writes ``temporary`` (:func:`temporary_beside`); when the block ends, a file is flushed to
    disk (a power cut cannot leave an empty file at ``path``) and given the permissions of the
    file it replaces (a new one: ``0o666`` less the umask), then renamed into place
    (:func:`replace`). If the block raises, the temporary is removed and ``path`` is untouched."""
    path = Path(path)
    with temporary_beside(path, folder=folder) as temporary:
        yield temporary
        if not folder:
            descriptor = os.open(temporary, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            if path.exists():
                os.chmod(temporary, stat.S_IMODE(path.stat().st_mode))
        replace(temporary, path)
