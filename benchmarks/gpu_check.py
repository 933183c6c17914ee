"""What a GPU gives: the reference fit, tiled inference of a large image, peak memory, time to
27 dB, and (with two or more GPUs) the same fit on two devices through torch.distributed; then what
would make it faster: the host's waits for the device per training step (CUDA's sync debug mode),
a profile of the steps (kernels, host and device time per step), inference with larger tiles, cuDNN's
autotuner on and off, and the step with the network compiled (``torch.compile``, CUDA graphs through "reduce-overhead").

    python benchmarks/gpu_check.py                          # CUDA, the reference budget
    python benchmarks/gpu_check.py --device cpu --steps 4 --predict-size 256 --budgets 2   # a smoke test

The reference budget: Noise2Void on scikit-image's camera with Gaussian noise of sigma 25 (seed 0),
1500 optimizer steps of batch 16, 64x64 patches, U-Net depth 2 with 32 filters, precision "auto"
(16-mixed on CUDA). Times are wall-clock with the device synchronised; the first fit of the process
warms it up (cuDNN autotuning, allocator) and is not reported. Prints one JSON line per measurement
and a markdown table at the end; ``--out`` also writes them to a folder (with the profile's
table in ``gpu_profile.txt``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from speed import camera_case, psnr, synchronise  # benchmarks/speed.py: the same camera case and timers

from n2v_estimator import Noise2VoidDenoiser

REFERENCE = dict(patch_size=64, batch_size=16, depth=2, n_filters=32, random_state=0, verbose=False)


def timed_fit(device, steps, noisy, n_devices=1):
    """A fit of ``steps`` steps (epochs of at most 50); its wall time and the denoiser."""
    per_epoch = min(50, steps)
    denoiser = Noise2VoidDenoiser(
        **REFERENCE,
        device=device,
        max_epochs=max(1, steps // per_epoch),
        steps_per_epoch=per_epoch,
        n_devices=n_devices,
    )
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


class Steps:
    """The estimator's own training loop on the reference work, run step by step for the probes."""

    def __init__(self, device, noisy):
        from n2v_estimator.data.patches import PatchSampler
        from n2v_estimator.fit.plan import make_plan

        estimator = Noise2VoidDenoiser(**REFERENCE, device=device, validation_fraction=0.0)
        estimator._validate_params()
        self.plan = make_plan(estimator.get_params(), noisy)
        self.sampler = PatchSampler(self.plan.train_images, self.plan.patch_shape, device=self.plan.device)

    def run(self, steps, model=None, forward=None):
        """``steps`` steps of one epoch (one loss read at its end); the wall time, device synchronised."""
        from n2v_estimator.fit.training import train

        model = self.plan.build_network() if model is None else model
        synchronise(str(self.plan.device))
        start = time.perf_counter()
        train(
            model,
            self.sampler,
            self.plan.masker,
            validation=[],
            max_epochs=1,
            steps_per_epoch=steps,
            batch_size=16,
            learning_rate=4e-4,
            device=self.plan.device,
            seed=0,
            precision=self.plan.precision,
            forward=forward,
        )
        synchronise(str(self.plan.device))
        return time.perf_counter() - start


def host_waits(steps, count):
    """How often ``count`` training steps make the host wait for the device (CUDA's sync debug mode
    warns at each such operation); the epoch's one loss read is among them."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            steps.run(count)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    waits = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
    return {"steps": count, "waits": len(waits), "first": sorted(set(waits))[:5]}


def profile(steps, count, device):
    """Kernels, host time and device time per step over ``count`` steps, and torch.profiler's table."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with torch_profile(activities=activities) as prof:
        seconds = steps.run(count)
    events = prof.key_averages()
    device_us = sum(getattr(e, "self_device_time_total", 0) or 0 for e in events)
    kernels = sum(e.count for e in events if (getattr(e, "self_device_time_total", 0) or 0) > 0)
    operations = sum(e.count for e in events if e.key.startswith("aten::"))
    sort = "self_device_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    return {
        "steps": count,
        "ms_per_step": round(1e3 * seconds / count, 3),
        "device_ms_per_step": round(device_us / 1e3 / count, 3),
        "kernels_per_step": round(kernels / count, 1),
        "aten_operations_per_step": round(operations / count, 1),
    }, events.table(sort_by=sort, row_limit=25)


