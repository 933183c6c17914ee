"""The Noise2Void training loop: schedule, validation, history, best weights."""

from __future__ import annotations

import copy
import itertools
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import numpy as np
import torch

from ..nets.losses import masked_mse, squared_error
from ..nets.noise import NOISE_LEARNING_RATE
from ..runtime.compute import autocast, fastest_layout, grad_scaler
from ..runtime.progress import progress_bar, report_epoch
from .kept_weights import KeptWeights

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from .._typing import Shape
    from ..data.patches import PatchSampler

#: A validation batch, as :func:`make_validation_set` draws it: the patches ``x``, ``x_masked`` (their
#: blind spots replaced) and ``mask`` (the blind spots), each ``(B, C, *spatial)`` on the device.
MaskedBatch: TypeAlias = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
#: ``loss(prediction, x, mask)``: a scalar loss over the blind spots ``mask`` of ``prediction`` for ``x``.
Loss: TypeAlias = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
#: ``pointwise(prediction, x)``: the loss of every pixel of ``x`` (``x``'s shape), as a validation loss.
Pointwise: TypeAlias = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Masker(Protocol):
    """What makes a batch's blind spots: a :class:`n2v_estimator.data.masking.BlindSpotMasker`, or the
    blind-spot network's :data:`n2v_estimator.nets.blindnet.every_pixel`, which masks nothing."""

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_masked, mask)`` for the batch ``x`` of shape ``(B, C, *spatial)``."""
        ...

    def check_patch(self, patch_shape: Shape) -> None:
        """Refuse (``ValueError``) patches of ``patch_shape`` that no blind spot could be made in."""
        ...


class _ProgressBar(Protocol):
    """What an epoch tells of its steps: a :func:`n2v_estimator.runtime.progress.progress_bar`."""

    def update(self) -> object: ...

    def set_postfix(self, *, refresh: bool, **postfix: str) -> object: ...


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss becomes NaN or infinite."""


@dataclass
class TrainingResult:
    """What :func:`train` returns.

    Attributes
    ----------
    state : dict
        The kept weights (also loaded into the model): the last epoch's not clearly
        worse on validation than the lowest loss (:class:`n2v_estimator.fit.kept_weights.KeptWeights`),
        else (no validation) the last complete epoch's, else the initial weights.
    history : list of dict
        One record per complete epoch of this run.
    interrupted : bool
        Training was stopped by ``KeyboardInterrupt``.
    error : NonFiniteLossError or None
        Training stopped because the loss or the weights became non-finite.
    calibration : dict or None
        A probabilistic model's :func:`n2v_estimator.fit.calibration.blind_spot_calibration`
        of the kept weights (set by the plan after training).
    """

    state: dict[str, torch.Tensor]
    history: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    error: NonFiniteLossError | None = None
    calibration: dict[str, Any] | None = None

    def raise_if_stopped_early(self, was_fitted: bool) -> None:
        """Re-raise a stop (``KeyboardInterrupt`` with a warning, or the
        :class:`NonFiniteLossError`), saying what the estimator keeps: these
        weights if an epoch completed, else whatever it held before
        (``was_fitted``: a previous model)."""
        if not (self.interrupted or self.error is not None):
            return
        if self.history:
            weights = (
                "best validation weights"
                if self.history[0]["val_loss"] is not None
                else "weights of the last complete epoch"
            )
            kept = f"after {len(self.history)} complete epoch(s); the {weights} are kept and the estimator is usable."
        else:
            kept = "before any epoch completed; the estimator is left as it was" + (
                "." if was_fitted else " (not fitted)."
            )
        if self.error is not None:
            raise type(self.error)(
                f"{self.error} Training stopped {kept} Lower learning_rate or check the input for extreme values."
            ) from self.error
        warnings.warn(f"Training interrupted {kept}", stacklevel=3)
        raise KeyboardInterrupt(f"Training interrupted {kept}")


