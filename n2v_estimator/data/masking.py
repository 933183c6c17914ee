"""Blind-spot masking for Noise2Void, vectorised in torch over a whole batch.

A :class:`BlindSpotMasker` takes a batch ``x`` of shape ``(B, C, *spatial)``
and returns ``(x_masked, mask)``: ``mask`` marks the blind spots (chosen
independently for every sample and channel on a randomly shifted stratified
grid), and ``x_masked`` is ``x`` with each blind spot's value replaced by the
manipulator, and, for structN2V, a line of neighbours around it scrambled.
The loss is then taken on ``mask`` against the original ``x``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

MANIPULATORS = (
    "uniform_withCP",
    "uniform_withoutCP",
    "normal_withoutCP",
    "normal_additive",
    "normal_fitted",
    "mean",
    "median",
    "identity",
)

# Manipulators that show the network the value of the pixel it predicts (controls):
# a prior that is combined with that value by Bayes' rule must not have seen it.
REVEALING_MANIPULATORS = ("identity", "normal_additive")


def hiding_manipulator(manipulator):
    """The manipulator that gives a blind spot a value which never is its own:
    ``"uniform_withCP"`` (which sometimes keeps the centre) becomes
    ``"uniform_withoutCP"``; the others hide it already. Probabilistic N2V trains
    and predicts its prior with it, since the prior is combined with that value.

    Raises ``ValueError`` for :data:`REVEALING_MANIPULATORS`.
    """
    if manipulator in REVEALING_MANIPULATORS:
        raise ValueError(f"manipulator={manipulator!r} shows the network the value of the pixel it predicts.")
    return "uniform_withoutCP" if manipulator == "uniform_withCP" else manipulator


# Manipulators that copy one neighbour's value, and whether the centre may be that neighbour.
_NEIGHBOUR_SAMPLERS = {"uniform_withCP": True, "uniform_withoutCP": False, "normal_withoutCP": False}
# Manipulators that cannot work without at least one neighbour besides the centre.
_NEEDS_NEIGHBOURS = set(MANIPULATORS) - {"identity", "normal_additive", "uniform_withCP"}
# Largest neighbourhood (pixels of the cube) a blind spot may draw from: its
# offsets are held per blind spot, so memory grows with it.
MAX_NEIGHBOURHOOD = 4096

_STRUCT_AXES = {"x": -1, "horizontal": -1, "y": -2, "vertical": -2, "z": -3}


def _float_dtype(device):
    """float64 for exact sampling where the device has it (Apple MPS does not)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def grid_cell_side(masked_pixel_percentage, ndim):
    """Side of the stratification cell holding one blind spot: ``(100/p)**(1/ndim)``."""
    return (100.0 / masked_pixel_percentage) ** (1.0 / ndim)


def resolve_struct_mask(struct_mask, ndim, patch_shape=None):
    """Turn a ``struct_mask`` parameter into the integer offsets it masks.

    Parameters
    ----------
    struct_mask : None, array-like of 0/1, or (axis, span)
        ``None``: plain N2V. An array with ``ndim`` odd-length dimensions centred
        on the blind spot (the n2v form; 1 means "mask this neighbour"); an
        array with fewer dimensions is aligned with the last spatial axes.
        ``(axis, span)``: the short form, a line of ``span`` (odd) pixels along
        ``axis`` in ``{"x", "horizontal", "y", "vertical", "z"}``.
    ndim : int
        Number of spatial dimensions of the data.
    patch_shape : tuple of int, optional
        The training patches the mask must fit in.

    Returns
    -------
    ndarray of shape (K, ndim), int64
        Offsets from the blind spot, the centre excluded (``K`` may be 0).

    Raises
    ------
    ValueError
        For a mask that is not 0/1, not centred (an even side), has more than
        ``ndim`` dimensions, is larger than ``patch_shape`` or holds more than
        :data:`MAX_NEIGHBOURHOOD` values; the sizes are checked before
        anything is computed from the values.
    """
    if struct_mask is None:
        return np.zeros((0, ndim), dtype=np.int64)
    if isinstance(struct_mask, (tuple, list)) and len(struct_mask) == 2 and isinstance(struct_mask[0], str):
        axis_name, span = struct_mask
        if axis_name.lower() not in _STRUCT_AXES:
            raise ValueError(f"struct_mask axis {axis_name!r} is unknown; use one of {sorted(_STRUCT_AXES)}.")
        axis = _STRUCT_AXES[axis_name.lower()]
        if -axis > ndim:
            raise ValueError(f"struct_mask along {axis_name!r} needs 3D data (axes with Z).")
        if not isinstance(span, (int, np.integer)) or span < 1 or span % 2 == 0:
            raise ValueError(f"struct_mask span must be a positive odd integer, got {span!r}.")
        shape = [1] * ndim
        shape[axis] = int(span)
        _check_struct_size(tuple(shape), patch_shape)
        array = np.ones(shape, dtype=bool)
    else:
        array = np.asarray(struct_mask)
        if array.ndim == 0 or array.ndim > ndim or any(s % 2 == 0 for s in array.shape):
            raise ValueError(
                f"struct_mask must have at most {ndim} dimensions, each of odd length "
                f"(centred on the blind spot); got shape {array.shape}."
            )
        _check_struct_size((1,) * (ndim - array.ndim) + array.shape, patch_shape)
        if array.dtype == object or not np.isin(array, (0, 1)).all():
            raise ValueError("struct_mask as an array must hold only 0 and 1.")
        array = array.astype(bool).reshape((1,) * (ndim - array.ndim) + array.shape)
    centre = np.array(array.shape) // 2
    offsets = np.argwhere(array) - centre
    return offsets[np.any(offsets != 0, axis=1)].astype(np.int64)


