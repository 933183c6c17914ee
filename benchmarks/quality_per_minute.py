"""Quality per minute: plain Noise2Void and the probabilistic default given the same wall time.

Plain N2V trains at the reference budget (1500 optimizer steps, batch 16, 64x64 patches, U-Net depth 2 with
32 filters, on the one noisy image); its fit's wall time ``T`` is then the budget of each probabilistic fit
(``max_time=T``, the schedule laid over that time), and of a plain fit given ``max_time=T`` too (what the time
budget itself does to plain N2V). Fits alternate in one process on one thread (``--threads``), so that the
machine's load falls on all of them alike; ``--rounds`` repeats the alternation. ``--seconds`` gives ``T``
instead of measuring it.

    python benchmarks/quality_per_minute.py --image camera --noise gauss25 --threads 1
    python benchmarks/quality_per_minute.py --image camera --noise poisson --threads 1 --out benchmarks/results/quality_per_minute.jsonl
    python benchmarks/quality_per_minute.py --noise poisson --seconds 120 --variant network --variant mask
    python benchmarks/quality_per_minute.py --image hubble_deep_field --noise poisson --plain-once --seed 1

``--image`` takes the dev images and any other image scikit-image ships (colour ones made grey, scaled
to 0..255); ``--seed`` seeds the noise and the denoisers. ``--plain-once`` leaves out the plain fit given
the same time (the reference fit alone is compared).

Each fit prints one JSON line (the machine, the setting, steps trained, fit and transform seconds, PSNR against
the clean image) and appends it to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from dev_cases import add_noise, load_clean, psnr
from machine import describe

from n2v_estimator import Noise2VoidDenoiser

NOISE_MODEL = {"gauss25": "gaussian", "poisson": "poisson_gaussian"}
REFERENCE = dict(patch_size=64, batch_size=16, depth=2, n_filters=32, steps_per_epoch=50)
REFERENCE_EPOCHS = 30  # 1500 steps
# The probabilistic settings compared: the default (the masked U-Net), the blind-spot network, the masked U-Net
# named, and a blind-spot network of half the filters (its four directions then cost about twice a plain step,
# not 4.4 times).
VARIANTS = {
    "default": {},
    "network": {"blind_spot": "network"},
    "mask": {"blind_spot": "mask"},
    "narrow": {"blind_spot": "network", "n_filters": 16},
}


def load_grey(name):
    """A clean image of scikit-image's ``data`` (float64, 0..255, one channel) and its axes."""
    if name in ("camera", "coins", "moon"):
        return load_clean(name)
    from skimage import color, data

    image = getattr(data, name)()
    if image.ndim == 3:
        image = color.rgb2gray(image[..., :3])
    image = image.astype(np.float64)
    if image.max() <= 1.0:
        image = image * 255
    if image.max() > 255:
        image = image / image.max() * 255
    return image, "YX"


def run(noisy, clean, axes, params, label, seed):
    denoiser = Noise2VoidDenoiser(**{**REFERENCE, **params}, axes=axes, random_state=seed, verbose=False)
    start = time.perf_counter()
    denoiser.fit(noisy)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    denoised = denoiser.transform(noisy)
    return {
        "setting": label,
        "params": {k: v for k, v in params.items() if k != "max_epochs"},
        "steps": sum(record["steps"] for record in denoiser.history_),
        "fit_seconds": round(fit_seconds, 1),
        "transform_seconds": round(time.perf_counter() - start, 2),
        "psnr": round(psnr(denoised, clean), 2),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="camera", help="camera, coins, moon or another scikit-image image")
    parser.add_argument("--noise", default="gauss25", choices=sorted(NOISE_MODEL))
    parser.add_argument("--seconds", type=float, default=None, help="the wall time each fit gets (default: measured)")
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="probabilistic settings")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="of the noise and the denoisers (random_state)")
    parser.add_argument("--plain-once", action="store_true", help="no plain fit given the same time")
    parser.add_argument("--out", default=None, help="append the JSON lines to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clean, axes = load_grey(args.image)
    noisy = add_noise(clean, args.noise, seed=args.seed)
    about = {"image": args.image, "noise": args.noise, "psnr_noisy": round(psnr(noisy, clean), 2), **describe()}

    def say(result):
        line = json.dumps({**about, **result})
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")

    for round_ in range(args.rounds):
        seconds = args.seconds
        if seconds is None:  # the plain reference fit sets the time
            reference = run(noisy, clean, axes, {"max_epochs": REFERENCE_EPOCHS}, "plain, 1500 steps", args.seed)
            say({**reference, "round": round_})
            seconds = reference["fit_seconds"]
        timed = {"max_epochs": None, "max_time": seconds}
        if not args.plain_once:
            plain = run(noisy, clean, axes, timed, "plain, same time", args.seed)
            say({**plain, "round": round_, "budget_seconds": seconds})
        for variant in args.variant or ["default"]:
            params = {**timed, "noise_model": NOISE_MODEL[args.noise], **VARIANTS[variant]}
            result = run(noisy, clean, axes, params, f"probabilistic {variant}, same time", args.seed)
            say({**result, "round": round_, "budget_seconds": seconds})


if __name__ == "__main__":
    main()
