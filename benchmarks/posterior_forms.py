"""Which posterior mean to take from a fitted prior under Poisson-Gaussian noise.

``transform`` combines the prior ``N(mu, tau**2)`` with the noisy pixel ``x``
in closed form, the noise variance ``a * s + b`` evaluated at ``s = mu``
(``n2v_estimator.nets.noise.posterior``). A numerically exact 1D integral over the signal
would be the alternative, if it were measurably better. This benchmark
computes, from one fitted model's prior, the posterior mean and standard
deviation by:

- ``closed_at_mu``: what ``transform`` returns;
- ``closed_at_posterior``: the same formula with the variance evaluated at the
  posterior mean (five fixed-point iterations);
- ``truncated_normal``: ``closed_at_mu`` restricted to a signal ``>= 0``;
- ``integral_gaussian``: the integral over ``s >= 0`` of the prior times the
  likelihood ``N(x; s, a * s + b)``, the variance at every ``s``;
- ``integral_poisson``: the same with the exact Poisson-Gaussian likelihood
  ``sum_k Poisson(k; s / a) N(x; a k, b)``.

and, as bounds that need the clean image's noise: ``closed_true_noise``, the
closed form with the true ``a`` and ``b`` and ``tau**2`` less the noise
variance the fitted parameters left to it; ``closed_tau_times_K``, ``tau``
rescaled by ``K``.

Each integral takes 129 points over ``mu +- 6 tau`` (clipped at 0), in
float64. It prints one JSON line: PSNR against the clean image and the share
of clean values within one posterior standard deviation, per form.

    python benchmarks/posterior_forms.py --image camera --model camera_poisson.n2v
    python benchmarks/posterior_forms.py --image moon --blind-spot network --save moon_poisson.n2v

Without ``--model`` it first fits a model at the reference budget (the
Poisson dev noise, ``noise_model="poisson_gaussian"``; 8-30 minutes on one
CPU thread) and can ``--save`` it.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from dev_cases import add_noise, extra_params, load_clean, psnr
from probabilistic import blind_prior

from n2v_estimator import Noise2VoidDenoiser

# Points of the numerical integrals, and their span in prior standard deviations.
POINTS, SPAN = 129, 6.0
# The Poisson dev noise's parameters, input units (benchmarks/dev_cases.py).
TRUE_A, TRUE_B = 255 / 20, (255 / 20) ** 2
# Factors of the rescaled-tau rows.
TAU_FACTORS = (0.5, 0.75, 1.25)
# Rows per integral chunk (points x rows x columns float64 values at once).
ROWS = 16


def closed(mu, tau, x, a, b, at):
    """Bayes' rule for a Gaussian prior and the noise variance ``a * at + b``."""
    v = a * torch.clamp(at, min=0) + b
    return (v * mu + tau**2 * x) / (tau**2 + v), torch.sqrt(tau**2 * v / (tau**2 + v))


def truncated(mean, std):
    """Mean and standard deviation of ``N(mean, std**2)`` restricted to ``>= 0``."""
    normal = torch.distributions.Normal(0.0, 1.0)
    alpha = -mean / std
    ratio = torch.exp(normal.log_prob(alpha) - torch.special.log_ndtr(-alpha))
    variance = std**2 * (1 + alpha * ratio - ratio**2)
    return mean + std * ratio, torch.sqrt(torch.clamp(variance, min=0))


def integral(mu, tau, x, a, b, poisson):
    """Posterior mean and standard deviation by quadrature over ``s >= 0``."""
    low = torch.clamp(mu - SPAN * tau, min=0)
    high = torch.maximum(mu + SPAN * tau, low + 1e-3)
    s = low[..., None] + (high - low)[..., None] * torch.linspace(0, 1, POINTS, dtype=mu.dtype)
    log_p = -0.5 * ((s - mu[..., None]) / tau[..., None]) ** 2
    if poisson:
        rate = torch.clamp(s / a, min=1e-12)[..., None]
        k = torch.arange(int(x.max() / a * 1.5 + 40), dtype=mu.dtype)
        terms = k * torch.log(rate) - rate - torch.lgamma(k + 1) - 0.5 * (x[..., None, None] - a * k) ** 2 / b
        log_p = log_p + torch.logsumexp(terms, dim=-1)
    else:
        v = a * s + b
        log_p = log_p - 0.5 * torch.log(v) - 0.5 * (x[..., None] - s) ** 2 / v
    weights = torch.softmax(log_p, dim=-1)
    mean = (weights * s).sum(-1)
    return mean, torch.sqrt((weights * (s - mean[..., None]) ** 2).sum(-1))


