"""How to install an optional extra, in a command that works as written.

``pip install "n2v-estimator[tiff]"`` needs the package on the registry, and a
checkout needs ``pip install -e ".[tiff]"``; what an extra installs is the same
either way, so messages name it: the requirements the installed package
declares for the extra (its metadata, one source of truth with
``pyproject.toml``).
"""

from __future__ import annotations

import importlib.metadata
import re

DISTRIBUTION = "n2v-estimator"


def install_command(extra: str) -> str:
    """``pip install "tifffile" (the [tiff] extra)``: the requirements of ``extra`` as the installed package
    declares them; ``pip install "n2v-estimator[extra]"`` where its metadata is not there.

    >>> install_command("tiff")
    'pip install "tifffile" (the [tiff] extra)'
    """
    try:
        requires = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        requires = []
    marker = re.compile(r";.*\bextra\s*==\s*[\"']" + re.escape(extra) + r"[\"']")
    wanted = [requirement.split(";")[0].strip() for requirement in requires if marker.search(requirement)]
    if not wanted:
        return f'pip install "{DISTRIBUTION}[{extra}]"'
    return "pip install " + " ".join(f'"{requirement}"' for requirement in wanted) + f" (the [{extra}] extra)"
