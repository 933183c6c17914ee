"""Hand-crafted model files against ``Noise2VoidDenoiser.load``: how long each takes to be
refused, the peak memory it costs, and what is raised.

    python benchmarks/load_attacks.py                # every attack, one JSON line each
    python benchmarks/load_attacks.py --only deep_json fifo

Each attack runs in a fresh subprocess (``ru_maxrss`` is then that attack's own peak),
after a legitimate model of the same kind was loaded there, so that the peak shown
above the baseline is what the attack adds.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

ATTACKS = {}


def attack(fn):
    ATTACKS[fn.__name__] = fn
    return fn


def _header_file(path, header, data=b""):
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data)


def _document(saved):
    from safetensors import safe_open

    with safe_open(saved, framework="pt") as f:
        return f.metadata()


def _many_tensors(folder, saved, n, name):
    header = {"__metadata__": _document(saved)}
    header.update({f"t{i}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]} for i in range(n)})
    path = os.path.join(folder, name)
    _header_file(path, header, b"\0" * n)
    return path


@attack
def many_small_tensors(folder, saved):
    """900k one-byte tensors beside a valid document (a 62 MB file)."""
    return _many_tensors(folder, saved, 900_000, "many.safetensors")


@attack
def many_small_tensors_under_the_header_cap(folder, saved):
    """55k one-byte tensors: a 3.9 MB header, under the 4 MiB cap, so it is parsed."""
    return _many_tensors(folder, saved, 55_000, "many_under_cap.safetensors")


@attack
def huge_header_zero_size_tensors(folder, saved):
    """1.65M zero-size tensors: a 98 MB header."""
    header = {"__metadata__": _document(saved)}
    header.update({f"tensor_{i:08d}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(1_650_000)})
    path = os.path.join(folder, "zero.safetensors")
    _header_file(path, header)
    return path


@attack
def deep_json(folder, saved):
    """The document nested 100 000 lists deep."""
    metadata = _document(saved)
    document = json.loads(metadata["n2v_estimator"])
    document["fitted"]["history"] = "@@"
    text = json.dumps(document).replace('"@@"', "[" * 100_000 + "]" * 100_000)
    path = os.path.join(folder, "deep.safetensors")
    _header_file(path, {"__metadata__": {"n2v_estimator": text}})
    return path


@attack
def overflowing_3d_network(folder, saved):
    """A 3D network whose settings are each allowed but whose size overflows."""
    metadata = _document(saved)
    document = json.loads(metadata["n2v_estimator"])
    document["fitted"]["network"].update(ndim=3, depth=8, n_filters=4096, kernel_size=2**20 + 1)
    document["fitted"].update(spatial_ndim=3, patch_shape=[8, 16, 16])
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(saved, framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    path = os.path.join(folder, "overflow.safetensors")
    save_file(tensors, path, metadata={"n2v_estimator": json.dumps(document)})
    return path


def _tampered_tensor(folder, saved, name, change):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(saved, framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    key = next(k for k in tensors if k.endswith(name))
    change(tensors[key])
    path = os.path.join(folder, f"{name}.safetensors")
    save_file(tensors, path, metadata=metadata)
    return path


@attack
def nan_bias(folder, saved):
    """A NaN in the head's bias."""
    return _tampered_tensor(folder, saved, "head.bias", lambda t: t.fill_(float("nan")))


@attack
def negative_running_var(folder, saved):
    """A batch-norm variance below zero."""
    return _tampered_tensor(folder, saved, "running_var", lambda t: t.fill_(-1.0))


def _tampered_document(folder, saved, name, change):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(saved, framework="pt") as f:
        document = json.loads(f.metadata()["n2v_estimator"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(document)
    path = os.path.join(folder, f"{name}.safetensors")
    save_file(tensors, path, metadata={"n2v_estimator": json.dumps(document)})
    return path


@attack
def zero_std(folder, saved):
    """std = 0: every output pixel would be the mean."""
    return _tampered_document(folder, saved, "zero_std", lambda d: d["fitted"].update(std=[0.0]))


@attack
def nan_mean(folder, saved):
    """mean = NaN (written by hand: JSON has no NaN, Python's json module writes one)."""
    return _tampered_document(folder, saved, "nan_mean", lambda d: d["fitted"].update(mean=[float("nan")]))


@attack
def meta_device(folder, saved):
    """device="meta": transform would destroy the weights."""
    return _tampered_document(folder, saved, "meta", lambda d: d["params"].update(device="meta"))


@attack
def fifo(folder, saved):
    """A named pipe where the model should be (load used to block forever)."""
    path = os.path.join(folder, "pipe.safetensors")
    os.mkfifo(path)
    return path


@attack
def directory(folder, saved):
    """A directory where the model should be."""
    path = os.path.join(folder, "dir.safetensors")
    os.mkdir(path)
    return path


_CHILD = r"""
import json, resource, sys, time
import numpy as np
from n2v_estimator import Noise2VoidDenoiser
saved, path = sys.argv[1], sys.argv[2]
Noise2VoidDenoiser.load(saved)  # the baseline: a legitimate model of the same kind
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    model = Noise2VoidDenoiser.load(path)
    outcome = "loaded"
    try:
        out = model.transform(np.random.default_rng(0).normal(size=(32, 32)))
        outcome += ", transform finite" if np.isfinite(out).all() else ", transform NON-FINITE"
    except Exception as exc:
        outcome += f", transform raised {type(exc).__name__}: {str(exc)[:80]}"
except BaseException as exc:
    outcome = f"{type(exc).__name__}: {str(exc)[:100]}"
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": round(seconds, 3), "extra_peak_mb": round((peak - base) / 1024, 1), "outcome": outcome}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(ATTACKS))
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    import numpy as np

    from n2v_estimator import Noise2VoidDenoiser

    with tempfile.TemporaryDirectory() as folder:
        saved = os.path.join(folder, "model.safetensors")
        X = np.random.default_rng(0).normal(size=(48, 48))
        Noise2VoidDenoiser(
            patch_size=16,
            batch_size=4,
            max_epochs=1,
            steps_per_epoch=2,
            depth=2,
            n_filters=8,
            random_state=0,
            device="cpu",
        ).fit(X).save(saved)
        for name in args.only or ATTACKS:
            path = ATTACKS[name](folder, saved)
            try:
                run = subprocess.run(
                    [sys.executable, "-c", _CHILD, saved, path], capture_output=True, text=True, timeout=args.timeout
                )
                line = (
                    run.stdout.strip().splitlines()[-1]
                    if run.stdout.strip()
                    else json.dumps({"error": run.stderr[-300:]})
                )
                result = json.loads(line)
            except subprocess.TimeoutExpired:
                result = {"seconds": f">{args.timeout}", "outcome": "still blocked at the timeout"}
            print(json.dumps({"attack": name, **result}), flush=True)


if __name__ == "__main__":
    main()
