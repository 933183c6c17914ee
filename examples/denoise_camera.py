"""Denoise scikit-image's camera photograph from a noisy copy alone.

Adds Gaussian noise (sigma 25, seed 0) to ``skimage.data.camera()``, trains a
Noise2Void denoiser on that one noisy image with the default settings, and writes

- ``<out>/denoised.tif``: the denoised image (float32),
- ``<out>/before_after.png``: noisy | denoised | clean side by side,
- ``<out>/model.safetensors``: the trained denoiser (reload with ``Noise2VoidDenoiser.load``).

    python examples/denoise_camera.py --out results/camera
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile
from skimage import data, io
from skimage.metrics import peak_signal_noise_ratio

from n2v_estimator import Noise2VoidDenoiser


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/camera", help="output folder")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps (50 per epoch)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    clean = data.camera().astype(np.float32)
    noisy = clean + np.random.default_rng(0).normal(0, 25, clean.shape).astype(np.float32)

    denoiser = Noise2VoidDenoiser(max_epochs=max(1, args.steps // 50), steps_per_epoch=50, random_state=0, verbose=True)
    denoised = denoiser.fit_transform(noisy)

    before = peak_signal_noise_ratio(clean, noisy, data_range=255)
    after = peak_signal_noise_ratio(clean, denoised, data_range=255)
    print(f"PSNR noisy {before:.2f} dB -> denoised {after:.2f} dB")

    tifffile.imwrite(out / "denoised.tif", denoised)
    panel = np.concatenate([noisy, denoised, clean], axis=1)
    io.imsave(out / "before_after.png", np.clip(panel, 0, 255).astype(np.uint8), check_contrast=False)
    denoiser.save(out / "model.safetensors")
    print(f"wrote {out / 'denoised.tif'}, {out / 'before_after.png'}, {out / 'model.safetensors'}")


if __name__ == "__main__":
    main()
