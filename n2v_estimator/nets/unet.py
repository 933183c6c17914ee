"""The U-Net used by Noise2Void, in 2D and 3D.

The network maps ``(batch, channels, *spatial)`` to the same shape. It accepts
any spatial size: the input is padded (by reflection) up to a multiple of
``2**depth`` and the output cropped back, so callers never have to think about
divisibility.
"""

from __future__ import annotations

import math
from numbers import Integral
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .._constraints import Interval, StrOptions, validate_parameter_constraints
from .noise import NOISE_MODELS, TAU_FLOOR, NoiseModel
from .widths import unet_widths

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any, Protocol

    from .._typing import Description
    from .widths import BlockWidths

    class _NetworkWithHead(Protocol):
        """What :meth:`UNet._output` and :meth:`UNet.initialise_prior_scale` read of a network: the
        U-Net's, and the blind-spot network's, which borrows them."""

        head: nn.Conv2d | nn.Conv3d
        outputs: int
        residual: bool


# What each of the network's settings may be. The estimator declares these as its
# parameter constraints and a model file's network description is checked against
# them: one statement of what is allowed.
ARCHITECTURE_CONSTRAINTS: dict[str, list[Any]] = {
    "depth": [Interval(Integral, 1, 8, closed="both")],
    "n_filters": [Interval(Integral, 1, None, closed="left")],
    "kernel_size": [Interval(Integral, 1, None, closed="left")],
    "batch_norm": ["boolean", None],  # None: on for the masked U-Net, off for a blind-spot network
    "residual": ["boolean"],
    "blurpool": ["boolean"],
    "skip_skipone": ["boolean"],
    "independent_channels": ["boolean"],
    "blind_spot": [StrOptions({"mask", "network"}), None],  # None: "mask", see resolve_blind_spot
}
# The U-Net options a blind-spot network (blind_spot="network") cannot have, and why.
_NOT_BLIND = {
    "residual": "adds each pixel's own value to its prediction",
    "blurpool": "blurs across the blind spot (a blur-pool that looks one way only is not built)",
    "skip_skipone": "is an N2V2 remedy for masked blind spots",
}

# The network description is a schema of its own, versioned apart from the
# constructor's signature: a new constructor argument gets a default for older
# descriptions, so that every saved model keeps loading. Schema 1 is also what
# the package's first model files hold (without the "schema" key); schema 2
# added the noise model (schema 1 networks have none), schema 3 the blind-spot
# architecture (earlier networks mask pixels), schema 4 the layout (earlier networks are this
# package's own).
DESCRIPTION_SCHEMA = 4
_DEFAULTS_SINCE: dict[int, dict[str, Any]] = {
    2: {"noise_model": None},
    3: {"blind_spot": "mask"},
    4: {"layout": "n2v-estimator"},
}
# The U-Net's layouts: this package's own, and the TensorFlow n2v's (CSBDeep's U-Net block, as
# n2v 0.3 builds it), which networks imported from n2v model folders keep. They differ in the
# widths of the bottom's and the decoder's first convolutions (nets.widths), nearest-neighbour
# up-sampling, the blur-pool's alignment, and batch norm (epsilon 1e-3, after a convolution with a bias).
LAYOUTS = ("n2v-estimator", "n2v-tf")
# The fields the data decides, beside the architecture the parameters decide.
_DATA_CONSTRAINTS: dict[str, list[Any]] = {
    "ndim": [Interval(Integral, 2, 3, closed="both")],
    "in_channels": [Interval(Integral, 1, None, closed="left")],
}
FIELDS = tuple(_DATA_CONSTRAINTS) + tuple(ARCHITECTURE_CONSTRAINTS) + ("noise_model", "layout")


