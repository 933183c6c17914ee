"""A network that is blind to the pixel it predicts (Laine et al., NeurIPS 2019).

Noise2Void makes a blind spot by masking pixels: only the few masked pixels of
a patch train the network, and a prior that may be combined with a pixel's own
value has to be predicted with that pixel masked too (many passes). Here the
blind spot is built into the architecture instead: one U-Net whose every
operation looks only "upward" (towards lower indices of its first spatial
axis) sees the image from each of the ``2 * ndim`` directions (turned so that
the direction is "up"), the outputs are turned back, and a head of 1x1
convolutions combines them. The output at a pixel then depends on every pixel
around it but not on the pixel itself, exactly, so every pixel of every patch
trains the network and one pass predicts a blind prior for every pixel.

What makes the U-Net look upward only (along axis 0 of its input):

- each ``k``-wide convolution pads ``k - 1`` zero rows above and none below
  (``k // 2`` on both sides of the other axes), so its output row ``y`` sees
  rows ``y - k + 1 .. y``;
- each down-sampling first shifts the rows down by one (a zero row on top),
  then max-pools: a coarse cell holds rows at or above its first fine row;
- up-sampling is nearest-neighbour (bilinear would reach into the row below);
- at the end the output is shifted down by one more row: row ``y`` sees rows
  ``< y`` only.

Edges are zeros (normalised units: the data's mean), as at a training patch's
edges: mirroring an image to extend it would show a pixel near the edge its
own value, so ``transform`` does not extend the image for these networks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .geometry import BLIND_HEAD_WIDTH
from .noise import NoiseModel
from .unet import UNet, _batch_norm, _conv, _interleave
from .widths import unet_widths

if TYPE_CHECKING:
    from .._typing import Description, Shape
    from .widths import BlockWidths, UNetWidths

_SLOPE = 0.1  # LeakyReLU, as in Laine et al.


class _EveryPixel:
    """The blind network's "masker", in the place of a :class:`n2v_estimator.data.masking.BlindSpotMasker`:
    nothing is masked and every pixel is a training target."""

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, mask)`` with ``mask`` all true."""
        return x, torch.ones_like(x, dtype=torch.bool)

    def check_patch(self, patch_shape: Shape) -> None:
        """Every patch holds pixels to train on."""


every_pixel = _EveryPixel()


def _shift(x: torch.Tensor, n: int = 1) -> torch.Tensor:
    """Move the features ``n`` rows down along the first spatial axis (zeros on top)."""
    pad = [0, 0] * (x.ndim - 3) + [n, 0]
    return F.pad(x, pad)[:, :, : x.shape[2]]


class _UpwardConv(nn.Module):
    """A convolution whose output row ``y`` sees input rows ``y - k + 1 .. y`` only."""

    def __init__(self, ndim: int, c_in: int, c_out: int, kernel_size: int, bias: bool, groups: int) -> None:
        super().__init__()
        self.conv = _conv(ndim)(c_in, c_out, kernel_size, groups=groups, bias=bias)
        r = kernel_size // 2
        self.pad = [r, r] * (ndim - 1) + [2 * r, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad))


class _UpwardBlock(nn.Sequential):
    """Two upward convolutions (``widths``: inputs -> middle -> outputs), each followed by optional batch
    norm and a leaky ReLU."""

    def __init__(self, ndim: int, widths: BlockWidths, kernel_size: int, batch_norm: bool, groups: int) -> None:
        layers: list[nn.Module] = []
        for c_in, c_out in ((widths.inputs, widths.middle), (widths.middle, widths.outputs)):
            layers.append(_UpwardConv(ndim, c_in, c_out, kernel_size, not batch_norm, groups))
            if batch_norm:
                layers.append(_batch_norm(ndim)(c_out))
            layers.append(nn.LeakyReLU(_SLOPE, inplace=True))
        super().__init__(*layers)