def warmup_cosine(
    total_steps: int, warmup_fraction: float = 0.05, final_fraction: float = 0.01
) -> Callable[[int], float]:
    """Learning-rate multiplier for step ``t`` of ``total_steps``.

    A linear warm-up over the first ``warmup_fraction`` of the steps, then a
    cosine decay towards ``final_fraction`` of the peak, reached one step
    after the last (so the last step uses slightly more than that). The total
    is known in advance, so the decay fits a short run on one image as well as
    a long run on many (plateau schedules shrink the rate too early on one image).
    """
    warmup = max(1, int(round(warmup_fraction * total_steps)))
    decay = max(1, total_steps - warmup)

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / decay)
        return _cosine_decay(progress, final_fraction)

    return multiplier


def _cosine_decay(progress: float, final_fraction: float) -> float:
    """The cosine from the peak (``progress`` 0) to ``final_fraction`` of it (``progress`` 1)."""
    return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine_over(
    progress: Callable[[], float], warmup_fraction: float = 0.05, final_fraction: float = 0.01
) -> Callable[[int], float]:
    """:func:`warmup_cosine` laid over a budget that is not counted in steps: ``progress()`` says how much
    of it is spent (0 to 1, e.g. the time given), the warm-up takes its first ``warmup_fraction`` and the
    cosine the rest, so a fit given a time ends its decay when its time ends, whatever a step costs. The
    warm-up starts at ``final_fraction`` of the peak (a first step at rate 0 would be lost)."""

    def multiplier(step: int) -> float:
        spent = min(1.0, max(0.0, progress()))
        if spent < warmup_fraction:
            return max(final_fraction, spent / warmup_fraction)
        decay = (spent - warmup_fraction) / (1 - warmup_fraction)
        return _cosine_decay(decay, final_fraction)

    return multiplier


class Budget:
    """How long a fit trains: ``max_steps`` optimizer steps, ``max_seconds`` of wall time from :meth:`start`,
    or both (whichever ends first); what is spent of it, read on the host only (a clock and a count: never
    a wait for the device)."""

    def __init__(self, max_steps: int | None, max_seconds: float | None) -> None:
        if max_steps is None and max_seconds is None:
            raise ValueError("A training budget needs max_steps, max_seconds or both.")
        self.max_steps, self.max_seconds = max_steps, max_seconds
        self.steps = 0
        self._start = time.perf_counter()

    def start(self) -> None:
        self.steps, self._start = 0, time.perf_counter()

    def progress(self) -> float:
        """The part spent: of the steps or of the time, whichever is further along (1 or more: spent)."""
        by_steps = self.steps / self.max_steps if self.max_steps else 0.0
        by_time = (time.perf_counter() - self._start) / self.max_seconds if self.max_seconds else 0.0
        return max(by_steps, by_time)

    def spent(self) -> bool:
        return self.progress() >= 1.0


def make_validation_set(
    sampler: PatchSampler, masker: Masker, n_patches: int, batch_size: int, device: torch.device, seed: int
) -> list[MaskedBatch]:
    """Draw validation patches and their blind spots once, so that the
    validation loss of different epochs is measured on the same data.

    Returns a list of ``(x, x_masked, mask)`` batches on ``device``. Patches
    and blind spots come from two streams (``seed`` and ``seed + 1``), as in
    training: on the CPU one seed for both would correlate them.
    """
    cpu = torch.Generator().manual_seed(seed)
    on_device = torch.Generator(device=device).manual_seed(seed + 1)
    batches = []
    for first in range(0, n_patches, batch_size):
        x = sampler.sample(min(batch_size, n_patches - first), cpu).to(device)
        x_masked, mask = masker(x, on_device)
        batches.append((x, x_masked, mask))
    return batches


