"""What a blind-spot network (``blind_spot="network"``) costs against the masked U-Net, in one process.

    python benchmarks/blind_spot_cost.py --rounds 5

One torch thread, CPU, the reference network (depth 2, 32 filters, batch 16, 64x64
patches) in the default precision of this machine and in float32. Rounds interleave
the settings; medians are reported, and ratios to plain (masked) Noise2Void:

- a training step (``train`` on fixed patches: masking, forward, loss, backward, Adam);
- ``transform`` of camera (512x512): plain N2V, probabilistic N2V with the masked
  U-Net (16 masked passes for its blind prior) and with the blind-spot network (one pass).

Prints one JSON line; ``--out`` appends it to a file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from skimage import data

from n2v_estimator import Noise2VoidDenoiser
from n2v_estimator.runtime.compute import resolve_precision

BASE = dict(
    patch_size=64,
    batch_size=16,
    depth=2,
    n_filters=32,
    max_epochs=1,
    steps_per_epoch=2,
    random_state=0,
    device="cpu",
    verbose=False,
    validation_fraction=0,
)
SETTINGS = {
    "plain": dict(),
    "probabilistic_mask": dict(noise_model="gaussian"),
    "probabilistic_network": dict(noise_model="gaussian", blind_spot="network"),
    "plain_network": dict(blind_spot="network"),
}


def seconds(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6, help="training steps timed per round (one fit)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    clean = data.camera().astype(np.float64)
    noisy = (clean + np.random.default_rng(0).normal(0, 25, clean.shape)).astype(np.float32)
    default = resolve_precision("auto", torch.device("cpu"), 2)
    fitted = {name: Noise2VoidDenoiser(**BASE, **extra).fit(noisy) for name, extra in SETTINGS.items()}
    step, predict = {}, {}
    for _ in range(args.rounds):
        for precision in sorted({default, "32"}):
            for name, extra in SETTINGS.items():
                if name == "probabilistic_mask":
                    continue  # trains as plain N2V does, plus the likelihood's few terms
                model = Noise2VoidDenoiser(**{**BASE, "steps_per_epoch": args.steps, "precision": precision}, **extra)
                model.fit(noisy[:256, :256])
                # The fit's own record: the epoch's seconds over its steps (no validation).
                step.setdefault((name, precision), []).append(model.history_[0]["seconds"] / args.steps)
        for name, model in fitted.items():
            predict.setdefault(name, []).append(seconds(lambda model=model: model.transform(noisy)))
    result = {"threads": 1, "default_precision": default, "rounds": args.rounds}
    for (name, precision), values in step.items():
        result[f"step_seconds_{name}_{precision}"] = round(statistics.median(values), 3)
    for precision in sorted({default, "32"}):
        plain = result[f"step_seconds_plain_{precision}"]
        for name in ("plain_network", "probabilistic_network"):
            result[f"step_ratio_{name}_{precision}"] = round(result[f"step_seconds_{name}_{precision}"] / plain, 2)
    for name, values in predict.items():
        result[f"transform_seconds_{name}"] = round(statistics.median(values), 2)
    for name in SETTINGS:
        result[f"transform_ratio_{name}"] = round(
            result[f"transform_seconds_{name}"] / result["transform_seconds_plain"], 2
        )
    line = json.dumps(result)
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
