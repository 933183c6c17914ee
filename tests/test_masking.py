"""Blind-spot masking: where the spots go and what values they get."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import gen
from hypothesis import given, settings
from hypothesis import strategies as st

from n2v_estimator.data.blind_spot_grid import grid_cell_side
from n2v_estimator.data.manipulators import MANIPULATORS
from n2v_estimator.data.masking import BlindSpotMasker
from n2v_estimator.data.struct_mask import resolve_struct_mask, scramble_struct_neighbours
from n2v_estimator.nets.losses import masked_mse

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def unique_batch(shape, seed=0):
    """A float batch holding each of 0..N-1 exactly once, and the inverse lookup."""
    n = int(np.prod(shape))
    perm = torch.randperm(n, generator=gen(seed))
    inverse = torch.argsort(perm)
    return perm.to(torch.float32).reshape(shape), inverse


def source_of(values, inverse, shape):
    """Full (b, c, *spatial) index of the pixel that holds each of ``values``."""
    flat = inverse[values.round().long()]
    return torch.stack(torch.unravel_index(flat, shape), dim=1)


def isolated_spots(mask, radius):
    """Spots with no other spot of the same (sample, channel) within Chebyshev ``radius``."""
    b, c, *spatial = mask.shape
    ndim = len(spatial)
    m = mask.reshape(b * c, 1, *spatial).float()
    conv = F.conv2d if ndim == 2 else F.conv3d
    counts = conv(m, torch.ones((1, 1) + (2 * radius + 1,) * ndim), padding=radius)
    return (counts.reshape(mask.shape) == 1) & mask


# ------------------------------------------------------------ where the spots go


@pytest.mark.parametrize("percentage", [0.2, 1.0, 5.0])
def test_masked_fraction_2d_matches_percentage(percentage):
    shape = (256, 1, 32, 32) if percentage >= 1 else (256, 1, 64, 64)
    masker = BlindSpotMasker(2, percentage)
    mask = masker.choose(shape, gen(1))
    fraction = mask.float().mean().item() * 100
    assert fraction == pytest.approx(percentage, rel=0.03)


def test_grid_cell_side_uses_the_cube_root_in_3d():
    for p in (0.2, 1.0, 5.0, 50.0):
        assert grid_cell_side(p, 3) == pytest.approx((100 / p) ** (1 / 3))
        assert grid_cell_side(p, 2) == pytest.approx((100 / p) ** 0.5)


@pytest.mark.parametrize("percentage", [0.5, 2.0])
def test_masked_fraction_3d_matches_percentage(percentage):
    masker = BlindSpotMasker(3, percentage)
    mask = masker.choose((96, 1, 16, 16, 16), gen(2))
    fraction = mask.float().mean().item() * 100
    assert fraction == pytest.approx(percentage, rel=0.04)


def test_masked_fraction_matches_a_high_percentage():
    masker = BlindSpotMasker(2, 50.0)
    mask = masker.choose((64, 1, 32, 32), gen(3))
    assert mask.float().mean().item() * 100 == pytest.approx(50.0, rel=0.03)


@pytest.mark.parametrize("ndim, shape", [(2, (32, 32)), (3, (16, 16, 16))])
def test_spot_counts_are_stratified_far_less_variable_than_iid_sampling(ndim, shape):
    # i.i.d. (Bernoulli/Poisson) sampling gives var(count) ~= mean(count).
    masker = BlindSpotMasker(ndim, 1.0)
    batch = 512
    mask = masker.choose((batch, 1) + shape, gen(4))
    counts = mask.reshape(batch, -1).sum(dim=1).double()
    assert counts.var().item() < 0.5 * counts.mean().item()


def test_spot_positions_are_uniform_over_the_patch_including_borders():
    masker = BlindSpotMasker(2, 2.0)
    mask = masker.choose((1024, 1, 24, 24), gen(5))
    spots = mask.nonzero()
    for axis in (2, 3):
        hist = torch.bincount(spots[:, axis], minlength=24).double()
        expected = len(spots) / 24
        # ~470 per bin: a Poisson 5-sigma band is about +-23%
        assert hist.min().item() > 0.75 * expected
        assert hist.max().item() < 1.25 * expected


@pytest.mark.parametrize("ndim, shape", [(2, (4, 4)), (2, (1, 3)), (3, (2, 3, 3))])
def test_every_sample_and_channel_gets_a_blind_spot_even_in_tiny_patches(ndim, shape):
    masker = BlindSpotMasker(ndim, 0.2)
    mask = masker.choose((64, 3) + shape, gen(6))
    assert mask.reshape(64 * 3, -1).any(dim=1).all()


def test_channels_get_independent_masks():
    masker = BlindSpotMasker(2, 5.0)
    mask = masker.choose((32, 2, 16, 16), gen(7))
    a, b = mask[:, 0], mask[:, 1]
    assert not (a == b).all(dim=(1, 2)).any()
    shared = (a & b).sum().item() / a.sum().item()
    assert shared < 0.2  # independent masks overlap in about 5% of spots


def test_mask_is_bool_with_the_input_shape():
    masker = BlindSpotMasker(3, 5.0)
    x = torch.randn(2, 3, 4, 6, 5)
    x_masked, mask = masker(x, gen())
    assert mask.dtype == torch.bool
    assert mask.shape == x.shape == x_masked.shape
    assert x_masked.dtype == x.dtype


# ----------------------------------------------------- what values the spots get


@pytest.mark.parametrize("manipulator", MANIPULATORS)
def test_only_blind_spots_change_without_struct_mask(manipulator):
    masker = BlindSpotMasker(2, 5.0, manipulator)
    x = torch.randn(8, 2, 12, 12, generator=gen(8))
    x_masked, mask = masker(x, gen(9))
    assert torch.equal(x_masked[~mask], x[~mask])


def test_masker_does_not_modify_its_input():
    masker = BlindSpotMasker(2, 5.0, "uniform_withoutCP")
    x = torch.randn(4, 1, 12, 12, generator=gen(8))
    before = x.clone()
    masker(x, gen(9))
    assert torch.equal(x, before)


@pytest.mark.parametrize("manipulator", ["uniform_withCP", "uniform_withoutCP", "normal_withoutCP"])
@pytest.mark.parametrize("radius", [1, 2])
def test_replacement_comes_from_a_pixel_of_the_neighbourhood(manipulator, radius):
    shape = (32, 2, 12, 12)
    x, inverse = unique_batch(shape)
    masker = BlindSpotMasker(2, 5.0, manipulator, neighborhood_radius=radius)
    x_masked, mask = masker(x, gen(10))
    spots = mask.nonzero()
    source = source_of(x_masked[mask], inverse, shape)
    assert torch.equal(source[:, :2], spots[:, :2])  # same sample and channel
    chebyshev = (source[:, 2:] - spots[:, 2:]).abs().max(dim=1).values
    assert (chebyshev <= radius).all()


def test_replacement_comes_from_the_neighbourhood_in_3d():
    shape = (16, 1, 6, 8, 8)
    x, inverse = unique_batch(shape)
    masker = BlindSpotMasker(3, 5.0, "uniform_withoutCP", neighborhood_radius=2)
    x_masked, mask = masker(x, gen(11))
    spots = mask.nonzero()
    source = source_of(x_masked[mask], inverse, shape)
    assert torch.equal(source[:, :2], spots[:, :2])
    chebyshev = (source[:, 2:] - spots[:, 2:]).abs().max(dim=1).values
    assert ((chebyshev >= 1) & (chebyshev <= 2)).all()


@pytest.mark.parametrize("manipulator", ["uniform_withoutCP", "normal_withoutCP"])
def test_samplers_without_cp_never_copy_the_centre_even_at_borders(manipulator):
    shape = (64, 1, 10, 10)
    x, inverse = unique_batch(shape, seed=1)
    masker = BlindSpotMasker(2, 5.0, manipulator, neighborhood_radius=2)
    x_masked, mask = masker(x, gen(12))
    spots = mask.nonzero()
    on_border = ((spots[:, 2:] == 0) | (spots[:, 2:] == 9)).any(dim=1)
    assert on_border.sum() > 20  # the check covers border spots
    assert (x_masked[mask] != x[mask]).all()
    source = source_of(x_masked[mask], inverse, shape)
    assert (source != spots).any(dim=1).all()


@pytest.mark.parametrize("manipulator", ["uniform_withoutCP", "normal_withoutCP", "mean", "median", "normal_fitted"])
@pytest.mark.parametrize("ndim, shape", [(2, (16, 16)), (3, (7, 9, 9))])
def test_replacement_does_not_depend_on_the_centre_value(manipulator, ndim, shape):
    # Changing only the blind spots' own values must not change their replacements
    # (checked at spots with no other spot within the radius, borders included).
    masker = BlindSpotMasker(ndim, 2.0, manipulator, neighborhood_radius=2)
    x = torch.randn((64, 1) + shape, generator=gen(13))
    x_masked, mask = masker(x, gen(14))
    x2 = x.clone()
    x2[mask] += 1000.0
    x2_masked, mask2 = masker(x2, gen(14))
    assert torch.equal(mask, mask2)
    isolated = isolated_spots(mask, 2)
    spots = isolated.nonzero()
    spatial = torch.tensor(shape)
    on_border = ((spots[:, 2:] == 0) | (spots[:, 2:] == spatial - 1)).any(dim=1)
    assert len(spots) > 50 and on_border.sum() > 5
    np.testing.assert_allclose(x2_masked[isolated].numpy(), x_masked[isolated].numpy(), rtol=0, atol=1e-5)


def test_centre_dependence_check_detects_uniform_with_cp():
    # Sanity check of the test above: a manipulator that may keep the centre fails it.
    masker = BlindSpotMasker(2, 2.0, "uniform_withCP", neighborhood_radius=1)
    x = torch.randn(64, 1, 16, 16, generator=gen(13))
    x_masked, mask = masker(x, gen(14))
    x2 = x.clone()
    x2[mask] += 1000.0
    x2_masked, _ = masker(x2, gen(14))
    isolated = isolated_spots(mask, 1)
    assert (x2_masked[isolated] != x_masked[isolated]).any()


@pytest.mark.parametrize("radius", [1, 2])
def test_uniform_with_cp_keeps_the_centre_with_frequency_one_over_cube_size(radius):
    shape = (64, 1, 32, 32)
    x, _ = unique_batch(shape, seed=2)
    masker = BlindSpotMasker(2, 10.0, "uniform_withCP", neighborhood_radius=radius)
    x_masked, mask = masker(x, gen(15))
    kept = (x_masked[mask] == x[mask]).double().mean().item()
    assert kept == pytest.approx(1 / (2 * radius + 1) ** 2, rel=0.25)


def _interior_neighbourhoods(x, spots, radius):
    rows = []
    for b, c, y, xx in spots.tolist():
        block = x[b, c, y - radius : y + radius + 1, xx - radius : xx + radius + 1].numpy()
        flat = block.ravel()
        rows.append(np.delete(flat, flat.size // 2))
    return np.array(rows)


def _interior_spots(mask, radius):
    spots = mask.nonzero()
    h, w = mask.shape[2:]
    inside = (spots[:, 2] >= radius) & (spots[:, 2] < h - radius) & (spots[:, 3] >= radius) & (spots[:, 3] < w - radius)
    return spots[inside]


def _interior_replacements(manipulator, radius=2):
    """Blind-spot values of ``manipulator`` at spots whose whole neighbourhood
    lies inside the patch, with those neighbourhoods (centre removed)."""
    masker = BlindSpotMasker(2, 2.0, manipulator, neighborhood_radius=radius)
    x = torch.randn(16, 2, 16, 16, generator=gen(16))
    x_masked, mask = masker(x, gen(17))
    spots = _interior_spots(mask, radius)
    return x_masked[tuple(spots.T)].numpy(), _interior_neighbourhoods(x, spots, radius)


def test_mean_is_the_neighbourhood_mean_without_centre():
    actual, neighbourhoods = _interior_replacements("mean")
    assert len(actual) > 20
    np.testing.assert_allclose(actual, neighbourhoods.mean(axis=1), rtol=1e-5, atol=1e-6)


def test_median_is_the_numpy_median_of_the_neighbourhood_without_centre():
    actual, neighbourhoods = _interior_replacements("median")
    np.testing.assert_allclose(actual, np.median(neighbourhoods, axis=1), rtol=1e-5, atol=1e-6)


def test_median_is_one_of_the_two_middle_values_of_the_neighbourhood():
    actual, neighbourhoods = _interior_replacements("median")
    values = np.sort(neighbourhoods, axis=1)
    assert np.all((actual >= values[:, 11]) & (actual <= values[:, 12]))


def test_normal_fitted_draws_around_the_neighbourhood_mean():
    masker = BlindSpotMasker(2, 2.0, "normal_fitted", neighborhood_radius=2)
    x = torch.randn(64, 1, 16, 16, generator=gen(18))
    x_masked, mask = masker(x, gen(19))
    spots = _interior_spots(mask, 2)
    nb = _interior_neighbourhoods(x, spots, 2)
    z = (x_masked[tuple(spots.T)].numpy() - nb.mean(axis=1)) / nb.std(axis=1)
    assert abs(z.mean()) < 0.2
    assert z.std() == pytest.approx(1.0, rel=0.15)


def test_identity_leaves_values_unchanged():
    masker = BlindSpotMasker(2, 5.0, "identity")
    x = torch.randn(8, 2, 12, 12, generator=gen(20))
    x_masked, mask = masker(x, gen(21))
    assert mask.any()
    assert torch.equal(x_masked, x)


@pytest.mark.parametrize("radius", [1, 3])
def test_normal_additive_adds_noise_with_std_radius(radius):
    masker = BlindSpotMasker(2, 10.0, "normal_additive", neighborhood_radius=radius)
    x = torch.randn(64, 1, 16, 16, generator=gen(22))
    x_masked, mask = masker(x, gen(23))
    noise = (x_masked[mask] - x[mask]).double()
    assert len(noise) > 1000
    assert (noise != 0).all()
    assert noise.std().item() == pytest.approx(radius, rel=0.08)
    assert abs(noise.mean().item()) < 0.15 * radius


@pytest.mark.parametrize("manipulator", MANIPULATORS)
def test_same_seed_gives_same_mask_and_values(manipulator):
    masker = BlindSpotMasker(2, 5.0, manipulator)
    x = torch.randn(4, 2, 12, 12, generator=gen(24))
    a_values, a_mask = masker(x, gen(25))
    b_values, b_mask = masker(x, gen(25))
    assert torch.equal(a_mask, b_mask)
    assert torch.equal(a_values, b_values)


def test_different_seeds_give_different_masks():
    masker = BlindSpotMasker(2, 5.0)
    shape = (4, 2, 12, 12)
    assert not torch.equal(masker.choose(shape, gen(1)), masker.choose(shape, gen(2)))


def test_unknown_manipulator_raises_value_error():
    with pytest.raises(ValueError, match="manipulator"):
        BlindSpotMasker(2, 5.0, "uniform")


def test_manipulator_needing_neighbours_with_radius_zero_raises_value_error():
    with pytest.raises(ValueError, match="neighbours"):
        BlindSpotMasker(2, 5.0, "median", neighborhood_radius=0)


def test_masked_mse_equals_manual_computation():
    rng = np.random.default_rng(0)
    prediction = rng.normal(size=(3, 2, 5, 6)).astype(np.float32)
    target = rng.normal(size=(3, 2, 5, 6)).astype(np.float32)
    mask = rng.random((3, 2, 5, 6)) < 0.2
    manual = np.sum(((prediction - target) ** 2) * mask) / mask.sum()
    loss = masked_mse(torch.from_numpy(prediction), torch.from_numpy(target), torch.from_numpy(mask))
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(manual, rel=1e-5)


def test_masked_mse_ignores_pixels_outside_the_mask():
    target = torch.zeros(1, 1, 4, 4)
    prediction = torch.full((1, 1, 4, 4), 100.0)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 1, 2] = True
    prediction[0, 0, 1, 2] = 3.0
    assert masked_mse(prediction, target, mask).item() == pytest.approx(9.0)


# ---------------------------------------------------------------- struct masks


def as_set(offsets):
    return {tuple(o) for o in np.asarray(offsets).tolist()}


def test_struct_mask_short_form_x_gives_horizontal_offsets():
    offsets = resolve_struct_mask(("x", 5), 2)
    assert offsets.dtype == np.int64 and offsets.shape == (4, 2)
    assert as_set(offsets) == {(0, -2), (0, -1), (0, 1), (0, 2)}


def test_struct_mask_short_form_y_gives_vertical_offsets():
    assert as_set(resolve_struct_mask(("y", 3), 2)) == {(-1, 0), (1, 0)}
    assert as_set(resolve_struct_mask(("vertical", 3), 2)) == {(-1, 0), (1, 0)}
    assert as_set(resolve_struct_mask(("horizontal", 3), 2)) == {(0, -1), (0, 1)}


def test_struct_mask_short_form_in_3d():
    assert as_set(resolve_struct_mask(("z", 3), 3)) == {(-1, 0, 0), (1, 0, 0)}
    assert as_set(resolve_struct_mask(("X", 3), 3)) == {(0, 0, -1), (0, 0, 1)}


def test_struct_mask_n2v_array_form():
    offsets = resolve_struct_mask([[0, 1, 0], [0, 1, 0], [0, 1, 0]], 2)
    assert as_set(offsets) == {(-1, 0), (1, 0)}


def test_struct_mask_array_with_fewer_dims_aligns_with_last_axes():
    offsets = resolve_struct_mask([1, 1, 1, 1, 1], 3)
    assert as_set(offsets) == {(0, 0, -2), (0, 0, -1), (0, 0, 1), (0, 0, 2)}


def test_struct_mask_none_gives_no_offsets():
    assert resolve_struct_mask(None, 3).shape == (0, 3)


@pytest.mark.parametrize(
    "struct_mask, ndim",
    [
        ([[1, 1], [1, 1]], 2),  # even shape
        ([1, 1, 1, 1], 2),  # even length
        ([[0, 2, 0]], 2),  # not 0/1
        ([[0, 0.5, 0]], 2),  # not 0/1
        (np.ones((3, 3, 3)), 2),  # too many dims
        (("w", 3), 2),  # unknown axis
        (("x", 4), 2),  # even span
        (("x", 0), 2),  # empty span
        (("z", 3), 2),  # z in 2D
    ],
)
def test_struct_mask_invalid_values_raise_value_error(struct_mask, ndim):
    with pytest.raises(ValueError):
        resolve_struct_mask(struct_mask, ndim)


def test_struct_neighbours_get_values_of_pixels_of_the_same_sample_and_channel():
    shape = (32, 2, 12, 12)
    x, inverse = unique_batch(shape, seed=3)
    offsets = resolve_struct_mask(("x", 5), 2)
    masker = BlindSpotMasker(2, 3.0, "uniform_withoutCP", 2, struct_offsets=offsets)
    x_masked, mask = masker(x, gen(26))
    changed = (x_masked != x) & ~mask
    assert changed.sum() > 100
    # every changed pixel is a struct neighbour of some blind spot of its own patch
    spots = mask.nonzero()
    neighbours = torch.zeros_like(mask)
    for dx in (-2, -1, 1, 2):
        cols = spots[:, 3] + dx
        ok = (cols >= 0) & (cols < 12)
        s = spots[ok]
        neighbours[s[:, 0], s[:, 1], s[:, 2], cols[ok]] = True
    assert not (changed & ~neighbours).any()
    # and holds the value of a pixel of the same sample and channel
    where = changed.nonzero()
    source = source_of(x_masked[changed], inverse, shape)
    assert torch.equal(source[:, :2], where[:, :2])


def test_replacement_never_comes_from_a_struct_offset():
    shape = (64, 1, 10, 10)
    x, inverse = unique_batch(shape, seed=4)
    offsets = resolve_struct_mask(("x", 5), 2)
    masker = BlindSpotMasker(2, 5.0, "uniform_withoutCP", 2, struct_offsets=offsets)
    x_masked, mask = masker(x, gen(27))
    spots = mask.nonzero()
    source = source_of(x_masked[mask], inverse, shape)
    delta = source[:, 2:] - spots[:, 2:]
    assert delta.abs().max() <= 2
    # struct offsets (0, +-1), (0, +-2) and the centre all have dy == 0
    assert (delta[:, 0] != 0).all()


def test_replacement_never_comes_from_a_diagonal_struct_offset_at_borders():
    shape = (64, 1, 8, 8)
    x, inverse = unique_batch(shape, seed=5)
    offsets = resolve_struct_mask(np.eye(3), 2)
    assert as_set(offsets) == {(-1, -1), (1, 1)}
    masker = BlindSpotMasker(2, 5.0, "uniform_withoutCP", 1, struct_offsets=offsets)
    x_masked, mask = masker(x, gen(0))
    spots = mask.nonzero()
    source = source_of(x_masked[mask], inverse, shape)
    delta = as_set(source[:, 2:] - spots[:, 2:])
    assert not (delta & {(-1, -1), (1, 1)})


def test_struct_mask_is_excluded_from_mean_neighbourhood():
    masker = BlindSpotMasker(2, 2.0, "mean", 1, struct_offsets=resolve_struct_mask(("y", 3), 2))
    x = torch.randn(16, 1, 16, 16, generator=gen(28))
    x_masked, mask = masker(x, gen(29))
    spots = _interior_spots(mask, 1)
    assert len(spots) > 10
    for b, c, y, xx in spots.tolist():
        block = x[b, c, y - 1 : y + 2, xx - 1 : xx + 2].clone()
        keep = torch.ones(3, 3, dtype=torch.bool)
        keep[:, 1] = False  # centre and vertical struct neighbours
        assert x_masked[b, c, y, xx].item() == pytest.approx(block[keep].mean().item(), abs=1e-5)


def test_struct_neighbours_never_get_the_value_of_a_blind_spot():
    # Small, densely masked patches: drawing from every pixel of the patch would often
    # copy a blind spot's own value beside it (1 in 16 here).
    shape = (512, 1, 4, 4)
    x, inverse = unique_batch(shape, seed=6)
    masker = BlindSpotMasker(2, 10.0, "uniform_withoutCP", 1, struct_offsets=resolve_struct_mask(("x", 3), 2))
    x_masked, mask = masker(x, gen(30))
    scrambled = (x_masked != x) & ~mask
    assert scrambled.sum() > 500
    source = source_of(x_masked[scrambled], inverse, shape)
    assert not mask[tuple(source.T)].any()


def test_a_struct_neighbour_never_keeps_or_takes_its_own_value():
    """Drawn from every free pixel of its patch, a neighbour would keep its own noisy value (correlated
    with the blind spot's, which structN2V hides) once in as many draws as there are free pixels: 1 in 8
    here, about 500 of 4000."""
    shape = (2000, 1, 3, 3)
    x, inverse = unique_batch(shape, seed=9)
    masker = BlindSpotMasker(2, 5.0, "uniform_withCP", 1, struct_offsets=resolve_struct_mask(("x", 3), 2))
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[:, :, 1, 1] = True  # one blind spot in the middle of each patch: neighbours (1, 0) and (1, 2)
    x_masked = x.clone()
    scramble_struct_neighbours(x, x_masked, mask, mask.nonzero(), masker.struct_offsets, gen(3))
    for column in (0, 2):
        neighbours = x_masked[:, 0, 1, column]
        assert not (neighbours == x[:, 0, 1, column]).any()
        drawn = {tuple(p) for p in source_of(neighbours, inverse, shape)[:, 2:].tolist()}
        free = {(r, c) for r in range(3) for c in range(3)} - {(1, 1)}
        assert drawn == free - {(1, column)}  # each of the 7 other free pixels, never the spot or itself


def test_a_struct_neighbour_with_no_other_free_pixel_keeps_its_value():
    masker = BlindSpotMasker(2, 5.0, "uniform_withCP", 1, struct_offsets=resolve_struct_mask(("x", 3), 2))
    x = torch.randn(1, 1, 1, 2, generator=gen(1))
    mask = torch.tensor([[[[True, False]]]])  # the spot's only free pixel is its own neighbour
    x_masked = x.clone()
    scramble_struct_neighbours(x, x_masked, mask, mask.nonzero(), masker.struct_offsets, gen(2))
    assert torch.equal(x_masked, x)


def test_struct_scrambling_writes_only_beside_valid_spots_and_draws_free_pixels_uniformly():
    """The scrambling draws for every (spot, offset) pair and masks out those that must not write:
    spots marked invalid, neighbours outside the patch or blind spots themselves. The values come
    uniformly from the free pixels of the spot's own sample and channel."""
    shape = (2, 2, 6, 7)
    x, inverse = unique_batch(shape, seed=8)
    masker = BlindSpotMasker(2, 5.0, "uniform_withCP", 1, struct_offsets=resolve_struct_mask(("x", 3), 2))
    spots = torch.tensor([[0, 0, 2, 3], [0, 0, 2, 4], [0, 1, 5, 0], [1, 1, 3, 6], [1, 0, 1, 1]])
    valid = torch.tensor([True, True, True, True, False])
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[tuple(spots[valid].T)] = True
    expected = torch.zeros(shape, dtype=torch.bool)  # struct neighbours of valid spots, not spots, inside
    for (b, c, row, col), ok in zip(spots.tolist(), valid.tolist()):
        for dc in (-1, 1):
            if ok and 0 <= col + dc < shape[3] and not mask[b, c, row, col + dc]:
                expected[b, c, row, col + dc] = True
    hits = torch.zeros(shape, dtype=torch.int64)
    for seed in range(400):
        x_masked = x.clone()
        scramble_struct_neighbours(x, x_masked, mask, spots, masker.struct_offsets, gen(seed), valid)
        changed = x_masked != x
        assert not (changed & ~expected).any()
        where = expected.nonzero()
        source = source_of(x_masked[tuple(where.T)], inverse, shape)
        assert torch.equal(source[:, :2], where[:, :2])  # same sample and channel
        assert not mask[tuple(source.T)].any()  # never a blind spot's value
        hits.index_put_(tuple(source.T), torch.ones(len(source), dtype=torch.int64), accumulate=True)
    # Sample 0, channel 0 has two side-by-side spots, so 2 written pixels per draw over its 40 free
    # pixels: 20 expected hits each (sd 4.5); every free pixel is drawn, none far more than the others.
    counts = hits[0, 0][~mask[0, 0]]
    assert len(counts) == 40 and counts.sum() == 800 and counts.min() > 5 and counts.max() < 40, counts
    assert hits[1, 0].sum() == 0  # its only spot is not valid


@settings(max_examples=40, deadline=None)
@given(
    ndim=st.sampled_from([2, 3]),
    batch=st.integers(1, 3),
    channels=st.integers(1, 2),
    side=st.integers(3, 9),
    percentage=st.sampled_from([2.0, 10.0, 30.0]),
    struct=st.sampled_from([("x", 3), ("x", 5), ("y", 3), "diagonal"]),
    seed=st.integers(0, 2**16),
)
def test_struct_scrambling_in_any_batch_only_moves_free_pixels_of_the_same_patch_beside_spots(
    ndim, batch, channels, side, percentage, struct, seed
):
    struct_mask = np.eye(3) if struct == "diagonal" else struct
    shape = (batch, channels) + (side,) * ndim
    x, inverse = unique_batch(shape, seed=seed)
    masker = BlindSpotMasker(
        ndim, percentage, "uniform_withCP", 1, struct_offsets=resolve_struct_mask(struct_mask, ndim)
    )
    x_masked, mask = masker(x, gen(seed))
    offsets = masker.struct_offsets.tolist()
    beside = torch.zeros_like(mask)  # struct neighbours of blind spots, inside the patch, not spots
    for b, c, *where in mask.nonzero().tolist():
        for offset in offsets:
            at = [w + o for w, o in zip(where, offset)]
            if all(0 <= a < side for a in at) and not mask[(b, c, *at)]:
                beside[(b, c, *at)] = True
    changed = (x_masked != x) & ~mask
    assert not (changed & ~beside).any()
    where = beside.nonzero()
    source = source_of(x_masked[beside], inverse, shape)
    assert torch.equal(source[:, :2], where[:, :2])
    assert not mask[tuple(source.T)].any()
    others = (~mask).flatten(2).sum(-1)[where[:, 0], where[:, 1]] > 1  # a free pixel besides the neighbour
    assert not (source == where).all(dim=1)[others].any()  # never its own value


def test_struct_scrambling_of_a_patch_that_is_all_blind_spots_writes_nothing():
    masker = BlindSpotMasker(2, 5.0, "uniform_withCP", 1, struct_offsets=resolve_struct_mask(("x", 3), 2))
    x = torch.randn(2, 1, 2, 3, generator=gen(1))
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[0] = True  # sample 0 has no free pixel; sample 1 has one spot beside free pixels
    mask[1, 0, 0, 1] = True
    x_masked = x.clone()
    scramble_struct_neighbours(x, x_masked, mask, mask.nonzero(), masker.struct_offsets, gen(2))
    assert torch.equal(x_masked[0], x[0])
    changed = (x_masked != x)[1, 0]
    assert changed[0, 0] and changed[0, 2] and not changed[1].any()


@pytest.mark.parametrize("manipulator", ["uniform_withoutCP", "normal_withoutCP", "median", "mean", "normal_fitted"])
def test_a_blind_spot_without_usable_neighbours_is_an_error_never_a_silent_copy(manipulator):
    masker = BlindSpotMasker(2, 50.0, manipulator, 1, struct_offsets=resolve_struct_mask(("x", 3), 2))
    x = torch.randn(4, 1, 1, 8, generator=gen(31))  # one row: every neighbour is masked or outside
    with pytest.raises(ValueError, match="without neighbours"):  # given spots: each is looked at
        masker.apply(x, torch.ones_like(x, dtype=torch.bool), gen(32))
    with pytest.raises(ValueError, match="no neighbour within"):  # chosen spots: the shape is refused up front
        masker(x, gen(32))
    with pytest.raises(ValueError, match="no neighbour within"):
        masker.check_patch((1, 8))
    masker.check_patch((2, 8))


@pytest.mark.parametrize(
    "ndim, radius, struct", [(2, 1, None), (2, 2, ("x", 5)), (3, 1, ("z", 3)), (2, 3, np.ones((5, 5)))]
)
def test_check_patch_agrees_with_masking_every_pixel(ndim, radius, struct):
    """check_patch refuses exactly the patch shapes where some pixel has no usable neighbour."""
    offsets = resolve_struct_mask(struct, ndim)
    masker = BlindSpotMasker(ndim, 100.0, "mean", radius, struct_offsets=offsets)
    for shape in (
        [(1, 1, 9), (2, 9), (1, 12), (3, 3), (12, 2), (9, 9)][:6] if ndim == 2 else [(1, 4, 4), (2, 2, 2), (4, 4, 4)]
    ):
        shape = tuple(shape)[-ndim:] if len(shape) >= ndim else (1,) * (ndim - len(shape)) + tuple(shape)
        x = torch.randn((2, 1) + shape, generator=gen(33))
        try:
            masker.apply(x, torch.ones_like(x, dtype=torch.bool), gen(34))  # every pixel a blind spot
            works = True
        except ValueError:
            works = False
        try:
            masker.check_patch(shape)
            accepted = True
        except ValueError:
            accepted = False
        assert accepted == works, shape


def test_masked_mse_ignores_non_finite_values_outside_the_mask():
    target = torch.zeros(1, 1, 3, 3)
    prediction = torch.full((1, 1, 3, 3), float("inf"))
    mask = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    mask[0, 0, 1, 1] = True
    prediction[0, 0, 1, 1] = 2.0
    assert masked_mse(prediction, target, mask).item() == pytest.approx(4.0)
