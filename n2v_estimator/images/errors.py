"""What reading and writing image files raises beyond Python's own errors: a file that cannot be read (its
message names it), and a missing optional dependency, with :func:`require`, the import that raises it naming
the extra to install."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .._extras import install_command

if TYPE_CHECKING:
    from types import ModuleType


class MissingDependencyError(ImportError):
    """An optional dependency that a file format needs is not installed."""


class ImageReadError(ValueError):
    """A file that cannot be read, with a message that already names it."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingDependencyError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs {module.split('.')[0]}, which is not installed ({exc}); "
            f"install it with: {install_command(extra)}"
        ) from exc
