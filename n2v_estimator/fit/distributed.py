"""Training on several devices, or several CPU processes, with PyTorch's DistributedDataParallel.

``fit`` with ``n_devices > 1`` starts one process per device (NCCL between GPUs, gloo between
CPU processes), each holding the whole plan and drawing its own patches from a stream seeded by
its rank; gradients are averaged at every step, each epoch's loss is averaged over the ranks, and
every rank validates on the same fixed validation set, so the best-weights rule picks the same
epoch everywhere. Rank 0 sends the kept weights and the history back; the estimator in the calling
process is then set exactly as after a single-process fit.

All or nothing: Ctrl-C in the calling process, or any rank that fails, ends every rank, and the
estimator is left as it was (a partial result of several processes is not kept). The ranks die
with the calling process however it ends, and do not run its script
(:mod:`n2v_estimator.fit.lifeline`).

``n_devices="torchrun"`` joins the processes ``torchrun`` started instead (one or several machines):
every process runs the same script, reads the same data and calls ``fit``; each trains its share
as a rank of the group, and every one of them ends with the same fitted estimator (the weights are
kept equal by DistributedDataParallel), which a script saves from rank 0 (the command line does).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import pickle
import queue
import re
import secrets
import shutil
import signal
import stat
import sys
import tempfile
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch

from ..gateway.text import shown
from .lifeline import DroppingQueue, rank_entry, started_without_main, watch_parent
from .ranks import Rank
from .training import NonFiniteLossError, TrainingResult

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess
    from multiprocessing.queues import Queue
    from types import ModuleType

    from ..nets.blindnet import BlindSpotNetwork
    from ..nets.unet import UNet


class DistributedTrainingError(RuntimeError):
    """A rank of a distributed fit failed, or could not join; the message names the rank and its error."""


# What torchrun (torch.distributed.run) sets in the environment of every process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# How long joining torchrun's group may take (every rank connected), in seconds, unless the
# environment variable N2V_RENDEZVOUS_TIMEOUT says otherwise: torchrun starts its ranks together,
# and a rank whose peers never come ends with a message instead of torch's 30 minutes of silence.
RENDEZVOUS_SECONDS = 300
# A host name or an IP address (IPv6 in brackets or not): what MASTER_ADDR may hold.
_HOST_PATTERN = re.compile(r"[A-Za-z0-9._:\[\]%-]{1,253}")


class TrainingPlan(Protocol):
    """What the ranks train: a :class:`n2v_estimator.fit.plan.FitPlan`, named here by what they use of
    it (the plan's module imports this one)."""

    @property
    def device(self) -> torch.device:
        """The device the plan was made for (its type decides the backend)."""
        ...

    def build_network(self, device: torch.device | None = None) -> UNet | BlindSpotNetwork:
        """A fresh network as planned, on ``device``."""
        ...

    def run(
        self, verbose: bool | int | str = False, rank: Rank | None = None
    ) -> tuple[UNet | BlindSpotNetwork, TrainingResult]:
        """Train as planned: the whole fit, or (``rank``) one rank's share of it."""
        ...


def launched_by_torchrun() -> bool:
    """Whether this process has the environment of a rank that ``torchrun`` started."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def torchrun_environment() -> tuple[int, int, int, str, int]:
    """``(rank, world_size, local_rank, master_addr, master_port)`` from torchrun's variables,
    each checked; a ``ValueError`` of one line naming a variable that is missing or wrong."""
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise ValueError(
            f"n_devices='torchrun' joins the processes torchrun starts, but {', '.join(missing)} "
            "is not set: start the script with `torchrun --nproc-per-node N script.py` (or the command line "
            "with `torchrun --nproc-per-node N -m n2v_estimator.cli fit --n-devices torchrun ...`), or use "
            "n_devices=N, which starts N processes on this machine itself."
        )

    def whole_number(name: str, low: int, high: int) -> int:
        text = os.environ[name]
        if not re.fullmatch(r"\d{1,9}", text.strip()) or not low <= int(text) <= high:
            raise ValueError(
                f"torchrun's variable {name}={shown(text, 60)} is not a whole number from {low} to "
                f"{high}: start the processes with torchrun, which sets it, or unset it."
            )
        return int(text)

    world = whole_number("WORLD_SIZE", 1, 2**20)
    rank = whole_number("RANK", 0, world - 1)
    local = whole_number("LOCAL_RANK", 0, world - 1)
    port = whole_number("MASTER_PORT", 1, 65535)
    address = os.environ["MASTER_ADDR"].strip()
    if not _HOST_PATTERN.fullmatch(address):
        raise ValueError(
            f"torchrun's variable MASTER_ADDR={shown(address, 60)} is not a host name or an IP "
            "address: start the processes with torchrun, which sets it, or unset it."
        )
    return rank, world, local, address, port


def torchrun_ranks() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` of this process in the group ``torchrun`` started, or a
    ``ValueError`` saying how to start one (:func:`torchrun_environment`)."""
    return torchrun_environment()[:3]


def rendezvous_seconds() -> float:
    """How long joining torchrun's group may take: N2V_RENDEZVOUS_TIMEOUT, else :data:`RENDEZVOUS_SECONDS`."""
    text = os.environ.get("N2V_RENDEZVOUS_TIMEOUT", str(RENDEZVOUS_SECONDS))
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= 7 * 24 * 3600:
        raise ValueError(
            f"N2V_RENDEZVOUS_TIMEOUT={shown(text, 60)} is not a number of seconds from 0 to a week; "
            f"unset it for the default ({RENDEZVOUS_SECONDS} s)."
        )
    return seconds


def check_devices(n_devices: int | Literal["torchrun"], device: torch.device, batch_size: int) -> None:
    """Refuse what ``n_devices`` processes (or ``"torchrun"``'s) cannot do on ``device`` with
    ``batch_size``, naming the fix."""
    if n_devices == "torchrun":
        _, n_devices, local = torchrun_ranks()
        if device.type == "cuda" and local >= torch.cuda.device_count():
            raise ValueError(
                f"torchrun's LOCAL_RANK={local} has no CUDA device ({torch.cuda.device_count()} "
                "visible): start at most that many processes per machine (--nproc-per-node)."
            )
    elif n_devices > 1 and getattr(multiprocessing.current_process(), "_inheriting", False):
        # A process that multiprocessing starts with "spawn" (a Pool of the user's, say; never our
        # ranks, which start without the script) runs its parent's script, which calls fit: a script
        # without a main guard. One line (SystemExit prints it, with no traceback), exit 1.
        raise SystemExit(
            f"n2v-estimator: fit(n_devices={n_devices}) was called while multiprocessing was starting "
            "this process, which runs the script again: the script calls it when imported. Put the "
            'script\'s work under `if __name__ == "__main__":`.'
        )
    elif n_devices > 1 and multiprocessing.current_process().daemon:
        raise ValueError(
            f"n_devices={n_devices} starts a process per device, which a daemonic worker process (of "
            "multiprocessing.Pool, say) cannot do; fit with n_devices > 1 from the main process, use "
            "n_devices=1 in workers, or start the processes with torchrun (n_devices='torchrun')."
        )
    if n_devices == 1:
        return
    if batch_size % n_devices:
        raise ValueError(
            f"batch_size={batch_size} does not split over n_devices={n_devices}: each device takes "
            f"batch_size / n_devices patches. Use a batch_size that is a multiple of {n_devices}."
        )
    if device.type == "cuda" and torch.cuda.device_count() < n_devices:
        raise ValueError(
            f"n_devices={n_devices} but {torch.cuda.device_count()} CUDA device(s) are visible; use "
            f"n_devices={max(1, torch.cuda.device_count())} or device='cpu' (CPU processes)."
        )
    if device.type not in ("cuda", "cpu"):
        raise ValueError(
            f"n_devices={n_devices} trains on CUDA devices or CPU processes, not on {device.type}; "
            "use device='cuda' or device='cpu', or n_devices=1."
        )


def run_distributed(
    plan: TrainingPlan, n_devices: int, verbose: bool | int | str = False, same_patches: bool = False
) -> tuple[UNet | BlindSpotNetwork, TrainingResult]:
    """Train ``plan`` (a :class:`n2v_estimator.fit.plan.FitPlan`) in ``n_devices`` processes;
    return ``(model, TrainingResult)`` in this process, as :meth:`FitPlan.run` does.

    ``same_patches`` (for tests): every rank draws the whole batch from one stream and trains on
    its share, so that the ranks together see what one process with the whole batch sees.

    The ranks die with this process and do not run its script (:mod:`n2v_estimator.fit.lifeline`).
    The rendezvous folder is made by the first rank that watches this process (each removes it
    when this process is gone) and removed here after the fit: no moment leaves it behind. The
    plan goes to the ranks through a queue after they started, not in the arguments of the start:
    a rank that dies while starting cannot block this process.

    Raises
    ------
    DistributedTrainingError
        When a rank fails (the others are ended), or dies before it started.
    KeyboardInterrupt
        On Ctrl-C (every rank is ended).
    """
    context = torch.multiprocessing.get_context("spawn")
    folder = os.path.join(tempfile.gettempdir(), f"n2v-ddp-{secrets.token_hex(16)}")
    messages, plans = context.Queue(), DroppingQueue(ctx=context)
    sent = pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL)  # once, here; tensors copied, not shared
    ranks = [
        context.Process(
            target=rank_entry,
            daemon=True,
            args=(folder, f"{__name__}:rank_main", rank, n_devices, plans, messages, verbose, same_patches),
        )
        for rank in range(n_devices)
    ]
    try:
        with started_without_main():
            for process in ranks:
                process.start()
        for _ in ranks:
            plans.put(sent)
        outcome = _collect(ranks, messages)
    finally:
        for process in ranks:
            if process.is_alive():
                process.terminate()
        for process in ranks:
            if process.pid is not None:  # started
                process.join(timeout=10)
        for channel in (plans, messages):  # what no rank took is dropped: nothing waits on it
            channel.cancel_join_thread()
            channel.close()
        shutil.rmtree(folder, ignore_errors=True)
    state, history, interrupted, error, calibration = outcome
    model = plan.build_network().cpu()
    model.load_state_dict({name: torch.from_numpy(array) for name, array in state.items()})
    model = model.to(plan.device).eval()
    error = NonFiniteLossError(error) if error is not None else None
    return model, TrainingResult(model.state_dict(), history, interrupted, error, calibration)


