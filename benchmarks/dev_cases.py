"""Denoise the dev cases with the reference budget and print PSNR against the clean image.

The reference budget (as in benchmarks/results/reference_numbers.md, which holds the numbers of
other implementations on these cases): 1500 optimizer steps, batch 16, 64x64 patches, U-Net depth 2
with 32 filters, trained on the one noisy image.

    python benchmarks/dev_cases.py --image camera --noise gauss25
    python benchmarks/dev_cases.py --image camera --noise structured --setting structn2v
    python benchmarks/dev_cases.py --image camera --noise gauss25 --setting n2v2 --tta
    python benchmarks/dev_cases.py --image coffee --set independent_channels=False
    python benchmarks/dev_cases.py --image blobs3d --steps 300 --set batch_size=8

``coffee`` is RGB (axes YXC, noise per channel); ``blobs3d`` is a smoothed
``binary_blobs(96, n_dim=3, volume_fraction=0.3)`` scaled to [0, 255] (axes ZYX).

Each run prints one JSON line (and appends it to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import ast
import json
import time

import numpy as np
import torch
from scipy import ndimage
from skimage import data

from n2v_estimator import Noise2VoidDenoiser

SETTINGS = {
    "n2v": {},
    "n2v2": {"blurpool": True, "skip_skipone": True, "manipulator": "median"},
    "structn2v": {"struct_mask": ("x", 5)},
}


def add_noise(clean, kind, seed=0):
    """The dev-case noise models of ``benchmarks/results/reference_numbers.md``, from ``default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    clean = clean.astype(np.float64)
    if kind == "gauss25":
        return clean + rng.normal(0, 25, clean.shape)
    if kind == "poisson":
        return (rng.poisson(clean / 255 * 20) + rng.normal(0, 1, clean.shape)) * 255 / 20
    if kind == "structured":
        white = rng.normal(0, 25, clean.shape)
        kernel = np.ones(5) / np.sqrt(5)
        # Correlate along x (rows) with wrap-around.
        out = sum(np.roll(white, s, axis=-1) * k for s, k in zip(range(-2, 3), kernel))
        return clean + out
    raise ValueError(kind)


def load_clean(name):
    """A clean dev image (float64, 0..255) and its axes."""
    if name == "coffee":
        return data.coffee().astype(np.float64), "YXC"
    if name == "blobs3d":
        blobs = data.binary_blobs(length=96, n_dim=3, volume_fraction=0.3, rng=0).astype(np.float64)
        smooth = ndimage.gaussian_filter(blobs, 2.0)
        smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
        return smooth * 255, "ZYX"
    return getattr(data, name)().astype(np.float64), "YX"


def extra_params(items):
    """``NAME=VALUE`` items of ``--set`` as a dict, each value a Python literal."""
    return {name: ast.literal_eval(value) for name, value in (item.split("=", 1) for item in items)}


def nyquist_power(image):
    """Power of a 2D image's 2-pixel-period components: the row and column of
    its FFT at the Nyquist frequency (checkerboard artefacts live there)."""
    spectrum = np.abs(np.fft.fft2(image - image.mean())) ** 2
    h, w = image.shape
    return float(spectrum[h // 2, :].sum() + spectrum[:, w // 2].sum())


def psnr(estimate, clean, data_range=255.0):
    mse = np.mean((np.asarray(estimate, np.float64) - clean) ** 2)
    return 10 * np.log10(data_range**2 / mse)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="camera", choices=["camera", "coins", "moon", "coffee", "blobs3d"])
    parser.add_argument("--noise", default="gauss25", choices=["gauss25", "poisson", "structured"])
    parser.add_argument("--setting", default="n2v", choices=sorted(SETTINGS))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--tta", action="store_true", help="also report PSNR with test-time augmentation")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0, help="random_state of the denoiser")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="extra parameters (Python literals)")
    parser.add_argument("--out", default=None, help="append the JSON line to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    clean, axes = load_clean(args.image)
    noisy = add_noise(clean, args.noise)
    params = {**SETTINGS[args.setting], **extra_params(args.set)}
    steps_per_epoch = 50
    settings = dict(
        patch_size=64,
        batch_size=16,
        depth=2,
        n_filters=32,
        max_epochs=max(1, args.steps // steps_per_epoch),
        steps_per_epoch=steps_per_epoch,
        random_state=args.seed,
        axes=axes,
    )
    settings.update(params)
    denoiser = Noise2VoidDenoiser(**settings)
    start = time.perf_counter()
    denoiser.fit(noisy)
    fit_seconds = time.perf_counter() - start
    denoised = denoiser.transform(noisy)
    result = {
        "image": args.image,
        "noise": args.noise,
        "setting": args.setting,
        "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()},
        "steps": denoiser.max_epochs * denoiser.steps_per_epoch,
        "psnr_noisy": round(psnr(noisy, clean), 2),
        "psnr": round(psnr(denoised, clean), 2),
        "seconds_per_step": round(fit_seconds / (denoiser.max_epochs * denoiser.steps_per_epoch), 4),
        "threads": torch.get_num_threads(),
    }
    if axes == "YX":  # moon has no Nyquist power at all (it was upsampled): no ratio there
        reference = nyquist_power(clean)
        result["nyquist_power_ratio"] = round(nyquist_power(denoised) / reference, 3) if reference > 0 else None
    if args.tta:
        denoiser.set_params(tta=True)
        result["psnr_tta"] = round(psnr(denoiser.transform(noisy), clean), 2)
    line = json.dumps(result)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
