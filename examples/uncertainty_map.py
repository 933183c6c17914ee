"""Probabilistic Noise2Void on scikit-image's camera: the posterior mean and its uncertainty map.

Adds Gaussian noise (sigma 25, seed 0) to ``skimage.data.camera()``, trains with
``noise_model="gaussian"`` on that one noisy image (the noise sigma is fitted
too, without the clean image), and writes to ``<out>``:

- ``uncertainty.png``: noisy | posterior mean | posterior standard deviation |
  the true error (known here only because the noise was added), the last two
  on one colour scale;
- ``posterior_mean.tif`` and ``posterior_std.tif`` (float32).

It prints the PSNR, the fitted sigma, how often the clean value lies within
one posterior standard deviation (68% for Gaussian errors of the right size)
and the mean squared error in units of the posterior variance (1 where the
variances are right). Needs the ``plot`` extra (matplotlib).

    python examples/uncertainty_map.py --out results/uncertainty
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tifffile  # noqa: E402
from skimage import data  # noqa: E402
from skimage.metrics import peak_signal_noise_ratio  # noqa: E402

from n2v_estimator import Noise2VoidDenoiser  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/uncertainty", help="output folder")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps (50 per epoch)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    clean = data.camera().astype(np.float32)
    noisy = clean + np.random.default_rng(0).normal(0, 25, clean.shape).astype(np.float32)
    denoiser = Noise2VoidDenoiser(
        noise_model="gaussian", max_epochs=max(1, args.steps // 50), steps_per_epoch=50, random_state=0, verbose=True
    ).fit(noisy)
    mean, std = denoiser.transform(noisy, return_std=True)
    error = np.abs(mean - clean)
    tifffile.imwrite(out / "posterior_mean.tif", mean)
    tifffile.imwrite(out / "posterior_std.tif", std)

    psnr = peak_signal_noise_ratio(clean, mean, data_range=255)
    within = float(np.mean(error <= std))
    z2 = float(np.mean((error / std) ** 2))
    print(f"noisy {peak_signal_noise_ratio(clean, noisy, data_range=255):.2f} dB -> posterior mean {psnr:.2f} dB")
    print(
        f"fitted sigma {denoiser.noise_sigma_[0]:.2f} (true 25); clean within one posterior std: {within:.1%}; "
        f"mean (error / std)**2: {z2:.2f} (1 where the variances are right)"
    )

    crop = (slice(40, 296), slice(150, 406))  # the cameraman: face, coat, tripod and sky
    scale = float(np.percentile(std, 99.5))
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.6), constrained_layout=True)
    panels = [
        (noisy, "noisy input", "gray", (0, 255)),
        (mean, f"posterior mean ({psnr:.2f} dB)", "gray", (0, 255)),
        (std, "posterior std (uncertainty)", "magma", (0, scale)),
        (error, "|posterior mean - clean|", "magma", (0, scale)),
    ]
    for ax, (image, title, cmap, (low, high)) in zip(axes, panels):
        shown = ax.imshow(image[crop], cmap=cmap, vmin=low, vmax=high)
        ax.set_title(title)
        ax.axis("off")
    fig.colorbar(shown, ax=axes[2:], shrink=0.8, label="grey levels")
    fig.suptitle(
        f"noise_model='gaussian': fitted sigma {denoiser.noise_sigma_[0]:.1f} (true 25); "
        f"clean value within one std for {within:.0%} of pixels"
    )
    fig.savefig(out / "uncertainty.png", dpi=72)
    print(f"wrote {out / 'uncertainty.png'}")


if __name__ == "__main__":
    main()
