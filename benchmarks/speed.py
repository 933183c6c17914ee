"""Speed of n2v-estimator, side by side with careamics, on the same fixed work in one run.

    python benchmarks/speed.py                                   # ours only
    python benchmarks/speed.py --careamics-python .venv-careamics/bin/python
    python benchmarks/speed.py --device cuda --careamics-python python3    # both on the GPU

careamics 0.3.5 pins torch 2.11 through torchvision, so it lives in its own virtual
environment and runs in a subprocess (``benchmarks/_careamics_worker.py``) driven from
here; make one with::

    python -m venv .venv-careamics && .venv-careamics/bin/pip install careamics==0.3.5

The fixed work (both systems): Noise2Void on scikit-image's camera with Gaussian noise of
sigma 25 (seed 0), U-Net depth 2 with 32 filters, batch 16, 64x64 patches, 0.198 % blind
spots for the step timings, 1 torch thread in every process, on the CPU, or (``--device cuda``)
on one GPU, every timer read after the GPU has finished (ours: float32 and the precision
``"auto"`` picks, ``bf16`` on CPUs with native bfloat16 and ``16-mixed`` on CUDA; careamics: its
default float32).

Measured, with repetitions of the two systems interleaved and medians reported:

- training steps/s (our precisions, both channels-last; careamics
  float32, its own masking, loss and Adam step);
- tiled inference megapixels/s on a 2048x2048 image (tiles 256, overlap 48);
- peak resident memory predicting a 4096x4096 float32 image (a fresh process each; on CUDA
  also the peak GPU memory allocated);
- time to quality: training wall time until camera reaches 27.0 dB (ours, in the precision
  ``"auto"`` gives on this machine: a fit of each budget in ``--budgets``, as a user picks one, evaluated once at
  its end; careamics: one run with a constant learning rate, evaluated every 25 steps off
  the clock).

Writes ``benchmarks/results/speed.md`` (a markdown table), ``speed.json`` and ``speed.png``
(PSNR against training seconds for each system).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXED = dict(patch_size=64, batch_size=16, depth=2, n_filters=32, random_state=0, verbose=False)


def precisions(device):
    """Our precisions measured on ``device``: float32, then what ``"auto"`` picks there, the default a
    user gets (bfloat16 only on CPUs that run it natively: emulated, it is ten times slower)."""
    from n2v_estimator.runtime.compute import resolve_precision

    return tuple(dict.fromkeys(("32", resolve_precision("auto", device))))


def synchronise(device):
    """Wait for a CUDA device's queued work (timers are read after it)."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def camera_case():
    import numpy as np
    from skimage import data

    clean = data.camera().astype(np.float64)
    noisy = clean + np.random.default_rng(0).normal(0, 25, clean.shape)
    return clean, noisy.astype(np.float32)


def psnr(estimate, clean):
    import numpy as np

    return float(10 * np.log10(255.0**2 / np.mean((np.asarray(estimate, np.float64) - clean) ** 2)))


