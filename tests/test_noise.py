"""Noise models, their first estimate and fit on data of known parameters, the likelihood, the posterior."""

import numpy as np
import pytest
import torch
from conftest import gen
from hypothesis import given, settings
from hypothesis import strategies as st

from n2v_estimator.nets.noise import (
    TAU_FLOOR,
    NoiseModel,
    blind_spot_loss,
    blind_spot_nll,
    estimate_noise,
    noise_kind,
    posterior,
    posterior_risk,
)

RNG = np.random.default_rng(0)


def smooth_scene(shape=(2, 1, 96, 96), low=20.0, high=220.0):
    """A smooth signal spanning ``low..high`` (gradients and a blob), what the robust estimate is made for."""
    yy, xx = np.mgrid[0 : shape[2], 0 : shape[3]] / max(shape[2:])
    signal = low + (high - low) * (0.5 * xx + 0.3 * yy + 0.2 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) * 20))
    return np.broadcast_to(signal, shape).astype(np.float64)


def poisson_gaussian(signal, a, b, rng=RNG):
    """Noisy ``signal`` whose variance is ``a * signal + b``: scaled photon counts plus read noise."""
    return a * rng.poisson(signal / a) + rng.normal(0, np.sqrt(b), signal.shape)


def test_noise_kind_maps_a_known_sigma_to_the_gaussian_model():
    assert noise_kind(None) is None
    assert noise_kind("poisson_gaussian") == "poisson_gaussian"
    assert noise_kind(25.0) == noise_kind(3) == "gaussian"


def test_the_robust_estimate_finds_a_gaussian_sigma_per_channel():
    signal = np.concatenate([smooth_scene((1, 1, 128, 128)), smooth_scene((1, 1, 128, 128)) * 3], axis=1)
    noisy = signal + RNG.normal(0, 1, signal.shape) * np.array([10.0, 40.0])[None, :, None, None]
    sigma = estimate_noise(noisy, "gaussian")["sigma"]
    np.testing.assert_allclose(sigma, [10.0, 40.0], rtol=0.05)


def test_the_robust_estimate_finds_poisson_gaussian_parameters():
    signal = smooth_scene((4, 1, 128, 128))
    estimate = estimate_noise(poisson_gaussian(signal, a=12.75, b=160.0), "poisson_gaussian")
    np.testing.assert_allclose(estimate["a"], [12.75], rtol=0.15)
    np.testing.assert_allclose(estimate["b"], [160.0], rtol=0.3)


def test_the_robust_estimate_works_in_3d_and_stays_positive_on_clean_data():
    volume = smooth_scene((1, 1, 24, 64))[:, :, None].repeat(8, axis=2)
    noisy = volume + RNG.normal(0, 5, volume.shape)
    np.testing.assert_allclose(estimate_noise(noisy, "gaussian")["sigma"], [5.0], rtol=0.1)
    flat = np.full((1, 1, 16, 16), 7.0)
    assert estimate_noise(flat, "gaussian")["sigma"] > 0
    assert all((v > 0).all() for v in estimate_noise(flat, "poisson_gaussian").values())


def test_a_noise_model_reports_its_parameters_in_input_units_and_its_variance_in_normalised_ones():
    noise = NoiseModel("poisson_gaussian", 2).initialise([100.0, 10.0], [50.0, 5.0], {"a": [2.0, 0.5], "b": [9.0, 1.0]})
    np.testing.assert_allclose(noise.parameters_in_input_units()["a"], [2.0, 0.5], rtol=1e-6)
    signal = torch.tensor([0.5, -3.0]).reshape(1, 2, 1, 1)  # 125 and -5 (clipped to 0) in input units
    expected = np.array([(2.0 * 125 + 9.0) / 50**2, 1.0 / 5**2])
    np.testing.assert_allclose(noise.variance(signal).flatten().detach().numpy(), expected, rtol=1e-6)
    gaussian = NoiseModel("gaussian", 1).initialise([0.0], [4.0], {"sigma": [2.0]}, learn=False)
    assert not gaussian.log_sigma.requires_grad
    assert float(gaussian.variance(torch.zeros(3, 1, 2, 2)).unique()) == pytest.approx(0.25)


def test_an_unknown_noise_model_is_refused():
    with pytest.raises(ValueError, match="unknown"):
        NoiseModel("laplace", 1)


