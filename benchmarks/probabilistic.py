"""Probabilistic Noise2Void against plain Noise2Void on a dev case, same budget and seed.

The reference budget (benchmarks/results/reference_numbers.md): 1500 optimizer steps, batch 16,
64x64 patches, U-Net depth 2 with 32 filters, trained on the one noisy image. The noise model
is ``"gaussian"`` for ``gauss25`` and ``"poisson_gaussian"`` for ``poisson``.

    python benchmarks/probabilistic.py --image camera --noise gauss25 --threads 1
    python benchmarks/probabilistic.py --image moon --noise poisson --out benchmarks/results/probabilistic.jsonl
    python benchmarks/probabilistic.py --steps 600 --set "manipulator='median'" blurpool=True skip_skipone=True
    python benchmarks/probabilistic.py --image camera --noise poisson --blind-spot network --threads 1
    python benchmarks/probabilistic.py --image moon --noise poisson --blind-spot network --seed 1 --tta-too

Prints one JSON line: PSNR of plain N2V, of the posterior mean (what
``transform`` returns), of the blind prior mean alone, and of the posterior
built on a prior predicted from the unmasked image (the cheaper route the
estimator does not take); the fitted noise parameters against the true ones;
the fraction of pixels whose clean value lies within one posterior standard
deviation; and the seconds of a plain and of a probabilistic ``transform``.
``--tta-too`` adds both PSNRs with test-time augmentation (``tta=True``).
With ``--blind-spot network`` the probabilistic model is a blind-spot network
(plain N2V stays the masked one): its prior is blind in one pass, so the
unmasked-prior and median-replacement rows do not apply and are left out.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch
from dev_cases import add_noise, extra_params, load_clean, psnr

from n2v_estimator import Noise2VoidDenoiser
from n2v_estimator.predict import denoise as _predict

NOISE_MODEL = {"gauss25": "gaussian", "poisson": "poisson_gaussian"}
# The parameters that made the noise (input units).
TRUTH = {"gauss25": {"sigma": 25.0}, "poisson": {"a": 255 / 20, "b": (255 / 20) ** 2}}


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="camera", choices=["camera", "coins", "moon"])
    parser.add_argument("--noise", default="gauss25", choices=sorted(NOISE_MODEL))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0, help="random_state of both denoisers")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="NAME=VALUE", help="extra parameters of both (Python literals)"
    )
    parser.add_argument(
        "--blind-spot",
        default=None,
        choices=["mask", "network"],
        help="of the probabilistic model (default: the estimator's, the masked U-Net)",
    )
    parser.add_argument(
        "--no-plain", action="store_true", help="skip plain N2V (a diagnostic run of the probabilistic one)"
    )
    parser.add_argument("--tta-too", action="store_true", help="also report both PSNRs with test-time augmentation")
    parser.add_argument("--out", default=None, help="append the JSON line to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    clean, _ = load_clean(args.image)
    noisy = add_noise(clean, args.noise).astype(np.float32)
    settings = dict(
        patch_size=64,
        batch_size=16,
        depth=2,
        n_filters=32,
        max_epochs=max(1, args.steps // 50),
        steps_per_epoch=50,
        random_state=args.seed,
        verbose=False,
    )
    extra = extra_params(args.set)
    settings.update(extra)
    result = {
        "image": args.image,
        "noise": args.noise,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "blind_spot": args.blind_spot,
        "params": extra,
        "psnr_noisy": round(psnr(noisy, clean), 2),
    }

    result["psnr_plain"] = plain_seconds = None
    if not args.no_plain:
        plain = Noise2VoidDenoiser(**settings)
        _, result["fit_seconds_plain"] = timed(plain.fit, noisy)
        plain_out, plain_seconds = timed(plain.transform, noisy)
        result["psnr_plain"] = round(psnr(plain_out, clean), 2)
        if args.tta_too:
            result["psnr_plain_tta"] = round(psnr(plain.set_params(tta=True).transform(noisy), clean), 2)

    model = Noise2VoidDenoiser(noise_model=NOISE_MODEL[args.noise], blind_spot=args.blind_spot, **settings)
    _, result["fit_seconds_probabilistic"] = timed(model.fit, noisy)
    (mean, std), posterior_seconds = timed(model.transform, noisy, return_std=True)
    result["psnr_posterior"] = round(psnr(mean, clean), 2)
    result["psnr_prior_mean_blind"] = round(psnr(blind_prior(model, noisy)[0], clean), 2)
    if args.tta_too:
        result["psnr_posterior_tta"] = round(psnr(copy.deepcopy(model).set_params(tta=True).transform(noisy), clean), 2)
    result["blind_spot"] = model.model_.description["blind_spot"]
    if result["blind_spot"] == "mask":
        unmasked_mean, unmasked_std = _with_unmasked_prior(model, noisy)
        result["psnr_posterior_unmasked_prior"] = round(psnr(unmasked_mean, clean), 2)
        result["within_one_std_unmasked_prior"] = round(
            float(np.mean(np.abs(clean - unmasked_mean) <= unmasked_std)), 3
        )
        trained_with = model.manipulator
        median = model.set_params(manipulator="median").transform(noisy)  # the replacement of the blind phases only
        model.set_params(manipulator=trained_with)
        result["psnr_posterior_median_replacement"] = round(psnr(median, clean), 2)
    if result["psnr_plain"] is not None:
        result["gain_db"] = round(result["psnr_posterior"] - result["psnr_plain"], 2)
    result["kept_epoch"] = min(
        model.history_, key=lambda r: r["val_loss"] if r["val_loss"] is not None else -r["epoch"]
    )["epoch"]
    result["val_loss_every5"] = [round(r["val_loss"], 4) for r in model.history_[4::5] if r["val_loss"] is not None]
    result["noise_fitted"] = {
        k[6:-1]: round(float(v[0]), 3) for k, v in vars(model).items() if k.startswith("noise_") and k.endswith("_")
    }
    result["noise_true"] = {k: round(v, 3) for k, v in TRUTH[args.noise].items()}
    result["within_one_std"] = round(float(np.mean(np.abs(clean - mean) <= std)), 3)
    result["transform_seconds_plain"] = plain_seconds and round(plain_seconds, 2)
    result["transform_seconds_posterior"] = round(posterior_seconds, 2)
    line = json.dumps(result)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


def blind_prior(model, noisy):
    """The blind prior's mean and standard deviation (what the posterior starts from), input units."""
    original = _predict.posterior
    _predict.posterior = lambda prior, x, noise: prior.chunk(2, dim=1)
    try:
        return model.transform(noisy, return_std=True)
    finally:
        _predict.posterior = original


def _with_unmasked_prior(model, noisy):
    """The posterior mean when the prior is predicted from the unmasked image in one pass."""
    original = _predict.blind_prior
    _predict.blind_prior = lambda predict, x, *args, **kwargs: predict(x)
    try:
        return model.transform(noisy, return_std=True)
    finally:
        _predict.blind_prior = original


if __name__ == "__main__":
    main()
