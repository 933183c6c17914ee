"""Progress bars: shown for long work by default, never for short calls."""

from __future__ import annotations

import multiprocessing

from tqdm.auto import tqdm

# With verbose="auto" a bar appears only once the work has run this long, so that
# long fits and predictions show progress while short calls, pipelines and grid
# searches over small data stay quiet.
AUTO_DELAY_SECONDS = 5.0


def progress_bar(iterable=None, *, total=None, desc, unit, verbose):
    """A tqdm bar over ``iterable`` (or of ``total`` steps).

    ``verbose="auto"``: shown after :data:`AUTO_DELAY_SECONDS`, and never in a
    worker process (the fits of a parallel grid search would interleave their
    bars); any other true value: shown at once; false: never.
    """
    if isinstance(verbose, str) and verbose == "auto":
        in_worker = multiprocessing.parent_process() is not None
        return tqdm(iterable, total=total, desc=desc, unit=unit, delay=AUTO_DELAY_SECONDS, disable=in_worker)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not verbose)
