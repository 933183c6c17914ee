"""How the network computes: memory layout (channels-last) and numeric precision.

Measured on a 2-core AVX-512 CPU (1 thread, batch 16, 64x64 patches, depth 2, 32
filters, repetitions interleaved): the channels-last layout makes a training step
about 1.2x faster than the default layout, and bfloat16 autocast on top of it
about 2.4x (N2V2, joint RGB and 3D alike; grouped independent-channel networks
are faster in bfloat16 in the default layout), with the same PSNR on camera. The loss, the normalisation and
the weights stay in float32: autocast only lowers the precision of the
convolutions' arithmetic.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, TypeVar

import torch

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

# A batch or a network: channels_last gives back what it is given.
_TensorOrModule = TypeVar("_TensorOrModule", torch.Tensor, torch.nn.Module)

PRECISIONS = ("auto", "32", "bf16", "16-mixed")


def _cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively here (AVX-512 BF16 or AMX); elsewhere
    it is emulated and slower than float32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def resolve_precision(precision: str | int, device: torch.device | str, ndim: int = 2, *, training: bool = True) -> str:
    """The precision ``"32"``, ``"bf16"`` or ``"16-mixed"`` to compute in on ``device``
    for a network of ``ndim`` spatial dimensions, to train it (``training``) or to predict.

    ``"auto"`` trains in float16 autocast with a gradient scaler on CUDA, in bfloat16
    for 2D networks on CPUs with native bfloat16 support, and in float32 elsewhere
    (Apple MPS, other CPUs, and 3D on a CPU, where bfloat16 training of the dev
    volume turned the loss NaN within two epochs with torch 2.13). It predicts in
    float32 everywhere: the same model and image give the same output on any
    machine (bfloat16 prediction moved outputs by 1e-2 of the range, and by how
    many threads computed them). A precision given explicitly is used for both.
    ``"16-mixed"`` needs CUDA; ``"bf16"`` runs anywhere (emulated on CPUs without
    native support, so slower there).
    """
    device, precision = torch.device(device), str(precision)  # 32 as in Lightning means "32"
    if precision == "auto":
        if not training:
            return "32"
        if device.type == "cuda":
            return "16-mixed"
        if device.type == "cpu" and ndim == 2 and _cpu_has_native_bf16():
            return "bf16"
        return "32"
    if precision == "16-mixed" and device.type != "cuda":
        raise ValueError(
            f"precision='16-mixed' (float16 with a gradient scaler) needs a CUDA device, not {device}; "
            "use precision='bf16' or '32'."
        )
    return precision


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager[None]:
    """The context the network computes in for ``precision`` on ``device``: autocast to
    bfloat16 or float16, and for ``"32"`` float32 itself: on CUDA, cuDNN's and cuBLAS's
    TensorFloat-32 (10-bit mantissas, torch's default for convolutions on recent GPUs)
    is switched off for the duration, so that float32 means the same on every device."""
    device = torch.device(device)
    if precision == "32":
        return _no_tf32() if device.type == "cuda" else contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    """Switch cuDNN's and cuBLAS's TensorFloat-32 off for the block, and back as they were after it."""
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def grad_scaler(device: torch.device | str, precision: str) -> torch.amp.GradScaler:
    """A gradient scaler for float16 training (``"16-mixed"``), else one that does nothing."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=precision == "16-mixed")


def channels_last(x: _TensorOrModule) -> _TensorOrModule:
    """``x`` (a batch or a module) in the channels-last memory layout of its
    dimensionality: ``channels_last`` in 2D, ``channels_last_3d`` in 3D. Values
    and shapes are unchanged; only the order in memory differs."""
    if isinstance(x, torch.nn.Module):
        first = next((p for p in x.parameters() if p.dim() in (4, 5)), None)
        if first is None:
            return x
        layout = torch.channels_last if first.dim() == 4 else torch.channels_last_3d
        # torch's Module.to takes memory_format (documented, and done here), which its typed overloads leave out.
        return x.to(memory_format=layout)  # type: ignore[call-overload]
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x


def prefers_channels_last(model: torch.nn.Module, precision: str) -> bool:
    """Whether ``model`` runs faster channels-last in ``precision``: everywhere
    measured but grouped (independent-channel) convolutions in bfloat16."""
    return not (precision == "bf16" and getattr(model, "groups", 1) > 1)


def fastest_layout(model: torch.nn.Module, precision: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Put ``model`` in its faster memory layout for ``precision`` and return the
    function that puts its input batches in the same layout."""
    if not prefers_channels_last(model, precision):
        return lambda x: x
    channels_last(model)
    return channels_last
