"""Per-channel normalisation."""

import numpy as np
import pytest

from n2v_estimator.data.normalize import channel_stats, denormalize, normalize, to_dtype


def _images(dtype=np.float64, shape=(3, 2, 9, 11)):
    rng = np.random.default_rng(0)
    images = rng.normal(size=shape)
    images[:, 0] = 100.0 + 20.0 * images[:, 0]
    images[:, 1] = -3.0 + 0.5 * images[:, 1]
    if np.issubdtype(dtype, np.integer):
        images = np.abs(images) * 50
    return images.astype(dtype)


@pytest.mark.parametrize("shape", [(3, 2, 9, 11), (2, 2, 4, 5, 6)])
def test_normalized_channels_have_mean_zero_and_std_one(shape):
    images = _images(shape=shape)
    mean, std = channel_stats(images)
    out = normalize(images, mean, std)
    assert out.dtype == np.float32
    assert out.shape == images.shape
    per_channel = np.moveaxis(out, 1, 0).reshape(shape[1], -1).astype(np.float64)
    np.testing.assert_allclose(per_channel.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(per_channel.std(axis=1), 1.0, rtol=1e-5)


def test_channel_stats_are_per_channel_not_global():
    images = _images()
    mean, std = channel_stats(images)
    assert mean.shape == std.shape == (2,)
    np.testing.assert_allclose(mean, [images[:, 0].mean(), images[:, 1].mean()])
    np.testing.assert_allclose(std, [images[:, 0].std(), images[:, 1].std()])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16])
def test_denormalize_inverts_normalize(dtype):
    images = _images(dtype)
    mean, std = channel_stats(images)
    back = denormalize(normalize(images, mean, std), mean, std, dtype=np.float64)
    np.testing.assert_allclose(back, images.astype(np.float64), rtol=1e-5, atol=1e-4)


def test_denormalize_returns_the_requested_dtype():
    images = _images()
    mean, std = channel_stats(images)
    assert denormalize(normalize(images, mean, std), mean, std).dtype == np.float32
    assert denormalize(normalize(images, mean, std), mean, std, np.float64).dtype == np.float64


def test_constant_channel_gets_std_one_and_no_division_by_zero():
    images = _images()
    images[:, 1] = 7.0
    mean, std = channel_stats(images)
    assert std[1] == 1.0
    assert mean[1] == 7.0
    with np.errstate(all="raise"):
        out = normalize(images, mean, std)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[:, 1], 0.0)
    np.testing.assert_allclose(denormalize(out, mean, std)[:, 1], 7.0)


def test_normalize_does_not_modify_its_input():
    images = _images(np.float32)
    before = images.copy()
    mean, std = channel_stats(images)
    out = normalize(images, mean, std)
    np.testing.assert_array_equal(images, before)
    assert not np.shares_memory(out, images)


def test_denormalize_does_not_modify_its_input():
    images = _images(np.float32)
    mean, std = channel_stats(images)
    normalized = normalize(images, mean, std)
    before = normalized.copy()
    denormalize(normalized, mean, std)
    np.testing.assert_array_equal(normalized, before)


@pytest.mark.parametrize(
    "dtype, expected",
    [
        (np.uint8, [0, 0, 2, 255, 255]),
        (np.int8, [-9, 0, 2, 127, 127]),
        (np.uint16, [0, 0, 2, 255, 290]),
        (np.float16, [-8.9, 0.5, 1.5, 254.6, 289.5]),
    ],
)
def test_to_dtype_rounds_to_the_nearest_and_clips_to_the_range(dtype, expected):
    values = np.array([-8.9, 0.5, 1.5, 254.6, 289.5], np.float32)  # halves round to even
    out = to_dtype(values, dtype)
    assert out.dtype == dtype
    np.testing.assert_allclose(out.astype(np.float64), expected, rtol=1e-3)


def test_to_dtype_never_wraps_around_at_the_ends_of_wide_integers():
    huge = np.array([-1e30, 1e30], np.float64)
    assert to_dtype(huge, np.int64)[0] == np.iinfo(np.int64).min and to_dtype(huge, np.int64)[1] > 0
    np.testing.assert_array_equal(to_dtype(huge, np.uint32), [0, np.iinfo(np.uint32).max])
    np.testing.assert_array_equal(to_dtype(huge, np.float16), [-65504, 65504])