def run_joined(plan: TrainingPlan, verbose: bool | int | str = False) -> tuple[UNet | BlindSpotNetwork, TrainingResult]:
    """Train ``plan`` as this process's rank of the group ``torchrun`` started; return
    ``(model, TrainingResult)`` as :meth:`FitPlan.run` does, the same on every rank.

    The process group is made here (and ended after) unless the script made it: joining takes at
    most :func:`rendezvous_seconds`, and a failure to join is one line naming the address, the
    rank and the cause. A stop (Ctrl-C, which torchrun passes to every rank) keeps nothing: the
    ranks may stop at different steps, so no epoch is known to be complete on all of them. The
    rank ends when the process that started it (torchrun) is gone.
    """
    import torch.distributed as dist

    rank, world, local, address, port = torchrun_environment()
    cuda = plan.device.type == "cuda"
    device = torch.device("cuda", local) if cuda else plan.device
    if cuda:
        torch.cuda.set_device(device)
    started = not dist.is_initialized()
    if started:
        watch_parent()
        _join_torchrun_group(dist, "nccl" if cuda else "gloo", rank, world, address, port)
    try:
        model, result = plan.run(verbose=verbose and rank == 0, rank=Rank(rank, world, device, False))
        if result.interrupted:
            raise KeyboardInterrupt("Training interrupted: a fit under torchrun keeps nothing.")
        dist.barrier()
    finally:
        if started:
            dist.destroy_process_group()
    return model, result


