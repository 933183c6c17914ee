"""Small, fast versions of the variant measurements: N2V2, structN2V, channels, 3D, TTA."""

import numpy as np
import pytest
from conftest import psnr
from scipy import ndimage
from skimage import data

from n2v_estimator import Noise2VoidDenoiser

FAST = dict(
    patch_size=32,
    batch_size=8,
    max_epochs=4,
    steps_per_epoch=20,
    n_filters=16,
    masked_pixel_percentage=5.0,
    learning_rate=2e-3,
    random_state=0,
    device="cpu",
)


def nyquist_power(image):
    spectrum = np.abs(np.fft.fft2(image - image.mean())) ** 2
    h, w = image.shape
    return spectrum[h // 2, :].sum() + spectrum[:, w // 2].sum()


@pytest.mark.slow
def test_n2v2_denoises_without_checkerboard(camera_pair):
    clean, noisy = camera_pair
    n2v2 = Noise2VoidDenoiser(**FAST, blurpool=True, skip_skipone=True, manipulator="median")
    denoised = n2v2.fit_transform(noisy)
    # N2V2 learns more slowly than N2V on tiny budgets (+2.0 dB here, +8.1 dB at 1500 steps).
    assert psnr(denoised, clean) >= psnr(noisy, clean) + 1.5
    assert nyquist_power(denoised) <= 1.1 * nyquist_power(clean)


@pytest.mark.slow
def test_struct_n2v_beats_n2v_on_row_correlated_noise():
    clean = data.camera()[256:384, 256:384].astype(np.float64)
    white = np.random.default_rng(0).normal(0, 25, clean.shape)
    noise = sum(np.roll(white, s, axis=1) for s in range(-2, 3)) / np.sqrt(5)
    noisy = clean + noise
    plain = Noise2VoidDenoiser(**FAST).fit_transform(noisy)
    struct = Noise2VoidDenoiser(**FAST, struct_mask=("x", 5)).fit_transform(noisy)
    assert psnr(struct, clean) >= psnr(plain, clean) + 1.0


@pytest.mark.slow
@pytest.mark.parametrize("independent_channels, gain", [(True, 3.0), (False, 1.5)])
def test_both_channel_modes_denoise_rgb(independent_channels, gain):
    # 80 steps give +5.4 dB (independent) and +2.6 dB (joint, which learns more slowly).
    clean = data.coffee()[100:228, 200:328].astype(np.float64)
    noisy = clean + np.random.default_rng(0).normal(0, 25, clean.shape)
    denoiser = Noise2VoidDenoiser(**FAST, axes="YXC", independent_channels=independent_channels)
    denoised = denoiser.fit_transform(noisy)
    assert denoised.shape == noisy.shape
    assert psnr(denoised, clean) >= psnr(noisy, clean) + gain


@pytest.mark.slow
def test_3d_noise2void_denoises_a_volume():
    blobs = data.binary_blobs(length=32, n_dim=3, volume_fraction=0.3, rng=0).astype(np.float64)
    smooth = ndimage.gaussian_filter(blobs, 2.0)
    clean = 255 * (smooth - smooth.min()) / (smooth.max() - smooth.min())
    noisy = clean + np.random.default_rng(0).normal(0, 25, clean.shape)
    denoiser = Noise2VoidDenoiser(**{**FAST, "n_filters": 8, "patch_size": (8, 16, 16)}, axes="ZYX")
    denoised = denoiser.fit_transform(noisy)
    assert denoiser.model_.description["ndim"] == 3
    assert psnr(denoised, clean) >= psnr(noisy, clean) + 3.0


def test_test_time_augmentation_averages_the_eight_symmetries(camera_pair):
    _, noisy = camera_pair
    denoiser = Noise2VoidDenoiser(**{**FAST, "max_epochs": 1, "steps_per_epoch": 2}).fit(noisy)
    image = noisy[:, :100]  # not square: turned tiles must come back in place
    expected = np.mean(
        [
            np.rot90(denoiser.transform(np.rot90(np.fliplr(image) if flip else image, k)), -k)[:, :: -1 if flip else 1]
            for k in range(4)
            for flip in (False, True)
        ],
        axis=0,
    )
    averaged = denoiser.set_params(tta=True).transform(image)
    np.testing.assert_allclose(averaged, expected, rtol=1e-4, atol=1e-3)
    assert not np.allclose(averaged, denoiser.set_params(tta=False).transform(image), atol=1e-3)
