"""The blind-spot network (blind_spot="network"): blind by construction, tiled, fitted, saved."""

import itertools
import warnings

import numpy as np
import pytest
import torch
from conftest import psnr, read_model_file, tiny, write_model_file

from n2v_estimator import Noise2VoidDenoiser
from n2v_estimator.nets.blindnet import BlindSpotNetwork, every_pixel
from n2v_estimator.nets.builder import build_unet
from n2v_estimator.nets.geometry import NetworkGeometry, border_width, default_overlap
from n2v_estimator.nets.geometry import blind_receptive_radius as receptive_radius
from n2v_estimator.nets.noise import posterior
from n2v_estimator.nets.unet import check_description, network_description
from n2v_estimator.predict.denoise import PredictPlan, denoise

IMAGE = np.random.default_rng(0).normal(100, 20, size=(40, 40)).astype(np.float32)
SETTINGS = dict(
    depth=2,
    n_filters=4,
    kernel_size=3,
    batch_norm=True,
    residual=False,
    blurpool=False,
    skip_skipone=False,
    independent_channels=True,
    blind_spot="network",
)


def blind_network(ndim=2, channels=1, noise_model="gaussian", dtype=torch.float64, **settings):
    description = network_description(ndim, channels, {**SETTINGS, **settings}, noise_model)
    model = build_unet(description, seed=0)
    if model.noise is not None:
        model.noise.initialise(
            np.zeros(channels),
            np.ones(channels),
            {"sigma": [0.5] * channels}
            if noise_model == "gaussian"
            else {"a": [0.1] * channels, "b": [0.2] * channels},
        )
    with torch.no_grad():  # batch-norm statistics other than the identity, so that they are exercised
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return model.to(dtype).eval()


def settings_for(tile=None, overlap=None, tta=False):
    return PredictPlan(
        tile_size=tile,
        tile_overlap=overlap,
        batch_pixels=4096,
        device=torch.device("cpu"),
        tta=tta,
        verbose=False,
        precision="32",
        manipulator="uniform_withCP",
        neighborhood_radius=2,
    )