def _join_torchrun_group(dist: ModuleType, backend: str, rank: int, world: int, address: str, port: int) -> None:
    """Join torchrun's group as ``rank`` of ``world`` through the store at ``address:port``, within
    :func:`rendezvous_seconds`; torch's own waits (30 minutes) and its native retry messages are
    replaced by one line."""
    seconds = rendezvous_seconds()
    where = f"torchrun's group at {address}:{port} as RANK {rank} of WORLD_SIZE {world}"
    try:
        with _native_stderr_quiet():
            store, _, _ = next(dist.rendezvous("env://", rank, world, timeout=timedelta(seconds=seconds)))
            store.set_timeout(timedelta(seconds=seconds))  # every rank connected to every other
            dist.init_process_group(backend, store=store, rank=rank, world_size=world)
        store.set_timeout(timedelta(minutes=30))  # torch's default, for what follows
    except (RuntimeError, ValueError, OSError) as exc:
        cause = " ".join(str(exc).split("Exception raised from")[0].split()).rstrip(".") or type(exc).__name__
        raise DistributedTrainingError(
            f"could not join {where} within {seconds:g} s: {shown(cause, 200)}. Start every rank with torchrun "
            "(each with its own RANK), or give N2V_RENDEZVOUS_TIMEOUT more seconds when ranks start late."
        ) from None


