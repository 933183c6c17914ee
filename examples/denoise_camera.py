"""Denoise scikit-image's camera photograph from a noisy copy alone.

Adds Gaussian noise (sigma 25, seed 0) to ``skimage.data.camera()``, trains a
Noise2Void denoiser on that one noisy image with the default settings, and writes

- ``<out>/denoised.tif``: the denoised image (float32),
- ``<out>/before_after.png``: noisy, denoised and clean, titled with their PSNR, above a
  magnified crop of each,
- ``<out>/model.safetensors``: the trained denoiser (reload with ``Noise2VoidDenoiser.load``).

    pip install -e ".[plot]"      # the picture needs matplotlib
    python examples/denoise_camera.py --out results/camera
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile
from skimage import data
from skimage.metrics import peak_signal_noise_ratio

from n2v_estimator import Noise2VoidDenoiser

# The photographer's face and camera: fine detail that a denoiser can keep or blur.
CAMERA_CROP = (slice(64, 192), slice(176, 304))


def before_after_figure(noisy, denoised, clean, crop=CAMERA_CROP, data_range=255.0):
    """A matplotlib Figure: noisy, denoised and clean side by side, each titled (with its
    PSNR against ``clean``), the ``crop`` (a pair of slices) boxed in each, and below
    them the crop, magnified."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle
    except ImportError as exc:
        raise SystemExit(f'The before/after picture needs matplotlib ({exc}): pip install -e ".[plot]"') from exc

    def psnr(image):
        return peak_signal_noise_ratio(clean, image, data_range=data_range)

    panels = [
        ("noisy", f"noisy: {psnr(noisy):.2f} dB", noisy),
        ("denoised", f"denoised (Noise2Void): {psnr(denoised):.2f} dB", denoised),
        ("clean", "clean (reference)", clean),
    ]
    figure = Figure(figsize=(12, 8.6), layout="constrained")
    figure.get_layout_engine().set(w_pad=0.1, h_pad=0.1, wspace=0.04, hspace=0.04)
    axes = figure.subplots(2, 3)
    rows, cols = crop
    height, width = rows.stop - rows.start, cols.stop - cols.start
    shown = dict(cmap="gray", vmin=0, vmax=data_range, interpolation="nearest")
    for (name, title, image), above, below in zip(panels, axes[0], axes[1]):
        above.imshow(image, **shown)
        above.set_title(title, fontsize=13)
        box = Rectangle((cols.start - 0.5, rows.start - 0.5), width, height, fill=False, edgecolor="gold", lw=1.5)
        above.add_patch(box)
        below.imshow(image[crop], **shown)
        below.set_title(f"{name}, {height}x{width} crop (gold box)", fontsize=11)
        for ax in (above, below):
            ax.set_xticks([])
            ax.set_yticks([])
    figure.suptitle("PSNR against the clean image (higher is better)", fontsize=14)
    return figure


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/camera", help="output folder")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps (50 per epoch)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    clean = data.camera().astype(np.float32)
    noisy = clean + np.random.default_rng(0).normal(0, 25, clean.shape).astype(np.float32)

    # A progress bar appears once training has run 5 s (verbose="auto", also what the saved model keeps).
    denoiser = Noise2VoidDenoiser(max_epochs=max(1, args.steps // 50), steps_per_epoch=50, random_state=0)
    denoised = denoiser.fit_transform(noisy)

    before = peak_signal_noise_ratio(clean, noisy, data_range=255)
    after = peak_signal_noise_ratio(clean, denoised, data_range=255)
    print(f"PSNR noisy {before:.2f} dB -> denoised {after:.2f} dB")

    tifffile.imwrite(out / "denoised.tif", denoised)
    before_after_figure(noisy, denoised, clean).savefig(out / "before_after.png", dpi=100)
    denoiser.save(out / "model.safetensors", overwrite=True)  # this demo's own results folder: a rerun replaces them
    print(f"wrote {out / 'denoised.tif'}, {out / 'before_after.png'}, {out / 'model.safetensors'}")


if __name__ == "__main__":
    main()