def test_the_likelihood_is_the_gaussian_one_on_the_blind_spots_only():
    noise = NoiseModel("gaussian", 1).initialise([0.0], [1.0], {"sigma": [0.5]})
    x = torch.randn(2, 1, 4, 4, generator=gen())
    mu, tau = torch.randn(2, 1, 4, 4, generator=gen(1)), torch.full((2, 1, 4, 4), 0.3)
    mask = torch.rand(2, 1, 4, 4, generator=gen(2)) < 0.4
    variance = 0.3**2 + 0.5**2
    expected = (0.5 * (np.log(variance) + (x - mu) ** 2 / variance))[mask].mean()
    value = blind_spot_nll(torch.cat([mu, tau], 1), x, mask, noise)
    assert float(value.detach()) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("kind", ["gaussian", "poisson_gaussian"])
def test_the_training_loss_trains_mu_as_plain_n2v_and_tau_and_noise_by_the_likelihood(kind):
    noise = NoiseModel(kind, 1).initialise([3.0], [2.0], {"sigma": [0.7], "a": [0.4], "b": [0.2]})
    x = torch.randn(2, 1, 6, 6, generator=gen())
    prediction = torch.cat(
        [torch.randn(2, 1, 6, 6, generator=gen(1)), torch.rand(2, 1, 6, 6, generator=gen(2)) + 0.1], 1
    )
    mask = torch.rand(2, 1, 6, 6, generator=gen(3)) < 0.4

    def gradients(loss, prediction):
        prediction = prediction.clone().requires_grad_(True)
        noise.zero_grad(set_to_none=True)
        loss(prediction).backward()
        return prediction.grad.chunk(2, dim=1), [p.grad for p in noise.parameters()]

    (d_mu, d_tau), d_noise = gradients(lambda p: blind_spot_loss(p, x, mask, noise), prediction)
    (d_mu_mse, _), _ = gradients(lambda p: (x - p[:, :1]).square()[mask].mean(), prediction)
    (_, d_tau_nll), d_noise_nll = gradients(lambda p: blind_spot_nll(p, x, mask, noise), prediction)
    torch.testing.assert_close(d_mu, d_mu_mse)  # mu: plain Noise2Void's gradient
    torch.testing.assert_close(d_tau, d_tau_nll)  # tau and the noise: the likelihood's
    assert all(g is not None for g in d_noise)
    for found, expected in zip(d_noise, d_noise_nll):
        torch.testing.assert_close(found, expected)
    assert d_mu[~mask].abs().max() == 0 and d_tau[~mask].abs().max() == 0


