"""Training patches and the validation split."""

import itertools

import numpy as np
import pytest
import torch
from conftest import gen
from hypothesis import given, settings
from hypothesis import strategies as st

from n2v_estimator.data.patches import PatchSampler, fit_patch_shape, split_validation

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def unique_images(shapes, channels=1):
    """Images whose values are unique across all of them."""
    images, start = [], 0
    for shape in shapes:
        n = channels * int(np.prod(shape))
        images.append(np.arange(start, start + n, dtype=np.float32).reshape((channels,) + shape))
        start += n
    return images


def crops(image, patch_shape):
    spatial = image.shape[1:]
    for corner in itertools.product(*(range(s - p + 1) for s, p in zip(spatial, patch_shape))):
        yield image[(slice(None),) + tuple(slice(c, c + p) for c, p in zip(corner, patch_shape))]


def symmetries_2d(patch):
    """The 8 flips / quarter turns of ``(C, Y, X)`` (only those keeping the shape are useful)."""
    for k in range(4):
        rotated = np.rot90(patch, k, axes=(-2, -1))
        yield rotated
        yield rotated[..., ::-1]


def flips(patch):
    ndim = patch.ndim - 1
    for chosen in itertools.product([False, True], repeat=ndim):
        axes = tuple(1 + d for d, f in enumerate(chosen) if f)
        yield np.flip(patch, axes) if axes else patch


def assert_each_is_one_of(batch, candidates):
    candidates = list(candidates)
    for patch in batch:
        assert any(np.array_equal(patch, c) for c in candidates)


@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize(
    "channels, shapes, patch",
    [(1, [(12, 10)], (4, 5)), (2, [(9, 11), (8, 8)], (6, 6)), (1, [(5, 6, 7)], (3, 4, 4))],
)
def test_sample_returns_float32_batch_of_patch_shape(channels, shapes, patch, augment):
    sampler = PatchSampler(unique_images(shapes, channels), patch, augment=augment)
    batch = sampler.sample(5, gen())
    assert isinstance(batch, torch.Tensor)
    assert batch.dtype == torch.float32
    assert batch.shape == (5, channels) + patch
    assert batch.is_contiguous()


@pytest.mark.parametrize("augment", [False, True])
def test_same_seed_gives_the_same_batch(augment):
    sampler = PatchSampler(unique_images([(20, 20), (15, 30)]), (8, 8), augment=augment)
    assert torch.equal(sampler.sample(6, gen(3)), sampler.sample(6, gen(3)))
    assert not torch.equal(sampler.sample(6, gen(3)), sampler.sample(6, gen(4)))


def test_without_augmentation_every_patch_is_an_exact_crop():
    images = unique_images([(9, 11), (7, 13)], channels=2)
    sampler = PatchSampler(images, (5, 6), augment=False)
    batch = sampler.sample(20, gen(1)).numpy()
    assert_each_is_one_of(batch, (crop for image in images for crop in crops(image, (5, 6))))


def test_with_augmentation_every_square_patch_is_a_symmetry_of_a_crop():
    images = unique_images([(9, 11)], channels=2)
    sampler = PatchSampler(images, (5, 5), augment=True)
    batch = sampler.sample(30, gen(2)).numpy()
    candidates = [s for crop in crops(images[0], (5, 5)) for s in symmetries_2d(crop)]
    assert_each_is_one_of(batch, candidates)


def test_augmentation_actually_transforms_some_patches():
    images = unique_images([(9, 11)])
    sampler = PatchSampler(images, (5, 5), augment=True)
    batch = sampler.sample(30, gen(2)).numpy()
    plain = list(crops(images[0], (5, 5)))
    assert not all(any(np.array_equal(p, c) for c in plain) for p in batch)


def test_with_augmentation_non_square_patches_are_only_flipped():
    images = unique_images([(10, 12)])
    sampler = PatchSampler(images, (4, 6), augment=True)
    batch = sampler.sample(30, gen(3)).numpy()
    candidates = [f for crop in crops(images[0], (4, 6)) for f in flips(crop)]
    assert_each_is_one_of(batch, candidates)


def test_with_augmentation_3d_patches_are_symmetries_of_a_crop():
    images = unique_images([(4, 6, 6)])
    sampler = PatchSampler(images, (3, 4, 4), augment=True)
    batch = sampler.sample(20, gen(4)).numpy()
    candidates = [
        np.rot90(f, k, axes=(-2, -1)) for crop in crops(images[0], (3, 4, 4)) for f in flips(crop) for k in range(4)
    ]
    assert_each_is_one_of(batch, candidates)


def test_patches_are_drawn_from_every_image():
    images = [np.zeros((1, 8, 8), np.float32), np.ones((1, 8, 8), np.float32)]
    sampler = PatchSampler(images, (4, 4), augment=False)
    means = sampler.sample(64, gen(5)).mean(dim=(1, 2, 3))
    assert (means == 0).sum() > 10 and (means == 1).sum() > 10