def resolve_blind_spot(blind_spot: str | None) -> str:
    """The blind spot a network gets for the estimator's ``blind_spot``: ``None`` (kept for code
    written while it picked by noise model) means ``"mask"``, the default.

    The masked U-Net costs what plain Noise2Void costs per step; the blind-spot network learns from
    every pixel but a step costs 4.4 times as much. Given the wall time of a plain reference fit, the
    masked U-Net's posterior beats plain Noise2Void on every case measured, Gaussian and Poisson (camera,
    Poisson: 27.44 dB against 27.21, where the blind-spot network's reaches 26.05; BSD68: 27.76
    against 26.68), once the kept weights are chosen by their posterior's validation loss with its
    standard error (:mod:`n2v_estimator.fit.training`): the lowest loss had kept early epochs by chance
    (moon, Poisson, 33.79 dB, now 34.76; docs: results, "Quality per minute"). At the same number of
    steps the blind-spot network's prior is the better one under Poisson noise. It needs training
    patches that cover its reach (see ``n2v_estimator.fit.checks``).
    """
    return "mask" if blind_spot is None else blind_spot


def network_description(
    ndim: int,
    in_channels: int,
    settings: Mapping[str, Any],
    noise_model: str | None = None,
    layout: str = "n2v-estimator",
) -> dict[str, Any]:
    """The description of the network for ``ndim``-D data with ``in_channels``
    channels and the architecture ``settings`` (a mapping holding at least the
    keys of :data:`ARCHITECTURE_CONSTRAINTS`, e.g. the estimator's parameters).
    ``noise_model`` (``None`` or one of :data:`n2v_estimator.nets.noise.NOISE_MODELS`) makes the
    network probabilistic: it predicts a prior mean and standard deviation. ``layout``: one of
    :data:`LAYOUTS` (``"n2v-tf"`` for networks imported from n2v, and their continued training).

    Raises ``ValueError`` for settings a network cannot have.
    """
    description = {
        "schema": DESCRIPTION_SCHEMA,
        "ndim": int(ndim),
        "in_channels": int(in_channels),
        "noise_model": noise_model,
        "layout": layout,
    }
    blind_spot = resolve_blind_spot(settings["blind_spot"])
    for key, constraint in ARCHITECTURE_CONSTRAINTS.items():
        value = settings[key]
        if key == "blind_spot":
            value = blind_spot
        if key == "batch_norm" and value is None:
            # Measured on moon with Poisson noise (reference budget): batch norm cost the
            # blind-spot network 1.5 dB (33.63 against 35.13); the masked U-Net keeps it.
            value = blind_spot == "mask"
        # Parameters are validated already; numpy ints, bools and strings from a grid become plain ones.
        description[key] = _field_type(constraint)(value)
    return check_description(description)


def _field_type(constraint: Sequence[Any]) -> type[bool | int | str]:
    """The type a description's field holds under ``constraint``, its entry in :data:`ARCHITECTURE_CONSTRAINTS`
    or :data:`_DATA_CONSTRAINTS`: ``bool``, ``str`` (one of some options) or ``int``."""
    if "boolean" in constraint:
        return bool
    return str if isinstance(constraint[0], StrOptions) else int


def check_description(description: object) -> dict[str, Any]:
    """Validate a network description (from :func:`network_description` or a
    model file) and return it in the current schema.

    Raises ``ValueError`` naming the first bad field.
    """
    if not isinstance(description, dict):
        raise ValueError(f"a network description is a mapping, got {type(description).__name__}.")
    description = dict(description)
    schema = description.pop("schema", 1)
    if type(schema) is not int or not 1 <= schema <= DESCRIPTION_SCHEMA:
        raise ValueError(
            f"network description schema {schema!r} is unknown; this version reads 1 to {DESCRIPTION_SCHEMA}."
        )
    for since in range(schema + 1, DESCRIPTION_SCHEMA + 1):
        for key, default in _DEFAULTS_SINCE[since].items():
            if key in description:
                raise ValueError(f"a schema {schema} network description has no field {key!r}.")
            description[key] = default
    if set(description) != set(FIELDS):
        raise ValueError(
            f"the network description has the fields {sorted(description)}, a U-Net's are {sorted(FIELDS)}."
        )
    if description["noise_model"] not in (None, *NOISE_MODELS):
        raise ValueError(
            f"network noise model {description['noise_model']!r} is unknown; use None or one of {NOISE_MODELS}."
        )
    if description["layout"] not in LAYOUTS:
        raise ValueError(f"network layout {description['layout']!r} is unknown; this version builds {LAYOUTS}.")
    for key, constraint in {**_DATA_CONSTRAINTS, **ARCHITECTURE_CONSTRAINTS}.items():
        value = description[key]
        wanted = _field_type(constraint)
        if type(value) is not wanted:
            raise ValueError(
                f"network setting {key}={value!r} is not {'an' if wanted is int else 'a'} {wanted.__name__}."
            )
    validate_parameter_constraints(  # (the type check above has refused an unresolved batch_norm=None)
        {**_DATA_CONSTRAINTS, **ARCHITECTURE_CONSTRAINTS, "noise_model": [None, str], "layout": [str]},
        description,
        caller_name="the U-Net",
    )
    if description["kernel_size"] % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {description['kernel_size']}.")
    if description["layout"] == "n2v-tf" and (description["noise_model"] or description["blind_spot"] == "network"):
        raise ValueError(
            "n2v's U-Net layout (a network imported from n2v) has no noise model and masks its blind spots."
        )
    if description["layout"] == "n2v-tf" and description["blurpool"] and description["ndim"] == 3:
        raise ValueError("n2v's U-Net has no 3D blur-pool.")
    if description["blind_spot"] == "network":
        for key, why in _NOT_BLIND.items():
            if description[key]:
                raise ValueError(
                    f"blind_spot='network' builds the blind spot into the network, and {key}=True {why}; "
                    f"set {key}=False, or blind_spot='mask'."
                )
    return {"schema": DESCRIPTION_SCHEMA, **description}


