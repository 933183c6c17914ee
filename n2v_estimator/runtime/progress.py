"""Progress bars: shown for long work by default, never for short calls; and
progress events for a caller that draws its own (a napari widget)."""

from __future__ import annotations

import contextlib
import contextvars
import multiprocessing
import sys
from dataclasses import dataclass

from tqdm.auto import tqdm

# With verbose="auto" a bar appears only once the work has run this long, so that
# long fits and predictions show progress while short calls, pipelines and grid
# searches over small data stay quiet.
AUTO_DELAY_SECONDS = 5.0


@dataclass(frozen=True)
class Progress:
    """What a watcher of :func:`watch` is told.

    Attributes
    ----------
    task : str
        The bar's name: ``"fit"`` (steps), ``"predict"`` (batches of tiles),
        ``"predict (blind prior)"`` (phases).
    done, total : int
        Units done so far, of ``total`` (``None`` when unknown).
    loss : float or None
        ``"fit"``: the training loss of the last complete epoch (read once per epoch,
        not per step: reading it makes the host wait for the device).
    epoch : dict or None
        Set once per complete training epoch: its ``history_`` record
        (``train_loss``, ``val_loss``, ...); ``done`` is then the steps so far.
    """

    task: str
    done: int
    total: int | None
    loss: float | None = None
    epoch: dict | None = None


_WATCHERS = contextvars.ContextVar("n2v_estimator_progress_watchers", default=())


@contextlib.contextmanager
def watch(callback):
    """Call ``callback(progress)`` with a :class:`Progress` at every training step,
    epoch and predicted batch of the calls made in this block, in this thread.

    An exception raised by ``callback`` stops the work where it is:
    ``KeyboardInterrupt`` stops ``fit`` as Ctrl-C does (the best weights of the
    complete epochs are kept) and ``transform`` without a result.

    Examples
    --------
    >>> import numpy as np
    >>> from n2v_estimator import Noise2VoidDenoiser
    >>> from n2v_estimator.runtime.progress import watch
    >>> seen = []
    >>> with watch(seen.append):
    ...     _ = Noise2VoidDenoiser(max_epochs=1, steps_per_epoch=2, validation_fraction=0,
    ...                            random_state=0).fit(np.random.rand(32, 32))
    >>> [(p.task, p.done, p.total) for p in seen if p.epoch is None]
    [('fit', 1, 2), ('fit', 2, 2)]
    """
    token = _WATCHERS.set((*_WATCHERS.get(), callback))
    try:
        yield
    finally:
        _WATCHERS.reset(token)


def report_epoch(record, steps_done, total):
    """Tell this thread's watchers that an epoch completed with ``record``."""
    for callback in _WATCHERS.get():
        callback(Progress("fit", steps_done, total, record.get("train_loss"), dict(record)))


def progress_bar(iterable=None, *, total=None, desc, unit, verbose):
    """A tqdm bar over ``iterable`` (or of ``total`` steps).

    ``verbose="auto"``: shown after :data:`AUTO_DELAY_SECONDS`, and never in a
    worker process or inside a scikit-learn search or cross-validation (dozens
    of fits would each draw a bar); any other true value: shown at once; false: never.
    Inside :func:`watch` the bar also tells the watchers.
    """
    if isinstance(verbose, str) and verbose == "auto":
        quiet = multiprocessing.parent_process() is not None or inside_model_selection()
        bar = tqdm(iterable, total=total, desc=desc, unit=unit, delay=AUTO_DELAY_SECONDS, disable=quiet)
    else:
        bar = tqdm(iterable, total=total, desc=desc, unit=unit, disable=not verbose)
    watchers = _WATCHERS.get()
    return _WatchedBar(bar, iterable, total, desc, watchers) if watchers else bar


class _WatchedBar:
    """A tqdm bar that also tells watchers what it counts (a disabled tqdm counts nothing)."""

    def __init__(self, bar, iterable, total, desc, watchers):
        self.bar, self.desc, self.watchers = bar, desc, watchers
        self.total = total if total is not None or iterable is None else _length(iterable)
        self.done, self.loss = 0, None

    def __iter__(self):
        for item in self.bar:  # tqdm counts its own iterations
            yield item
            self._tell(1)

    def update(self, n=1):
        self.bar.update(n)
        self._tell(n)

    def _tell(self, n):
        self.done += n
        for callback in self.watchers:
            callback(Progress(self.desc, self.done, self.total, self.loss))

    def set_postfix(self, **kwargs):
        if "loss" in kwargs:
            self.loss = float(kwargs["loss"])
        self.bar.set_postfix(**kwargs)

    def close(self):
        self.bar.close()


def _length(iterable):
    try:
        return len(iterable)
    except TypeError:
        return None


def inside_model_selection():
    """Whether a caller up the stack is scikit-learn's model selection (a search or
    cross-validation): scikit-learn gives an estimator no other sign of it."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith("sklearn.model_selection"):
            return True
        frame = frame.f_back
    return False
