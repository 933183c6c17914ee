"""Where probabilistic Noise2Void loses: calibration of the prior and the noise model per intensity bin.

Fits one probabilistic model on a dev case (the reference budget unless ``--steps``), then splits
the pixels into intensity bins by their clean value and reports, per bin, against the truth:

- ``prior_err2``: the blind prior's true squared error ``(mu - s)**2`` and ``tau2``, the prior
  variance the network claims for it (a calibrated prior has them equal);
- ``noise_true`` / ``noise_model``: the true noise variance against the fitted model at ``mu``;
- ``resid_ratio``: the self-supervised statistic, ``(x - mu)**2 / (tau**2 + v(mu))`` (1 if
  calibrated): what the estimator can see without clean data;
- ``mse_prior`` / ``mse_posterior``: squared errors of the prior mean and of the posterior mean.

    python benchmarks/probabilistic_diagnosis.py --image moon --noise poisson --blind-spot mask
    python benchmarks/probabilistic_diagnosis.py --image cell --noise poisson --plain --steps 600
    python benchmarks/probabilistic_diagnosis.py --image moon --noise poisson --dark 0.7

``--dark F`` makes a mostly dark image: the clean image times a mask that keeps its brightest blobs
and sets a fraction F of it to a dark background of 2 (in 0..255 units), the case where the read
noise decides. ``--model PATH`` reuses a model saved by an earlier run (``--save PATH``).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from dev_cases import add_noise, extra_params, psnr
from probabilistic import NOISE_MODEL, TRUTH, blind_prior
from scipy import ndimage
from skimage import data

from n2v_estimator import Noise2VoidDenoiser


def clean_image(name, dark=0.0):
    clean = getattr(data, name)().astype(np.float64)
    if clean.ndim == 3:
        clean = clean.mean(-1)
    if dark > 0:
        smooth = ndimage.gaussian_filter(clean, 8)
        keep = smooth >= np.quantile(smooth, dark)
        weight = ndimage.gaussian_filter(keep.astype(np.float64), 3)
        clean = 2 + weight * (clean - 2)
    return clean


def true_variance(clean, noise):
    if noise == "gauss25":
        return np.full_like(clean, 625.0)
    a, b = TRUTH["poisson"]["a"], TRUTH["poisson"]["b"]
    return a * clean + b


def per_bin(clean, noisy, mu, tau, post, model, noise, n_bins=6):
    edges = np.unique(np.quantile(clean, np.linspace(0, 1, n_bins + 1)))
    which = np.clip(np.searchsorted(edges, clean, side="right") - 1, 0, len(edges) - 2)
    if noise == "gauss25":
        v_model = np.full_like(clean, float(model.noise_sigma_[0]) ** 2)
    else:
        v_model = model.noise_a_[0] * np.maximum(mu, 0) + model.noise_b_[0]
    rows = []
    for k in range(len(edges) - 1):
        m = which == k
        if not m.any():
            continue
        rows.append(
            {
                "bin": [round(float(edges[k]), 1), round(float(edges[k + 1]), 1)],
                "prior_err2": round(float(np.mean((mu[m] - clean[m]) ** 2)), 1),
                "tau2": round(float(np.mean(tau[m] ** 2)), 1),
                "noise_true": round(float(np.mean(true_variance(clean, noise)[m])), 1),
                "noise_model": round(float(np.mean(v_model[m])), 1),
                "resid_ratio": round(float(np.mean((noisy[m] - mu[m]) ** 2) / np.mean(tau[m] ** 2 + v_model[m])), 3),
                "mse_prior": round(float(np.mean((mu[m] - clean[m]) ** 2)), 1),
                "mse_posterior": round(float(np.mean((post[m] - clean[m]) ** 2)), 1),
            }
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="moon")
    parser.add_argument("--noise", default="poisson", choices=sorted(NOISE_MODEL))
    parser.add_argument("--dark", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0, help="of the noise and the denoiser")
    parser.add_argument("--blind-spot", default=None, choices=["mask", "network"], help="default: the estimator's")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plain", action="store_true", help="also fit plain N2V and report its PSNR")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE")
    parser.add_argument("--save", default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clean = clean_image(args.image, args.dark)
    noisy = add_noise(clean, args.noise, seed=args.seed).astype(np.float32)
    settings = dict(
        patch_size=64,
        batch_size=16,
        depth=2,
        n_filters=32,
        max_epochs=max(1, args.steps // 50),
        steps_per_epoch=50,
        random_state=args.seed,
        verbose=False,
        **extra_params(args.set),
    )
    result = {
        "image": args.image,
        "dark": args.dark,
        "noise": args.noise,
        "seed": args.seed,
        "steps": args.steps,
        "blind_spot": args.blind_spot,
        "params": extra_params(args.set),
        "psnr_noisy": round(psnr(noisy, clean), 2),
    }
    if args.plain:
        plain = Noise2VoidDenoiser(**{**settings, "blind_spot": "mask"}).fit(noisy)
        result["psnr_plain"] = round(psnr(plain.transform(noisy), clean), 2)
    if args.model:
        model = Noise2VoidDenoiser.load(args.model)
    else:
        start = time.perf_counter()
        model = Noise2VoidDenoiser(noise_model=NOISE_MODEL[args.noise], blind_spot=args.blind_spot, **settings)
        model.fit(noisy)
        result["fit_seconds"] = round(time.perf_counter() - start)
        if args.save:
            model.save(args.save)
    result["blind_spot"] = model.model_.description["blind_spot"]
    post = model.transform(noisy)
    mu, tau = blind_prior(model, noisy)
    result["psnr_prior"] = round(psnr(mu, clean), 2)
    result["psnr_posterior"] = round(psnr(post, clean), 2)
    if "psnr_plain" in result:
        result["gain_db"] = round(result["psnr_posterior"] - result["psnr_plain"], 2)
    result["noise_fitted"] = {
        k[6:-1]: round(float(v[0]), 2) for k, v in vars(model).items() if k.startswith("noise_") and k.endswith("_")
    }
    result["bins"] = per_bin(clean, noisy, mu, tau, post, model, args.noise)
    if hasattr(model, "calibration_"):
        result["calibration"] = model.calibration_
    line = json.dumps(result)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
