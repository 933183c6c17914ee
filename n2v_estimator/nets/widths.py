"""The U-Net's feature maps, level by level, in each of its layouts: written once, for the builder that makes
the network and the memory estimate that counts it (torch-free: the estimate is arithmetic)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._typing import Description


@dataclass(frozen=True)
class BlockWidths:
    """Feature maps of a block of two convolutions, all channels' groups together: ``inputs`` into the
    first, ``middle`` between the two, ``outputs`` out of the second."""

    inputs: int
    middle: int
    outputs: int


@dataclass(frozen=True)
class UNetWidths:
    """The feature maps of a U-Net (and of the blind-spot network's upward U-Net), all channels' groups together.

    Attributes
    ----------
    groups : int
        The convolutions' groups: one per image channel with ``independent_channels``, else 1.
    levels : tuple of int
        Feature maps of each level, top first: what its encoder block outputs and its skip carries.
    skips : tuple of int
        Feature maps each level's skip connection hands to the decoder, top first: 0 where N2V2's
        ``skip_skipone`` drops it.
    down : tuple of BlockWidths
        The encoder's blocks, top first.
    bottom : BlockWidths
        The block between the encoder and the decoder.
    up : tuple of BlockWidths
        The decoder's blocks by level, top first (the decoder runs them from the bottom up); a block's
        inputs are the up-sampled maps of the level below joined with the level's skip.
    """

    groups: int
    levels: tuple[int, ...]
    skips: tuple[int, ...]
    down: tuple[BlockWidths, ...]
    bottom: BlockWidths
    up: tuple[BlockWidths, ...]


def unet_widths(description: Description) -> UNetWidths:
    """The feature maps of the U-Net ``description`` describes (``in_channels``, ``depth``, ``n_filters``,
    ``skip_skipone``, ``independent_channels`` and ``layout`` are read).

    This package's layout is the original n2v's (CSBDeep's) U-Net: level ``l`` has ``n_filters * 2**l``
    feature maps, the bottom keeps the deepest level's width, and each decoder level halves its width
    before handing it up. n2v's own (``layout="n2v-tf"``, networks imported from n2v) widens the
    bottom's first convolution to ``n_filters * 2**depth`` and narrows each decoder level's first one to
    ``n_filters`` (but with ``skip_skipone`` below the top).

    Examples
    --------
    >>> description = {"in_channels": 1, "depth": 2, "n_filters": 32, "skip_skipone": False,
    ...                "independent_channels": False, "layout": "n2v-tf"}
    >>> widths = unet_widths(description)
    >>> widths.levels, widths.bottom
    ((32, 64), BlockWidths(inputs=64, middle=128, outputs=64))
    """
    groups = description["in_channels"] if description["independent_channels"] else 1
    depth, n_filters, skip_skipone = description["depth"], description["n_filters"], description["skip_skipone"]
    n2v_tf = description["layout"] == "n2v-tf"
    levels = tuple(n_filters * 2**level * groups for level in range(depth))
    inputs = (description["in_channels"], *levels[:-1])
    skips = tuple(0 if (skip_skipone and level == 0) else levels[level] for level in range(depth))
    up = []
    for level in range(depth):
        middle = n_filters * groups if n2v_tf and not (skip_skipone and level > 0) else levels[level]
        up.append(BlockWidths(levels[level] + skips[level], middle, levels[max(0, level - 1)]))
    return UNetWidths(
        groups=groups,
        levels=levels,
        skips=skips,
        down=tuple(BlockWidths(c_in, width, width) for c_in, width in zip(inputs, levels)),
        bottom=BlockWidths(levels[-1], n_filters * 2**depth * groups if n2v_tf else levels[-1], levels[-1]),
        up=tuple(up),
    )
