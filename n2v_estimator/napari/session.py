"""Training and denoising as the widgets run them, in a worker thread: the estimator's
own ``fit`` and ``transform``, watched for progress and stoppable between steps.
No Qt here: the widgets pass callables, and the tests call these directly."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from ..estimator import Noise2VoidDenoiser
from ..runtime.progress import Progress, watch

if TYPE_CHECKING:
    from .._typing import ImagesLike, Params, PathLike

#: What the widgets are told at every training step, epoch and predicted batch (in the worker's thread).
ProgressCallback: TypeAlias = Callable[[Progress], None]

# The presets of the train widget: n2v's three ways of masking.
PRESETS: dict[str, dict[str, Any]] = {
    "N2V": {},
    "N2V2": {"blurpool": True, "skip_skipone": True, "manipulator": "median"},
    "structN2V": {},  # struct_mask=(axis, span) is set from the widget's two fields
}


def preset_parameters(preset: str, struct_axis: str = "x", struct_span: int = 5) -> dict[str, Any]:
    """The estimator parameters of a preset (``"N2V"``, ``"N2V2"`` or ``"structN2V"``)."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
    if preset == "structN2V":
        return {"struct_mask": (struct_axis, int(struct_span))}
    return dict(PRESETS[preset])


@dataclass
class Outcome:
    """What a run ended with.

    Attributes
    ----------
    estimator : Noise2VoidDenoiser or None
        Fitted (after ``fit``: also when stopped, if an epoch completed).
    result : object
        ``transform``'s output (an array, a dask array, or ``(mean, std)``).
    stopped : bool
        Stopped by the user (or the time limit) before the end.
    error : str or None
        The estimator's message for a failure; nothing was changed.
    history : list of dict
        The epochs of this fit.
    """

    estimator: Noise2VoidDenoiser | None = None
    result: object = None
    stopped: bool = False
    error: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class Stopper:
    """A stop request another thread can make, and an optional time limit: checked by
    :func:`fit` and :func:`denoise` at every training step and predicted batch."""

    def __init__(self, seconds: float | None = None) -> None:
        self.event = threading.Event()
        self.deadline: float | None = None if not seconds else time.monotonic() + float(seconds)

    def stop(self) -> None:
        """Ask the work to stop at its next step (from any thread)."""
        self.event.set()

    @property
    def requested(self) -> bool:
        """Whether the work should stop now: asked to, or past the time limit."""
        return self.event.is_set() or (self.deadline is not None and time.monotonic() >= self.deadline)


def _watcher(on_progress: ProgressCallback | None, stopper: Stopper | None) -> ProgressCallback:
    def callback(progress: Progress) -> None:
        if on_progress is not None:
            on_progress(progress)
        if stopper is not None and stopper.requested:
            raise KeyboardInterrupt("stopped from napari")

    return callback


def fit(
    params: Params,
    data: ImagesLike,
    *,
    on_progress: ProgressCallback | None = None,
    stopper: Stopper | None = None,
) -> Outcome:
    """Fit a new :class:`~n2v_estimator.Noise2VoidDenoiser` with ``params`` on ``data``
    (an array or a list of arrays). Never raises: a stop keeps the best weights of the
    complete epochs (as Ctrl-C does); an error leaves nothing fitted and says why."""
    estimator = Noise2VoidDenoiser(**params)
    try:
        with watch(_watcher(on_progress, stopper)):
            estimator.fit(data)
    except KeyboardInterrupt:
        fitted = hasattr(estimator, "model_")
        return Outcome(estimator if fitted else None, stopped=True, history=list(getattr(estimator, "history_", [])))
    except Exception as exc:  # shown to the user as a notification, with the estimator's message
        return Outcome(error=one_line(exc))
    return Outcome(estimator, history=list(estimator.history_))


def denoise(
    estimator: Noise2VoidDenoiser,
    data: ImagesLike,
    *,
    axes: str,
    settings: Mapping[str, Any] | None = None,
    on_progress: ProgressCallback | None = None,
    stopper: Stopper | None = None,
) -> Outcome:
    """``transform`` of ``data`` (read with ``axes``) by a working copy of the fitted ``estimator``
    with prediction ``settings`` (``tile_size``, ``tta``, ``precision``, ``dtype``): the
    estimator itself is not changed. A probabilistic model also gives its posterior std.
    Never raises: a stop gives no result, an error its message."""
    working = copy.copy(estimator).set_params(axes=axes, image_shape=None, verbose=False, **(settings or {}))
    probabilistic = working.noise_model is not None
    try:
        with watch(_watcher(on_progress, stopper)):
            result = working.transform(data, return_std=probabilistic)
    except KeyboardInterrupt:
        return Outcome(estimator, stopped=True)
    except Exception as exc:
        return Outcome(estimator, error=one_line(exc))
    return Outcome(estimator, result=result)


def load_model(path: PathLike) -> Noise2VoidDenoiser:
    """A model file (``.safetensors``, or a folder holding ``model.safetensors``) or a
    BioImage Model Zoo package (``.zip``) written by this package; :class:`ValueError`
    with the reader's message for anything else (the files' safety checks included)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    try:
        if path.suffix.lower() == ".zip":
            return Noise2VoidDenoiser.from_bioimageio(path)
        return Noise2VoidDenoiser.load(path)
    except Exception as exc:
        raise ValueError(f"{path.name}: {one_line(exc)}") from None


def one_line(exc: BaseException) -> str:
    """An exception as one line for a notification: its type only where the message alone is unclear."""
    text = str(exc).strip() or type(exc).__name__
    return text if isinstance(exc, (ValueError, TypeError, OSError)) else f"{type(exc).__name__}: {text}"
