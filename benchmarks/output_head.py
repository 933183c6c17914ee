"""The float32 output head against the bfloat16 one, on camera, in one process.

    python benchmarks/output_head.py                     # --rounds 5 --max-epochs 4
    python benchmarks/output_head.py --precision bf16    # where "auto" resolves to "32"

Under ``precision="auto"`` (bfloat16 autocast on a CPU with native bfloat16) the
network's last 1x1 convolution, residual and prior-scale softplus run in float32
(:meth:`n2v_estimator.nets.unet.UNet._output`). The bfloat16 head this replaced is put
back by swapping that method for one that runs under the caller's autocast, the
state before the change; everything else is the same code.

The case: ``Noise2VoidDenoiser(max_epochs=4, random_state=0)`` on scikit-image's
camera with Gaussian noise of sigma 25 (``numpy.random.default_rng(0)``), 1 torch
thread. Reported per head: distinct values of ``transform`` and its PSNR against
the clean image, for a fit and a transform with that head, and for the float32
head's fit transformed with either head; then the 512x512 ``transform`` time with
either head, repetitions interleaved, medians.

On a CPU without native bfloat16 (AVX-512 BF16 or AMX) ``"auto"`` computes in
float32 and the two heads agree; ``--precision bf16`` forces bfloat16 there, emulated
and slower than float32, so its times are not those of a native CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np
import torch
from skimage import data

from n2v_estimator import Noise2VoidDenoiser
from n2v_estimator.nets.blindnet import BlindSpotNetwork
from n2v_estimator.nets.unet import UNet, _prior_scale
from n2v_estimator.runtime.compute import resolve_precision

FLOAT32_HEAD = UNet._output


def _autocast_head(self, features, x):
    """The head as it was: in whatever precision autocast computes (bfloat16 here)."""
    y = self.head(features)
    y = y[(slice(None), slice(None)) + tuple(slice(0, s) for s in x.shape[2:])]
    if self.outputs == 2:
        y = y.unflatten(1, (-1, 2))
        y, scale = y[:, :, 0], y[:, :, 1]
    if self.residual:
        y = y + x
    if self.outputs == 2:
        y = torch.cat([y, _prior_scale(scale.float()).to(y.dtype)], dim=1)
    return y


@contextlib.contextmanager
def head(kind):
    """Run the networks with the ``"float32"`` head (the package's) or the ``"bfloat16"`` one."""
    method = FLOAT32_HEAD if kind == "float32" else _autocast_head
    UNet._output = BlindSpotNetwork._output = method
    try:
        yield
    finally:
        UNet._output = BlindSpotNetwork._output = FLOAT32_HEAD


def psnr(estimate, clean):
    return float(10 * np.log10(255.0**2 / np.mean((np.asarray(estimate, np.float64) - clean) ** 2)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed transforms per head (interleaved)")
    parser.add_argument("--max-epochs", type=int, default=4)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(
        f"torch {torch.__version__}, 1 thread, precision {args.precision} -> {resolve_precision(args.precision, 'cpu')}"
    )

    clean = data.camera().astype(np.float64)
    noisy = clean + np.random.default_rng(0).normal(0, 25, clean.shape)
    print(f"noisy input: {np.unique(noisy).size} distinct values, PSNR {psnr(noisy, clean):.2f} dB")

    fitted = {}
    for kind in ("float32", "bfloat16"):
        with head(kind):
            start = time.perf_counter()
            fitted[kind] = Noise2VoidDenoiser(
                max_epochs=args.max_epochs, random_state=0, precision=args.precision, verbose=False
            ).fit(noisy)
            seconds = time.perf_counter() - start
            out = fitted[kind].transform(noisy)
        print(
            f"fit and transform with the {kind} head: {np.unique(out).size} distinct values, "
            f"PSNR {psnr(out, clean):.2f} dB (fit {seconds:.0f} s)"
        )
    for kind in ("float32", "bfloat16"):
        with head(kind):
            out = fitted["float32"].transform(noisy)
        print(
            f"the float32-head fit transformed with the {kind} head: {np.unique(out).size} distinct values, "
            f"PSNR {psnr(out, clean):.2f} dB"
        )

    times = {"float32": [], "bfloat16": []}
    for _ in range(args.rounds):
        for kind, seconds in times.items():
            with head(kind):
                start = time.perf_counter()
                fitted["float32"].transform(noisy)
                seconds.append(time.perf_counter() - start)
    for kind, seconds in times.items():
        print(
            f"transform 512x512 with the {kind} head: median {statistics.median(seconds):.3f} s "
            f"({', '.join(f'{s:.3f}' for s in seconds)})"
        )
    ratio = statistics.median(times["float32"]) / statistics.median(times["bfloat16"])
    print(f"float32 head / bfloat16 head transform time: {ratio:.3f}")


if __name__ == "__main__":
    main()
