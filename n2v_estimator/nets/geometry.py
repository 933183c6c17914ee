"""The geometry of a network: how far it looks, its halo, its pooling grid, how it is kept blind.

:class:`NetworkGeometry` is asked by the tiler, the dask path, the memory check,
the Model Zoo export and the plan, so that none of them compares ``blind_spot``
strings or recomputes ``2**depth``; the functions below are its formulas, on
plain numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._typing import Description

# Width of the blind-spot network's hidden 1x1 head convolutions, in multiples of n_filters (96
# by default, as measured in benchmarks/blind_network_prior.py).
BLIND_HEAD_WIDTH = 3


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= ``value``."""
    return -(-value // multiple) * multiple


def blind_receptive_radius(depth: int, kernel_size: int) -> int:
    """How far, in input pixels along each axis, the blind-spot network
    (:mod:`n2v_estimator.nets.blindnet`) looks from an output pixel.

    Along a direction the upward U-Net reaches ``kernel_size - 1`` rows per
    convolution at its level (``2**level`` input pixels per row), six
    convolutions a level (down, bottom, up), plus its shifts and pools: measured
    through the gradient, ``(kernel_size - 1) * (6 * 2**depth - 4) + 2**(depth + 1) - 1``.
    Sideways it reaches less, so this is the radius along every axis: 47 pixels
    for the default depth 2 and kernel 3 (the masked U-Net: 26).
    """
    return (kernel_size - 1) * (6 * 2**depth - 4) + 2 ** (depth + 1) - 1


def receptive_radius(depth: int, kernel_size: int, blurpool: bool = False, blind: bool = False) -> int:
    """How far, in input pixels along each axis, the U-Net looks from an output pixel.

    Two convolutions of radius ``r = kernel_size // 2`` per level on the way
    down and up and at the bottom (``r * 2**level`` input pixels each), the
    bilinear up-sampling (one coarse cell, ``2**(level + 1)`` pixels) and, for
    N2V2's blur-pool, its blur (``2**level``): ``r * (6 * 2**depth - 4)`` plus
    ``2 * (2**depth - 1)``, plus ``2**depth - 1`` with ``blurpool``. Exact for
    the pooling positions that reach farthest (measured through the gradient):
    10 pixels for depth 1 and kernel 3, 26 for the default depth 2. A
    blind-spot network (``blind``) reaches farther: :func:`blind_receptive_radius`.
    """
    if blind:
        return blind_receptive_radius(depth, kernel_size)
    multiple = 2**depth
    radius = (kernel_size // 2) * (6 * multiple - 4) + 2 * (multiple - 1)
    return radius + (multiple - 1 if blurpool else 0)


def border_width(depth: int, kernel_size: int, blurpool: bool = False, blind: bool = False) -> int:
    """The network's halo: its :func:`receptive_radius` rounded up to a multiple
    of ``2**depth`` (28 pixels for the default network, 10 for depth 1).

    ``transform`` extends every image by this many mirrored pixels on each side
    before the network sees it, and a tile's pixels are kept only where they have
    this much context, so a prediction does not depend on where tiles, chunks or
    the image end; being a multiple of ``2**depth``, the extension keeps the
    image on the network's pooling grid. A BioImage Model Zoo export declares it
    as the output's ``halo``. A blind-spot network (``blind``; 48 pixels by
    default) is not extended: a mirrored copy would show a pixel near the edge
    its own value (:mod:`n2v_estimator.nets.blindnet`).
    """
    return round_up(receptive_radius(depth, kernel_size, blurpool, blind), 2**depth)


def default_overlap(depth: int, kernel_size: int, blurpool: bool = False, blind: bool = False) -> int:
    """Overlap between neighbouring tiles that makes tiled and whole-image
    predictions agree (to float rounding): twice the :func:`border_width`, so
    that a tile boundary, in the middle of the overlap, has a whole halo of
    context on either side (56 pixels for the default network)."""
    return 2 * border_width(depth, kernel_size, blurpool, blind)


@dataclass(frozen=True)
class NetworkGeometry:
    """What the code around a network needs to know of its shape.

    Parameters
    ----------
    ndim : int
        2 or 3 spatial axes.
    depth, kernel_size : int
        The U-Net's levels and convolution size.
    blurpool : bool, default=False
        N2V2's blur-pool, which widens the reach.
    blind : bool, default=False
        Blind by its architecture (``blind_spot="network"``): it reaches farther
        and its input is never extended by mirroring.
    probabilistic : bool, default=False
        With a noise model: a masked network then predicts its prior from
        masked copies, whose replacements come from a neighbourhood.

    Examples
    --------
    >>> geometry = NetworkGeometry(ndim=2, depth=2, kernel_size=3)
    >>> geometry.pooling, geometry.reach, geometry.halo, geometry.overlap, geometry.border
    (4, 26, 28, 56, 28)
    """

    ndim: int
    depth: int
    kernel_size: int
    blurpool: bool = False
    blind: bool = False
    probabilistic: bool = False
    centred_grid: bool = False

    @classmethod
    def of(cls, description: Description) -> NetworkGeometry:
        """The geometry of the network a description (``model_.description``) describes."""
        return cls(
            ndim=description["ndim"],
            depth=description["depth"],
            kernel_size=description["kernel_size"],
            blurpool=bool(description.get("blurpool", False)),
            blind=description.get("blind_spot", "mask") == "network",
            probabilistic=description.get("noise_model") is not None,
            centred_grid=description.get("layout") == "n2v-tf",
        )

    @property
    def pooling(self) -> int:
        """The down-sampling factor ``2**depth``: inputs are padded, and tiles cut, to its multiples."""
        return 2**self.depth

    @property
    def reach(self) -> int:
        """:func:`receptive_radius`: how far an output pixel sees, along each axis."""
        return receptive_radius(self.depth, self.kernel_size, self.blurpool, self.blind)

    @property
    def halo(self) -> int:
        """:func:`border_width`: the reach on the pooling grid."""
        return round_up(self.reach, self.pooling)

    @property
    def overlap(self) -> int:
        """:func:`default_overlap`: twice the halo."""
        return 2 * self.halo

    @property
    def border(self) -> int:
        """Mirrored pixels added around an image before it is predicted: the halo, or none
        for a blind-spot network (a mirror would show a pixel near the edge its own value)."""
        return 0 if self.blind else self.halo

    def grid_phase(self, length: int) -> int:
        """Where the pooling grid of an image side of ``length`` pixels starts, in pixels before
        its first one: 0 for this package's networks; for a network imported from n2v, half of
        the padding to a multiple of ``2**depth``, as n2v's ``predict`` pads (half before, half
        after), so that the imported network pools as it did in n2v."""
        if not self.centred_grid:
            return 0
        return (-length % self.pooling) // 2

    @property
    def masks_its_prior(self) -> bool:
        """Whether its prior is predicted from masked copies (a probabilistic masked U-Net)."""
        return self.probabilistic and not self.blind

    def chunk_halo(self, neighborhood_radius: int = 0) -> int:
        """Pixels of context a chunk of a larger image borrows from each neighbour: the
        reach, plus ``2**depth - 1`` a chunk may drop to start on the whole image's pooling
        grid, plus, where the prior is predicted from masked copies, ``neighborhood_radius``
        (a masked pixel at the edge of the reach must find the same neighbours)."""
        extra = int(neighborhood_radius) if self.masks_its_prior else 0
        return self.reach + self.pooling - 1 + extra
