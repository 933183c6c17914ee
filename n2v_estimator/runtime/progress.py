"""Progress bars: shown for long work by default, never for short calls."""

from __future__ import annotations

import multiprocessing
import sys

from tqdm.auto import tqdm

# With verbose="auto" a bar appears only once the work has run this long, so that
# long fits and predictions show progress while short calls, pipelines and grid
# searches over small data stay quiet.
AUTO_DELAY_SECONDS = 5.0


def progress_bar(iterable=None, *, total=None, desc, unit, verbose):
    """A tqdm bar over ``iterable`` (or of ``total`` steps).

    ``verbose="auto"``: shown after :data:`AUTO_DELAY_SECONDS`, and never in a
    worker process or inside a scikit-learn search or cross-validation (dozens
    of fits would each draw a bar); any other true value: shown at once; false: never.
    """
    if isinstance(verbose, str) and verbose == "auto":
        quiet = multiprocessing.parent_process() is not None or inside_model_selection()
        return tqdm(iterable, total=total, desc=desc, unit=unit, delay=AUTO_DELAY_SECONDS, disable=quiet)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not verbose)


def inside_model_selection():
    """Whether a caller up the stack is scikit-learn's model selection (a search or
    cross-validation): scikit-learn gives an estimator no other sign of it."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith("sklearn.model_selection"):
            return True
        frame = frame.f_back
    return False