@pytest.mark.parametrize(
    "ndim, channels, independent, shape",
    [(2, 1, True, (23, 30)), (2, 2, False, (16, 16)), (2, 2, True, (17, 12)), (3, 1, True, (9, 12, 10))],
)
def test_no_output_at_a_pixel_depends_on_any_channel_of_that_pixel(ndim, channels, independent, shape):
    model = blind_network(ndim, channels, independent_channels=independent)
    x = torch.randn((2, channels) + shape, dtype=torch.float64)
    before = model(x)
    corners = list(itertools.product(*[(0, n - 1) for n in shape]))
    for position in corners + [tuple(n // 2 for n in shape), tuple(1 for _ in shape)]:
        for channel in range(channels):
            changed = x.clone()
            changed[(1, channel) + position] += 7.0
            after = model(changed)
            at = (slice(None), slice(None)) + position
            assert torch.equal(after[at], before[at]), f"the output at {position} saw its own channel {channel}"
            assert not torch.equal(after[1], before[1])  # the change is seen around it
            assert torch.equal(after[0], before[0])  # the other sample is untouched


@pytest.mark.parametrize(
    "ndim, depth, kernel_size", [(2, 1, 3), (2, 2, 3), (2, 1, 5), pytest.param(3, 1, 3, marks=pytest.mark.slow)]
)
def test_receptive_radius_is_exactly_how_far_the_network_looks(ndim, depth, kernel_size):
    # float32: a gradient is exactly zero where no path leads, in any precision (float64 3D convolutions are slow)
    model = blind_network(ndim, 1, None, dtype=torch.float32, depth=depth, kernel_size=kernel_size, batch_norm=False)
    side = 2 * receptive_radius(depth, kernel_size) + 2 ** (depth + 1) + 8
    reach = 0
    for offset in range(2**depth):  # the pooling grid decides how far a pixel reaches
        x = torch.randn((1, 1) + (side,) * ndim, dtype=torch.float32, requires_grad=True)
        centre = (side // 2 + offset,) * ndim
        model(x)[(0, 0) + centre].backward()
        gradient = x.grad[0, 0]
        assert gradient[centre] == 0
        reach = max(reach, int((torch.nonzero(gradient) - torch.tensor(centre)).abs().max()))
    assert reach == receptive_radius(depth, kernel_size)


def test_the_default_network_s_reach_and_halo():
    description = network_description(2, 1, {**SETTINGS, "depth": 2, "kernel_size": 3})
    geometry = NetworkGeometry.of(description)
    assert receptive_radius(2, 3) == 47 and geometry.halo == border_width(2, 3, blind=True) == 48
    assert geometry.overlap == default_overlap(2, 3, blind=True) == 96 and geometry.border == 0


def test_tiles_are_predicted_as_the_whole_image_and_without_a_mirrored_border():
    model = blind_network(2, 1, "poisson_gaussian", dtype=torch.float32, depth=1)
    images = np.random.default_rng(0).normal(50, 10, size=(2, 1, 90, 75))
    mean, std = np.array([50.0]), np.array([10.0])
    whole = denoise(model, images, mean, std, settings_for(tile=128), np.float64, return_std=True)
    overlap = NetworkGeometry.of(model.description).overlap
    assert overlap == 40
    tiled = denoise(model, images, mean, std, settings_for(tile=48, overlap=overlap), np.float64, return_std=True)
    for a, b in zip(whole, tiled):  # float32 rounding, which scales with the values (the std's range is small)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9 + 1e-5 * np.abs(a).max())
    # One pass: the posterior of the network's own prediction on the plain image.
    x = ((images - mean) / std).astype(np.float32)
    with torch.no_grad():
        prior = model(torch.from_numpy(x))
        expected, expected_std = posterior(prior, torch.from_numpy(x), model.noise)
    np.testing.assert_allclose(whole[0], expected.numpy() * 10 + 50, atol=1e-4)
    np.testing.assert_allclose(whole[1], expected_std.numpy() * 10, atol=1e-4)


def test_the_prior_in_transform_never_sees_the_pixel_at_the_image_edges_either():
    model = blind_network(2, 1, "gaussian", dtype=torch.float32, depth=1)
    images = np.random.default_rng(1).normal(0, 1, size=(1, 1, 40, 36))
    ones, zeros = np.ones(1), np.zeros(1)
    for settings in (settings_for(tile=128), settings_for(tile=24, overlap=16), settings_for(tile=128, tta=True)):
        before = denoise(model, images, zeros, ones, settings, np.float64, prior_only=True)
        for position in [(0, 0), (39, 35), (0, 17), (20, 35), (1, 1)]:
            changed = images.copy()
            changed[(0, 0) + position] += 50.0
            after = denoise(model, changed, zeros, ones, settings, np.float64, prior_only=True)
            assert abs(after[(0, 0) + position] - before[(0, 0) + position]) < 1e-5, position
            assert np.abs(after - before).max() > 1e-4


def test_every_pixel_is_a_training_target():
    x = torch.randn(2, 1, 8, 8)
    same, mask = every_pixel(x, torch.Generator())
    assert same is x and mask.all() and mask.shape == x.shape


@pytest.mark.parametrize("setting", ["residual", "blurpool", "skip_skipone"])
def test_options_that_would_show_the_pixel_are_refused(setting):
    with pytest.raises(ValueError, match=f"blind_spot='network'.*{setting}=True"):
        check_description(dict(network_description(2, 1, SETTINGS), **{setting: True}))
    with pytest.raises(ValueError, match=f"set {setting}=False, or blind_spot='mask'"):
        tiny(blind_spot="network", **{setting: True}).fit(IMAGE)


def test_struct_mask_is_refused():
    with pytest.raises(ValueError, match="blind_spot='mask' for structN2V"):
        tiny(blind_spot="network", struct_mask=("x", 5)).fit(IMAGE)


def test_an_unknown_blind_spot_is_refused():
    with pytest.raises(ValueError, match="blind_spot"):
        tiny(blind_spot="both").fit(IMAGE)


def test_the_estimator_builds_the_network_and_its_manipulator_does_not_matter():
    a = tiny(blind_spot="network", noise_model="gaussian", random_state=0).fit(IMAGE)
    b = tiny(blind_spot="network", noise_model="gaussian", random_state=0, manipulator="median").fit(IMAGE)
    assert isinstance(a.model_, BlindSpotNetwork)
    np.testing.assert_array_equal(a.transform(IMAGE), b.transform(IMAGE))
    assert a.noise_sigma_.shape == (1,)


def test_save_load_pickle_and_warm_start_keep_the_network(tmp_path):
    import pickle

    fitted = tiny(blind_spot="network", noise_model="poisson_gaussian", random_state=0).fit(IMAGE)
    expected = fitted.transform(IMAGE, return_std=True)
    fitted.save(tmp_path / "blind.safetensors")
    loaded = Noise2VoidDenoiser.load(tmp_path / "blind.safetensors")
    assert loaded.model_.description == fitted.model_.description
    for a, b in zip(expected, loaded.transform(IMAGE, return_std=True)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(fitted)).transform(IMAGE), expected[0])
    fitted.set_params(warm_start=True).fit(IMAGE)
    assert len(fitted.history_) == 2 * len(loaded.history_)
    with pytest.raises(ValueError, match="same network"):
        fitted.set_params(blind_spot="mask").fit(IMAGE)


def test_score_ranks_the_blind_network_s_own_prediction():
    denoiser = tiny(blind_spot="network", random_state=0).fit(IMAGE)
    assert np.isfinite(denoiser.score(IMAGE)) and denoiser.score(IMAGE) < 0


def test_export_to_the_model_zoo_is_refused_with_the_reason(tmp_path):
    pytest.importorskip("bioimageio.spec")
    denoiser = tiny(blind_spot="network", random_state=0).fit(IMAGE)
    with pytest.raises(ValueError, match="blind-spot network cannot be exported"):
        denoiser.export_bioimageio(tmp_path / "m.zip", IMAGE, name="n", description="d", authors=["a"])


@pytest.mark.slow
def test_a_short_fit_denoises_and_the_posterior_improves_on_its_prior(camera_pair, one_torch_thread):
    clean, noisy = camera_pair
    denoiser = Noise2VoidDenoiser(
        blind_spot="network",
        noise_model=25.0,
        n_filters=8,
        max_epochs=4,
        steps_per_epoch=20,
        patch_size=32,
        learning_rate=4e-3,
        validation_fraction=0,
        random_state=0,
        batch_norm=True,  # starts faster: 23.3 and 24.8 dB from 20.2 (off: 18.8, 21.2)
        verbose=False,
    ).fit(noisy)
    prior = denoiser._denoiser()(noisy[None, None].astype(np.float32), prior_only=True)[0, 0]
    posterior_mean = denoiser.transform(noisy)
    assert psnr(prior, clean) > psnr(noisy, clean) + 2
    assert psnr(posterior_mean, clean) > psnr(prior, clean) + 0.5


def test_batch_norm_none_is_on_for_the_masked_u_net_and_off_for_the_blind_spot_network():
    masked = network_description(2, 1, {**SETTINGS, "batch_norm": None, "blind_spot": "mask"})
    blind = network_description(2, 1, {**SETTINGS, "batch_norm": None})
    assert masked["batch_norm"] is True and blind["batch_norm"] is False
    assert network_description(2, 1, {**SETTINGS, "batch_norm": True})["batch_norm"] is True  # as asked
    with pytest.raises(ValueError, match="batch_norm=None is not a bool"):  # a saved network says which
        check_description({**blind, "batch_norm": None})
    fitted = tiny(blind_spot="network").fit(IMAGE)
    assert fitted.batch_norm is None and fitted.model_.description["batch_norm"] is False
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fitted.model_.modules())


def test_the_prior_scale_starts_where_it_is_asked_to():
    model = blind_network(2, 2, "gaussian", dtype=torch.float32, depth=1)
    model.initialise_prior_scale(torch.tensor([0.3, 0.7]))
    with torch.no_grad():
        model.head.weight.zero_()
        tau = model(torch.randn(1, 2, 16, 16))[0, 2:]
    np.testing.assert_allclose(tau.mean((1, 2)).numpy(), [0.3, 0.7], rtol=1e-5)


def test_the_default_is_the_masked_unet_for_every_noise_model_and_the_network_when_asked():
    """The default for its quality per minute: the masked U-Net (a plain step's cost, its posterior ahead
    of plain N2V given a plain fit's time, Gaussian and Poisson); ``None`` means the same."""
    assert Noise2VoidDenoiser().blind_spot == "mask"
    for noise_model in ("poisson_gaussian", "gaussian", 25.0, None):
        assert tiny(noise_model=noise_model).fit(IMAGE).model_.description["blind_spot"] == "mask"
    fitted = tiny(noise_model="poisson_gaussian", blind_spot=None).fit(IMAGE)
    assert fitted.model_.description["blind_spot"] == "mask" and fitted.blind_spot is None
    assert tiny(noise_model="gaussian", blind_spot="network").fit(IMAGE).model_.description["blind_spot"] == "network"


def test_a_model_file_written_while_none_picked_the_network_loads_as_the_network(tmp_path):
    """Files of earlier versions say ``blind_spot=None`` for a 2D Poisson-Gaussian fit, then a blind-spot
    network: loaded, the parameter names what the network is, so that a warm start or refit keeps it."""
    path = tmp_path / "model.safetensors"
    fitted = tiny(noise_model="poisson_gaussian", blind_spot="network", batch_norm=False).fit(IMAGE)
    fitted.save(path)
    tensors, document = read_model_file(path)
    document["params"]["blind_spot"] = None
    write_model_file(path, tensors, document)
    loaded = Noise2VoidDenoiser.load(path)
    assert loaded.blind_spot == "network" and loaded.model_.description["blind_spot"] == "network"
    np.testing.assert_array_equal(loaded.transform(IMAGE), fitted.transform(IMAGE))
    loaded.set_params(warm_start=True, max_epochs=1).fit(IMAGE)  # the same network: continued, not refused
    assert loaded.model_.description["blind_spot"] == "network"


@pytest.mark.parametrize("stated", ["\x1b[2Jnetwork", ["network"], 7, "mask"])
def test_a_crafted_file_cannot_make_none_name_another_network(tmp_path, stated):
    """blind_spot=None is read from the file's network description: a value that is not a blind spot, or
    one that is not the network the tensors hold, is refused in one line, an escape printed escaped."""
    from n2v_estimator import ModelFileError

    path = tmp_path / "model.safetensors"
    tiny(noise_model="poisson_gaussian", blind_spot="network", batch_norm=False).fit(IMAGE).save(path)
    tensors, document = read_model_file(path)
    document["params"]["blind_spot"] = None
    document["fitted"]["network"]["blind_spot"] = stated
    write_model_file(path, tensors, document)
    with pytest.raises(ModelFileError) as refused:
        Noise2VoidDenoiser.load(path)
    message = str(refused.value)
    assert "\n" not in message and "\x1b" not in message
    assert ("blind_spot" in message) if stated != "mask" else ("tensors missing" in message)


def test_a_blind_spot_network_on_patches_narrower_than_its_reach_warns():
    image = np.random.default_rng(0).normal(100, 20, (80, 72)).astype(np.float32)
    with pytest.warns(UserWarning, match="patches of 32x32, narrower than the 64 pixels.*blind_spot='mask'"):
        tiny(blind_spot="network", patch_size=32, validation_fraction=0).fit(image)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # patches as wide as the images, or 64 wide: nothing to say
        tiny(blind_spot="network", patch_size=(80, 72), batch_norm=False, validation_fraction=0).fit(image)
        tiny(blind_spot="network", patch_size=64, validation_fraction=0, max_epochs=1).fit(image)
