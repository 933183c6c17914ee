"""Blind-spot masking for Noise2Void, vectorised in torch over a whole batch.

A :class:`BlindSpotMasker` takes a batch ``x`` of shape ``(B, C, *spatial)``
and returns ``(x_masked, mask)``: ``mask`` marks the blind spots (chosen
independently for every sample and channel on a randomly shifted stratified
grid, :mod:`~n2v_estimator.data.blind_spot_grid`), and ``x_masked`` is ``x`` with
each blind spot's value replaced by the manipulator
(:mod:`~n2v_estimator.data.manipulators`), and, for structN2V, a line of
neighbours around it scrambled (:mod:`~n2v_estimator.data.struct_mask`).
The loss is then taken on ``mask`` against the original ``x``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .blind_spot_grid import blind_spot_mask, candidate_spots, sampling_dtype
from .manipulators import (
    MANIPULATORS,
    MAX_NEIGHBOURHOOD,
    NEEDS_NEIGHBOURS,
    neighbour_draw_weights,
    neighbourhood_offsets,
    replacement_values,
)
from .struct_mask import scramble_struct_neighbours

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import NDArray


class BlindSpotMasker:
    """Chooses blind spots and replaces their values.

    Parameters
    ----------
    ndim : int
        Spatial dimensions (2 or 3).
    masked_pixel_percentage : float
        Percentage of pixels made blind in each patch, in (0, 100].
    manipulator : str
        How a blind spot's value is replaced, one of :data:`~n2v_estimator.data.manipulators.MANIPULATORS`:

        - ``uniform_withCP``: a uniformly drawn pixel of the neighbourhood, the
          centre included (so some blind spots keep their value).
        - ``uniform_withoutCP``: same, the centre excluded.
        - ``normal_withoutCP``: a neighbour drawn with Gaussian weights (sigma =
          ``neighborhood_radius``, cut at the radius), the centre excluded.
        - ``normal_additive``: the pixel's own value plus Gaussian noise of
          sigma ``neighborhood_radius`` in normalised units (n2v semantics).
        - ``normal_fitted``: a draw from a Gaussian with the neighbourhood's
          mean and standard deviation (centre excluded).
        - ``mean`` / ``median``: the neighbourhood's mean / median, centre
          excluded (``median`` is the N2V2 choice).
        - ``identity``: the value is kept (only useful as a control).
    neighborhood_radius : int
        Half side of the neighbourhood cube the replacement is taken from. The
        cube is cut at the patch border: only pixels inside the patch are used.
    struct_offsets : ndarray of shape (K, ndim), int64, optional
        structN2V (:func:`~n2v_estimator.data.struct_mask.resolve_struct_mask`): offsets around each blind spot whose values are replaced by
        values of random pixels of the same patch, so that noise correlated
        along them cannot be used. They are also never used as replacements.
    """

    def __init__(
        self,
        ndim: int,
        masked_pixel_percentage: float,
        manipulator: str = "uniform_withCP",
        neighborhood_radius: int = 2,
        struct_offsets: NDArray[np.int64] | None = None,
    ) -> None:
        if manipulator not in MANIPULATORS:
            raise ValueError(f"Unknown manipulator {manipulator!r}; use one of {MANIPULATORS}.")
        self.ndim = ndim
        self.masked_pixel_percentage = float(masked_pixel_percentage)
        self.manipulator = manipulator
        self.radius = int(neighborhood_radius)
        neighbourhood = (2 * self.radius + 1) ** ndim
        if neighbourhood > MAX_NEIGHBOURHOOD:
            raise ValueError(
                f"neighborhood_radius={self.radius} spans {neighbourhood} pixels in {ndim}D; at most "
                f"{MAX_NEIGHBOURHOOD} are allowed (radius <= 31 in 2D, <= 7 in 3D)."
            )
        if struct_offsets is None:
            struct_offsets = np.zeros((0, ndim), dtype=np.int64)
        self.struct_offsets = torch.as_tensor(struct_offsets, dtype=torch.int64)
        offsets = neighbourhood_offsets(ndim, self.radius, struct_offsets)
        self.offsets = torch.as_tensor(offsets)
        self._draw_weights = neighbour_draw_weights(manipulator, offsets, self.radius)
        if len(offsets) < 2 and manipulator in NEEDS_NEIGHBOURS:
            raise ValueError(
                f"manipulator={manipulator!r} needs neighbours, but neighborhood_radius="
                f"{self.radius} with this struct mask leaves none."
            )
        self._checked_patch_shapes: set[tuple[int, ...]] = set()  # those that passed check_patch

    def check_patch(self, patch_shape: Sequence[int]) -> None:
        """Refuse ``patch_shape`` if a blind spot anywhere in such a patch would
        have no usable neighbour for a manipulator that needs one (a thin patch,
        a struct mask that removes the neighbours along the patch's long axes).

        Raises ``ValueError`` naming the patch, the radius and what would work.
        """
        if self.manipulator not in NEEDS_NEIGHBOURS:
            return
        # Whether a pixel has a neighbour depends only on its distances to the
        # borders, capped at the radius: a patch cut to 2*radius+2 per axis has
        # every case a larger one has.
        shape = [min(int(s), 2 * self.radius + 2) for s in patch_shape]
        covered = np.zeros(shape, dtype=bool)
        for offset in self.offsets[1:].tolist():
            covered[tuple(slice(max(0, -o), max(0, n - o)) for o, n in zip(offset, shape))] = True
        if not covered.all():
            raise ValueError(
                f"manipulator={self.manipulator!r} replaces a blind spot from its neighbours, but in "
                f"patches of {tuple(patch_shape)} some pixels have no neighbour within "
                f"neighborhood_radius={self.radius}"
                + (" outside the struct mask" if len(self.struct_offsets) else "")
                + "; use larger images or patch_size, a larger neighborhood_radius, or "
                "manipulator='uniform_withCP'."
            )

    def choose(self, shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
        """Blind-spot mask (bool) of ``shape = (B, C, *spatial)`` on ``generator``'s device.

        Each ``(sample, channel)`` gets one blind spot per cell of a grid of
        side :func:`~n2v_estimator.data.blind_spot_grid.grid_cell_side`, shifted by
        a random phase. Cells are cut at whole pixels (so they never share a pixel) and
        spots falling outside the patch are dropped, so the expected density is exactly
        the requested percentage. A patch that would get no blind spot (tiny patches, low
        percentages) gets one at a random position
        (:func:`~n2v_estimator.data.blind_spot_grid.candidate_spots`).
        """
        spots, valid = candidate_spots(shape, self.masked_pixel_percentage, generator)
        return blind_spot_mask(torch.zeros(tuple(shape), dtype=torch.int32, device=generator.device), spots, valid)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask a batch.

        Parameters
        ----------
        x : Tensor of shape (B, C, *spatial)
        generator : torch.Generator on ``x.device``

        Returns
        -------
        x_masked : Tensor, same shape as ``x``
        mask : bool Tensor, same shape as ``x``

        Raises
        ------
        ValueError
            If the patch shape leaves some pixel without a usable neighbour (:meth:`check_patch`,
            asked once per shape instead of looking at every batch's spots).

        Notes
        -----
        Nothing here makes the host wait for the device (no count read back, no boolean
        indexing, structN2V's scrambling included): on a GPU the training step runs ahead of
        the host.
        """
        spatial = tuple(x.shape[2:])
        if spatial not in self._checked_patch_shapes:
            self.check_patch(spatial)
            self._checked_patch_shapes.add(spatial)
        spots, valid = candidate_spots(x.shape, self.masked_pixel_percentage, generator)
        mask = blind_spot_mask(torch.zeros_like(x, dtype=torch.int32), spots, valid)  # in x's memory layout
        x_masked = x.clone()
        self._keep_offsets_on(x.device)
        if len(self.struct_offsets):
            scramble_struct_neighbours(x, x_masked, mask, spots, self.struct_offsets, generator, valid)
        values = self._replacement_values(x, spots, generator, patch_checked=True)
        # Every blind spot is exactly one valid candidate; the others add zero where they land.
        values = torch.where(valid, values.to(x.dtype), 0)
        placed = torch.zeros_like(x).index_put_(tuple(spots.T), values, accumulate=True)
        return torch.where(mask, placed, x_masked), mask

    def apply(self, x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``x`` with the blind spots ``mask`` (a bool tensor of ``x``'s shape)
        replaced, as :meth:`__call__` does with the spots it chooses; a blind spot without
        a usable neighbour is refused (``ValueError``)."""
        spots = mask.nonzero()  # (N, 2 + ndim): sample, channel, spatial coordinates
        x_masked = x.clone()
        if len(self.struct_offsets):
            self._keep_offsets_on(x.device)
            scramble_struct_neighbours(x, x_masked, mask, spots, self.struct_offsets, generator)
        x_masked[mask] = self.replacements(x, spots, generator)
        return x_masked

    def replacements(self, x: torch.Tensor, spots: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The values the manipulator gives the blind spots ``spots`` (an
        ``(N, 2 + ndim)`` integer tensor: sample, channel, spatial coordinates)
        of ``x``, in their order; the struct mask is not applied."""
        self._keep_offsets_on(x.device)
        return self._replacement_values(x, spots, generator)

    def _keep_offsets_on(self, device: torch.device) -> None:
        """Keep the offsets and the neighbours' draw weights on ``device``: moved once, not every batch."""
        if self.offsets.device != device:
            self.offsets = self.offsets.to(device)
            self.struct_offsets = self.struct_offsets.to(device)
            self._draw_weights = self._draw_weights.to(device, sampling_dtype(device))

    def _replacement_values(
        self, x: torch.Tensor, spots: torch.Tensor, generator: torch.Generator, patch_checked: bool = False
    ) -> torch.Tensor:
        """The manipulator's values for ``spots`` (:func:`~n2v_estimator.data.manipulators.replacement_values`)."""
        return replacement_values(
            x,
            spots,
            generator,
            manipulator=self.manipulator,
            radius=self.radius,
            offsets=self.offsets,
            draw_weights=self._draw_weights,
            patch_checked=patch_checked,
        )