class Ours:
    """Our training loop and tiled predictor on the fixed work, one precision."""

    def __init__(self, precision, device="cpu"):
        import torch

        from n2v_estimator import Noise2VoidDenoiser
        from n2v_estimator.fit.plan import make_plan

        _, noisy = camera_case()
        self.device, self.precision = device, precision
        estimator = Noise2VoidDenoiser(
            **FIXED, device=device, precision=precision, masked_pixel_percentage=0.198, validation_fraction=0.0
        )
        estimator._validate_params()
        self.plan = make_plan(estimator.get_params(), noisy)
        self.model = self.plan.build_network()
        # A fitted estimator for prediction: the weights' values do not change its speed.
        self.estimator = estimator.set_params(max_epochs=1, steps_per_epoch=2).fit(noisy[:128, :128])
        self.torch = torch

    def train(self, steps):
        from n2v_estimator.data.patches import PatchSampler
        from n2v_estimator.fit.training import train

        sampler = PatchSampler(self.plan.train_images, self.plan.patch_shape, device=self.plan.device)
        synchronise(self.device)
        start = time.perf_counter()
        train(
            self.model,
            sampler,
            self.plan.masker,
            validation=[],
            max_epochs=1,
            steps_per_epoch=steps,
            batch_size=16,
            learning_rate=1e-3,
            device=self.plan.device,
            seed=0,
            precision=self.plan.precision,
        )
        synchronise(self.device)
        return time.perf_counter() - start

    def predict(self, size):
        import numpy as np

        _, noisy = camera_case()
        image = np.tile(noisy, (size // 512 + 1, size // 512 + 1))[:size, :size]
        synchronise(self.device)
        start = time.perf_counter()
        self.estimator.transform(image)
        return time.perf_counter() - start  # transform returns host memory: the GPU has finished


_PEAK_CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
torch.set_num_threads(1)
def peak_mb():  # VmHWM starts afresh at exec; ru_maxrss can carry the parent's peak
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
from n2v_estimator import Noise2VoidDenoiser
path, size, precision, device = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
est = Noise2VoidDenoiser.load(path).set_params(precision=precision, device=device, verbose=False)
image = np.random.default_rng(1).normal(100, 25, (size, size)).astype(np.float32)
base = peak_mb()
start = time.perf_counter()
est.transform(image)
gpu = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
print(json.dumps({"seconds": time.perf_counter() - start, "baseline_rss_mb": base, "peak_rss_mb": peak_mb(),
                  "peak_gpu_mb": gpu}))
"""


def our_peak_rss(estimator, size, precision, device="cpu"):
    """Peak resident memory of a fresh process that loads the model and predicts a size x size image."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.safetensors")
        estimator.save(path)
        out = subprocess.run(
            [sys.executable, "-c", _PEAK_CHILD, path, str(size), precision, device],
            capture_output=True,
            text=True,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
            check=True,
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def our_time_to_quality(budgets, target, precision, device="cpu"):
    """Fit each budget from scratch (the schedule fits the budget) and evaluate at its end."""
    from n2v_estimator import Noise2VoidDenoiser

    clean, noisy = camera_case()
    curve = []
    for steps in budgets:
        epochs = max(1, steps // 25)
        estimator = Noise2VoidDenoiser(
            **FIXED, device=device, precision=precision, max_epochs=epochs, steps_per_epoch=steps // epochs
        )
        synchronise(device)
        start = time.perf_counter()
        estimator.fit(noisy)
        synchronise(device)
        seconds = time.perf_counter() - start
        curve.append({"steps": steps, "train_seconds": seconds, "psnr": psnr(estimator.transform(noisy), clean)})
        print(json.dumps({"system": f"ours-{precision}", **curve[-1]}), flush=True)
        if curve[-1]["psnr"] >= target:
            break
    return curve


class Careamics:
    """The careamics worker, in its own environment, driven line by line."""

    def __init__(self, python, device="cpu"):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.python, self.device = python, device
        self.process = subprocess.Popen(
            [python, str(HERE / "_careamics_worker.py"), "serve", "--device", device],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def ask(self, **command):
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def train(self, steps):
        return self.ask(cmd="train", steps=steps)["seconds"]

    def predict(self, size):
        return self.ask(cmd="predict", size=size, tile=256, overlap=48)["seconds"]

    def peak_rss(self, size):
        out = subprocess.run(
            [
                self.python,
                str(HERE / "_careamics_worker.py"),
                "peak-rss",
                "--size",
                str(size),
                "--tile",
                "256",
                "--overlap",
                "48",
                "--device",
                self.device,
            ],
            capture_output=True,
            text=True,
            check=True,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    def time_to_quality(self, target, max_steps):
        out = subprocess.Popen(
            [
                self.python,
                str(HERE / "_careamics_worker.py"),
                "time-to-quality",
                "--target",
                str(target),
                "--eval-every",
                "25",
                "--max-steps",
                str(max_steps),
                "--perc",
                "0.198",
                "--device",
                self.device,
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
        )
        curve = []
        for line in out.stdout:
            record = json.loads(line)
            if "psnr" in record:
                curve.append(record)
                print(json.dumps({"system": "careamics", **record}), flush=True)
        out.wait()
        return curve

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.process.stdin.close()
            self.process.wait()


def interleaved(systems, measure, rounds):
    """``measure(system)`` for every system, round after round; medians per system."""
    times = {name: [] for name in systems}
    for _ in range(rounds):
        for name, system in systems.items():
            times[name].append(measure(system))
    return {name: statistics.median(values) for name, values in times.items()}


def first_reaching(curve, target):
    return next((point["train_seconds"] for point in curve if point["psnr"] >= target), None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--careamics-python",
        default=os.environ.get("N2V_CAREAMICS_PYTHON"),
        help="python of a venv with careamics 0.3.5 (default: $N2V_CAREAMICS_PYTHON; none: ours only)",
    )
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed repetition")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--predict-size", type=int, default=2048)
    parser.add_argument("--memory-size", type=int, default=4096)
    parser.add_argument("--target", type=float, default=27.0)
    parser.add_argument("--budgets", type=int, nargs="+", default=[50, 100, 150, 200, 300])
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where both systems run")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    ours = {f"ours-{precision}": Ours(precision, args.device) for precision in precisions(args.device)}
    systems = dict(ours)
    if args.careamics_python:
        systems["careamics"] = Careamics(args.careamics_python, args.device)
    for system in systems.values():  # warm-up, untimed
        system.train(2)
        system.predict(512)
    step = {k: v / args.steps for k, v in interleaved(systems, lambda s: s.train(args.steps), args.rounds).items()}
    print(json.dumps({"seconds_per_step": step}), flush=True)
    megapixels = args.predict_size**2 / 1e6
    predict = {
        k: megapixels / v
        for k, v in interleaved(systems, lambda s: s.predict(args.predict_size), max(2, args.rounds // 2)).items()
    }
    print(json.dumps({"megapixels_per_second": predict}), flush=True)
    memory = {
        name: our_peak_rss(system.estimator, args.memory_size, system.precision, args.device)
        for name, system in ours.items()
    }
    if "careamics" in systems:
        memory["careamics"] = systems["careamics"].peak_rss(args.memory_size)
        systems["careamics"].close()
    print(json.dumps({"peak_rss": memory}), flush=True)
    curves = {}
    if not args.skip_quality:
        default = f"ours-{precisions(args.device)[-1]}"  # what a user gets here
        curves[default] = our_time_to_quality(args.budgets, args.target, ours[default].precision, args.device)
        if "careamics" in systems:
            curves["careamics"] = systems["careamics"].time_to_quality(args.target, 1500)
    write_results(Path(args.out), args, step, predict, memory, curves)


def write_results(out, args, step, predict, memory, curves):
    import torch

    out.mkdir(parents=True, exist_ok=True)
    reference = "careamics" if "careamics" in step else "ours-32"
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, 1 thread"
    )
    if args.device == "cuda":
        machine = f"{torch.cuda.get_device_name()}, {machine}"
    gpu = args.device == "cuda"
    lines = [
        f"Measured by `python benchmarks/speed.py` on {time.strftime('%Y-%m-%d')} ({machine}); "
        f"medians of {args.rounds} interleaved rounds of {args.steps} steps. Ratios are against {reference}.",
        "",
        "| system | s/step | steps/s | x | inference MP/s (2048^2) | x | peak RSS 4096^2 (MB) | seconds to "
        f"{args.target} dB |" + (" peak GPU MB 4096^2 |" if gpu else ""),
        "| --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if gpu else ""),
    ]
    for name in step:
        reach = first_reaching(curves.get(name, []), args.target)
        lines.append(
            f"| {name} | {step[name]:.3f} | {1 / step[name]:.2f} | {step[reference] / step[name]:.2f} | "
            f"{predict[name]:.3f} | {predict[name] / predict[reference]:.2f} | {memory[name]['peak_rss_mb']:.0f} "
            f"(+{memory[name]['peak_rss_mb'] - memory[name]['baseline_rss_mb']:.0f} for the prediction) | "
            f"{'-' if reach is None else f'{reach:.1f}'} |"
            + (f" {memory[name].get('peak_gpu_mb') or 0:.0f} |" if gpu else "")
        )
    stem = "speed" if args.device == "cpu" else f"speed-{args.device}"
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (out / f"{stem}.json").write_text(
        json.dumps(
            {"seconds_per_step": step, "megapixels_per_second": predict, "peak_rss": memory, "curves": curves}, indent=1
        )
    )
    print("\n".join(lines))
    if curves:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for name, curve in curves.items():
            ax.plot([p["train_seconds"] for p in curve], [p["psnr"] for p in curve], "o-", label=name)
        ax.axhline(args.target, color="grey", linestyle=":", label=f"{args.target} dB")
        ax.set_xlabel(f"training wall-clock seconds ({'GPU' if gpu else '1 thread'})")
        ax.set_ylabel("PSNR on camera, Gaussian sigma 25 (dB)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"{stem}.png", dpi=120)


if __name__ == "__main__":
    main()