@pytest.mark.parametrize(
    "kind, truth, start",
    [
        ("gaussian", {"sigma": 20.0}, {"sigma": 8.0}),
        ("poisson_gaussian", {"a": 12.75, "b": 160.0}, {"a": 3.0, "b": 600.0}),
    ],
)
def test_fitting_the_likelihood_recovers_known_noise_parameters(kind, truth, start, one_torch_thread):
    """With the clean signal as a sure prior (tau at its floor), maximising the blind spots'
    likelihood alone finds the noise model that made the data, from a poor start."""
    signal = smooth_scene((4, 1, 64, 64), low=5.0)
    rng = np.random.default_rng(1)
    noisy = (
        signal + rng.normal(0, truth["sigma"], signal.shape)
        if kind == "gaussian"
        else poisson_gaussian(signal, rng=rng, **truth)
    )
    mean, std = np.array([noisy.mean()]), np.array([noisy.std()])
    noise = NoiseModel(kind, 1).initialise(mean, std, {k: [v] for k, v in start.items()})
    x = torch.as_tensor((noisy - mean) / std, dtype=torch.float32)
    prior = torch.cat([torch.as_tensor((signal - mean) / std, dtype=torch.float32), torch.full_like(x, TAU_FLOOR)], 1)
    mask = torch.ones_like(x, dtype=torch.bool)
    optimizer = torch.optim.Adam(noise.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        blind_spot_nll(prior, x, mask, noise).backward()
        optimizer.step()
    found = noise.parameters_in_input_units()
    for name, value in truth.items():
        np.testing.assert_allclose(found[name], [value], rtol=0.1 if name != "b" else 0.25)


def test_the_posterior_is_bayes_rule_with_its_limits():
    noise = NoiseModel("gaussian", 1).initialise([0.0], [1.0], {"sigma": [2.0]})
    noise.requires_grad_(False)
    x = torch.tensor([3.0]).reshape(1, 1, 1, 1)
    mean, std = posterior(torch.tensor([1.0, 1.0]).reshape(1, 2, 1, 1), x, noise)
    assert float(mean) == pytest.approx((4 * 1 + 1 * 3) / 5)  # (sigma^2 mu + tau^2 x) / (tau^2 + sigma^2)
    assert float(std) == pytest.approx(np.sqrt(4 / 5))
    sure, _ = posterior(torch.tensor([1.0, 1e-4]).reshape(1, 2, 1, 1), x, noise)
    vague, _ = posterior(torch.tensor([1.0, 1e4]).reshape(1, 2, 1, 1), x, noise)
    assert float(sure) == pytest.approx(1.0, abs=1e-6) and float(vague) == pytest.approx(3.0, abs=1e-6)


@settings(max_examples=25, deadline=None)
@given(mu=st.floats(-2, 2), tau=st.floats(0.05, 3), sigma=st.floats(0.05, 3))
def test_the_posterior_mean_has_the_least_squared_error_on_simulated_signals(mu, tau, sigma):
    """Signals drawn from the prior, observed with the noise: the posterior mean beats both
    the prior mean and the observation, and its spread matches the posterior std."""
    rng = np.random.default_rng(0)
    signal = mu + tau * rng.standard_normal(20000)
    observed = signal + sigma * rng.standard_normal(signal.size)
    noise = NoiseModel("gaussian", 1).initialise([0.0], [1.0], {"sigma": [sigma]})
    prior = torch.tensor([mu, tau], dtype=torch.float32).reshape(1, 2, 1, 1).expand(signal.size, 2, 1, 1)
    mean, std = posterior(prior, torch.as_tensor(observed, dtype=torch.float32).reshape(-1, 1, 1, 1), noise)
    error = mean.detach().flatten().numpy() - signal
    assert np.mean(error**2) <= min(tau**2, sigma**2) * 1.05
    assert np.std(error) == pytest.approx(float(std[0].detach()), rel=0.05)


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(["gaussian", "poisson_gaussian"]),
    error=st.floats(0.0, 30.0),
    tau=st.floats(0.5, 60.0),
    seed=st.integers(0, 2**16),
)
def test_the_posterior_risk_is_the_posteriors_squared_error_plus_the_noise_variance(kind, error, tau, seed):
    """Whatever the blind prior (``mu`` off by ``error``, any ``tau``, right or not), the validation
    loss averages the posterior mean's true squared error plus the noise variance, as a plain
    prediction's squared error averages its own plus the noise variance."""
    rng = np.random.default_rng(seed)
    n = 200_000
    signal = rng.uniform(20, 220, n)
    if kind == "gaussian":
        parameters, variance = {"sigma": [25.0]}, np.full(n, 625.0)
        observed = signal + 25.0 * rng.standard_normal(n)
    else:
        parameters, variance = {"a": [12.75], "b": [160.0]}, 12.75 * signal + 160.0
        observed = poisson_gaussian(signal, 12.75, 160.0, rng)
    mu = signal + error * rng.standard_normal(n)  # blind: independent of the noise
    mean, std = 120.0, 60.0
    noise = NoiseModel(kind, 1).initialise([mean], [std], parameters, learn=False)

    def normalised(values):
        return torch.as_tensor((values - mean) / std, dtype=torch.float64).reshape(-1, 1, 1, 1)

    prior = torch.cat([normalised(mu), torch.full((n, 1, 1, 1), tau / std, dtype=torch.float64)], 1)
    risk = posterior_risk(prior, normalised(observed), noise).double().mean().item() * std**2
    posterior_mean, _ = posterior(prior, normalised(observed), noise)
    truth = np.mean((posterior_mean.flatten().numpy() * std + mean - signal) ** 2) + variance.mean()
    assert risk == pytest.approx(truth, rel=0.02)


def test_the_first_estimate_of_large_data_looks_at_a_bounded_part(monkeypatch):
    from n2v_estimator.nets import noise as _noise

    noisy = smooth_scene((3, 1, 64, 64)) + RNG.normal(0, 10, (3, 1, 64, 64))
    monkeypatch.setattr(_noise, "_ESTIMATE_PIXELS", 64 * 64)
    np.testing.assert_array_equal(
        estimate_noise(noisy, "gaussian")["sigma"], estimate_noise(noisy[:1], "gaussian")["sigma"]
    )
    monkeypatch.setattr(_noise, "_ESTIMATE_PIXELS", 64 * 16)
    np.testing.assert_array_equal(
        estimate_noise(noisy, "gaussian")["sigma"], estimate_noise(noisy[:1, :, 24:40], "gaussian")["sigma"]
    )
    assert estimate_noise(noisy, "gaussian")["sigma"] == pytest.approx(10, rel=0.15)