def test_patch_larger_than_an_image_raises_value_error():
    with pytest.raises(ValueError, match="does not fit"):
        PatchSampler(unique_images([(20, 20), (6, 30)]), (8, 8))


def test_fit_patch_shape_shrinks_to_the_smallest_image():
    assert fit_patch_shape((64, 64), [(30, 100), (50, 20)]) == (30, 20)
    assert fit_patch_shape((16, 32, 32), [(8, 100, 100)]) == (8, 32, 32)


def test_fit_patch_shape_keeps_a_patch_that_fits():
    shape = fit_patch_shape((16, 16), [(30, 40), (20, 17)])
    assert shape == (16, 16)
    assert all(isinstance(s, int) for s in shape)


# ------------------------------------------------------------- split_validation


@pytest.mark.parametrize("n_images, fraction, held", [(10, 0.1, 1), (10, 0.25, 2), (5, 0.5, 2), (4, 0.3, 1)])
def test_split_validation_holds_out_the_last_whole_images(n_images, fraction, held):
    images = np.random.default_rng(0).normal(size=(n_images, 2, 6, 7)).astype(np.float32)
    train, validation = split_validation(images, fraction)
    assert len(train) == n_images - held and len(validation) == held
    np.testing.assert_array_equal(np.stack(train), images[: n_images - held])
    np.testing.assert_array_equal(np.stack(validation), images[n_images - held :])


@pytest.mark.parametrize("shape, axis", [((1, 1, 20, 100), 1), ((1, 2, 90, 30), 0), ((1, 1, 10, 100, 20), 1)])
def test_split_validation_of_one_image_holds_out_a_strip_along_the_longest_axis(shape, axis):
    images = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    train, validation = split_validation(images, 0.1)
    assert len(train) == len(validation) == 1
    length = shape[2 + axis]
    held = int(np.ceil(0.1 * length))
    expected_train = np.take(images[0], np.arange(length - held), axis=1 + axis)
    expected_validation = np.take(images[0], np.arange(length - held, length), axis=1 + axis)
    np.testing.assert_array_equal(train[0], expected_train)
    np.testing.assert_array_equal(validation[0], expected_validation)


def test_split_validation_with_fraction_zero_holds_out_nothing():
    images = np.zeros((3, 1, 50, 50), np.float32)
    train, validation = split_validation(images, 0.0)
    assert len(train) == 3 and validation == []


@pytest.mark.parametrize("shape", [(1, 1, 10, 10), (1, 1, 12, 15), (2, 1, 9, 9)])
def test_split_validation_of_a_tiny_image_holds_out_nothing(shape):
    images = np.zeros(shape, np.float32)
    train, validation = split_validation(images, 0.1)
    assert validation == []
    assert len(train) == shape[0]
    assert train[0].shape == shape[1:]


def test_patches_are_cut_where_the_images_are_kept():
    images = unique_images([(20, 24)])
    on_device = PatchSampler(images, (8, 8), device=torch.device("cpu"))
    on_host = PatchSampler(images, (8, 8))
    assert torch.equal(on_device.sample(6, gen(3)), on_host.sample(6, gen(3)))  # same draws, same patches
    assert on_device.images[0].device == torch.device("cpu")


@settings(max_examples=40, deadline=None)
@given(
    ndim=st.sampled_from([2, 3]),
    sides=st.lists(st.integers(4, 19), min_size=3, max_size=3),
    patch=st.lists(st.integers(1, 4), min_size=3, max_size=3),
    n_images=st.integers(1, 3),
    channels=st.integers(1, 3),
    augment=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_one_gather_per_image_cuts_what_the_patch_by_patch_cut_gives(
    ndim, sides, patch, n_images, channels, augment, seed
):
    """The batch is cut by one gather per image drawn; for the same draws it equals cutting,
    flipping and turning each patch on its own, whatever the shapes (non-square patches are
    not turned)."""
    shapes = [tuple(s + 3 * k for s in sides[:ndim]) for k in range(n_images)]
    patch_shape = tuple(min(p * 2, s) for p, s in zip(patch[:ndim], shapes[0]))
    sampler = PatchSampler(unique_images(shapes, channels), patch_shape, augment=augment)
    generator = gen(seed)
    draws = [
        (i, *sampler._draw(sampler.images[i], generator))
        for i in torch.randint(n_images, (9,), generator=generator).tolist()
    ]
    one_by_one = torch.stack([sampler._cut(sampler.images[i], corner, flips, k) for i, corner, flips, k in draws])
    assert torch.equal(sampler._gather(sampler.images, draws), one_by_one)
    assert sampler.sample(5, gen(seed)).is_contiguous()