@contextlib.contextmanager
def _native_stderr_quiet() -> Iterator[None]:
    """The process's standard error (file descriptor 2) sent nowhere for a while: torch's native
    code prints a multi-line trace on every failed connection attempt, which the caller says in one
    line. Where descriptor 2 cannot be redirected, nothing is changed."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        nowhere = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        os.dup2(nowhere, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(nowhere)


def private_folder(path: str) -> str:
    """Make the folder ``path`` readable by this user alone, or find it made so (by another rank):
    a folder of another user, a link, or one others may read is refused."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    others = hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & 0o077)
    if not stat.S_ISDIR(info.st_mode) or others:
        raise RuntimeError(
            f"the rendezvous folder {path} is not a private folder of this user (made by another "
            "user, or a link): the ranks do not join through it."
        )
    return path


def _collect(ranks: Sequence[BaseProcess], messages: Queue[tuple[Any, ...]]) -> list[Any]:
    """Rank 0's result, or the first failure: a rank's error, or a rank that died without one."""
    started = set()
    while True:
        try:
            kind, *payload = messages.get(timeout=0.2)
        except queue.Empty:
            for rank, process in enumerate(ranks):
                if process.exitcode not in (None, 0):
                    raise DistributedTrainingError(
                        _death_message(rank, len(ranks), process.exitcode, rank in started)
                    ) from None
            continue
        if kind == "started":
            started.add(payload[0])
            continue
        if kind == "error":
            rank, text = payload
            raise DistributedTrainingError(
                f"rank {rank} of {len(ranks)} failed: {shown(text, 400)} (every rank was "
                "ended; the estimator is left as it was)."
            )
        return payload


def _death_message(rank: int, world: int, exitcode: int, started: bool) -> str:
    """One line for a rank that ended with ``exitcode`` without saying why."""
    when = "while starting, before it could train" if not started else "before training finished"
    return (
        f"rank {rank} of {world} ended with exit code {exitcode} {when} (killed, or out of memory?); every "
        "rank was ended and the estimator is left as it was."
    )


def rank_main(
    folder: str,
    rank: int,
    world: int,
    plans: DroppingQueue,
    messages: Queue[tuple[Any, ...]],
    verbose: bool | int | str,
    same_patches: bool,
) -> None:
    """One rank (its parent watched already: :func:`n2v_estimator.fit.lifeline.rank_entry`): make
    the private rendezvous ``folder`` (or find it made by another rank), take the plan, join the
    group, train its share, and (rank 0) send the result back."""
    import torch.distributed as dist

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the calling process decides: Ctrl-C ends every rank
    messages.put(("started", rank))
    try:
        private_folder(folder)
        rendezvous = "file://" + os.path.join(folder, "rendezvous")
        try:
            plan = pickle.loads(plans.get())
        except (AttributeError, ImportError) as exc:
            raise RuntimeError(
                f"the fit's settings or data hold an object a rank cannot import ({exc}): define it in "
                "a module of its own, not in the script or notebook that calls fit."
            ) from None
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        cuda = plan.device.type == "cuda"
        device = torch.device("cuda", rank) if cuda else plan.device
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo", init_method=rendezvous, rank=rank, world_size=world)
        model, result = plan.run(verbose=verbose and rank == 0, rank=Rank(rank, world, device, same_patches))
        if rank == 0:
            state = {name: tensor.detach().cpu().numpy() for name, tensor in model.state_dict().items()}
            error = None if result.error is None else str(result.error)
            messages.put(("result", state, result.history, result.interrupted, error, result.calibration))
        dist.barrier()
        dist.destroy_process_group()
    except BaseException as exc:  # reported at once; the calling process ends the other ranks
        messages.put(("error", rank, f"{type(exc).__name__}: {exc}"))
        messages.close()
        messages.join_thread()
        os._exit(1)  # no collective, no exit handler: the other ranks may be waiting in one
