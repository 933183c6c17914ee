"""What the command says on stderr: one line each (notes, warnings, errors), and its exit statuses.

A message names files and values that come from strangers' files: it is escaped
(:func:`n2v_estimator.gateway.text.shown`) and cut to :data:`MAX_MESSAGE` characters, so that a
terminal shows it as it is, on one line.
"""

from __future__ import annotations

import sys
from typing import TextIO

from ..gateway.text import shown

PROG = "n2v-estimator"
# Exit status of a run stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130
# Errors a user can make (files, formats, axes, parameter values, model files, missing extras,
# a diverging fit): one line and exit status 2. Anything else is a bug and keeps its traceback.
USER_ERRORS = (OSError, ValueError, TypeError, ImportError, ArithmeticError)
# A message's length on the terminal: names and values from files are cut before it, this is the last guard.
MAX_MESSAGE = 600


def one_line(message: object) -> str:
    """``message`` on one line of at most :data:`MAX_MESSAGE` characters, anything from a file in it
    escaped (:func:`n2v_estimator.gateway.text.shown`)."""
    return shown(" ".join(str(message).split()), MAX_MESSAGE)


def print_on_stderr(message: object) -> None:
    """``message`` on stderr after the command's name, as :func:`one_line`."""
    print(f"{PROG}: {one_line(message)}", file=sys.stderr)


def show_warning_on_one_line(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """A warning as one line on stderr (or ``file``): what :data:`warnings.showwarning` is while a command runs."""
    print(f"{PROG}: warning: {one_line(message)}", file=sys.stderr if file is None else file)