def check_batch_norm(description: Description, batch_size: int, patch_shape: Sequence[int]) -> None:
    """Batch normalisation needs more than one value per channel at the U-Net's bottom."""
    depth = description["depth"]
    bottom = math.prod(-(-p // 2**depth) for p in patch_shape)
    if description["batch_norm"] and batch_size * bottom < 2:
        raise ValueError(
            f"batch_size={batch_size} with patches of {tuple(patch_shape)} leaves a single value "
            f"per channel at depth {depth}, too few for batch normalisation; raise "
            "batch_size, lower depth or set batch_norm=False."
        )


def _conv(ndim: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    """The convolution of ``ndim``-D images."""
    return nn.Conv2d if ndim == 2 else nn.Conv3d


def _batch_norm(ndim: int) -> type[nn.BatchNorm2d] | type[nn.BatchNorm3d]:
    """The batch normalisation of ``ndim``-D images."""
    return nn.BatchNorm2d if ndim == 2 else nn.BatchNorm3d


def _interleave(a: torch.Tensor, b: torch.Tensor, groups: int) -> torch.Tensor:
    """Concatenate two grouped feature maps so that group ``g`` of the result
    holds group ``g`` of ``a`` followed by group ``g`` of ``b``.

    With ``groups == 1`` this is a plain concatenation; with one group per
    image channel it keeps the channels' networks independent.
    """
    if groups == 1:
        return torch.cat([a, b], dim=1)
    n, _, *spatial = a.shape
    a = a.reshape(n, groups, -1, *spatial)
    b = b.reshape(n, groups, -1, *spatial)
    return torch.cat([a, b], dim=2).reshape(n, -1, *spatial)


class _ConvBlock(nn.Sequential):
    """Two convolutions (``widths``: inputs -> middle -> outputs), each followed by optional batch norm and ReLU.
    ``keras``: as n2v's Keras layers are, a bias before batch norm and its epsilon of 1e-3."""

    def __init__(
        self, ndim: int, widths: BlockWidths, kernel_size: int, batch_norm: bool, groups: int, keras: bool = False
    ) -> None:
        layers: list[nn.Module] = []
        for c_in, c_out in ((widths.inputs, widths.middle), (widths.middle, widths.outputs)):
            layers.append(
                _conv(ndim)(
                    c_in,
                    c_out,
                    kernel_size,
                    padding=kernel_size // 2,
                    groups=groups,
                    bias=keras or not batch_norm,
                )
            )
            if batch_norm:
                layers.append(_batch_norm(ndim)(c_out, eps=1e-3 if keras else 1e-5))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class _MaxBlurPool(nn.Module):
    """N2V2 down-sampling: max-pool with stride 1, then a fixed binomial blur
    with stride 2 (Zhang 2019, "Making convolutional networks shift-invariant
    again"). Removes the aliasing that makes checkerboard artefacts."""

    kernel: torch.Tensor  # the blur, one per channel: (channels, 1, 3, 3) or (channels, 1, 3, 3, 3)

    def __init__(self, ndim: int, channels: int) -> None:
        super().__init__()
        self.ndim = ndim
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = taps
        for _ in range(ndim - 1):
            kernel = kernel[..., None] * taps
        kernel = kernel / kernel.sum()
        self.register_buffer("kernel", kernel.expand(channels, 1, *([3] * ndim)).contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.max_pool2d if self.ndim == 2 else F.max_pool3d
        conv = F.conv2d if self.ndim == 2 else F.conv3d
        x = pool(x, kernel_size=2, stride=1)
        x = F.pad(x, [1] * (2 * self.ndim), mode="replicate")
        return conv(x, self.kernel, stride=2, groups=x.shape[1])


class _KerasMaxBlurPool(_MaxBlurPool):
    """n2v's MaxBlurPool2D, aligned as TensorFlow's "SAME" padding aligns it: the stride-1
    max-pool and the stride-2 blur each padded after the image only (by -inf, then zeros)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.pad(x, [0, 1, 0, 1], value=-math.inf), kernel_size=2, stride=1)
        return F.conv2d(F.pad(x, [0, 1, 0, 1]), self.kernel, stride=2, groups=x.shape[1])


class UNet(nn.Module):
    """A U-Net for blind-spot denoising.

    Parameters
    ----------
    ndim : {2, 3}
        Number of spatial dimensions.
    in_channels : int
        Image channels in and out.
    depth : int
        Number of down-sampling steps.
    n_filters : int
        Feature maps at the top level (per channel when ``independent_channels``);
        doubled at each level down to the bottom.
    kernel_size : int
        Odd convolution kernel side.
    batch_norm : bool
        Batch normalisation after each convolution.
    residual : bool
        Add the input to the output (the network predicts a correction).
    blurpool : bool
        N2V2 max-blur-pool down-sampling instead of max-pooling.
    skip_skipone : bool
        N2V2: drop the skip connection of the top level.
    independent_channels : bool
        One network per channel (grouped convolutions) instead of a joint one.
    noise_model : {None, "gaussian", "poisson_gaussian"}
        ``None``: the output is the denoised image, ``(B, C, *spatial)``.
        Otherwise the network is probabilistic: it outputs ``(B, 2C, *spatial)``,
        a prior mean ``mu`` of the clean signal (first ``C`` channels) and its
        standard deviation ``tau`` (softplus plus :data:`n2v_estimator.nets.noise.TAU_FLOOR`),
        and holds its :class:`n2v_estimator.nets.noise.NoiseModel` as ``self.noise``.
    """

    def __init__(
        self,
        ndim: int = 2,
        in_channels: int = 1,
        depth: int = 2,
        n_filters: int = 32,
        kernel_size: int = 3,
        batch_norm: bool = True,
        residual: bool = False,
        blurpool: bool = False,
        skip_skipone: bool = False,
        independent_channels: bool = False,
        noise_model: str | None = None,
        layout: str = "n2v-estimator",
    ) -> None:
        arguments = dict(locals())
        super().__init__()
        # Everything needed to rebuild this network (saved with its weights).
        self.description = {"schema": DESCRIPTION_SCHEMA, **{key: arguments.get(key, "mask") for key in FIELDS}}
        self.ndim = ndim
        self.depth = depth
        self.residual = residual
        self.skip_skipone = skip_skipone
        # The feature maps of every block, for this layout (nets.widths: the memory estimate counts the same).
        widths = unet_widths(self.description)
        self.groups = groups = widths.groups
        keras = layout == "n2v-tf"
        self.upsampling = "nearest" if keras else ("bilinear" if ndim == 2 else "trilinear")

        self.down = nn.ModuleList()
        self.pool = nn.ModuleList()
        for block in widths.down:
            self.down.append(_ConvBlock(ndim, block, kernel_size, batch_norm, groups, keras))
            if blurpool:
                self.pool.append((_KerasMaxBlurPool if keras else _MaxBlurPool)(ndim, block.outputs))
            else:
                self.pool.append((nn.MaxPool2d if ndim == 2 else nn.MaxPool3d)(2))
        self.bottom = _ConvBlock(ndim, widths.bottom, kernel_size, batch_norm, groups, keras)
        self.up = nn.ModuleList(
            _ConvBlock(ndim, widths.up[level], kernel_size, batch_norm, groups, keras)
            for level in reversed(range(depth))
        )
        # A probabilistic network's head gives each channel two outputs, side by
        # side (also within a channel's group): its prior mean and scale.
        self.outputs = 1 if noise_model is None else 2
        self.head = _conv(ndim)(widths.levels[0], in_channels * self.outputs, 1, groups=groups)
        self.noise = None if noise_model is None else NoiseModel(noise_model, in_channels)

    def initialise_prior_scale(self: _NetworkWithHead, tau: torch.Tensor | Sequence[float] | float) -> None:
        """Start a probabilistic network's prior standard deviation at ``tau``
        (one value per channel, normalised units) instead of softplus(0) = 0.69:
        the head's bias would otherwise take most of a short run to get there."""
        tau = torch.as_tensor(tau, dtype=torch.float64).clamp_min(2 * TAU_FLOOR) - TAU_FLOOR
        bias = self.head.get_parameter("bias")
        with torch.no_grad():
            bias[1::2] = (tau + torch.log(-torch.expm1(-tau))).to(bias)  # softplus⁻¹

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = x
        x = _pad_to_multiple(x, 2**self.depth)
        skips = []
        for block, pool in zip(self.down, self.pool):
            x = block(x)
            skips.append(x)
            x = pool(x)
        x = self.bottom(x)
        linear = {"align_corners": False} if self.upsampling != "nearest" else {}
        for block, level in zip(self.up, reversed(range(self.depth))):
            skip = skips[level]
            x = F.interpolate(x, size=skip.shape[2:], mode=self.upsampling, **linear)
            if not (self.skip_skipone and level == 0):
                x = _interleave(x, skip, self.groups)
            x = block(x)
        return self._output(x, image)

    def _output(self: _NetworkWithHead, features: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The network's output for its input ``x`` from its last ``features``
        (padded), in the precision of the head's weights (float32) whatever
        autocast computed the features in: the head, cropped to ``x``'s spatial
        shape, plus ``x`` if ``residual``; with a noise model, the prior mean
        and then its standard deviation (:func:`_prior_scale`)."""
        # bfloat16's 8-bit mantissa would posterize the output to 2**8 levels per octave
        # (camera came back with 2,400 distinct values, a uint32 image near 3e9 with 23-120):
        # banding in a smooth gradient is a wrong intensity. One 1x1 convolution in float32
        # costs little, and training takes its gradients as those of any output.
        with torch.autocast(device_type=features.device.type, enabled=False):
            y = self.head(features.to(self.head.weight.dtype))
            y = y[(slice(None), slice(None)) + tuple(slice(0, s) for s in x.shape[2:])]
            if self.outputs == 2:
                y = y.unflatten(1, (-1, 2))
                y, scale = y[:, :, 0], y[:, :, 1]
            if self.residual:
                y = y + x
            if self.outputs == 2:
                y = torch.cat([y, _prior_scale(scale)], dim=1)
            return y


def _prior_scale(scale: torch.Tensor) -> torch.Tensor:
    """The prior standard deviation from the head's raw output ``scale``: softplus
    plus :data:`n2v_estimator.nets.noise.TAU_FLOOR`, what ``initialise_prior_scale`` inverts."""
    return F.softplus(scale) + TAU_FLOOR


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the spatial axes of ``x`` at their end up to a multiple of ``multiple``.

    Reflection is used where the axis is long enough, edge replication otherwise
    (reflection needs more pixels than it pads).
    """
    pads = []
    for size in reversed(x.shape[2:]):
        pads += [0, (-size) % multiple]
    if not any(pads):
        return x
    for size, pad in zip(reversed(x.shape[2:]), pads[1::2]):
        if pad >= size:
            return F.pad(x, pads, mode="replicate")
    return F.pad(x, pads, mode="reflect")
