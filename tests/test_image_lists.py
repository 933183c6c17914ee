"""Lists of images that share their axes but not their sizes, as real data sets are."""

import numpy as np
import pytest
import torch
from conftest import TINY, tiny

from n2v_estimator.data.axes import is_image_list
from n2v_estimator.data.normalize import channel_stats
from n2v_estimator.data.patches import PatchSampler, split_validation
from n2v_estimator.fit.plan import make_plan
from n2v_estimator.nets.noise import estimate_noise

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def noisy(shape, seed=0, offset=100.0):
    rng = np.random.default_rng(seed)
    return (offset + 20 * rng.normal(size=shape)).astype(np.float32)


SIZES = [(40, 56), (64, 48), (33, 90)]


def test_fit_on_images_of_different_sizes_and_transform_returns_a_list_of_their_shapes():
    images = [noisy(shape, seed=i) for i, shape in enumerate(SIZES)]
    denoiser = tiny().fit(images)
    out = denoiser.transform(images)
    assert isinstance(out, list) and [o.shape for o in out] == SIZES
    assert all(o.dtype == np.float32 and np.isfinite(o).all() for o in out)
    # Each image is denoised as it would be alone.
    for image, result in zip(images, out):
        np.testing.assert_array_equal(result, denoiser.transform(image))
    assert not hasattr(denoiser, "n_features_in_")


def test_a_tuple_of_mixed_layouts_is_read_with_the_same_axes():
    stack = noisy((2, 40, 40))  # axes=None: SYX
    single = noisy((48, 36), seed=1)  # YX
    out = tiny().fit((stack, single)).transform((stack, single))
    assert [o.shape for o in out] == [stack.shape, single.shape]


