"""Where the network computes: the ``device`` parameter resolved to a torch device that exists here."""

from __future__ import annotations

import torch


def _mps_available() -> bool:
    """Whether this torch has Apple MPS and the machine can run it."""
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device named by ``device``, refused unless it can compute here.

    ``"auto"`` picks CUDA if available, else Apple MPS, else the CPU. Otherwise
    ``device`` is a string or :class:`torch.device` of type ``cpu``, ``cuda``
    (with an index below the number of GPUs) or ``mps``; anything else (``meta``,
    a GPU that is not there) raises ``ValueError`` naming what would work.
    """
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a torch device; use 'auto', 'cpu' or 'cuda'.") from exc
    if resolved.type == "cpu":
        return resolved
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} was asked for, but CUDA is not available here; use device='auto'.")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"device={device!r} was asked for, but this machine has {count} GPU(s) "
                f"(cuda:0 to cuda:{count - 1}); use device='auto' or one of those."
            )
        return resolved
    if resolved.type == "mps":
        if not _mps_available():
            raise ValueError(
                f"device={device!r} was asked for, but Apple MPS is not available here; use device='auto'."
            )
        return resolved
    raise ValueError(
        f"device={device!r} cannot run the denoiser (it holds no data or is not supported); "
        "use 'auto', 'cpu', 'cuda' or 'mps'."
    )