def compiled(steps, count):
    """Steps/s with the network compiled in "reduce-overhead" mode (CUDA graphs), against eager, after
    a first compiled run that pays for the compilation."""
    model = steps.plan.build_network()
    forward = torch.compile(model, mode="reduce-overhead")
    start = time.perf_counter()
    steps.run(count, model=model, forward=forward)
    first = time.perf_counter() - start
    seconds = steps.run(count, model=model, forward=forward)
    eager = steps.run(count)
    return {
        "steps": count,
        "compile_and_first_run_s": round(first, 1),
        "compiled_steps_per_second": round(count / seconds, 1),
        "eager_steps_per_second": round(count / eager, 1),
    }


def cudnn_autotuned(steps, count):
    """Steps/s with cuDNN's autotuner on (``torch.backends.cudnn.benchmark``; the patches' shape is
    fixed) against off, each after a run that warms it up."""
    rates = {}
    for setting in (True, False):
        torch.backends.cudnn.benchmark = setting
        steps.run(min(count, 10))
        rates["on" if setting else "off"] = round(count / steps.run(count), 1)
    torch.backends.cudnn.benchmark = False
    return {"steps": count, "steps_per_second": rates}


def larger_tiles(denoiser, device, size, noisy, tiles):
    """``transform`` of a size^2 image with each tile side of ``tiles``: seconds and peak memory."""
    results = []
    for tile in tiles:
        seconds, peak = inference(denoiser.set_params(tile_size=tile), device, size, noisy)
        results.append(
            {
                "tile": tile,
                "seconds": round(seconds, 2),
                "megapixels_per_second": round(size**2 / 1e6 / seconds, 1),
                "peak_gpu_mb": None if peak is None else round(peak),
            }
        )
        print(json.dumps({"tiles": results[-1]}), flush=True)
    denoiser.set_params(tile_size=None)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--predict-size", type=int, default=4096)
    parser.add_argument("--budgets", type=int, nargs="+", default=[100, 200, 300, 500, 800])
    parser.add_argument("--target", type=float, default=27.0)
    parser.add_argument("--out", default=None, help="a folder for gpu_check.md, gpu_check.json and gpu_profile.txt")
    parser.add_argument("--tiles", type=int, nargs="+", default=[256, 512, 1024], help="tile sides tried for inference")
    parser.add_argument(
        "--probe-steps", type=int, default=50, help="steps of the wait count, profile and compile trial"
    )
    parser.add_argument(
        "--compile",
        choices=("auto", "yes", "no"),
        default="auto",
        help="try torch.compile(mode='reduce-overhead') (auto: on CUDA)",
    )
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu for a smoke test")
    clean, noisy = camera_case()
    results = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
    }
    timed_fit(args.device, min(args.steps, 20), noisy)  # warm-up, not reported

    seconds, denoiser = timed_fit(args.device, args.steps, noisy)
    results["fit"] = {
        "steps": args.steps,
        "seconds": round(seconds, 2),
        "steps_per_second": round(args.steps / seconds, 1),
        "psnr": round(psnr(denoiser.transform(noisy), clean), 2),
    }
    print(json.dumps({"fit": results["fit"]}), flush=True)

    seconds, peak = inference(denoiser, args.device, args.predict_size, noisy)
    results["inference"] = {
        "size": args.predict_size,
        "seconds": round(seconds, 2),
        "megapixels_per_second": round(args.predict_size**2 / 1e6 / seconds, 1),
        "peak_gpu_mb": None if peak is None else round(peak),
    }
    print(json.dumps({"inference": results["inference"]}), flush=True)

    curve = []
    for steps in args.budgets:
        seconds, fitted = timed_fit(args.device, steps, noisy)
        curve.append(
            {"steps": steps, "seconds": round(seconds, 2), "psnr": round(psnr(fitted.transform(noisy), clean), 2)}
        )
        print(json.dumps({"time_to_quality": curve[-1]}), flush=True)
        if curve[-1]["psnr"] >= args.target:
            break
    results["time_to_quality"] = curve

    if args.device.startswith("cuda") and torch.cuda.device_count() >= 2:
        seconds, denoiser = timed_fit("cuda", args.steps, noisy, n_devices=2)
        results["two_devices"] = {
            "steps": args.steps,
            "seconds": round(seconds, 2),
            "psnr": round(psnr(denoiser.transform(noisy), clean), 2),
        }
        print(json.dumps({"two_devices": results["two_devices"]}), flush=True)

    results["tiles"] = larger_tiles(denoiser, args.device, args.predict_size, noisy, args.tiles)
    steps = Steps(args.device, noisy)
    steps.run(min(args.probe_steps, 10))  # warm-up
    if args.device.startswith("cuda"):
        results["host_waits"] = host_waits(steps, args.probe_steps)
        print(json.dumps({"host_waits": results["host_waits"]}), flush=True)
        results["cudnn_benchmark"] = cudnn_autotuned(steps, args.probe_steps)
        print(json.dumps({"cudnn_benchmark": results["cudnn_benchmark"]}), flush=True)
    results["profile"], table = profile(steps, args.probe_steps, args.device)
    print(json.dumps({"profile": results["profile"]}), flush=True)
    if args.compile == "yes" or (args.compile == "auto" and args.device.startswith("cuda")):
        try:
            results["compiled"] = compiled(steps, args.probe_steps)
        except Exception as exc:  # a trial: its failure is a result too
            results["compiled"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        print(json.dumps({"compiled": results["compiled"]}), flush=True)

    reached = next((p["seconds"] for p in curve if p["psnr"] >= args.target), None)
    lines = [
        f"{results['device']}, torch {results['torch']}: reference budget ({args.steps} steps, batch 16, 64x64, "
        "depth 2, 32 filters, precision auto)",
        "",
        "| fit (s) | steps/s | PSNR (dB) | inference MP/s | peak GPU MB | seconds to "
        f"{args.target} dB | 2 devices: fit (s), PSNR |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| {results['fit']['seconds']} | {results['fit']['steps_per_second']} | {results['fit']['psnr']} | "
        f"{results['inference']['megapixels_per_second']} ({args.predict_size}^2 in {results['inference']['seconds']} s) | "
        f"{results['inference']['peak_gpu_mb'] or '-'} | {reached if reached is not None else '-'} | "
        + (
            f"{results['two_devices']['seconds']}, {results['two_devices']['psnr']}"
            if "two_devices" in results
            else "-"
        )
        + " |",
    ]
    lines += [
        "",
        "| tile | " + " | ".join(str(t["tile"]) for t in results["tiles"]) + " |",
        "| --- |" + " --- |" * len(results["tiles"]),
        "| MP/s (peak GPU MB) | "
        + " | ".join(f"{t['megapixels_per_second']} ({t['peak_gpu_mb'] or '-'})" for t in results["tiles"])
        + " |",
        "",
        f"Per step: {results['profile']['ms_per_step']} ms wall, {results['profile']['device_ms_per_step']} ms on "
        f"the device, {results['profile']['kernels_per_step']} kernels, {results['profile']['aten_operations_per_step']} "
        "operations; host waits: "
        + (str(results["host_waits"]["waits"]) + f" in {args.probe_steps} steps" if "host_waits" in results else "-")
        + "; compiled: "
        + json.dumps(results.get("compiled", "-"))
        + "; cuDNN autotuner: "
        + json.dumps(results.get("cudnn_benchmark", "-")),
    ]
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
        (out / "gpu_check.json").write_text(json.dumps(results, indent=1) + "\n")
        (out / "gpu_profile.txt").write_text(table + "\n")


if __name__ == "__main__":
    main()
