"""Training on several devices, or several CPU processes, with PyTorch's DistributedDataParallel.

``fit`` with ``n_devices > 1`` starts one process per device (NCCL between GPUs, gloo between
CPU processes), each holding the whole plan and drawing its own patches from a stream seeded by
its rank; gradients are averaged at every step, each epoch's loss is averaged over the ranks, and
every rank validates on the same fixed validation set, so the best-weights rule picks the same
epoch everywhere. Rank 0 sends the kept weights and the history back; the estimator in the calling
process is then set exactly as after a single-process fit.

All or nothing: Ctrl-C in the calling process, or any rank that fails, ends every rank, and the
estimator is left as it was (a partial result of several processes is not kept).

``n_devices="torchrun"`` joins the processes ``torchrun`` started instead (one or several machines):
every process runs the same script, reads the same data and calls ``fit``; each trains its share
as a rank of the group, and every one of them ends with the same fitted estimator (the weights are
kept equal by DistributedDataParallel), which a script saves from rank 0 (the command line does).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import tempfile

import numpy as np
import torch

from .training import NonFiniteLossError, TrainingResult


class DistributedTrainingError(RuntimeError):
    """A rank of a distributed fit failed; the message names the rank and its error."""


# What torchrun (torch.distributed.run) sets in the environment of every process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun():
    """Whether this process is a rank that ``torchrun`` started."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def torchrun_ranks():
    """``(rank, world_size, local_rank)`` of this process in the group ``torchrun`` started, or a
    ``ValueError`` saying how to start one."""
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise ValueError(
            f"n_devices='torchrun' joins the processes torchrun starts, but {', '.join(missing)} "
            "is not set: start the script with `torchrun --nproc-per-node N script.py` (or the command line "
            "with `torchrun --nproc-per-node N -m n2v_estimator.cli fit ...`), or use n_devices=N, which "
            "starts N processes on this machine itself."
        )
    try:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers, as torchrun sets them.") from None


def check_devices(n_devices, device, batch_size):
    """Refuse what ``n_devices`` processes (or ``"torchrun"``'s) cannot do on ``device`` with
    ``batch_size``, naming the fix."""
    if n_devices == "torchrun":
        _, n_devices, local = torchrun_ranks()
        if device.type == "cuda" and local >= torch.cuda.device_count():
            raise ValueError(f"torchrun's LOCAL_RANK={local} has no CUDA device ({torch.cuda.device_count()} "
                             "visible): start at most that many processes per machine (--nproc-per-node).")  # fmt: skip
    elif n_devices > 1 and multiprocessing.current_process().daemon:
        raise ValueError(f"n_devices={n_devices} starts a process per device, which a daemonic worker process (of "
                         "multiprocessing.Pool, say) cannot do; fit with n_devices > 1 from the main process, use "
                         "n_devices=1 in workers, or start the processes with torchrun (n_devices='torchrun').")  # fmt: skip
    if n_devices == 1:
        return
    if batch_size % n_devices:
        raise ValueError(f"batch_size={batch_size} does not split over n_devices={n_devices}: each device takes "
                         f"batch_size / n_devices patches. Use a batch_size that is a multiple of {n_devices}.")  # fmt: skip
    if device.type == "cuda" and torch.cuda.device_count() < n_devices:
        raise ValueError(f"n_devices={n_devices} but {torch.cuda.device_count()} CUDA device(s) are visible; use "
                         f"n_devices={max(1, torch.cuda.device_count())} or device='cpu' (CPU processes).")  # fmt: skip
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"n_devices={n_devices} trains on CUDA devices or CPU processes, not on {device.type}; "
                         "use device='cuda' or device='cpu', or n_devices=1.")  # fmt: skip


def run_distributed(plan, n_devices, verbose=False, same_patches=False):
    """Train ``plan`` (a :class:`n2v_estimator.fit.plan.FitPlan`) in ``n_devices`` processes;
    return ``(model, TrainingResult)`` in this process, as :meth:`FitPlan.run` does.

    ``same_patches`` (for tests): every rank draws the whole batch from one stream and trains on
    its share, so that the ranks together see what one process with the whole batch sees.

    Raises
    ------
    DistributedTrainingError
        When a rank fails (the others are ended).
    KeyboardInterrupt
        On Ctrl-C (every rank is ended).
    """
    context = torch.multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="n2v-ddp-") as folder:
        rendezvous = "file://" + os.path.join(folder, "rendezvous")
        messages = context.Queue()
        ranks = [context.Process(target=_rank_main, daemon=True,
                                 args=(rank, n_devices, plan, rendezvous, messages, verbose, same_patches))
                 for rank in range(n_devices)]  # fmt: skip
        try:
            for process in ranks:
                process.start()
            outcome = _collect(ranks, messages)
        finally:
            for process in ranks:
                if process.is_alive():
                    process.terminate()
            for process in ranks:
                if process.pid is not None:  # started
                    process.join(timeout=10)
            messages.close()
            messages.join_thread()
    state, history, interrupted, error, calibration = outcome
    model = plan.build_network().cpu()
    model.load_state_dict({name: torch.from_numpy(array) for name, array in state.items()})
    model = model.to(plan.device).eval()
    error = NonFiniteLossError(error) if error is not None else None
    return model, TrainingResult(model.state_dict(), history, interrupted, error, calibration)


