"""Random training patches with flip/rot90 augmentation, drawn in torch."""

from __future__ import annotations

import math
from numbers import Integral
from typing import TYPE_CHECKING

import numpy as np
import torch

from .axes import per_axis

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._typing import Array, Shape
    from .ondemand import OnDemandImage

# Training images up to this size are kept on the training device (a GPU's memory is
# far larger; beyond it they stay in host memory and each batch is copied over).
MAX_DEVICE_BYTES = 2 * 2**30


# Default patches: in 3D a batch of 16x32x32 patches costs about four 2D steps of 64x64,
# where n2v's usual 32x64x64 costs 32 (an hour for a newcomer's default run on a CPU).
DEFAULT_PATCH_SHAPE: dict[int, Shape] = {2: (64, 64), 3: (16, 32, 32)}


def requested_patch_shape(patch_size: int | Sequence[int] | None, ndim: int) -> Shape:
    """The patch shape the ``patch_size`` parameter asks for: ``None`` the default
    of :data:`DEFAULT_PATCH_SHAPE`, an int ``p`` means ``(p, p)`` in 2D and
    ``(p // 2, p, p)`` (Z, Y, X) in 3D; a tuple is taken as is."""
    if patch_size is None:
        return DEFAULT_PATCH_SHAPE[ndim]
    if ndim == 3 and isinstance(patch_size, (Integral, np.integer)):
        return (max(1, int(patch_size) // 2), int(patch_size), int(patch_size))
    return per_axis(patch_size, ndim, "patch_size")


def fit_patch_shape(patch_shape: Sequence[int], image_shapes: Sequence[Sequence[int]]) -> Shape:
    """Shrink ``patch_shape`` so that it fits in every image of ``image_shapes``.

    Parameters
    ----------
    patch_shape : tuple of int
        Requested patch side per spatial axis.
    image_shapes : list of tuple of int
        Spatial shapes of the images patches are drawn from.

    Returns
    -------
    tuple of int
        ``min(requested, smallest image)`` along every axis.
    """
    smallest = np.min(np.asarray(image_shapes), axis=0)
    return tuple(int(min(p, s)) for p, s in zip(patch_shape, smallest))


class PatchSampler:
    """Draws random patches from a list of ``(C, *spatial)`` images.

    Parameters
    ----------
    images : list of ndarray of shape (C, *spatial), float32
        The (normalised) images. Each may have its own spatial shape. An
        image read on demand (:class:`n2v_estimator.data.ondemand.OnDemandImage`) is read patch
        by patch instead.
    patch_shape : tuple of int
        Patch side per spatial axis; must fit in every image.
    augment : bool
        Apply a random flip along each spatial axis and, when the Y and X sides
        of the patch are equal, a random rotation by a multiple of 90 degrees in
        the YX plane. Noise2Void's target is invariant to these.
    device : torch.device, optional
        Where the images are kept and the patches cut (when they fit in
        :data:`MAX_DEVICE_BYTES`; else they stay in host memory).
    """

    def __init__(
        self,
        images: Sequence[Array | OnDemandImage],
        patch_shape: Sequence[int],
        augment: bool = True,
        device: torch.device | str | None = None,
    ) -> None:
        # Arrays read on demand (data.ondemand.OnDemandImage) cut their own patches, on the CPU.
        kept: list[torch.Tensor | OnDemandImage] = [
            torch.from_numpy(np.ascontiguousarray(im)) if isinstance(im, np.ndarray) else im for im in images
        ]
        in_memory = [im for im in kept if isinstance(im, torch.Tensor)]
        if (
            device is not None
            and len(in_memory) == len(kept)
            and sum(im.nbytes for im in in_memory) <= MAX_DEVICE_BYTES
        ):
            # Patches are then cut on the device: no copy of patch data per step.
            kept = [im.to(device) for im in in_memory]
        self.images = kept
        self.patch_shape = tuple(int(p) for p in patch_shape)
        self.augment = augment
        for im in self.images:
            if any(p > s for p, s in zip(self.patch_shape, im.shape[1:])):
                raise ValueError(
                    f"Patch shape {self.patch_shape} does not fit in an image of spatial shape {tuple(im.shape[1:])}."
                )
        # Each image is drawn in proportion to how many patch positions it offers.
        positions = [math.prod(s - p + 1 for s, p in zip(im.shape[1:], self.patch_shape)) for im in self.images]
        self._image_weights = torch.tensor(positions, dtype=torch.float64)
        # The augmentations' source maps (see _source_map), by (flips, quarter turns, image shape, device).
        self._maps: dict[tuple[tuple[int, ...], int, tuple[int, ...], torch.device], torch.Tensor] = {}

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Return a ``(batch_size, C, *patch_shape)`` float32 tensor, where the images are.

        ``generator`` must be a CPU ``torch.Generator``; it alone decides the
        patches, so the same seed gives the same batches.

        The draws (image, corner, flips, rotation) are host numbers; the patches of one image
        are then cut, flipped and rotated by one gather on the images' device, a few operations
        per batch whatever its size (a GPU step is short enough for a few dozen small operations
        per patch to be what it waits on).
        """
        which = torch.multinomial(self._image_weights, batch_size, replacement=True, generator=generator)
        draws = [(i, *self._draw(self.images[i], generator)) for i in which.tolist()]
        in_memory = [im for im in self.images if isinstance(im, torch.Tensor)]
        if len(in_memory) < len(self.images):
            return torch.stack([self._cut(self.images[i], corner, flips, k) for i, corner, flips, k in draws])
        return self._gather(in_memory, draws)

    def _draw(
        self, image: torch.Tensor | OnDemandImage, generator: torch.Generator
    ) -> tuple[tuple[int, ...], tuple[int, ...], int]:
        """One patch's corner, flipped axes and number of quarter turns, from ``generator``."""
        ndim = len(self.patch_shape)
        corner = tuple(
            int(torch.randint(s - p + 1, (1,), generator=generator)) for s, p in zip(image.shape[1:], self.patch_shape)
        )
        flips: tuple[int, ...] = ()
        k = 0
        if self.augment:
            drawn = torch.rand(ndim, generator=generator) < 0.5
            flips = tuple(d for d in range(ndim) if drawn[d])
            if self.patch_shape[-1] == self.patch_shape[-2]:
                k = int(torch.randint(4, (1,), generator=generator))
        return corner, flips, k

    def _cut(
        self, image: torch.Tensor | OnDemandImage, corner: Sequence[int], flips: Sequence[int], k: int
    ) -> torch.Tensor:
        """One patch, cut from ``image`` (of any kind that slices) and augmented."""
        slices = tuple(slice(c, c + p) for c, p in zip(corner, self.patch_shape))
        patch = image[(slice(None),) + slices]
        if flips:
            patch = torch.flip(patch, [1 + d for d in flips])
        if k:
            patch = torch.rot90(patch, k, dims=(-2, -1))
        return patch.contiguous()

    def _gather(
        self, images: Sequence[torch.Tensor], draws: Sequence[tuple[int, tuple[int, ...], tuple[int, ...], int]]
    ) -> torch.Tensor:
        """The patches of ``draws`` from ``images`` (:attr:`images`, all in memory): one gather per image drawn."""
        first = images[0]
        device, ndim = first.device, len(self.patch_shape)
        batch = torch.empty((len(draws), first.shape[0], *self.patch_shape), dtype=first.dtype, device=device)
        for i in sorted({d[0] for d in draws}):
            rows = [b for b, d in enumerate(draws) if d[0] == i]
            image = images[i]
            spatial = tuple(image.shape[1:])
            strides = _strides(spatial)
            # Each pixel's source, as an offset into the image's flattened pixels: the corner's
            # offset (a host number) plus the augmentation's map of the patch.
            corners = [sum(c * s for c, s in zip(draws[b][1], strides)) for b in rows]
            maps = torch.stack([self._source_map(draws[b][2], draws[b][3], spatial, device) for b in rows])
            index = maps + torch.tensor(corners).to(device, non_blocking=True).view(len(rows), *[1] * ndim)
            patches = image.reshape(image.shape[0], -1)[:, index]  # (C, n, *patch_shape)
            batch[torch.tensor(rows).to(device, non_blocking=True)] = patches.movedim(0, 1)
        return batch

    def _source_map(
        self, flips: tuple[int, ...], k: int, spatial: tuple[int, ...], device: torch.device
    ) -> torch.Tensor:
        """For each pixel of a patch augmented by ``flips`` and ``k`` quarter turns, the offset
        from the patch's corner, in an image of ``spatial`` shape's flattened pixels, of the pixel it
        comes from: the augmentation applied to a grid of offsets. Made once per augmentation,
        image shape and device."""
        key = (flips, k, spatial, device)
        if key not in self._maps:
            grid = torch.zeros(self.patch_shape, dtype=torch.int64)
            for d, (p, step) in enumerate(zip(self.patch_shape, _strides(spatial))):
                grid += (torch.arange(p) * step).view([-1 if e == d else 1 for e in range(len(spatial))])
            self._maps[key] = self._cut(grid[None], (0,) * len(self.patch_shape), flips, k)[0].to(device)
        return self._maps[key]


def _strides(spatial: Sequence[int]) -> list[int]:
    """How far apart, in the flattened pixels of an image of shape ``spatial``, neighbours along each axis are."""
    return [math.prod(spatial[d + 1 :]) for d in range(len(spatial))]


# A validation strip, and what it leaves for training, must be at least this long.
VALIDATION_MIN_SIDE = 8


def split_validation(
    images: Array | Sequence[Array | OnDemandImage], fraction: float, min_side: int = VALIDATION_MIN_SIDE
) -> tuple[list[Array | OnDemandImage], list[Array | OnDemandImage]]:
    """Hold out part of the data for validation.

    Parameters
    ----------
    images : ndarray of shape (S, C, *spatial), or a list of (C, *spatial) arrays
        A list holds images that may differ in size (or are read on demand).
    fraction : float
        Fraction of the data held out, in [0, 1).
    min_side : int
        A spatial split is only made when both parts are at least this long.

    Returns
    -------
    train, validation : list of ndarray of shape (C, *spatial) (or of images read on demand, as given)
        With several images, the last ``round(fraction * S)`` whole images are
        held out. With too few images, the last ``fraction`` of the longest
        spatial axis of every image is held out instead (an image too small
        to split is trained on whole). When neither is possible (tiny
        images) or ``fraction == 0``, ``validation`` is empty.
    """
    images = list(images)
    n_images = len(images)
    if fraction <= 0:
        return images, []
    n_held = int(round(fraction * n_images))
    if 1 <= n_held < n_images:
        return images[: n_images - n_held], images[n_images - n_held :]
    # Too few images: hold out a strip along the longest axis of each (of each
    # one long enough for two parts; a smaller image is trained on whole).
    train: list[Array | OnDemandImage] = []
    validation: list[Array | OnDemandImage] = []
    for image in images:
        spatial = image.shape[1:]
        axis = int(np.argmax(spatial))
        held = int(math.ceil(fraction * spatial[axis]))
        if held < min_side or spatial[axis] - held < min_side:
            train.append(image)
            continue
        cut = spatial[axis] - held
        if isinstance(image, np.ndarray):
            train.append(np.take(image, np.arange(cut), axis=1 + axis))
            validation.append(np.take(image, np.arange(cut, spatial[axis]), axis=1 + axis))
        else:  # read on demand (data.ondemand.OnDemandImage): two views, nothing read
            head, tail = image.split(axis, cut)
            train.append(head)
            validation.append(tail)
    return train, validation