def _parameter_groups(model: torch.nn.Module, learning_rate: float) -> list[dict[str, Any]]:
    """The trained parameters: the network's at ``learning_rate``, a noise
    model's (probabilistic N2V) at :data:`n2v_estimator.nets.noise.NOISE_LEARNING_RATE` times it."""
    noise = getattr(model, "noise", None)
    own = {id(p) for p in noise.parameters()} if noise is not None else set()
    groups: list[dict[str, Any]] = [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in own]}]
    learned = [p for p in noise.parameters() if p.requires_grad] if noise is not None else []
    if learned:
        groups.append({"params": learned, "lr": learning_rate * NOISE_LEARNING_RATE})
    return groups


def _validation_losses(
    model: torch.nn.Module, batches: Sequence[MaskedBatch], precision: str, pointwise: Pointwise
) -> NDArray[np.float64]:
    """The loss of every blind spot of the validation ``batches`` (``pointwise`` of the network's
    prediction, at the blind spots), float64: the batches' losses and masks stay on the device, and
    come to the host in one copy (:func:`_to_host`), where the blind spots are picked."""
    model.eval()
    parts = []
    with torch.inference_mode():
        for x, x_masked, mask in batches:
            with autocast(x.device, precision):
                prediction = model(x_masked)
            losses = pointwise(prediction.float(), x).double()
            parts.append(torch.stack([torch.where(mask, losses, 0).flatten(), mask.flatten().double()]))
    model.train()
    values, blind = _to_host(torch.cat(parts, dim=1))
    return values[blind == 1]


def _to_host(values: torch.Tensor) -> NDArray[np.float64]:
    """``values`` as a numpy array on the host: one copy from the device."""
    return values.cpu().numpy()


