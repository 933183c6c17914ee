"""Crafted image files, zarr stores and zoo packages against the command line and the API.

Each case runs in a fresh process: the package and torch are imported first (the
baseline), then the call; the script prints the outcome (exit status or exception
and the first words of its message), the seconds and the memory the call added
(peak resident set size over the baseline), as issue "Files from strangers" asks:
every case refused or handled in under 2 seconds and 200 MB.

    python benchmarks/file_attacks.py [--zarr2-python PATH] [--only TEXT]

``--zarr2-python``: a Python with zarr 2 and numcodecs < 0.14 (where the pickle codec
still unpickles), for the zarr-2 code-execution cases; ``.ci/run`` shows how to make one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

MODEL_SNIPPET = """
import numpy as np
from n2v_estimator import Noise2VoidDenoiser
image = np.random.default_rng(0).normal(100, 10, (64, 64)).astype(np.float32)
Noise2VoidDenoiser(max_epochs=1, steps_per_epoch=2, batch_size=2, patch_size=32, n_filters=4, depth=1,
                   verbose=False).fit(image).save({path!r})
"""

RUNNER = """
import json, resource, sys, time
import numpy as np, torch
import n2v_estimator, n2v_estimator.cli
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
{body}
    outcome = "ok" if result in (None, 0) else f"exit {{result}}"
