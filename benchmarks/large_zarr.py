"""Denoise a 16384x16384 float32 zarr image (1 GiB) through the command line, with bounded memory.

Writes ``noisy.zarr`` chunk by chunk (scikit-image's camera tiled, Gaussian noise
sigma 25, chunks of 1024x1024), fits a model on it with ``n2v-estimator fit``
(patches read on demand), denoises it with ``n2v-estimator transform`` into
``denoised.zarr``, and reports each command's peak resident memory (from
``wait4``) and time, and how far a window of the result lies from the
in-memory ``transform`` of a crop around it (away from the crop's border),
both in float32 (``--precision 32``: bfloat16 results depend on the tile
layout at about 1e-2 of the range).

    python benchmarks/large_zarr.py --workdir /tmp/large --side 16384

Needs the extras ``[zarr,dask]`` and the console script (``pip install -e .``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
from skimage import data


def run(command):
    """Run a command; return its wall seconds and peak resident memory in MiB."""
    start = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{command[:2]} failed with status {status}")
    return round(time.perf_counter() - start, 1), round(usage.ru_maxrss / 1024, 1)


def write_noisy(path, side, chunk):
    import zarr

    tile = np.tile(data.camera().astype(np.float32), (chunk // 512 + 1, chunk // 512 + 1))[:chunk, :chunk]
    array = zarr.create_array(store=str(path), shape=(side, side), chunks=(chunk, chunk), dtype="float32")
    for i in range(0, side, chunk):
        for j in range(0, side, chunk):
            rng = np.random.default_rng(i * side + j)
            array[i : i + chunk, j : j + chunk] = tile + rng.normal(0, 25, tile.shape).astype(np.float32)
    return array


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/n2v-large")
    parser.add_argument("--side", type=int, default=16384)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=100, help="training steps (the check is about memory)")
    parser.add_argument("--precision", default="32", help="of transform; bf16 results depend on the tiling at 1e-2")
    parser.add_argument("--reuse", action="store_true", help="keep the workdir's noisy.zarr and model (transform only)")
    args = parser.parse_args()
    work = Path(args.workdir)
    noisy, model, denoised = work / "noisy.zarr", work / "model.safetensors", work / "denoised.zarr"
    result = {"side": args.side, "chunk": args.chunk, "gib": round(args.side**2 * 4 / 2**30, 2)}
    if args.reuse:
        import zarr

        array = zarr.open_array(str(noisy), mode="r")
        shutil.rmtree(denoised, ignore_errors=True)
    else:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        start = time.perf_counter()
        array = write_noisy(noisy, args.side, args.chunk)
        result["write_seconds"] = round(time.perf_counter() - start, 1)
        epochs = max(1, args.steps // 50)
        result["fit_seconds"], result["fit_peak_mib"] = run(
            [
                "n2v-estimator",
                "fit",
                str(noisy),
                "--model",
                str(model),
                "--max-epochs",
                str(epochs),
                "--steps-per-epoch",
                str(min(50, args.steps)),
                "--random-state",
                "0",
                "--quiet",
            ]
        )
    result["transform_seconds"], result["transform_peak_mib"] = run(
        [
            "n2v-estimator",
            "transform",
            "--model",
            str(model),
            str(noisy),
            "--output",
            str(denoised),
            "--precision",
            args.precision,
            "--quiet",
        ]
    )

    import zarr

    from n2v_estimator import Noise2VoidDenoiser

    denoiser = Noise2VoidDenoiser.load(model).set_params(precision=args.precision)
    out = zarr.open(str(denoised), mode="r")
    out = out["0"] if hasattr(out, "group_keys") else out
    # A window across chunk borders; the crop starts on the U-Net's pooling grid (a multiple of
    # 2**depth), as the whole image does: max-pooling is not shift-equivariant.
    centre, half, margin = args.side // 2 + 36, 128, 96
    window = (slice(centre - half, centre + half),) * 2
    crop = (slice(centre - half - margin, centre + half + margin),) * 2
    expected = denoiser.transform(np.asarray(array[crop]))[margin:-margin, margin:-margin]
    found = np.asarray(out[window])
    value_range = float(expected.max() - expected.min())
    result["window_max_abs_diff_over_range"] = float(np.abs(found - expected).max() / value_range)
    result["window_max_rel_diff"] = float(np.max(np.abs(found - expected) / np.maximum(np.abs(expected), 1.0)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