def train(
    model: torch.nn.Module,
    sampler: PatchSampler,
    masker: Masker,
    *,
    validation: Sequence[MaskedBatch],
    max_epochs: int | None,
    steps_per_epoch: int,
    batch_size: int,
    learning_rate: float,
    device: torch.device,
    seed: int,
    precision: str = "32",
    verbose: bool | int | str = False,
    loss: Loss | None = None,
    validation_loss: Pointwise | None = None,
    record: Callable[[], dict[str, Any]] | None = None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    shard: tuple[int, int] | None = None,
    max_time: float | None = None,
) -> TrainingResult:
    """Train ``model`` in place with Noise2Void.

    Parameters
    ----------
    model : torch.nn.Module
        On ``device``.
    sampler : PatchSampler
    masker : BlindSpotMasker
    validation : list
        From :func:`make_validation_set`; empty for no validation.
    max_epochs, steps_per_epoch, batch_size : int
        ``max_epochs`` may be ``None`` with ``max_time``: epochs until the time is spent.
    learning_rate : float
        Peak learning rate of Adam under :func:`warmup_cosine`, laid over the steps, or with ``max_time``
        over what is spent of the steps or the time, whichever is further along (:func:`warmup_cosine_over`).
    device : torch.device
    seed : int
        Seeds the patch and blind-spot generators.
    precision : {"32", "bf16", "16-mixed"}
        Autocast precision of the network (see :mod:`n2v_estimator.runtime.compute`); the loss is
        taken in float32, and ``"16-mixed"`` scales the gradients.
    verbose : bool or "auto"
        Show a progress bar (``"auto"``: once a few seconds have passed).
    loss : callable, optional
        ``loss(prediction, x, mask)``, the loss on the blind spots ``mask`` of
        the network's float32 ``prediction`` for the unmasked ``x``. ``None``: the mean
        squared error (plain Noise2Void).
    validation_loss : callable, optional
        ``validation_loss(prediction, x)``, each pixel's loss (x's shape), averaged over the
        validation blind spots as ``val_loss``, and what chooses the kept weights
        (:class:`n2v_estimator.fit.kept_weights.KeptWeights`). ``None``: the squared error.
    record : callable, optional
        Returns a dict added to each epoch's history record (e.g. the fitted
        noise parameters).
    forward : callable, optional
        What computes the predictions in training steps, if not ``model`` itself: its
        ``DistributedDataParallel`` wrapper (:mod:`n2v_estimator.fit.distributed`).
    reduce : callable, optional
        Applied to each epoch's summed loss (a tensor) before it is read: the average over ranks.
    shard : (int, int), optional
        ``(rank, ranks)``: draw ``batch_size * ranks`` patches and blind spots from the
        streams, and train on this rank's share (tests: ranks see what one process sees).
    max_time : float, optional
        Seconds of training: the step that spends them is the last, its epoch (short) is
        validated and recorded, and the kept weights are chosen as after any epoch.

    Returns
    -------
    TrainingResult
        The history has one dict per complete epoch (``epoch`` counted from 1
        in this run, ``train_loss``, ``val_loss``, ``learning_rate`` (the rate
        of the epoch's last step), ``seconds``, ``steps``: ``steps_per_epoch``
        but in the last epoch of a fit that ran out of ``max_time``).

    Notes
    -----
    At the end, and when training stops early, the model holds the kept
    weights (see :class:`TrainingResult`). Stopping early is reported, not
    raised: ``KeyboardInterrupt`` as ``interrupted``, a non-finite loss or
    non-finite weights as ``error``, so that the caller decides what to keep.
    Any other exception propagates, and the model's weights are then undefined.
    """
    loss = masked_mse if loss is None else loss
    validation_loss = squared_error if validation_loss is None else validation_loss
    total_steps = max_epochs * steps_per_epoch if max_epochs is not None else None
    budget = Budget(total_steps, max_time)
    step = _Step(
        model, sampler, masker, loss, learning_rate, budget, batch_size, device, precision, seed, forward, shard
    )
    kept = KeptWeights(model)
    history: list[dict[str, Any]] = []
    interrupted, error = False, None
    model.train()
    progress = progress_bar(total=total_steps, desc="fit", unit="step", verbose=verbose)
    budget.start()
    try:
        for epoch in range(max_epochs) if max_epochs is not None else itertools.count():
            if budget.spent():
                break
            start, first_step = time.perf_counter(), budget.steps
            train_loss, step_lr = _epoch(step, epoch, steps_per_epoch, progress, reduce)
            state = _finite_weights(model, epoch)
            losses = _validation_losses(model, validation, precision, validation_loss) if validation else None
            val_loss = float(np.mean(losses)) if losses is not None else None
            history.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "learning_rate": step_lr,
                    "seconds": time.perf_counter() - start,
                    "steps": budget.steps - first_step,
                    **(record() if record is not None else {}),
                }
            )
            kept.update(state, losses)
            report_epoch(history[-1], budget.steps, total_steps)
    except KeyboardInterrupt:
        interrupted = True
    except NonFiniteLossError as exc:
        error = exc
    finally:
        progress.close()
    # Also after stopping early, when a step may have left the weights half-updated.
    state = kept.state()
    model.load_state_dict(state)
    model.eval()
    return TrainingResult(state, history, interrupted, error)