def _check_struct_size(shape, patch_shape):
    """Refuse a struct mask of ``shape`` (one side per spatial axis) larger than the
    patches or than :data:`MAX_NEIGHBOURHOOD`, before its offsets are computed:
    every blind spot holds all of them (a 3001x3001 mask took 40 s and 2.6 GiB to
    set up, then asked for 175 GiB per batch), and n2v's masks span a few pixels."""
    if patch_shape is not None and any(s > p for s, p in zip(shape, patch_shape)):
        raise ValueError(
            f"struct_mask of shape {shape} is larger than the training patches {tuple(patch_shape)} "
            "(patch_size); a struct mask must fit in a patch: use a smaller struct_mask (a line of a "
            "few pixels along the correlated axis, such as ('x', 5)) or a larger patch_size."
        )
    size = math.prod(shape)
    if size > MAX_NEIGHBOURHOOD:
        raise ValueError(
            f"struct_mask of shape {shape} spans {size} pixels; at most {MAX_NEIGHBOURHOOD} are allowed "
            f"(every blind spot holds them all): use a smaller struct_mask, such as ('x', 5)."
        )


def _neighbourhood(ndim, radius, excluded):
    """Offsets in the cube of side ``2*radius+1`` minus ``excluded``, centre first."""
    excluded = {tuple(o) for o in np.asarray(excluded).tolist()}
    cube = [o for o in itertools.product(range(-radius, radius + 1), repeat=ndim)]
    cube = [o for o in cube if any(o) and o not in excluded]
    return np.array([(0,) * ndim] + cube, dtype=np.int64).reshape(-1, ndim)