except Exception as exc:
    outcome = f"{{type(exc).__name__}}: {{' '.join(str(exc).split())[:110]}}"
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"outcome": outcome, "seconds": seconds, "added_mb": (peak - baseline) / 1024}}))
"""


def _zarr_v2(path, shape, chunks, dtype="<f4", compressor=None, filters=None):
    os.makedirs(path)
    meta = {
        "zarr_format": 2,
        "shape": list(shape),
        "chunks": list(chunks),
        "dtype": dtype,
        "compressor": compressor,
        "fill_value": 0,
        "order": "C",
        "filters": filters,
    }
    Path(path, ".zarray").write_text(json.dumps(meta))
    return path


def make_cases(folder, model):
    """(name, python body run in the subprocess) for every crafted input."""
    import tifffile

    folder = Path(folder)
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
        '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint8" SizeX="64" SizeY="64" '
        'SizeZ="200000000" SizeC="1" SizeT="1"><TiffData/></Pixels></Image></OME>'
    )
    tifffile.imwrite(folder / "ome_sizez.ome.tif", np.zeros((64, 64), np.uint8), description=xml, metadata=None)
    tifffile.imwrite(folder / "deflated.tif", np.zeros((64, 64), np.float32), compression="zlib")
    raw = bytearray((folder / "deflated.tif").read_bytes())
    with tifffile.TiffFile(folder / "deflated.tif") as tif:
        tags = tif.pages.first.tags
        places = [(tags[n].valueoffset, tags[n].dtype) for n in ("ImageWidth", "ImageLength", "RowsPerStrip")]
    for offset, kind in places:
        size = 2 if kind == 3 else 4
        raw[offset : offset + size] = (65535).to_bytes(size, "little")
    (folder / "deflated.tif").write_bytes(bytes(raw))
    _zarr_v2(folder / "huge.zarr", (10**9, 10**9), (1024, 1024))
    _zarr_v2(folder / "tiny_chunks.zarr", (10**6, 10**6), (1, 1))
    np.lib.format.open_memmap(folder / "sparse.npy", "w+", np.float32, (20000, 20000))
    cases = []
    for name in ("ome_sizez.ome.tif", "deflated.tif", "huge.zarr", "tiny_chunks.zarr", "sparse.npy"):
        path = str(folder / name)
        cases.append(
            (
                f"transform {name}",
                f"result = n2v_estimator.cli.main(['transform', '--model', {str(model)!r}, "
                f"{path!r}, '--output', {str(folder / 'out.tif')!r}, '--quiet'])",
            )
        )
        cases.append(
            (
                f"fit {name}",
                f"result = n2v_estimator.cli.main(['fit', {path!r}, '--model', "
                f"{str(folder / 'new.safetensors')!r}, '--quiet', '--max-epochs', '1'])",
            )
        )
    cases.append(
        (
            "export --test-image huge.zarr",
            f"result = n2v_estimator.cli.main(['export', '--model', "
            f"{str(model)!r}, '--test-image', {str(folder / 'huge.zarr')!r}, '--output', "
            f"{str(folder / 'p.zip')!r}, '--name', 'attack', '--description', 'x', '--author', 'x'])",
        )
    )
    cases += _n2v_cases(folder)
    cases += _zoo_source_cases(folder)
    cases += _metadata_cases(folder, model)
    cases += _torchrun_cases(folder)
    params = {
        "learning_rate=1e300": "learning_rate=1e300",
        "batch_size=2**63": "batch_size=2**63",
        "batch_size=10**9": "batch_size=10**9",
        "kernel_size=100001": "kernel_size=100001",
        "n_filters=10**6": "n_filters=10**6",
        "struct_mask 3001x3001": "struct_mask=np.ones((3001, 3001))",
    }
    for name, setting in params.items():
        cases.append(
            (
                f"fit({name})",
                "result = n2v_estimator.Noise2VoidDenoiser(max_epochs=1, verbose=False, "
                f"{setting}).fit(np.random.default_rng(0).normal(size=(64, 64)))",
            )
        )
    return cases


N2V_FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "n2v_models" / "n2v_2d"


def _n2v_cases(folder):
    """Crafted n2v model folders (a copy of a real one, altered) through ``import-n2v``."""
    import shutil

    import h5py

    def crafted(name, edit=None, config=None):
        target = Path(folder) / name
        shutil.copytree(N2V_FIXTURE, target)
        if edit is not None:
            with h5py.File(target / "weights_best.h5", "r+") as f:
                edit(f, target)
        if config is not None:
            settings = json.loads((target / "config.json").read_text())
            (target / "config.json").write_text(json.dumps({**settings, **config}))
        return target

    def external(f, target):  # a layer's group is another file's: here, a copy with other values
        shutil.copy(target / "weights_last.h5", target / "other.h5")
        del f["conv2d"]
        f["conv2d"] = h5py.ExternalLink("other.h5", "/conv2d")

    def fifo(f, target):
        os.mkfifo(target / "pipe.h5")
        del f["conv2d"]
        f["conv2d"] = h5py.ExternalLink("pipe.h5", "/conv2d")

    def unstored(f, target):
        layer = f["channel_0middle_0"]
        del layer["channel_0middle_0/kernel:0"]
        layer.create_dataset("channel_0middle_0/kernel:0", shape=(5, 5, 16, 32), dtype="f4")

    def chunk_bomb(f, target):  # a 256 MiB gzip chunk behind a 51 KB kernel
        layer = f["channel_0middle_0"]
        del layer["channel_0middle_0/kernel:0"]
        data = layer.create_dataset(
            "channel_0middle_0/kernel:0",
            shape=(5, 5, 16, 32),
            maxshape=(None,) * 4,
            chunks=(5, 5, 16, 163840),
            compression="gzip",
            dtype="f4",
        )
        data[...] = 0.25

    folders = {
        "n2v: external link": crafted("external", external),
        "n2v: link to a pipe": crafted("pipe", fifo),
        "n2v: weight never stored": crafted("unstored", unstored),
        "n2v: gzip chunk bomb": crafted("chunk", chunk_bomb),
        "n2v: 1024 filters, 296 KB": crafted("wide", config={"unet_n_first": 1024}),
        "n2v: 10**400 filters": crafted("absurd", config={"unet_n_first": 10**400}),
    }
    return [
        (
            name,
            f"result = n2v_estimator.cli.main(['import-n2v', {str(path)!r}, '--model', "
            f"{str(Path(folder) / (path.name + '.safetensors'))!r}])",
        )
        for name, path in folders.items()
    ]


def _metadata_cases(folder, model):
    """Image files whose metadata is junk or huge, through ``transform``: refused in a second when
    huge, else denoised with only the checked record carried to the output."""
    import tifffile

    folder = Path(folder)
    escape = "\x1b]0;owned\x07\x1b[2J"
    store = folder / "junk.ome.zarr"
    _zarr_v2(store / "0", (64, 64), (64, 64))  # one array, its chunk unstored: all fill value
    (store / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    (store / ".zattrs").write_text(
        json.dumps(
            {
                "multiscales": [
                    {
                        "version": "0.4",
                        "name": "n" * 2**20,
                        "axes": [
                            {"name": "y", "type": "space", "unit": escape},
                            {"name": "x", "type": "space", "junk": 1},
                        ],
                        "datasets": [
                            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": ["abc", "1e400"]}]}
                        ],
                    }
                ]
            }
        )
    )
    huge = _zarr_v2(folder / "huge_attrs.zarr", (64, 64), (64, 64))
    (huge / ".zattrs").write_text(json.dumps({"junk": ["x" * 100] * 700_000}))  # 71 MB
    tifffile.imwrite(
        folder / "vunit.tif", np.zeros((64, 64), np.float32), imagej=True, metadata={"vunit": "V" * 50 * 2**20}
    )
    tifffile.imwrite(
        folder / "lines.tif",
        np.zeros((64, 64), np.float32),
        description="ImageJ=1.11a\nimages=1\n" + "x=1\n" * 5_000_000,
        metadata=None,
    )
    return [
        (
            f"transform {name}",
            f"result = n2v_estimator.cli.main(['transform', '--model', {str(model)!r}, "
            f"{str(folder / name)!r}, '--output', {str(folder / ('out_' + name))!r}, '--quiet'])",
        )
        for name in ("junk.ome.zarr", "huge_attrs.zarr", "vunit.tif", "lines.tif")
    ]


def _torchrun_cases(folder):
    """torchrun's variables, wrong or with no peer, through ``fit --n-devices torchrun``: one line each,
    the wait for peers bounded (N2V_RENDEZVOUS_TIMEOUT=2 here)."""
    source = Path(folder) / "torchrun.npy"
    np.save(source, np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32))
    good = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29581"}
    variants = {
        "WORLD_SIZE=0": {"WORLD_SIZE": "0"},
        "RANK=5": {"RANK": "5"},
        "MASTER_PORT=99999": {"MASTER_PORT": "99999"},
        "MASTER_ADDR escape": {"MASTER_ADDR": "\x1b]0;owned\x07"},
        "rank 0, no peer": {},
        "rank 1, no rank 0": {"RANK": "1", "MASTER_PORT": "29582"},
    }
    command = [
        "fit",
        str(source),
        "--model",
        str(Path(folder) / "torchrun.safetensors"),
        "--quiet",
        "--n-devices",
        "torchrun",
        "--max-epochs",
        "1",
        "--steps-per-epoch",
        "2",
        "--batch-size",
        "2",
        "--depth",
        "1",
    ]
    return [
        (
            f"torchrun {name}",
            f"import os; os.environ.update({ {**good, **change, 'N2V_RENDEZVOUS_TIMEOUT': '2'}!r}); "
            f"result = n2v_estimator.cli.main({command!r})",
        )
        for name, change in variants.items()
    ]


def _zoo_source_cases(folder):
    """Zoo packages whose rdf.yaml names a file outside the package (a URL without '//', a path
    anywhere on the machine) through ``from_bioimageio``."""
    import zipfile

    rdf = "format_version: 0.5.4\ntype: model\nname: a stranger's package\nweights:\n  pytorch_state_dict:\n"
    cases = []
    for name, source in (
        ("zoo: http:host:port source", "http:127.0.0.1:8765/weights.pt"),
        ("zoo: /etc/passwd source", "/etc/passwd"),
    ):
        package = Path(folder) / f"{len(cases)}.zip"
        with zipfile.ZipFile(package, "w") as archive:
            archive.writestr("rdf.yaml", rdf + f"    source: '{source}'\n    sha256: {'0' * 64}\n")
        cases.append((name, f"result = n2v_estimator.Noise2VoidDenoiser.from_bioimageio({str(package)!r})"))
    return cases


def run(python, body, timeout=120):
    script = RUNNER.format(body=textwrap.indent(body, "    "))
    try:
        done = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"outcome": f"still running after {timeout} s", "seconds": float(timeout), "added_mb": float("nan")}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {
            "outcome": f"crashed: {done.stderr.strip().splitlines()[-1:]}",
            "seconds": float("nan"),
            "added_mb": float("nan"),
        }
    return json.loads(lines[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zarr2-python", help="a python with zarr 2 and numcodecs < 0.14")
    parser.add_argument("--only", default="", help="the cases whose name holds this text")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "model.safetensors"
        subprocess.run([sys.executable, "-c", MODEL_SNIPPET.format(path=str(model))], check=True)
        cases = make_cases(folder, model)
        if args.zarr2_python:
            import pickle

            marker = Path(folder) / "PAYLOAD_RAN"

            class Payload:
                def __reduce__(self):
                    return (open, (str(marker), "w"))

            store = _zarr_v2(Path(folder) / "pickle.zarr", (64, 64), (64, 64), compressor={"id": "pickle"})
            (store / "0.0").write_bytes(pickle.dumps(Payload()))
            cases.append(
                (
                    "zarr 2: transform pickle.zarr",
                    f"result = n2v_estimator.cli.main(['transform', '--model', "
                    f"{str(model)!r}, {str(store)!r}, '--output', {str(Path(folder) / 'p.tif')!r}])",
                )
            )
        print(f"{'case':<40} {'seconds':>8} {'added MB':>9}  outcome")
        for name, body in cases:
            if args.only not in name:
                continue
            python = args.zarr2_python if name.startswith("zarr 2") else sys.executable
            result = run(python, body)
            print(f"{name:<40} {result['seconds']:8.2f} {result['added_mb']:9.0f}  {result['outcome']}")
        if args.zarr2_python:
            print(f"payload ran: {marker.exists()}")


if __name__ == "__main__":
    main()