def forms(mu, tau, x, a, b):
    """Every form's (mean, std), float64 tensors of the image's shape."""
    at_mu = closed(mu, tau, x, a, b, mu)
    fixed = at_mu
    for _ in range(5):
        fixed = closed(mu, tau, x, a, b, fixed[0])

    def chunked(poisson):
        parts = [
            integral(mu[i : i + ROWS], tau[i : i + ROWS], x[i : i + ROWS], a, b, poisson)
            for i in range(0, len(mu), ROWS)
        ]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    fitted, true = a * torch.clamp(mu, min=0) + b, TRUE_A * torch.clamp(mu, min=0) + TRUE_B
    tau_true_noise = torch.sqrt(torch.clamp(tau**2 - (true - fitted), min=1e-6))
    bounds = {f"closed_tau_times_{k}": closed(mu, k * tau, x, a, b, mu) for k in TAU_FACTORS}
    return {
        "closed_true_noise": closed(mu, tau_true_noise, x, TRUE_A, TRUE_B, mu),
        **bounds,
        "closed_at_mu": at_mu,
        "closed_at_posterior": fixed,
        "truncated_normal": truncated(*at_mu),
        "integral_gaussian": chunked(False),
        "integral_poisson": chunked(True),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="camera", choices=["camera", "coins", "moon"])
    parser.add_argument("--model", default=None, help="a saved poisson_gaussian model fitted on this case")
    parser.add_argument("--save", default=None, help="save the model fitted here")
    parser.add_argument("--blind-spot", default="network", choices=["mask", "network"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tta", action="store_true", help="predict the prior with test-time augmentation")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="extra parameters of the fit")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    clean, _ = load_clean(args.image)
    noisy = add_noise(clean, "poisson").astype(np.float32)
    if args.model:
        model = Noise2VoidDenoiser.load(args.model)
    else:
        model = Noise2VoidDenoiser(
            noise_model="poisson_gaussian",
            blind_spot=args.blind_spot,
            patch_size=64,
            batch_size=16,
            depth=2,
            n_filters=32,
            max_epochs=30,
            steps_per_epoch=50,
            random_state=args.seed,
            verbose=False,
            **extra_params(args.set),
        )
        model.fit(noisy)
        if args.save:
            model.save(args.save)
    if model.noise_model != "poisson_gaussian":
        parser.error("--model must be fitted with noise_model='poisson_gaussian'")
    model.set_params(tta=args.tta)
    mu, tau = (torch.from_numpy(np.asarray(t, np.float64)) for t in blind_prior(model, noisy))
    a, b = float(model.noise_a_[0]), float(model.noise_b_[0])
    result = {
        "image": args.image,
        "noise": "poisson",
        "blind_spot": model.blind_spot,
        "tta": args.tta,
        "noise_fitted": {"a": round(a, 3), "b": round(b, 3)},
        "psnr_prior": round(psnr(mu.numpy(), clean), 3),
    }
    every = forms(mu, tau, torch.from_numpy(noisy.astype(np.float64)), a, b)
    # The closed form here is nets.noise.posterior's, in input units and float64: check it against transform.
    gap = float(np.abs(every["closed_at_mu"][0].numpy() - model.transform(noisy)).max())
    assert gap < 1e-3, f"closed_at_mu differs from transform by {gap}"
    for name, (mean, std) in every.items():
        mean, std = mean.numpy(), std.numpy()
        result[name] = {
            "psnr": round(psnr(mean, clean), 3),
            "within_one_std": round(float(np.mean(np.abs(clean - mean) <= std)), 3),
        }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
