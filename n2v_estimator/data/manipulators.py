"""What a blind spot's value is replaced with: n2v's manipulators, in torch, for all of a batch's blind spots at once.

The manipulators (:data:`MANIPULATORS`) draw a neighbour's value, take the neighbourhood's mean, median or a
Gaussian fitted to it, or keep the value (with or without added noise). The neighbourhood is the cube of side
``2 * neighborhood_radius + 1`` around a blind spot, cut at the patch border and without structN2V's offsets.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from .blind_spot_grid import offset_positions, sampling_dtype

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import ArrayLike, NDArray

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


def hiding_manipulator(manipulator: str) -> str:
    """The manipulator that gives a blind spot a value which never is its own:
    ``"uniform_withCP"`` (which sometimes keeps the centre) becomes
    ``"uniform_withoutCP"``; the others hide it already. Probabilistic N2V trains
    and predicts its prior with it, since the prior is combined with that value.

    Raises ``ValueError`` for :data:`REVEALING_MANIPULATORS`.
    """
    if manipulator in REVEALING_MANIPULATORS:
        raise ValueError(f"manipulator={manipulator!r} shows the network the value of the pixel it predicts.")
    return "uniform_withoutCP" if manipulator == "uniform_withCP" else manipulator


# Manipulators that copy the value of one neighbour they draw, and those of them that never draw the centre.
_DRAWS_ONE_NEIGHBOUR = ("uniform_withCP", "uniform_withoutCP", "normal_withoutCP")
_NEVER_DRAWS_THE_CENTRE = ("uniform_withoutCP", "normal_withoutCP")
# Manipulators that cannot work without at least one neighbour besides the centre.
NEEDS_NEIGHBOURS = set(MANIPULATORS) - {"identity", "normal_additive", "uniform_withCP"}
# Largest neighbourhood (pixels of the cube) a blind spot may draw from: its
# offsets are held per blind spot, so memory grows with it.
MAX_NEIGHBOURHOOD = 4096


def neighbourhood_offsets(ndim: int, radius: int, excluded: ArrayLike) -> NDArray[np.int64]:
    """Offsets, shape ``(K, ndim)``, in the cube of side ``2*radius+1`` minus ``excluded``, centre first."""
    excluded_offsets = {tuple(o) for o in np.asarray(excluded).tolist()}
    cube = [o for o in itertools.product(range(-radius, radius + 1), repeat=ndim)]
    cube = [o for o in cube if any(o) and o not in excluded_offsets]
    return np.array([(0,) * ndim] + cube, dtype=np.int64).reshape(-1, ndim)


def neighbour_draw_weights(manipulator: str, offsets: NDArray[np.int64], radius: int) -> torch.Tensor:
    """How likely each of ``offsets`` (the neighbourhood, centre first) is drawn, float64, shape ``(K,)``, for a
    manipulator that copies one neighbour's value: the centre excluded for the ``withoutCP`` ones, Gaussian
    weights of sigma ``radius`` for ``normal_withoutCP``; all ones (unused) for the others."""
    weights = np.ones(len(offsets))
    if manipulator in _NEVER_DRAWS_THE_CENTRE:
        weights[0] = 0.0
    if manipulator == "normal_withoutCP":
        sigma = max(radius, 1)
        weights *= np.exp(-0.5 * (offsets**2).sum(axis=1) / sigma**2)
    return torch.as_tensor(weights, dtype=torch.float64)


def neighbour_values(x: torch.Tensor, spots: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Values of ``x`` at ``spots + offsets`` and whether each lies in the patch.

    ``spots`` is ``(N, 2 + ndim)``, ``offsets`` is ``(K, ndim)``; both
    results are ``(N, K)``. The neighbourhood is cut at the patch border:
    positions outside are marked invalid (their value is a placeholder).
    """
    spatial = x.shape[2:]
    coords, valid = offset_positions(spots, offsets, spatial)
    index = [spots[:, 0:1], spots[:, 1:2]]
    index += [coords[..., d].clamp(0, size - 1) for d, size in enumerate(spatial)]
    return x[tuple(index)], valid