class BlindSpotMasker:
    """Chooses blind spots and replaces their values.

    Parameters
    ----------
    ndim : int
        Spatial dimensions (2 or 3).
    masked_pixel_percentage : float
        Percentage of pixels made blind in each patch, in (0, 100].
    manipulator : str
        How a blind spot's value is replaced, one of :data:`MANIPULATORS`:

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
    struct_offsets : ndarray of shape (K, ndim), optional
        structN2V: offsets around each blind spot whose values are replaced by
        values of random pixels of the same patch, so that noise correlated
        along them cannot be used. They are also never used as replacements.
    """

    def __init__(
        self,
        ndim,
        masked_pixel_percentage,
        manipulator="uniform_withCP",
        neighborhood_radius=2,
        struct_offsets=None,
    ):
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
        offsets = _neighbourhood(ndim, self.radius, struct_offsets)
        self.offsets = torch.as_tensor(offsets)
        weights = np.ones(len(offsets))
        if manipulator in _NEIGHBOUR_SAMPLERS and not _NEIGHBOUR_SAMPLERS[manipulator]:
            weights[0] = 0.0
        if manipulator == "normal_withoutCP":
            sigma = max(self.radius, 1)
            weights *= np.exp(-0.5 * (offsets**2).sum(axis=1) / sigma**2)
        self._weights = torch.as_tensor(weights, dtype=torch.float64)
        if len(offsets) < 2 and manipulator in _NEEDS_NEIGHBOURS:
            raise ValueError(
                f"manipulator={manipulator!r} needs neighbours, but neighborhood_radius="
                f"{self.radius} with this struct mask leaves none."
            )
        self._checked = set()  # patch shapes that passed check_patch

    def check_patch(self, patch_shape):
        """Refuse ``patch_shape`` if a blind spot anywhere in such a patch would
        have no usable neighbour for a manipulator that needs one (a thin patch,
        a struct mask that removes the neighbours along the patch's long axes).

        Raises ``ValueError`` naming the patch, the radius and what would work.
        """
        if self.manipulator not in _NEEDS_NEIGHBOURS:
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

    def choose(self, shape, generator):
        """Blind-spot mask of ``shape = (B, C, *spatial)`` on ``generator``'s device.

        Each ``(sample, channel)`` gets one blind spot per cell of a grid of
        side :func:`grid_cell_side`, shifted by a random phase. Cells are cut at
        whole pixels (so they never share a pixel) and spots falling outside
        the patch are dropped, so the expected density is exactly the requested
        percentage. A patch that would get no blind spot (tiny patches, low
        percentages) gets one at a random position.
        """
        spots, valid = self._candidates(shape, generator)
        return _mark(torch.zeros(shape, dtype=torch.int32, device=generator.device), spots, valid)

    def _candidates(self, shape, generator):
        """The candidate blind spots of a batch of ``shape``: ``(spots, valid)``.

        ``spots`` is ``(N, 2 + ndim)`` (sample, channel, spatial coordinates), one per grid cell
        of every ``(sample, channel)`` (cell order, which within a sample is the pixels' row-major
        order) and then one random pixel per ``(sample, channel)``; ``valid`` marks the blind
        spots: the cells' spots inside the patch, and the random pixel of a ``(sample, channel)``
        left without one. ``N`` depends on ``shape`` alone and invalid spots are clamped into the
        patch, so nothing here waits for the device to know a count (a GPU runs on)."""
        device = generator.device
        batch, channels, *spatial = shape
        n = batch * channels
        side = grid_cell_side(self.masked_pixel_percentage, self.ndim)
        cells = [math.ceil(size / side) + 1 for size in spatial]
        dtype = _float_dtype(device)
        phase = torch.rand((n, self.ndim), generator=generator, device=device, dtype=dtype) * side
        jitter = torch.rand((n, *cells, self.ndim), generator=generator, device=device, dtype=dtype)
        coords, inside = [], torch.ones((n, *cells), dtype=torch.bool, device=device)
        for d, size in enumerate(spatial):
            index = torch.arange(cells[d], device=device).reshape([1] + [-1 if i == d else 1 for i in range(self.ndim)])
            shift = phase[:, d].reshape([n] + [1] * self.ndim)
            low = torch.floor(index * side - shift)
            high = torch.floor((index + 1) * side - shift)
            c = (low + torch.floor(jitter[..., d] * (high - low))).long()
            inside &= (c >= 0) & (c < size)
            coords.append(c.clamp(0, size - 1).reshape(n, -1))
        inside = inside.reshape(n, -1)
        # A (sample, channel) without a spot inside gets one at a random pixel.
        pick = torch.randint(math.prod(spatial), (n,), generator=generator, device=device)
        fallback = torch.unravel_index(pick, tuple(spatial))
        rows = torch.arange(n, device=device)
        row = torch.cat([rows[:, None].expand_as(inside).reshape(-1), rows])
        spatial_coords = [torch.cat([c.reshape(-1), f]) for c, f in zip(coords, fallback)]
        spots = torch.stack([row // channels, row % channels, *spatial_coords], dim=1)
        valid = torch.cat([inside.reshape(-1), ~inside.any(dim=1)])
        return spots, valid

    def __call__(self, x, generator):
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
        if spatial not in self._checked:
            self.check_patch(spatial)
            self._checked.add(spatial)
        spots, valid = self._candidates(x.shape, generator)
        mask = _mark(torch.zeros_like(x, dtype=torch.int32), spots, valid)  # in x's memory layout
        x_masked = x.clone()
        self._move_constants(x.device)
        if len(self.struct_offsets):
            self._scramble_struct(x, x_masked, mask, spots, generator, valid)
        values = self._replacement(x, spots, generator, checked=True)
        # Every blind spot is exactly one valid candidate; the others add zero where they land.
        values = torch.where(valid, values.to(x.dtype), 0)
        placed = torch.zeros_like(x).index_put_(tuple(spots.T), values, accumulate=True)
        return torch.where(mask, placed, x_masked), mask

    def apply(self, x, mask, generator):
        """``x`` with the blind spots ``mask`` (a bool tensor of ``x``'s shape)
        replaced, as :meth:`__call__` does with the spots it chooses; a blind spot without
        a usable neighbour is refused (``ValueError``)."""
        spots = mask.nonzero()  # (N, 2 + ndim): sample, channel, spatial coordinates
        x_masked = x.clone()
        if len(self.struct_offsets):
            self._move_constants(x.device)
            self._scramble_struct(x, x_masked, mask, spots, generator)
        x_masked[mask] = self.replacements(x, spots, generator)
        return x_masked

    def replacements(self, x, spots, generator):
        """The values the manipulator gives the blind spots ``spots`` (an
        ``(N, 2 + ndim)`` integer tensor: sample, channel, spatial coordinates)
        of ``x``, in their order; the struct mask is not applied."""
        self._move_constants(x.device)
        return self._replacement(x, spots, generator)

    def _move_constants(self, device):
        """Keep the offsets and sampling weights on ``device``: moved once, not every batch."""
        if self.offsets.device != device:
            self.offsets = self.offsets.to(device)
            self.struct_offsets = self.struct_offsets.to(device)
            self._weights = self._weights.to(device, _float_dtype(device))

    def _neighbours(self, x, spots, offsets):
        """Values of ``x`` at ``spots + offsets`` and whether each lies in the patch.

        ``spots`` is ``(N, 2 + ndim)``, ``offsets`` is ``(K, ndim)``; both
        results are ``(N, K)``. The neighbourhood is cut at the patch border:
        positions outside are marked invalid (their value is a placeholder).
        """
        spatial = x.shape[2:]
        coords, valid = _offset_positions(spots, offsets, spatial)
        index = [spots[:, 0:1], spots[:, 1:2]]
        index += [coords[..., d].clamp(0, size - 1) for d, size in enumerate(spatial)]
        return x[tuple(index)], valid

    def _replacement(self, x, spots, generator, checked=False):
        """The manipulator's values for ``spots``; ``checked``: the patch shape passed
        :meth:`check_patch`, so no spot can lack a neighbour and the spots are not looked at
        (looking would make the host wait for the device)."""
        n = len(spots)
        if self.manipulator == "identity":
            return x[tuple(spots.T)]
        if self.manipulator == "normal_additive":
            noise = torch.randn(n, generator=generator, device=x.device, dtype=x.dtype)
            return x[tuple(spots.T)] + self.radius * noise
        offsets = self.offsets
        if self.manipulator in _NEIGHBOUR_SAMPLERS:
            values, valid = self._neighbours(x, spots, offsets)
            dtype = _float_dtype(x.device)
            weights = self._weights[None, :] * valid
            stranded = weights.sum(dim=1) == 0
            if not checked and stranded.any():  # only withoutCP: uniform_withCP can always take the centre
                raise ValueError(self._no_neighbour_message(x.shape[2:]))
            cumulative = weights.cumsum(dim=1)
            u = torch.rand((n, 1), generator=generator, device=x.device, dtype=dtype)
            choice = torch.searchsorted(cumulative, u * cumulative[:, -1:], right=True)
            return values.gather(1, choice.clamp_max(len(offsets) - 1))[:, 0]
        values, valid = self._neighbours(x, spots, offsets[1:])
        count = valid.sum(dim=1)
        if not checked and (count == 0).any():
            raise ValueError(self._no_neighbour_message(x.shape[2:]))
        if self.manipulator == "median":
            # Invalid positions sort last; the median of the k valid values is
            # the mean of the two middle ones (numpy's definition).
            ordered = torch.where(valid, values, torch.full_like(values, math.inf)).sort(dim=1).values
            lower = ordered.gather(1, ((count - 1) // 2)[:, None])
            upper = ordered.gather(1, (count // 2)[:, None])
            return ((lower + upper) / 2)[:, 0]
        values = values * valid
        mean = values.sum(dim=1) / count
        if self.manipulator == "mean":
            return mean
        # normal_fitted
        variance = (values - mean[:, None]).pow(2).mul(valid).sum(dim=1) / count
        noise = torch.randn(n, generator=generator, device=x.device, dtype=x.dtype)
        return mean + variance.sqrt() * noise

    def _no_neighbour_message(self, spatial):
        # Reached only where check_patch was not called (it refuses such patches up
        # front), as when transform predicts a blind prior: name the image's size too.
        return (
            f"manipulator={self.manipulator!r} found a blind spot without neighbours within "
            f"neighborhood_radius={self.radius} in an image or patch of {'x'.join(map(str, spatial))} pixels; "
            "it needs a neighbour for every pixel (check_patch refuses such patches up front)."
        )

    def _scramble_struct(self, x, x_masked, mask, spots, generator, valid=None):
        """Give the structN2V neighbours of every blind spot the values of random
        pixels of the same sample and channel that are neither blind spots nor the
        neighbour itself, so that no blind spot's own noisy value ever lands beside it
        and no neighbour keeps its own (correlated) noise. Positions outside the
        patch are skipped, and so are neighbours that are blind spots themselves
        (they get a replacement value); ``valid`` (default: all) marks which of ``spots``
        are blind spots. A pixel that neighbours several blind spots gets one value; one
        whose sample and channel hold no other free pixel keeps its own.

        Nothing is selected or counted on the host: every (spot, offset) pair draws a source
        and those that must not write are masked out, so a GPU runs on."""
        batch, channels, *spatial = x.shape
        device, k = x.device, len(self.struct_offsets)
        rows, pixels = batch * channels, math.prod(spatial)
        coords, write = _offset_positions(spots, self.struct_offsets, spatial)  # (N, K, ndim), (N, K)
        if valid is not None:
            write &= valid[:, None]
        coords = [coords[..., d].clamp(0, size - 1) for d, size in enumerate(spatial)]
        row = (spots[:, 0] * channels + spots[:, 1])[:, None].expand(-1, k)
        target = row * pixels + _ravel(coords, spatial)  # flat (row, pixel) of each neighbour
        free = ~mask.reshape(-1)  # mask is (B, C, *spatial): flat index row * pixels + pixel
        write &= free[target]
        # The u-th free pixel other than the target, u uniform per pair over the row's other free
        # pixels: the first flat position where the running count of free pixels reaches the
        # row's start + u + 1, u skipping the target's own rank among them.
        running = free.cumsum(0)
        counts = free.reshape(rows, pixels).sum(dim=1)
        starts = counts.cumsum(0) - counts
        others = counts[row] - 1  # the target is free wherever it writes
        write &= others >= 1
        u = torch.rand(row.shape, generator=generator, device=device, dtype=_float_dtype(device))
        pick = torch.minimum((u * others).long(), (others - 1).clamp_min(0))
        pick += pick >= running[target] - 1 - starts[row]  # the target's rank among its row's free pixels
        source = torch.searchsorted(running, starts[row] + pick + 1).clamp_max(rows * pixels - 1)
        values = x.reshape(-1)[source]  # a row without free pixels writes nowhere (all its pixels are spots)
        # Where several pairs land on one pixel, the last one writes (a maximum, not a race).
        order = torch.arange(write.numel(), device=device).reshape(write.shape)
        winner = torch.full((rows * pixels,), -1, dtype=torch.int64, device=device)
        winner.scatter_reduce_(0, target.reshape(-1), torch.where(write, order, -1).reshape(-1), "amax")
        scrambled = values.reshape(-1)[winner.clamp_min(0)].reshape(x.shape)
        x_masked.copy_(torch.where((winner >= 0).reshape(x.shape), scrambled, x_masked))


def _ravel(coords, spatial):
    """Row-major flat index of the per-axis coordinates ``coords`` in an array of shape ``spatial``."""
    flat = coords[0]
    for c, size in zip(coords[1:], spatial[1:]):
        flat = flat * size + c
    return flat


def _offset_positions(spots, offsets, spatial):
    """Positions ``spots[:, 2:] + offsets``, shape ``(N, K, ndim)``, and whether
    each lies inside a patch of shape ``spatial``, shape ``(N, K)``."""
    coords = spots[:, None, 2:] + offsets[None, :, :]
    inside = torch.ones(coords.shape[:2], dtype=torch.bool, device=spots.device)
    for d, size in enumerate(spatial):
        inside &= (coords[..., d] >= 0) & (coords[..., d] < size)
    return coords, inside


def _mark(counts, spots, valid):
    """The bool mask of the ``valid`` ones of ``spots``, made in ``counts`` (int32 zeros)."""
    return counts.index_put_(tuple(spots.T), valid.to(torch.int32), accumulate=True) > 0
