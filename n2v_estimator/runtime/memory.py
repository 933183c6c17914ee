"""How much memory a training step and a batch of ``transform`` need, and whether
the device holds it: checked when a fit is planned, before anything is allocated.

The estimate is arithmetic on the network's description (Python ints, which do
not overflow however absurd a setting is). It aims at the real peak rather
than above it, so that a setting it refuses needs about all of the device's
memory or more, while a setting it accepts may still not fit beside other work
there: its purpose is a message that names the parameter, before the data is
sampled, instead of torch's allocation error (or an hour of swapping).

Measured on a CPU (float32; the growth of the resident memory over a fit of two
steps, or over a ``transform`` of a 1024x1024 image, against the estimate): a
training step of the masked U-Net (depth 2 to 4, 32 to 256 filters, batch 4 to
64, 2D and 3D, with and without batch norm, N2V2) took 0.9 to 1.5 times the
estimate, the larger ratios for small steps, to which the runtime's own 100 to
150 MiB add most; each added sample 0.8 to 1.2 times its share. The blind-spot
network's steps took 0.9 to 1.0 times, ``transform``'s batches 0.87 to 0.99.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import TYPE_CHECKING

from ..gateway.budget import format_bytes, physical_memory
from ..nets.geometry import BLIND_HEAD_WIDTH, NetworkGeometry
from ..nets.widths import unet_widths

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import torch

    from .._typing import Description
    from ..nets.widths import BlockWidths

# Bytes of a feature-map value in each precision (autocast keeps the activations
# it saves for the backward pass in the reduced type).
BYTES_PER_VALUE = {"32": 4, "bf16": 2, "16-mixed": 2}
# Bytes of a weight: float32, whatever the precision.
_WEIGHT_BYTES = 4
# Values held per weight during training: the weight, its gradient, Adam's two
# moments, and the copies the training loop keeps (the best and the last
# complete epoch's weights, and the previous ones under warm_start).
_VALUES_PER_WEIGHT = 7
# Backward: the gradients of the layer being differentiated and the convolutions'
# work space come on top of the saved activations, while the last layers' saved
# maps are freed as it goes: measured, the peak grew by 0.8 to 1.3 times the saved
# maps per sample, depending on the architecture (see the module notes).
_BACKWARD_FACTOR = Fraction(11, 10)  # exact: a float could not multiply every int
# Bytes per (blind spot, neighbourhood or struct offset) pair while the masker
# replaces values: int64 coordinates and their clamped copies (2 * 8 * ndim),
# the value gathered, whether it lies in the patch, the float64 sampling weights.
_MASKER_BYTES_PER_OFFSET = {2: 2 * 8 * 2 + 24, 3: 2 * 8 * 3 + 24}
# transform predicts as many pixels at once as a training batch holds, and at
# least one default 2D tile (see n2v_estimator.predict.tiling.tiles_per_batch).
MIN_PREDICTION_PIXELS = 256 * 256
# When the device's memory cannot be read: the address space of today's 64-bit
# processors (48 bits, 256 TiB). Nothing larger can be allocated anywhere.
_ADDRESS_SPACE = 2**48


def device_memory(device: torch.device | str) -> tuple[int, str]:
    """``(bytes, what)``: the memory of ``device`` a fit or a transform can use at
    most, and a few words that say what it is.

    CUDA: the GPU's total memory. Apple MPS: the memory torch recommends at most.
    CPU: the machine's physical memory (a step swapping to disk would take hours).
    """
    import torch  # only here: the arithmetic below needs no torch (the command line's checks)

    device = torch.device(device)
    if device.type == "cuda":
        _, total = torch.cuda.mem_get_info(device)
        return int(total), f"the GPU {device} has"
    if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):  # torch >= 2.3
        return int(torch.mps.recommended_max_memory()), "Apple MPS recommends at most"
    physical = physical_memory()  # also an older torch's MPS: its memory is the machine's
    if physical is None:
        return _ADDRESS_SPACE, "a 64-bit address space holds"
    return physical, "this machine has"


# --------------------------------------------------------------------- weights
def _conv_weights(c_in: int, c_out: int, kernel: int, ndim: int, groups: int, bias: bool) -> int:
    """Weights of a convolution from ``c_in`` to ``c_out`` feature maps in ``groups`` groups."""
    return c_out * (c_in // groups) * kernel**ndim + (c_out if bias else 0)


def _block_weights(widths: BlockWidths, kernel: int, ndim: int, groups: int, batch_norm: bool, bias: bool) -> int:
    """Two convolutions (with a ``bias`` each or not), each with a batch norm (weight, bias,
    running mean and variance, and a step count) if ``batch_norm``."""
    n = _conv_weights(widths.inputs, widths.middle, kernel, ndim, groups, bias)
    n += _conv_weights(widths.middle, widths.outputs, kernel, ndim, groups, bias)
    return n + (4 * (widths.middle + widths.outputs) + 2 if batch_norm else 0)


def network_values(description: Description) -> int:
    """Number of values in the state of the network ``description`` describes
    (weights and buffers, what ``state_dict`` holds), computed without building it.

    Follows :class:`n2v_estimator.nets.unet.UNet` and :class:`n2v_estimator.nets.blindnet.BlindSpotNetwork`,
    whose feature maps :func:`n2v_estimator.nets.widths.unet_widths` says.
    """
    ndim, channels, kernel, batch_norm = (description[k] for k in ("ndim", "in_channels", "kernel_size", "batch_norm"))
    widths = unet_widths(description)
    groups = widths.groups
    # A convolution has a bias where no batch norm follows it, and in n2v's layout, whose Keras
    # convolutions keep theirs before the batch norm (nets.unet._ConvBlock).
    bias = description["layout"] == "n2v-tf" or not batch_norm
    outputs = 1 if description["noise_model"] is None else 2
    blind = NetworkGeometry.of(description).blind
    n = sum(
        _block_weights(block, kernel, ndim, groups, batch_norm, bias)
        for block in (*widths.down, widths.bottom, *widths.up)
    )
    head_in = widths.levels[0]
    if blind:
        hidden = BLIND_HEAD_WIDTH * description["n_filters"] * groups
        n += _conv_weights(2 * ndim * widths.levels[0], hidden, 1, ndim, groups, True)
        n += _conv_weights(hidden, hidden, 1, ndim, groups, True)
        head_in = hidden
    n += _conv_weights(head_in, channels * outputs, 1, ndim, groups, True)
    if description["noise_model"] is not None:  # mean and std buffers, one or two parameters a channel
        n += channels * (2 + (1 if description["noise_model"] == "gaussian" else 2))
    return n


# ----------------------------------------------------------------- activations
def _level_pixels(patch_shape: Sequence[int], depth: int) -> list[int]:
    """Pixels of one sample at each level, the patch padded to a multiple of ``2**depth`` as the network pads it."""
    multiple = 2**depth
    padded = [-(-int(p) // multiple) * multiple for p in patch_shape]
    return [math.prod(p // 2**level for p in padded) for level in range(depth + 1)]


def _saved_per_sample(description: Description, patch_shape: Sequence[int]) -> int:
    """Feature-map values one sample leaves saved for the backward pass of a training step."""
    ndim, channels, depth = description["ndim"], description["in_channels"], description["depth"]
    widths = unet_widths(description)
    pixels = _level_pixels(patch_shape, depth)
    blind = NetworkGeometry.of(description).blind
    # A convolution's output, and a batch norm's; the masked U-Net's ReLU works in place.
    # The upward convolutions of the blind network pad their input first (a copy they keep).
    per_conv = (2 if description["batch_norm"] else 1) + (1 if blind else 0)
    n = channels * pixels[0]  # the input, padded
    for level, (w, block) in enumerate(zip(widths.levels, widths.down)):
        n += per_conv * (block.middle + block.outputs) * pixels[level]
        if description["blurpool"]:  # stride-1 max-pool with its int64 indices, padded, blurred
            n += 4 * w * pixels[level] + w * pixels[level + 1]
        else:  # the pooled maps and their int64 indices (two values each)
            n += 3 * w * pixels[level + 1] + (w * pixels[level] if blind else 0)  # blind: shifted first
    n += per_conv * (widths.bottom.middle + widths.bottom.outputs) * pixels[depth]
    for level in reversed(range(depth)):
        w, block = widths.levels[level], widths.up[level]
        joined = widths.skips[level] > 0  # N2V2 drops the top skip
        n += w * pixels[level] * (3 if joined else 1)  # up-sampled, then joined with the skip
        n += per_conv * (block.middle + block.outputs) * pixels[level]
    outputs = 1 if description["noise_model"] is None else 2
    if not blind:
        return n + 2 * channels * outputs * pixels[0]
    directions = 2 * ndim
    hidden = BLIND_HEAD_WIDTH * description["n_filters"] * widths.groups
    # Every direction is one more sample through the U-Net; then the directions'
    # features joined, two hidden 1x1 convolutions and the head.
    head = (directions * widths.levels[0] + 2 * hidden + 2 * channels * outputs) * pixels[0]
    return directions * n + head


def _prediction_per_pixel(description: Description) -> int:
    """Feature-map values held per input pixel while a batch is predicted (nothing
    is saved for a backward pass): the skip connections waiting for the way up,
    and the widest step, the top level's joined maps with a block's two outputs."""
    ndim, channels = description["ndim"], description["in_channels"]
    widths = unet_widths(description)
    top = widths.levels[0]
    skips = sum(-(-w // 2 ** (ndim * level)) for level, w in enumerate(widths.levels))
    blind = NetworkGeometry.of(description).blind
    unet = skips + (5 + (1 if blind else 0)) * top + 3 * channels
    if not blind:
        return unet
    directions = 2 * ndim
    hidden = BLIND_HEAD_WIDTH * description["n_filters"] * widths.groups
    return max(directions * unet, 3 * directions * top + 2 * hidden)


def training_memory(
    description: Description,
    batch_size: int,
    patch_shape: Sequence[int],
    *,
    precision: str = "32",
    validation_shape: Sequence[int] | None = None,
    validation_patches: int = 0,
    blind_spot_pairs: int = 0,
) -> dict[str, int]:
    """Bytes a training step of the network ``description`` needs, by what needs them.

    Parameters
    ----------
    description : dict
        A checked network description (:func:`n2v_estimator.nets.unet.network_description`).
    batch_size : int
    patch_shape : tuple of int
        Spatial shape of the training patches.
    precision : {"32", "bf16", "16-mixed"}
        The resolved precision: the activations of the reduced ones take half.
    validation_shape : tuple of int, optional
        Of the validation patches, held on the device for the whole fit.
    validation_patches : int
        How many there are.
    blind_spot_pairs : int
        Blind spots of a batch times the offsets each looks at (its
        neighbourhood and struct mask): what the masker holds at once.

    Returns
    -------
    dict
        ``{"weights": ..., "activations": ..., "blind spots": ..., "validation": ...}``,
        in bytes (Python ints, however large).
    """
    batch_size = int(batch_size)
    channels = description["in_channels"]
    value = BYTES_PER_VALUE[str(precision)]
    saved = batch_size * _saved_per_sample(description, patch_shape)
    patch = batch_size * channels * math.prod(int(p) for p in patch_shape)
    # The batch, its masked copy and the mask, the prediction and the loss's float32 copies.
    batch = patch * (4 + 4 + 1) + 2 * patch * 4 * (1 if description["noise_model"] is None else 2)
    parts = {
        "weights": _VALUES_PER_WEIGHT * _WEIGHT_BYTES * network_values(description),
        "activations": math.ceil(_BACKWARD_FACTOR * value * saved) + batch,
        "blind spots": int(blind_spot_pairs) * _MASKER_BYTES_PER_OFFSET[description["ndim"]],
        "validation": 0,
    }
    if validation_shape is not None:  # patches, masked copies and masks
        parts["validation"] = int(validation_patches) * channels * math.prod(int(p) for p in validation_shape) * 9
    return parts


def prediction_memory(description: Description, pixels: int, *, precision: str = "32") -> int:
    """Bytes a batch of ``pixels`` input pixels (all tiles of the batch together)
    needs while ``transform`` predicts it with the network ``description``."""
    value = BYTES_PER_VALUE[str(precision)]
    channels = description["in_channels"]
    return (
        int(pixels) * (value * _prediction_per_pixel(description) + 4 * 4 * channels)
        + network_values(description) * _WEIGHT_BYTES
    )


def prediction_pixels(batch_size: int, patch_shape: Sequence[int]) -> int:
    """Input pixels ``transform`` predicts at once at most, for tiles that fill its batch."""
    return max(int(batch_size) * math.prod(int(p) for p in patch_shape), MIN_PREDICTION_PIXELS)


# What decides each part of the estimate, as a refusal names it; the integer
# settings among them get the largest value that would fit.
_DECIDED_BY = {
    "weights": ("n_filters", "kernel_size", "depth"),
    "activations": ("batch_size", "patch_size", "n_filters", "depth"),
    "blind spots": ("batch_size", "patch_size", "masked_pixel_percentage", "neighborhood_radius", "struct_mask"),
    "validation": ("batch_size", "patch_size"),
    "prediction": ("batch_size", "patch_size", "n_filters", "depth"),
}
# The settings a smaller value is searched for (and the step between values: kernels are odd).
_SEARCHED = {"batch_size": 1, "n_filters": 1, "kernel_size": 2}


def check_fit_memory(
    description: Description,
    batch_size: int,
    patch_shape: Sequence[int],
    device: torch.device | str,
    *,
    precision: str = "32",
    validation_shape: Sequence[int] | None = None,
    validation_batches: int = 0,
    masked_pixel_percentage: float = 0.0,
    offsets_per_spot: int = 0,
) -> None:
    """Refuse settings whose training step, or whose ``transform`` batches, need
    more memory than ``device`` has (see :func:`device_memory`).

    Parameters
    ----------
    description : dict
        The checked network description.
    batch_size : int
    patch_shape : tuple of int
        The planned training patches.
    device : torch.device
    precision : {"32", "bf16", "16-mixed"}
        Resolved.
    validation_shape : tuple of int, optional
        Of the validation patches; ``validation_batches`` batches of them are
        held for the whole fit.
    validation_batches : int
    masked_pixel_percentage : float
        Blind spots per patch (0 for a blind-spot network, which masks nothing).
    offsets_per_spot : int
        Neighbourhood and struct-mask offsets the masker looks at per blind spot.

    Raises
    ------
    ValueError
        Naming the parameters that decide the largest part of the estimate,
        the estimated bytes, the device's memory, and smaller values that fit.
    """
    limit, holder = device_memory(device)
    patch_pixels = math.prod(int(p) for p in patch_shape)
    spots_per_patch = max(1, math.ceil(patch_pixels * masked_pixel_percentage / 100)) if offsets_per_spot else 0

    def needs(batch_size: int = int(batch_size), **network: int) -> tuple[dict[str, int], int]:
        """The bytes of a training step by part, and of a ``transform`` batch
        (``"prediction"``), for ``batch_size`` and the network changed by ``network``."""
        network = {**description, **network}
        parts = training_memory(
            network,
            batch_size,
            patch_shape,
            precision=precision,
            validation_shape=validation_shape,
            validation_patches=validation_batches * batch_size,
            blind_spot_pairs=batch_size * network["in_channels"] * spots_per_patch * offsets_per_spot,
        )
        prediction = prediction_memory(network, prediction_pixels(batch_size, patch_shape), precision=precision)
        return parts, prediction

    def fits(**change: int) -> bool:
        """Whether a training step and a ``transform`` batch fit, with the settings ``change`` changes."""
        parts, prediction = needs(**change)
        return sum(parts.values()) <= limit and prediction <= limit

    if fits():
        return
    parts, prediction = needs()
    total = sum(parts.values())
    # How each setting is named in the message (neighborhood_radius and struct_mask by their offsets).
    values = {
        "batch_size": int(batch_size),
        "patch_size": f"patches of {tuple(patch_shape)}",
        "masked_pixel_percentage": masked_pixel_percentage,
        "struct_mask": f"{offsets_per_spot} neighbourhood and struct_mask offsets per blind spot",
        **{key: description[key] for key in ("n_filters", "kernel_size", "depth")},
    }
    if total > limit:
        largest = max(parts, key=lambda part: parts[part])
        amounts = "; ".join(f"{name} {format_bytes(n)}" for name, n in parts.items() if n)
        need = f"need about {_amount(total)} for a training step ({amounts})"
    else:
        largest = "prediction"
        need = (
            f"need about {_amount(prediction)} for each batch transform predicts ({prediction_pixels(batch_size, patch_shape)} "
            f"pixels: as many as a training batch holds, at least {MIN_PREDICTION_PIXELS})"
        )
    named = _DECIDED_BY[largest]
    settings = ", ".join(v if isinstance(v := values[key], str) else f"{key}={v}" for key in named if key in values)

    def fits_at(key: str) -> Callable[[int], bool]:
        """Whether the setting ``key`` at a value fits, the rest as it is."""
        return lambda value: fits(**{key: value})

    advice = []
    for key in named:
        best = None
        if key in _SEARCHED:
            current = int(batch_size) if key == "batch_size" else description[key]
            best = _largest_fitting(fits_at(key), current, _SEARCHED[key])
        advice.append(key if best is None else f"{key} (at most {best} fit, the rest as it is)")
    raise ValueError(
        f"{settings} {need}, more than the {_amount(limit)} {holder}; lower "
        + ", ".join(advice[:-1])
        + f" or {advice[-1]}."
    )


def check_prediction_memory(
    description: Description,
    tile_shape: Sequence[int],
    tiles: int,
    device: torch.device | str,
    *,
    precision: str = "32",
) -> None:
    """Refuse a ``transform`` whose batches, ``tiles`` tiles of ``tile_shape``
    (spatial, cut to the image) predicted at once, need more memory than ``device`` has.

    Raises ``ValueError`` naming ``tile_size`` and ``batch_size``, which decide
    the batches, the estimated bytes, the device's memory and how many pixels fit.
    """
    limit, holder = device_memory(device)
    pixels = int(tiles) * math.prod(int(t) for t in tile_shape)
    need = prediction_memory(description, pixels, precision=precision)
    if need <= limit:
        return
    fixed = prediction_memory(description, 0, precision=precision)
    fitting = max(0, limit - fixed) // (prediction_memory(description, 1, precision=precision) - fixed)
    raise ValueError(
        f"transform predicts {tiles} tile(s) of {tuple(tile_shape)} pixels at once ({pixels} pixels; tile_size "
        f"sets the tiles, batch_size times the patch size the pixels of a batch), which need about {_amount(need)}, "
        f"more than the {_amount(limit)} {holder}; lower tile_size (batches of at most {fitting} pixels fit) "
        "or batch_size."
    )


def _amount(n: int) -> str:
    """``n`` bytes in a message: in a unit, and exactly."""
    return f"{format_bytes(n)} ({n} bytes)" if n < 2**60 else format_bytes(n)


def _largest_fitting(fits: Callable[[int], bool], current: int, step: int) -> int | None:
    """The largest value ``1 + step * i`` below ``current`` for which ``fits`` (a
    test that, once it fails, fails for every larger value) holds, or ``None``."""
    if current <= 1 or not fits(1):
        return None
    low, high = 0, (current - 2) // step  # fits(1 + step * low) holds; the answer is at most high
    while low < high:
        middle = (low + high + 1) // 2
        if fits(1 + step * middle):
            low = middle
        else:
            high = middle - 1
    return 1 + step * low
