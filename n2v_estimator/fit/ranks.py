"""One rank of a distributed fit (:mod:`n2v_estimator.fit.distributed`): its place among the ranks, its
own patch stream, and what it computes together with the others: batch norm over every rank's batch
and each epoch's loss averaged over the ranks.
"""

from __future__ import annotations

from typing import NamedTuple, cast

import numpy as np
import torch
from torch.nn.modules.batchnorm import _BatchNorm


class Rank(NamedTuple):
    """This process's place in a distributed fit: what :meth:`n2v_estimator.fit.plan.FitPlan.run`
    trains a share with."""

    #: This process's rank, from 0.
    number: int
    #: How many ranks train together.
    world_size: int
    #: This rank's device.
    device: torch.device
    #: Every rank draws the whole batch from one stream and trains on its share (tests: the ranks
    #: together see what one process sees); else each draws its own patches.
    same_patches: bool


def average_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """``value`` (a tensor) averaged over the ranks of the current process group, in place."""
    import torch.distributed as dist

    dist.all_reduce(value)
    value /= dist.get_world_size()
    return value


# On torch's base of BatchNorm2d and BatchNorm3d (private; SyncBatchNorm stands on it too): mixed
# into each, this forward's attributes and super().forward are theirs.
class _BatchNormOverRanks(_BatchNorm):
    """Batch normalisation whose training statistics are those of the whole batch of every rank
    (summed with a differentiable all-reduce), as one process with the whole batch computes them.
    torch's SyncBatchNorm does this on GPUs only; this runs on gloo (CPU) and NCCL alike."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
            # The networks' batch norms track running statistics with a momentum: none of these is None.
            momentum = cast(float, self.momentum)
            cast(torch.Tensor, self.num_batches_tracked).add_(1)
            cast(torch.Tensor, self.running_mean).mul_(1 - momentum).add_(momentum * mean.detach())
            cast(torch.Tensor, self.running_var).mul_(1 - momentum).add_(momentum * var.detach() * n / (n - 1))
        shape = (1, channels) + (1,) * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


class _BatchNorm2dOverRanks(_BatchNormOverRanks, torch.nn.BatchNorm2d):
    pass


class _BatchNorm3dOverRanks(_BatchNormOverRanks, torch.nn.BatchNorm3d):
    pass


def batch_norm_over_ranks(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its batch norms normalising by the statistics of all ranks' batches in
    training (in place: parameters, buffers and their names are unchanged); returns it."""
    kinds: dict[type[torch.nn.Module], type[torch.nn.Module]] = {
        torch.nn.BatchNorm2d: _BatchNorm2dOverRanks,
        torch.nn.BatchNorm3d: _BatchNorm3dOverRanks,
    }
    for module in model.modules():
        if type(module) in kinds:
            module.__class__ = kinds[type(module)]
    return model


def rank_seed(seed: int, rank: int) -> int:
    """The patch and blind-spot seed of ``rank``: its own stream, the same for the same ``seed``."""
    return int((np.int64(seed) + 1_000_003 * rank) % (2**31 - 1))
