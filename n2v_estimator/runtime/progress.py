"""Progress bars: shown for long work by default, never for short calls; and
progress events for a caller that draws its own (a napari widget)."""

from __future__ import annotations

import contextlib
import contextvars
import multiprocessing
import sys
from collections.abc import Callable, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Sequence
    from types import FrameType
    from typing import Any

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
    epoch: dict[str, Any] | None = None


#: What a watcher is: called with each :class:`Progress`; what it returns is ignored.
Watcher = Callable[[Progress], object]
_WATCHERS: contextvars.ContextVar[tuple[Watcher, ...]] = contextvars.ContextVar(
    "n2v_estimator_progress_watchers", default=()
)


@contextlib.contextmanager
def watch(callback: Watcher) -> Iterator[None]:
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


def report_epoch(record: Mapping[str, Any], steps_done: int, total: int | None) -> None:
    """Tell this thread's watchers that an epoch completed with ``record``."""
    for callback in _WATCHERS.get():
        callback(Progress("fit", steps_done, total, record.get("train_loss"), dict(record)))


def progress_bar(
    iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str, unit: str, verbose: bool | int | str
) -> tqdm | _WatchedBar:
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

    def __init__(
        self, bar: tqdm, iterable: Iterable[Any] | None, total: int | None, desc: str, watchers: Sequence[Watcher]
    ) -> None:
        self.bar, self.desc, self.watchers = bar, desc, watchers
        self.total = total if total is not None or iterable is None else _length(iterable)
        self.done = 0
        self.loss: float | None = None

    def __iter__(self) -> Iterator[Any]:
        for item in self.bar:  # tqdm counts its own iterations
            yield item
            self._tell(1)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        self._tell(n)

    def _tell(self, n: int) -> None:
        self.done += n
        for callback in self.watchers:
            callback(Progress(self.desc, self.done, self.total, self.loss))

    def set_postfix(self, **kwargs: Any) -> None:
        if "loss" in kwargs:
            self.loss = float(kwargs["loss"])
        self.bar.set_postfix(**kwargs)

    def close(self) -> None:
        self.bar.close()


def _length(iterable: Iterable[Any]) -> int | None:
    """``len(iterable)``, or ``None`` for an iterable without a length."""
    if not isinstance(iterable, Sized):
        return None
    try:
        return len(iterable)
    except TypeError:  # sized by its type, not by its value (a 0-d array)
        return None


def inside_model_selection() -> bool:
    """Whether a caller up the stack is scikit-learn's model selection (a search or
    cross-validation): scikit-learn gives an estimator no other sign of it."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith("sklearn.model_selection"):
            return True
        frame = frame.f_back
    return False
