"""The blind prior and the posterior through the tiled predictor."""

from functools import partial

import numpy as np
import pytest
import torch

from n2v_estimator.nets.builder import build_unet
from n2v_estimator.nets.geometry import border_width
from n2v_estimator.nets.noise import posterior
from n2v_estimator.nets.unet import network_description
from n2v_estimator.predict import denoise as _predict
from n2v_estimator.predict.denoise import BLIND_STRIDE, PredictPlan, blind_prior, blind_stride, denoise
from n2v_estimator.predict.tiling import predict_tiled

SETTINGS = dict(
    depth=2,
    n_filters=4,
    kernel_size=3,
    batch_norm=True,
    residual=False,
    blurpool=False,
    skip_skipone=False,
    independent_channels=True,
    blind_spot="mask",
)


def probabilistic_network(ndim=2, channels=1, kind="gaussian", depth=2):
    model = build_unet(network_description(ndim, channels, {**SETTINGS, "depth": depth}, kind), seed=0)
    model.noise.initialise(
        np.zeros(channels),
        np.ones(channels),
        {"sigma": [0.5] * channels} if kind == "gaussian" else {"a": [0.1] * channels, "b": [0.2] * channels},
    )
    return model.eval()


def tiled(model, tile=16, overlap=8, tta=False):
    """The network's prediction in tiles, on images extended by its mirrored border, as ``denoise`` predicts."""
    network = model.description
    ndim, border = network["ndim"], border_width(network["depth"], network["kernel_size"], network["blurpool"])
    return partial(
        predict_tiled,
        model,
        tile_shape=(tile,) * ndim,
        tile_overlap=(overlap,) * ndim,
        batch_size=4,
        device=torch.device("cpu"),
        multiple=2 ** network["depth"],
        tta=tta,
        out_channels=2 * network["in_channels"],
        border=(border,) * ndim,
    )


@pytest.mark.parametrize(
    "manipulator, slabs", [("uniform_withCP", False), ("median", False), ("normal_withoutCP", True)]
)
def test_the_prior_of_a_pixel_never_depends_on_that_pixel(manipulator, slabs, monkeypatch, one_torch_thread):
    if slabs:  # masking one grid row at a time, as for a volume too large to mask at once
        monkeypatch.setattr(_predict, "_MAX_NEIGHBOURS", 1)
    model = probabilistic_network()
    x = np.random.default_rng(0).normal(size=(1, 1, 19, 21)).astype(np.float32)
    prior = blind_prior(tiled(model), x, manipulator, 2, 4)
    for y, x_ in [(0, 0), (5, 7), (18, 20), (9, 10)]:
        changed = x.copy()
        changed[0, 0, y, x_] += 50.0
        again = blind_prior(tiled(model), changed, manipulator, 2, 4)
        np.testing.assert_array_equal(again[0, :, y, x_], prior[0, :, y, x_])
        assert not np.array_equal(again, prior)  # the other pixels' priors do see it


def test_the_blind_prior_is_deterministic_and_the_same_in_tiles_as_whole(one_torch_thread):
    model = probabilistic_network(channels=2)
    x = np.random.default_rng(1).normal(size=(2, 2, 40, 36)).astype(np.float32)
    whole = blind_prior(tiled(model, tile=128, overlap=0), x, "uniform_withCP", 2, 4)  # one tile
    np.testing.assert_array_equal(whole, blind_prior(tiled(model, tile=128, overlap=0), x, "uniform_withCP", 2, 4))
    in_tiles = blind_prior(tiled(model, tile=80, overlap=56), x, "uniform_withCP", 2, 4)
    np.testing.assert_allclose(in_tiles, whole, rtol=0, atol=1e-5 * np.abs(whole).max())
    assert whole.shape == (2, 4, 40, 36) and (whole[:, 2:] > 0).all()


def test_the_stride_keeps_replacements_off_the_other_blind_spots():
    """A replacement drawn from another blind spot of the same phase would show that spot its own value."""
    assert blind_stride(2, 2) == BLIND_STRIDE[2] and blind_stride(3, 2) == BLIND_STRIDE[3]
    assert blind_stride(2, 5) == 6


def test_a_revealing_manipulator_cannot_make_a_blind_prior():
    with pytest.raises(ValueError, match="shows the network the value"):
        blind_prior(tiled(probabilistic_network()), np.zeros((1, 1, 8, 8), np.float32), "identity", 2, 4)


@pytest.mark.parametrize("ndim, kind", [(2, "poisson_gaussian"), (3, "gaussian")])
def test_denoise_returns_the_posterior_of_the_blind_prior_in_the_images_units(ndim, kind, one_torch_thread):
    model = probabilistic_network(ndim, 1, kind, depth=1)  # a border of 10, not 28: a volume costs less
    shape = (1, 1) + ((6, 12, 12) if ndim == 3 else (20, 20))
    images = np.random.default_rng(2).normal(100, 10, size=shape)
    mean, std = np.array([100.0]), np.array([10.0])
    settings = PredictPlan(
        tile_size=None,
        tile_overlap=None,
        batch_pixels=4096,
        device=torch.device("cpu"),
        tta=False,
        verbose=False,
        precision="32",
        manipulator="uniform_withCP",
        neighborhood_radius=1,
    )
    out, spread = denoise(model, images, mean, std, settings, np.float64, return_std=True)
    x = ((images - mean) / std).astype(np.float32)
    prior = blind_prior(tiled(model, tile=128, overlap=56), x, "uniform_withCP", 1, BLIND_STRIDE[ndim])
    with torch.no_grad():
        expected, expected_std = posterior(torch.from_numpy(prior), torch.from_numpy(x), model.noise)
    np.testing.assert_allclose(out, expected.numpy() * 10 + 100, rtol=1e-5)
    np.testing.assert_allclose(spread, expected_std.numpy() * 10, rtol=1e-5)
    assert out.dtype == spread.dtype == np.float64
    plain = denoise(model, images, mean, std, settings, np.float32, prior_only=True)
    assert plain.shape == images.shape and not np.allclose(plain, out, atol=1e-3)


def test_return_std_needs_a_probabilistic_model():
    model = build_unet(network_description(2, 1, SETTINGS), seed=0).eval()
    settings = PredictPlan(
        tile_size=None,
        tile_overlap=None,
        batch_pixels=4096,
        device=torch.device("cpu"),
        tta=False,
        verbose=False,
        precision="32",
        manipulator="uniform_withCP",
        neighborhood_radius=2,
    )
    with pytest.raises(ValueError, match="noise_model"):
        denoise(model, np.zeros((1, 1, 8, 8)), np.zeros(1), np.ones(1), settings, return_std=True)