def replacement_values(
    x: torch.Tensor,
    spots: torch.Tensor,
    generator: torch.Generator,
    *,
    manipulator: str,
    radius: int,
    offsets: torch.Tensor,
    draw_weights: torch.Tensor,
    patch_checked: bool = False,
) -> torch.Tensor:
    """The values ``manipulator`` gives the blind spots ``spots`` of ``x``, shape ``(N,)``, in their order.

    Parameters
    ----------
    x : Tensor of shape (B, C, *spatial)
    spots : int64 Tensor of shape (N, 2 + ndim)
        Sample, channel, spatial coordinates.
    generator : torch.Generator on ``x.device``
    manipulator : str
        One of :data:`MANIPULATORS`.
    radius : int
        The neighbourhood's half side (the noise's sigma for ``normal_additive``).
    offsets : int64 Tensor of shape (K, ndim), on ``x.device``
        The neighbourhood (:func:`neighbourhood_offsets`), centre first.
    draw_weights : Tensor of shape (K,), on ``x.device``
        :func:`neighbour_draw_weights` of ``manipulator``.
    patch_checked : bool
        The patch shape passed the masker's ``check_patch``, so no spot can lack a neighbour and the spots are
        not looked at (looking would make the host wait for the device).

    Raises
    ------
    ValueError
        Unless ``patch_checked``, for a blind spot without a usable neighbour where ``manipulator`` needs one.
    """
    n_spots = len(spots)
    if manipulator == "identity":
        return x[tuple(spots.T)]
    if manipulator == "normal_additive":
        noise = torch.randn(n_spots, generator=generator, device=x.device, dtype=x.dtype)
        return x[tuple(spots.T)] + radius * noise
    if manipulator in _DRAWS_ONE_NEIGHBOUR:
        values, valid = neighbour_values(x, spots, offsets)
        dtype = sampling_dtype(x.device)
        weights = draw_weights[None, :] * valid
        stranded = weights.sum(dim=1) == 0
        if not patch_checked and stranded.any():  # only withoutCP: uniform_withCP can always take the centre
            raise ValueError(_no_neighbour_message(manipulator, radius, x.shape[2:]))
        cumulative = weights.cumsum(dim=1)
        u = torch.rand((n_spots, 1), generator=generator, device=x.device, dtype=dtype)
        choice = torch.searchsorted(cumulative, u * cumulative[:, -1:], right=True)
        return values.gather(1, choice.clamp_max(len(offsets) - 1))[:, 0]
    values, valid = neighbour_values(x, spots, offsets[1:])
    count = valid.sum(dim=1)
    if not patch_checked and (count == 0).any():
        raise ValueError(_no_neighbour_message(manipulator, radius, x.shape[2:]))
    if manipulator == "median":
        # Invalid positions sort last; the median of the k valid values is
        # the mean of the two middle ones (numpy's definition).
        ordered = torch.where(valid, values, torch.full_like(values, math.inf)).sort(dim=1).values
        lower = ordered.gather(1, ((count - 1) // 2)[:, None])
        upper = ordered.gather(1, (count // 2)[:, None])
        return ((lower + upper) / 2)[:, 0]
    values = values * valid
    mean = values.sum(dim=1) / count
    if manipulator == "mean":
        return mean
    # normal_fitted
    variance = (values - mean[:, None]).pow(2).mul(valid).sum(dim=1) / count
    noise = torch.randn(n_spots, generator=generator, device=x.device, dtype=x.dtype)
    return mean + variance.sqrt() * noise


def _no_neighbour_message(manipulator: str, radius: int, spatial: Sequence[int]) -> str:
    # Reached only where check_patch was not called (it refuses such patches up
    # front), as when transform predicts a blind prior: name the image's size too.
    return (
        f"manipulator={manipulator!r} found a blind spot without neighbours within "
        f"neighborhood_radius={radius} in an image or patch of {'x'.join(map(str, spatial))} pixels; "
        "it needs a neighbour for every pixel (check_patch refuses such patches up front)."
    )