class _UpwardUNet(nn.Module):
    """The U-Net of :class:`n2v_estimator.nets.unet.UNet`'s layout with every operation looking upward."""

    def __init__(self, ndim: int, widths: UNetWidths, kernel_size: int, batch_norm: bool) -> None:
        super().__init__()
        self.ndim, self.depth, self.groups = ndim, len(widths.levels), widths.groups
        self.down = nn.ModuleList(
            _UpwardBlock(ndim, block, kernel_size, batch_norm, self.groups) for block in widths.down
        )
        self.bottom = _UpwardBlock(ndim, widths.bottom, kernel_size, batch_norm, self.groups)
        self.up = nn.ModuleList(
            _UpwardBlock(ndim, widths.up[level], kernel_size, batch_norm, self.groups)
            for level in reversed(range(self.depth))
        )
        self.out_channels = widths.levels[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.max_pool2d if self.ndim == 2 else F.max_pool3d
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = pool(_shift(x), 2)
        x = self.bottom(x)
        for block, level in zip(self.up, reversed(range(self.depth))):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = block(_interleave(x, skips[level], self.groups))
        return _shift(x)


def _directions(ndim: int) -> list[tuple[int, bool]]:
    """``(axis, flip)`` per direction the image is seen from: each spatial axis, both ways."""
    return [(axis, flip) for axis in range(2, 2 + ndim) for flip in (False, True)]


def _turn(x: torch.Tensor, axis: int, flip: bool) -> torch.Tensor:
    """Turn ``x`` so that looking "up" along its first spatial axis looks along ``axis`` (reversed with ``flip``)."""
    x = x.movedim(axis, 2)
    return x.flip(2) if flip else x


def _turn_back(x: torch.Tensor, axis: int, flip: bool) -> torch.Tensor:
    """Undo :func:`_turn`: ``x``'s first spatial axis back to ``axis`` (reversed again with ``flip``)."""
    x = x.flip(2) if flip else x
    return x.movedim(2, axis)


class BlindSpotNetwork(nn.Module):
    """A blind-spot network: the output at a pixel never depends on its input value.

    Parameters
    ----------
    ndim : {2, 3}
    in_channels : int
        Image channels in and out.
    depth, n_filters, kernel_size, batch_norm, independent_channels
        As for :class:`n2v_estimator.nets.unet.UNet`, for the one U-Net all directions share.
    noise_model : {None, "gaussian", "poisson_gaussian"}
        As for :class:`n2v_estimator.nets.unet.UNet`: ``None`` outputs ``(B, C, *spatial)``,
        else ``(B, 2C, *spatial)``, the prior mean and standard deviation.
    description : dict
        The checked description the network is built from (saved with its weights).

    Notes
    -----
    Batch normalisation computes its statistics over the batch in training, a
    mean over ``B * pixels`` values to which each pixel adds its share; in
    evaluation (prediction) it uses fixed statistics and the blind spot is exact.
    """

    def __init__(
        self,
        ndim: int,
        in_channels: int,
        depth: int,
        n_filters: int,
        kernel_size: int,
        batch_norm: bool,
        independent_channels: bool,
        noise_model: str | None,
        description: Description,
    ) -> None:
        super().__init__()
        self.description = dict(description)
        self.ndim, self.depth = ndim, depth
        # The U-Net's feature maps as the masked U-Net's (nets.widths: the memory estimate counts the same).
        widths = unet_widths(self.description)
        self.groups = groups = widths.groups
        self.unet = _UpwardUNet(ndim, widths, kernel_size, batch_norm)
        self.outputs = 1 if noise_model is None else 2
        hidden_width, conv = BLIND_HEAD_WIDTH * n_filters * groups, _conv(ndim)
        # The 1x1 convolutions that combine the directions; the last one is the head, as in UNet.
        self.hidden = nn.Sequential(
            conv(2 * ndim * self.unet.out_channels, hidden_width, 1, groups=groups),
            nn.LeakyReLU(_SLOPE, inplace=True),
            conv(hidden_width, hidden_width, 1, groups=groups),
            nn.LeakyReLU(_SLOPE, inplace=True),
        )
        self.head = conv(hidden_width, in_channels * self.outputs, 1, groups=groups)
        self.noise = None if noise_model is None else NoiseModel(noise_model, in_channels)

    initialise_prior_scale = UNet.initialise_prior_scale
    # The output head of UNet, which reads `residual`: never here, it would show each pixel its own value.
    residual = False
    _output = UNet._output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        multiple = 2**self.depth
        pad = []
        for size in reversed(x.shape[2:]):  # zeros at the end, so every direction sees the same pooling grid
            pad += [0, -size % multiple]
        padded = F.pad(x, pad)
        directions = _directions(self.ndim)
        turned = [_turn(padded, *direction) for direction in directions]
        # Directions whose turned shapes agree go through the U-Net as one batch.
        features: dict[int, torch.Tensor] = {}  # by direction
        for shape in dict.fromkeys(t.shape for t in turned):
            chosen = [i for i, t in enumerate(turned) if t.shape == shape]
            out = self.unet(torch.cat([turned[i] for i in chosen])).chunk(len(chosen))
            for i, part in zip(chosen, out):
                features[i] = _turn_back(part, *directions[i])
        combined = features[0]
        for i in range(1, len(directions)):
            combined = _interleave(combined, features[i], self.groups)
        return self._output(self.hidden(combined), x)