class _Step:
    """One optimizer step of Noise2Void, called once per batch: a batch of patches drawn,
    masked and predicted, the loss on the blind spots, the gradient step under the
    schedule. Holds what persists between steps (optimizer, schedule, gradient scaler,
    the patch and blind-spot generators)."""

    def __init__(
        self,
        model: torch.nn.Module,
        sampler: PatchSampler,
        masker: Masker,
        loss: Loss,
        learning_rate: float,
        budget: Budget,
        batch_size: int,
        device: torch.device,
        precision: str,
        seed: int,
        forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
        shard: tuple[int, int] | None = None,
    ) -> None:
        self.model, self.sampler, self.masker, self.loss = model, sampler, masker, loss
        self.forward, self.shard = forward if forward is not None else model, shard
        self.batch_size, self.device, self.precision = batch_size, device, precision
        # On CUDA the fused Adam: a few kernels per step instead of several per tensor, and it
        # takes float16's gradient scale and overflow flag on the device (the unfused step reads
        # the flag back, making the host wait for the device at every step).
        self.optimizer = torch.optim.Adam(
            _parameter_groups(model, learning_rate),
            lr=learning_rate,
            fused=True if torch.device(device).type == "cuda" else None,
        )
        # Over the steps, as always (the same rates as ever); with a time, over what is spent of it.
        if budget.max_seconds is None and budget.max_steps is not None:
            multiplier = warmup_cosine(budget.max_steps)
        else:
            multiplier = warmup_cosine_over(budget.progress)
        self.budget = budget
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, multiplier)
        self.layout = fastest_layout(model, precision)
        self.scaler = grad_scaler(device, precision)
        self.patch_generator = torch.Generator().manual_seed(seed)
        self.mask_generator = torch.Generator(device=device).manual_seed(seed + 1)

    def __call__(self, epoch: int) -> tuple[torch.Tensor, float]:
        """Take one step; return ``(loss, learning rate)`` of it, the loss a detached tensor on
        the device: reading it would make the host wait for the device at every step, so the
        epoch sums the losses there and reads them once (:func:`_epoch`)."""
        ranks = self.shard[1] if self.shard else 1
        x = self.sampler.sample(self.batch_size * ranks, self.patch_generator).to(self.device, non_blocking=True)
        x = self.layout(x)
        x_masked, mask = self.masker(x, self.mask_generator)
        weight: float | torch.Tensor = 1.0
        if self.shard:
            share = slice(self.shard[0] * self.batch_size, (self.shard[0] + 1) * self.batch_size)
            # The loss is a mean over blind spots: weighted by this share's part of them, the
            # ranks' average is the whole batch's mean (shares may hold different counts).
            weight = mask[share].sum() * ranks / mask.sum()
            x, x_masked, mask = x[share], x_masked[share], mask[share]
        with autocast(self.device, self.precision):
            prediction = self.forward(x_masked)
        step_loss = self.loss(prediction.float(), x, mask) * weight
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(step_loss).backward()
        step_lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # float16 (CUDA): a step whose gradients overflowed is skipped (and the scale lowered), on
        # the device; the schedule still moves on, as telling would make the host wait.
        self.budget.steps += 1
        self.schedule.step()
        return step_loss.detach(), step_lr


def _epoch(
    step: _Step,
    epoch: int,
    steps_per_epoch: int,
    progress: _ProgressBar,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[float, float]:
    """``steps_per_epoch`` steps; the epoch's mean training loss and its last step's learning rate.

    The losses are summed on the device and read once, at the end: a non-finite one is then
    reported as :class:`NonFiniteLossError` (and the epoch's weights, which it may have spoiled,
    are not kept; the caller falls back on the last complete epoch's)."""
    total: torch.Tensor | None = None
    taken = 0
    for _ in range(steps_per_epoch):
        value, step_lr = step(epoch)
        total = value if total is None else total + value
        taken += 1
        progress.update()
        if step.budget.spent():  # the time is up (a short last epoch), or the last step of the last one
            break
    assert total is not None  # steps_per_epoch >= 1, the parameter's constraint
    if reduce is not None:
        total = reduce(total)
    mean = total.item() / taken  # the epoch's one wait for the device
    if not math.isfinite(mean):
        raise NonFiniteLossError(f"The training loss became non-finite ({mean}) in epoch {epoch + 1}.")
    progress.set_postfix(loss=f"{mean:.4f}", refresh=False)
    return mean, step_lr


def _finite_weights(model: torch.nn.Module, epoch: int) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s weights at the end of an epoch, or :class:`NonFiniteLossError`."""
    state = copy.deepcopy(model.state_dict())
    floats = [t for t in state.values() if t.is_floating_point()]
    if floats and not bool(torch.stack([torch.isfinite(t).all() for t in floats]).all()):  # one read
        raise NonFiniteLossError(f"The weights became non-finite in epoch {epoch + 1}.")
    return state
