"""The output head computes in float32 under any autocast precision, so that a
bfloat16 prediction is continuous, not posterized to bfloat16's 2**7 levels per octave."""

import numpy as np
import pytest
import torch
from conftest import tiny

from n2v_estimator.nets.builder import build_unet
from n2v_estimator.nets.unet import network_description

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.filterwarnings("ignore:validation_fraction")]

SETTINGS = dict(
    depth=1,
    n_filters=16,
    kernel_size=3,
    batch_norm=False,
    residual=False,
    blurpool=False,
    skip_skipone=False,
    independent_channels=False,
)
NETWORKS = {
    "unet": ({"blind_spot": "mask"}, None),
    "residual unet": ({"blind_spot": "mask", "residual": True}, None),
    "probabilistic unet": ({"blind_spot": "mask"}, "gaussian"),
    "blind-spot network": ({"blind_spot": "network"}, None),
    "probabilistic blind-spot network": ({"blind_spot": "network"}, "gaussian"),
}
# A smooth gradient: every pixel a different value, as a calibrated intensity ramp.
ROWS, COLUMNS = np.mgrid[0:64, 0:64]
GRADIENT = 100 + 2.0 * COLUMNS + 0.37 * ROWS


def network(name):
    overrides, noise_model = NETWORKS[name]
    return build_unet(network_description(2, 1, {**SETTINGS, **overrides}, noise_model), seed=0).eval()


def most_values_in_one_octave(values):
    """The most distinct values of one sign and binary exponent: at most 2**7 for bfloat16."""
    values = np.asarray(values, np.float64).ravel()
    values = values[values != 0]
    octave = np.sign(values) * (np.floor(np.log2(np.abs(values))) + 1000)
    return max(np.unique(values[octave == o]).size for o in np.unique(octave))


@pytest.mark.parametrize("name", list(NETWORKS))
def test_a_bfloat16_forward_returns_continuous_float32_from_float32_weights(name):
    model = network(name)
    x = torch.linspace(-2, 2, 64 * 64).reshape(1, 1, 64, 64)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = model(x)
    assert output.dtype == torch.float32
    assert model.head.weight.dtype == model.head.bias.dtype == torch.float32
    for channel in range(output.shape[1]):  # the prior mean and its scale alike
        ours, theirs = output[0, channel].numpy(), reference[0, channel].numpy()
        assert np.unique(ours).size > 0.5 * np.unique(theirs).size
        assert most_values_in_one_octave(ours) > 2**8
        assert np.abs(ours - theirs).max() <= 0.05 * np.abs(theirs).max()


@pytest.mark.parametrize("name", ["unet", "probabilistic blind-spot network"])
def test_bfloat16_training_reaches_every_float32_weight(name):
    model = network(name).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)))
    output.pow(2).mean().backward()
    for key, weight in model.named_parameters():
        if not key.startswith("noise."):  # the noise model enters the loss, not the forward pass
            assert weight.grad.dtype == torch.float32 and weight.grad.abs().sum() > 0 and weight.grad.isfinite().all()


def test_a_bfloat16_fit_transforms_a_smooth_gradient_continuously_and_as_float32_does():
    noisy = GRADIENT + np.random.default_rng(0).normal(0, 5, GRADIENT.shape)
    reference = tiny(precision="32", n_filters=16).fit(noisy).transform(GRADIENT)
    denoised = tiny(precision="bf16", n_filters=16).fit(noisy).transform(GRADIENT)
    # Measured: 3,658 distinct values against float32's 4,091 (the bfloat16 head gave 72).
    assert np.unique(denoised).size > 0.5 * np.unique(reference).size
    np.testing.assert_allclose(denoised, reference, rtol=0, atol=0.005 * np.ptp(GRADIENT))


def test_a_bfloat16_fit_of_a_uint32_image_near_3e9_keeps_thousands_of_levels():
    image = (3e9 + 5e4 * COLUMNS + np.random.default_rng(0).normal(0, 2e4, COLUMNS.shape)).astype(np.uint32)
    denoised = tiny(precision="bf16").fit(image).transform(image)
    # Measured: 3,941 of 4,096 pixels distinct (the bfloat16 head gave 566).
    assert np.unique(denoised).size > 2000