def test_a_list_of_equal_images_trains_exactly_as_their_stack():
    images = [noisy((48, 48), seed=i) for i in range(3)]
    from_list = tiny().fit(images)
    from_stack = tiny().fit(np.stack(images))
    for a, b in zip(from_list.model_.state_dict().values(), from_stack.model_.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Batched differently (one image at a time): equal up to float32 summation order.
    np.testing.assert_allclose(np.stack(from_list.transform(images)), from_stack.transform(np.stack(images)), rtol=1e-6)


def test_images_are_pooled_for_statistics_and_drawn_in_proportion_to_their_size():
    images = [noisy(shape, seed=i, offset=50.0 * i) for i, shape in enumerate(SIZES)]
    plan = make_plan(tiny(validation_fraction=0.0).get_params(), images)
    pixels = np.concatenate([im.ravel() for im in images]).astype(np.float64)
    np.testing.assert_allclose(plan.mean, [pixels.mean()], rtol=1e-12)
    np.testing.assert_allclose(plan.std, [pixels.std()], rtol=1e-10)
    assert [im.shape[1:] for im in plan.train_images] == SIZES
    assert plan.patch_shape == (16, 16)
    sampler = PatchSampler(plan.train_images, plan.patch_shape)
    positions = np.array([(h - 15) * (w - 15) for h, w in SIZES], dtype=np.float64)
    np.testing.assert_allclose(sampler._image_weights.numpy(), positions)


def test_pooled_channel_stats_match_the_concatenated_pixels_even_for_huge_values():
    parts = [np.full((1, 2, 3, 3), 1e200), np.full((2, 2, 4, 4), -1e200)]
    mean, std = channel_stats(parts)
    pixels = np.array([1.0] * 9 + [-1.0] * 32)
    np.testing.assert_allclose(mean, [pixels.mean() * 1e200] * 2, rtol=1e-12)
    np.testing.assert_allclose(std, [pixels.std() * 1e200] * 2, rtol=1e-12)


def test_the_noise_estimate_of_a_list_pools_its_images():
    rng = np.random.default_rng(0)
    parts = [100 + rng.normal(0, 10, (1, 1, 60, 70)), 100 + rng.normal(0, 10, (2, 1, 30, 90))]
    sigma = estimate_noise(parts, "gaussian")["sigma"]
    assert sigma == pytest.approx([10.0], rel=0.05)


def test_a_single_image_too_small_to_split_is_trained_on_whole_while_the_others_lend_a_strip():
    images = [np.zeros((1, 100, 60), np.float32), np.zeros((1, 12, 12), np.float32)]
    train, validation = split_validation(images, 0.1)
    assert [im.shape for im in train] == [(1, 90, 60), (1, 12, 12)]
    assert [im.shape for im in validation] == [(1, 10, 60)]


def test_images_with_other_channels_or_dimensionality_are_refused_naming_the_image():
    with pytest.raises(ValueError, match=r"X\[0\] has axes 'YXC' and 3 channel\(s\), X\[1\] has axes 'YXC' and 1"):
        tiny(axes="YXC").fit([noisy((32, 32, 3)), noisy((40, 40, 1))])
    with pytest.raises(ValueError, match=r"X\[1\]: .*non-finite"):
        tiny().fit([noisy((32, 32)), np.full((32, 32), np.nan)])
    fitted = tiny().fit([noisy((32, 32)), noisy((40, 40))])
    with pytest.raises(ValueError, match="fitted on 2D images but X is 3D"):
        fitted.set_params(axes="ZYX").transform([noisy((8, 32, 32))])


def test_a_list_is_scored_as_all_its_pixels_together():
    images = [noisy(shape, seed=i) for i, shape in enumerate(SIZES)]
    denoiser = tiny().fit(images)
    clean = [np.full(shape, 100.0) for shape in SIZES]
    squared = [np.sum((denoiser.transform(x).astype(np.float64) - c) ** 2) for x, c in zip(images, clean)]
    assert denoiser.score(images, clean) == pytest.approx(-sum(squared) / sum(np.size(c) for c in clean))
    self_supervised = [denoiser.score(x) for x in images]
    assert denoiser.score(images) == pytest.approx(np.average(self_supervised, weights=[np.size(x) for x in images]))
    with pytest.raises(ValueError, match="y holds 1 images for the 3 of X"):
        denoiser.score(images, clean[:1])


def test_a_probabilistic_list_returns_a_list_of_means_and_a_list_of_stds():
    images = [noisy((40, 56)), noisy((48, 32), seed=1)]
    mean, std = tiny(noise_model="gaussian").fit(images).transform(images, return_std=True)
    assert [m.shape for m in mean] == [s.shape for s in std] == [(40, 56), (48, 32)]


def test_nested_python_lists_and_flattened_rows_stay_one_array():
    assert not is_image_list([[1.0, 2.0], [3.0, 4.0]])
    assert not is_image_list([np.zeros(4), np.zeros(4)])  # rows
    assert not is_image_list([np.zeros((2, 2))], image_shape=(2, 2))
    assert is_image_list((np.zeros((2, 2)), np.zeros((3, 5))))
    rows = noisy((6, 64))
    out = tiny(image_shape=(8, 8), **{"patch_size": 8}).fit(list(rows)).transform(list(rows))
    assert isinstance(out, np.ndarray) and out.shape == (6, 64)


def test_warm_start_continues_on_a_list():
    images = [noisy(shape, seed=i) for i, shape in enumerate(SIZES)]
    denoiser = tiny(warm_start=True).fit(images).fit(images[:2])
    assert len(denoiser.history_) == 2 * TINY["max_epochs"]


def test_a_list_of_the_images_of_an_s_axis_is_still_their_stack():
    images = [noisy((40, 40), seed=i) for i in range(3)]
    denoiser = tiny(axes="SYX").fit(images)
    out = denoiser.transform(images)
    assert isinstance(out, np.ndarray) and out.shape == (3, 40, 40)


def test_an_image_smaller_than_the_patches_is_left_out_with_a_warning_when_others_hold_them():
    images = [noisy((64, 64)), noisy((64, 64), seed=1), noisy((12, 64), seed=2)]
    with pytest.warns(
        UserWarning, match=r"1 of the 3 training images \(of shapes \(12, 64\)\) are smaller than the \(32, 32\)"
    ):
        denoiser = tiny(patch_size=32, validation_fraction=0.0).fit(images)
    assert denoiser.patch_shape_ == (32, 32)
    assert [o.shape for o in denoiser.transform(images)] == [(64, 64), (64, 64), (12, 64)]
    # When no image holds them, the patches shrink as for a single small image.
    assert tiny(patch_size=32, validation_fraction=0.0).fit([noisy((20, 64)), noisy((24, 40))]).patch_shape_ == (20, 32)


def test_one_label_per_image_is_ignored_as_for_a_stack():
    images = [noisy(shape, seed=i) for i, shape in enumerate(SIZES)]
    denoiser = tiny().fit(images)
    assert denoiser.score(images, [0, 1, 0]) == denoiser.score(images)
