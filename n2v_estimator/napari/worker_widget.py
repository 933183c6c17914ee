"""What the Train and Denoise widgets are built on: a dock widget that runs one session call at a time in a
napari thread worker (the viewer stays responsive), stoppable, its progress queued to the main thread
through a Qt signal; and the spin boxes of their forms.

A failure the session did not catch becomes a napari notification, never a traceback dialog.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QDoubleSpinBox, QLabel, QProgressBar, QSpinBox, QWidget

if TYPE_CHECKING:
    from napari.qt.threading import FunctionWorker
    from napari.viewer import Viewer

    from ..runtime.progress import Progress
    from .session import Outcome, Stopper


class ProgressRelay(QObject):
    """Carries progress from a worker thread to the widget, queued to the main thread."""

    progress = Signal(object)


class WorkerWidget(QWidget):
    """A dock widget whose work (a :mod:`.session` call) runs in a thread worker, one at a time: the viewer, the
    worker and its stopper, a progress bar fed by the relay, a status line. Subclasses enable their buttons in
    :meth:`_set_running`."""

    def __init__(self, viewer: Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.worker: FunctionWorker | None = None
        self.stopper: Stopper | None = None
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self._relay = ProgressRelay()
        self._relay.progress.connect(self._on_progress)

    @property
    def running(self) -> bool:
        """Whether work is running (the buttons that start work are disabled meanwhile)."""
        return self.worker is not None

    def _start(
        self, function: Callable[..., Outcome], *args: Any, on_done: Callable[[Outcome], None], **kwargs: Any
    ) -> FunctionWorker:
        """Run ``function(*args, on_progress=..., stopper=self.stopper, **kwargs)`` in a thread worker; its
        :class:`~.session.Outcome` goes to ``on_done`` on the main thread."""
        self.worker = create_worker(
            function, *args, on_progress=self._relay.progress.emit, stopper=self.stopper, _start_thread=False, **kwargs
        )
        self.worker.returned.connect(on_done)
        self.worker.errored.connect(self._on_crash)
        self.worker.finished.connect(self._on_finished)
        self._set_running(True)
        self.worker.start()
        return self.worker

    def _on_progress(self, progress: Progress) -> None:
        if progress.total:
            self.progress.setMaximum(progress.total)
        self.progress.setValue(progress.done)

    def _on_crash(self, exc: BaseException) -> None:  # session functions catch their errors; this is for the unforeseen
        show_error(f"{type(exc).__name__}: {exc}")

    def _on_finished(self) -> None:
        self.worker = None
        self._set_running(False)

    def stop(self) -> None:
        """Ask the running work to stop at its next step (training keeps the best weights)."""
        if self.stopper is not None:
            self.stopper.stop()
            self.status.setText("stopping after the current step ...")

    def _set_running(self, running: bool) -> None:
        raise NotImplementedError


def spin_box(minimum: int, maximum: int, value: int, *, step: int = 1, special: str | None = None) -> QSpinBox:
    """A whole-number field; ``special`` is shown instead of ``minimum`` (what the minimum stands for)."""
    box = QSpinBox()
    box.setRange(minimum, maximum)
    box.setSingleStep(step)
    box.setValue(value)
    if special:
        box.setSpecialValueText(special)
    return box


def decimal_box(
    minimum: float, maximum: float, value: float, *, decimals: int, step: float = 1, special: str | None = None
) -> QDoubleSpinBox:
    """A decimal field with ``decimals`` places; ``special`` is shown instead of ``minimum``."""
    box = QDoubleSpinBox()
    box.setDecimals(decimals)
    box.setRange(minimum, maximum)
    box.setSingleStep(step)
    box.setValue(value)
    if special:
        box.setSpecialValueText(special)
    return box