def run_joined(plan, verbose=False):
    """Train ``plan`` as this process's rank of the group ``torchrun`` started; return
    ``(model, TrainingResult)`` as :meth:`FitPlan.run` does, the same on every rank.

    The process group is made here (and ended after) unless the script made it. A stop
    (Ctrl-C, which torchrun passes to every rank) keeps nothing: the ranks may stop at different
    steps, so no epoch is known to be complete on all of them.
    """
    import torch.distributed as dist

    rank, world, local = torchrun_ranks()
    cuda = plan.device.type == "cuda"
    device = torch.device("cuda", local) if cuda else plan.device
    if cuda:
        torch.cuda.set_device(device)
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
    try:
        model, result = plan.run(verbose=verbose and rank == 0, rank=(rank, world, device, False))
        if result.interrupted:
            raise KeyboardInterrupt("Training interrupted: a fit under torchrun keeps nothing.")
        dist.barrier()
    finally:
        if started:
            dist.destroy_process_group()
    return model, result


def _collect(ranks, messages):
    """Rank 0's result, or the first failure: a rank's error, or a rank that died without one."""
    while True:
        try:
            kind, *payload = messages.get(timeout=0.2)
        except queue.Empty:
            for rank, process in enumerate(ranks):
                if process.exitcode not in (None, 0):
                    raise DistributedTrainingError(
                        f"rank {rank} of {len(ranks)} ended with exit code {process.exitcode} before training "
                        "finished. Each rank is a new Python process that imports your script's main module: "
                        "a script must start its work under `if __name__ == \"__main__\":`."
                    )
            continue
        if kind == "error":
            rank, text = payload
            raise DistributedTrainingError(f"rank {rank} of {len(ranks)} failed: {text} (every rank was ended; the "
                                           "estimator is left as it was).")  # fmt: skip
        return payload


def _rank_main(rank, world, plan, rendezvous, messages, verbose, same_patches):
    """One rank: join the group, train its share, and (rank 0) send the result back."""
    import torch.distributed as dist

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the calling process decides: Ctrl-C ends every rank
    try:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        cuda = plan.device.type == "cuda"
        device = torch.device("cuda", rank) if cuda else plan.device
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo", init_method=rendezvous, rank=rank, world_size=world)
        model, result = plan.run(verbose=verbose and rank == 0, rank=(rank, world, device, same_patches))
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


def average_over_ranks(value):
    """``value`` (a tensor) averaged over the ranks of the current process group, in place."""
    import torch.distributed as dist

    dist.all_reduce(value)
    value /= dist.get_world_size()
    return value


class _BatchNormOverRanks:
    """Batch normalisation whose training statistics are those of the whole batch of every rank
    (summed with a differentiable all-reduce), as one process with the whole batch computes them.
    torch's SyncBatchNorm does this on GPUs only; this runs on gloo (CPU) and NCCL alike."""

    def forward(self, x):
        if not self.training or not torch.distributed.is_initialized():
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        stats = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        channels = x.shape[1]
        n = stats[-1]
        mean = stats[:channels] / n
        var = (stats[channels : 2 * channels] / n - mean * mean).clamp_min(0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean.detach())
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * var.detach() * n / (n - 1))
        shape = (1, channels) + (1,) * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


class _BatchNorm2dOverRanks(_BatchNormOverRanks, torch.nn.BatchNorm2d):
    pass


class _BatchNorm3dOverRanks(_BatchNormOverRanks, torch.nn.BatchNorm3d):
    pass


def batch_norm_over_ranks(model):
    """``model`` with its batch norms normalising by the statistics of all ranks' batches in
    training (in place: parameters, buffers and their names are unchanged); returns it."""
    kinds = {torch.nn.BatchNorm2d: _BatchNorm2dOverRanks, torch.nn.BatchNorm3d: _BatchNorm3dOverRanks}
    for module in model.modules():
        if type(module) in kinds:
            module.__class__ = kinds[type(module)]
    return model


def rank_seed(seed, rank):
    """The patch and blind-spot seed of ``rank``: its own stream, the same for the same ``seed``."""
    return int((np.int64(seed) + 1_000_003 * rank) % (2**31 - 1))
