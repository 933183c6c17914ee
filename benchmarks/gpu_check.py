"""What a GPU gives: the reference fit, tiled inference of a large image, peak memory, time to
27 dB, and (with two or more GPUs) the same fit on two devices through torch.distributed.

    python benchmarks/gpu_check.py                          # CUDA, the reference budget
    python benchmarks/gpu_check.py --device cpu --steps 4 --predict-size 256 --budgets 2   # a smoke test

The reference budget: Noise2Void on scikit-image's camera with Gaussian noise of sigma 25 (seed 0),
1500 optimizer steps of batch 16, 64x64 patches, U-Net depth 2 with 32 filters, precision "auto"
(16-mixed on CUDA). Times are wall-clock with the device synchronised; the first fit of the process
warms it up (cuDNN autotuning, allocator) and is not reported. Prints one JSON line per measurement
and a markdown table at the end; ``--out`` also writes them to a folder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from skimage import data

from n2v_estimator import Noise2VoidDenoiser

REFERENCE = dict(patch_size=64, batch_size=16, depth=2, n_filters=32, random_state=0, verbose=False)


def camera_case():
    clean = data.camera().astype(np.float64)
    return clean, (clean + np.random.default_rng(0).normal(0, 25, clean.shape)).astype(np.float32)


def psnr(estimate, clean):
    return float(10 * np.log10(255.0**2 / np.mean((np.asarray(estimate, np.float64) - clean) ** 2)))


def synchronise(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_fit(device, steps, noisy, n_devices=1):
    """A fit of ``steps`` steps (epochs of at most 50); its wall time and the denoiser."""
    per_epoch = min(50, steps)
    denoiser = Noise2VoidDenoiser(**REFERENCE, device=device, max_epochs=max(1, steps // per_epoch),
                                  steps_per_epoch=per_epoch, n_devices=n_devices)  # fmt: skip
    synchronise(device)
    start = time.perf_counter()
    denoiser.fit(noisy)
    synchronise(device)
    return time.perf_counter() - start, denoiser


def inference(denoiser, device, size, noisy):
    """Seconds and peak memory (MB: GPU allocations on CUDA, else None) of ``transform`` of a size^2 image."""
    image = np.tile(noisy, (size // noisy.shape[0] + 1, size // noisy.shape[1] + 1))[:size, :size]
    denoiser.transform(image[:256, :256])  # warm-up
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    synchronise(device)
    start = time.perf_counter()
    denoiser.transform(image)
    synchronise(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return seconds, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--predict-size", type=int, default=4096)
    parser.add_argument("--budgets", type=int, nargs="+", default=[100, 200, 300, 500, 800])
    parser.add_argument("--target", type=float, default=27.0)
    parser.add_argument("--out", default=None, help="a folder for gpu_check.md and gpu_check.json")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu for a smoke test")
    clean, noisy = camera_case()
    results = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
               "torch": torch.__version__}  # fmt: skip
    timed_fit(args.device, min(args.steps, 20), noisy)  # warm-up, not reported

    seconds, denoiser = timed_fit(args.device, args.steps, noisy)
    results["fit"] = {"steps": args.steps, "seconds": round(seconds, 2), "steps_per_second": round(args.steps / seconds, 1),
                      "psnr": round(psnr(denoiser.transform(noisy), clean), 2)}  # fmt: skip
    print(json.dumps({"fit": results["fit"]}), flush=True)

    seconds, peak = inference(denoiser, args.device, args.predict_size, noisy)
    results["inference"] = {"size": args.predict_size, "seconds": round(seconds, 2),
                            "megapixels_per_second": round(args.predict_size**2 / 1e6 / seconds, 1),
                            "peak_gpu_mb": None if peak is None else round(peak)}  # fmt: skip
    print(json.dumps({"inference": results["inference"]}), flush=True)

    curve = []
    for steps in args.budgets:
        seconds, fitted = timed_fit(args.device, steps, noisy)
        curve.append({"steps": steps, "seconds": round(seconds, 2), "psnr": round(psnr(fitted.transform(noisy), clean), 2)})
        print(json.dumps({"time_to_quality": curve[-1]}), flush=True)
        if curve[-1]["psnr"] >= args.target:
            break
    results["time_to_quality"] = curve

    if args.device.startswith("cuda") and torch.cuda.device_count() >= 2:
        seconds, denoiser = timed_fit("cuda", args.steps, noisy, n_devices=2)
        results["two_devices"] = {"steps": args.steps, "seconds": round(seconds, 2),
                                  "psnr": round(psnr(denoiser.transform(noisy), clean), 2)}  # fmt: skip
        print(json.dumps({"two_devices": results["two_devices"]}), flush=True)

    reached = next((p["seconds"] for p in curve if p["psnr"] >= args.target), None)
    lines = [f"{results['device']}, torch {results['torch']}: reference budget ({args.steps} steps, batch 16, 64x64, "
             "depth 2, 32 filters, precision auto)", "",
             "| fit (s) | steps/s | PSNR (dB) | inference MP/s | peak GPU MB | seconds to "
             f"{args.target} dB | 2 devices: fit (s), PSNR |", "| --- | --- | --- | --- | --- | --- | --- |",
             f"| {results['fit']['seconds']} | {results['fit']['steps_per_second']} | {results['fit']['psnr']} | "
             f"{results['inference']['megapixels_per_second']} ({args.predict_size}^2 in {results['inference']['seconds']} s) | "
             f"{results['inference']['peak_gpu_mb'] or '-'} | {reached if reached is not None else '-'} | "
             + (f"{results['two_devices']['seconds']}, {results['two_devices']['psnr']}" if "two_devices" in results else "-")
             + " |"]  # fmt: skip
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
        (out / "gpu_check.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
