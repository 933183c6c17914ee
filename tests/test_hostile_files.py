"""Files from strangers: no code runs, no input is lost, the cost is bounded by what the file stores.

Every crafted file is made by its test; each is refused (or handled) in under
2 seconds and well under 200 MB, and nothing but the requested output changes.
"""

import json
import os
import subprocess
import sys
import textwrap
import time
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import tiny

from n2v_estimator.cli import main
from n2v_estimator.gateway import atomic as _atomic
from n2v_estimator.gateway import budget as _budget
from n2v_estimator.gateway.codecs import UnsafeZarrError, check_source, check_zarr_array
from n2v_estimator.images.files import read_image, write_image

tifffile = pytest.importorskip("tifffile")
zarr = pytest.importorskip("zarr")
da = pytest.importorskip("dask.array")

IMAGE = np.random.default_rng(0).normal(100, 10, (64, 64)).astype(np.float32)
FAST = dict(max_epochs=1, steps_per_epoch=2, batch_size=2, patch_size=32, n_filters=4, depth=1)
CLI_FIT = [
    "--max-epochs",
    "1",
    "--steps-per-epoch",
    "2",
    "--batch-size",
    "2",
    "--patch-size",
    "32",
    "--n-filters",
    "4",
    "--depth",
    "1",
    "--quiet",
]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    tiny(**FAST).fit(IMAGE).save(path)
    return path


@pytest.fixture
def noisy_tif(tmp_path):
    """A noisy TIFF in the test's folder."""
    tifffile.imwrite(tmp_path / "noisy.tif", IMAGE)
    return tmp_path / "noisy.tif"


def snapshot(folder):
    """Every file under ``folder`` with its size and modification time."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            info = os.stat(os.path.join(root, name))
            found[os.path.relpath(os.path.join(root, name), folder)] = (info.st_size, info.st_mtime_ns)
    return found


def bounded(call, seconds=2.0, megabytes=200):
    """Run ``call``; assert it took under ``seconds`` and allocated under ``megabytes`` (as
    tracemalloc sees numpy and Python); return its result or the exception it raised."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        outcome = call()
    except Exception as exc:  # the caller judges it
        outcome = exc
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    assert elapsed < seconds, f"took {elapsed:.1f} s"
    assert peak < megabytes, f"allocated {peak:.0f} MB"
    return outcome


def zarr_v2(path, shape, chunks, dtype="<f4", compressor=None, filters=None):
    """A zarr format 2 array written as its metadata alone (no chunk: the fill value)."""
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
    (path / ".zarray").write_text(json.dumps(meta))
    return path


# ------------------------------------------------------------- codecs
class _FakeZarr2:
    """Stands in for a zarr 2 array (its codec objects and dtype); records any chunk read."""

    __module__ = "zarr.core"

    def __init__(self, compressor=None, filters=None, dtype="<f4"):
        self.compressor, self.filters = compressor, filters
        self.shape, self.chunks, self.ndim, self.dtype = (64, 64), (32, 32), 2, np.dtype(dtype)
        self.path, self.reads = "raw", 0

    def __getitem__(self, key):
        out = np.zeros((64, 64), self.dtype)[key]
        self.reads += out.size > 0  # dask reads an empty slice to learn the type: no chunk
        return out


class _Codec:
    def __init__(self, **config):
        self.config = config

    def get_config(self):
        return dict(self.config)


class _FakeZarr3(_FakeZarr2):
    """Stands in for a zarr 3 array of format 3: its metadata document names the codecs."""

    __module__ = "zarr.core.array"

    def __init__(self, codecs):
        super().__init__()
        document = {"zarr_format": 3, "codecs": codecs}
        self.metadata = type("Metadata", (), {"to_dict": lambda _self: document})()


UNSAFE = {
    "pickle compressor": lambda: _FakeZarr2(compressor=_Codec(id="pickle")),
    "pickle filter of a float32 array": lambda: _FakeZarr2(filters=[_Codec(id="pickle", dtype="|O")]),
    "msgpack": lambda: _FakeZarr2(compressor=_Codec(id="msgpack2")),
    "object dtype": lambda: _FakeZarr2(compressor=_Codec(id="zstd"), dtype=object),
    "zarr 3 pickle": lambda: _FakeZarr3([{"name": "bytes"}, {"name": "numcodecs.pickle"}]),
    "zarr 3 pickle inside a shard": lambda: _FakeZarr3(
        [
            {
                "name": "sharding_indexed",
                "configuration": {
                    "codecs": [{"name": "bytes"}, {"name": "numcodecs.pickle"}],
                    "index_codecs": [{"name": "bytes"}],
                },
            }
        ]
    ),
    "an unknown codec": lambda: _FakeZarr3([{"name": "bytes"}, {"name": "my.plugin"}]),
}


@pytest.mark.parametrize("make", UNSAFE.values(), ids=UNSAFE.keys())
def test_zarr_arrays_whose_codecs_could_run_code_are_refused_from_their_metadata(make):
    array = make()
    with pytest.raises(UnsafeZarrError, match="codec|dtype object"):
        check_zarr_array(array)
    assert array.reads == 0


def test_zarr_arrays_with_compression_and_numeric_filters_are_accepted():
    check_zarr_array(_FakeZarr2(compressor=_Codec(id="blosc"), filters=[_Codec(id="delta"), _Codec(id="shuffle")]))
    check_zarr_array(
        _FakeZarr3(
            [
                {
                    "name": "sharding_indexed",
                    "configuration": {
                        "codecs": [{"name": "bytes"}, {"name": "zstd"}],
                        "index_codecs": [{"name": "bytes"}, {"name": "crc32c"}],
                    },
                }
            ]
        )
    )


def test_fit_and_transform_refuse_an_unsafe_zarr_array_before_reading_a_chunk():
    fitted = tiny(**FAST).fit(IMAGE)
    for call in (tiny(**FAST).fit, fitted.transform, fitted.score):
        array = _FakeZarr2(compressor=_Codec(id="pickle"))
        with pytest.raises(UnsafeZarrError, match="'pickle'"):
            call(array)
        assert array.reads == 0


@pytest.mark.parametrize("inline", [False, True])
def test_dask_arrays_built_on_an_unsafe_zarr_array_are_refused_before_reading_a_chunk(inline):
    fitted = tiny(**FAST).fit(IMAGE)
    array = _FakeZarr2(compressor=_Codec(id="pickle"))
    lazy = (da.from_array(array, chunks=32, inline_array=inline, asarray=True) + 1)[:, :48]
    for call in (tiny(**FAST).fit, fitted.transform):
        with pytest.raises(UnsafeZarrError, match="'pickle'"):
            call(lazy)
    assert array.reads == 0


def test_a_real_zarr_store_and_dask_arrays_on_it_pass_the_check(tmp_path):
    store = zarr.open(str(tmp_path / "ok.zarr"), mode="w", shape=(64, 64), chunks=(32, 32), dtype="f4")
    store[...] = IMAGE
    check_source(store)
    check_source(da.from_zarr(store) * 2)
    assert read_image(tmp_path / "ok.zarr")[0].shape == (64, 64)


ZARR2_PYTHON = os.environ.get("N2V_TEST_ZARR2_PYTHON")


@pytest.mark.slow
@pytest.mark.skipif(not ZARR2_PYTHON, reason="N2V_TEST_ZARR2_PYTHON names no python with zarr 2 (.ci/run makes one)")
def test_with_zarr_2_a_pickled_chunk_never_runs(tmp_path, model_file):
    """zarr 2 with a numcodecs that unpickles (before 0.15): the probe's store runs its payload
    through every entry point unless the codec is refused first."""
    marker = tmp_path / "PAYLOAD_RAN"
    script = textwrap.dedent(f"""
        import json, os, pickle, sys
        import numcodecs, zarr
        assert zarr.__version__.startswith("2."), zarr.__version__
        class Payload:
            def __reduce__(self):
                return (open, ({str(marker)!r}, "w"))
        for name, meta in {{
            "compressor.zarr": {{"compressor": {{"id": "pickle"}}, "filters": None, "dtype": "<f4"}},
            "filter.zarr": {{"compressor": None, "filters": [{{"id": "pickle"}}], "dtype": "|O"}},
        }}.items():
            os.makedirs({str(tmp_path)!r} + "/" + name)
            json.dump({{"zarr_format": 2, "shape": [64, 64], "chunks": [64, 64], "fill_value": 0, "order": "C", **meta}},
                      open({str(tmp_path)!r} + "/" + name + "/.zarray", "w"))
            open({str(tmp_path)!r} + "/" + name + "/0.0", "wb").write(pickle.dumps(Payload()))
        import dask.array as da
        from n2v_estimator import Noise2VoidDenoiser
        from n2v_estimator.cli import main
        model = Noise2VoidDenoiser.load({str(model_file)!r})
        codes = []
        for name in ("compressor.zarr", "filter.zarr"):
            store = {str(tmp_path)!r} + "/" + name
            codes.append(main(["transform", "--model", {str(model_file)!r}, store, "--output", store + ".tif", "--quiet"]))
            codes.append(main(["fit", store, "--model", store + ".safetensors", "--quiet", "--max-epochs", "1"]))
            for call in (lambda: Noise2VoidDenoiser(max_epochs=1).fit(zarr.open(store, mode="r")),
                         lambda: model.transform(da.from_zarr(zarr.open(store, mode="r"))).compute()):
                try:
                    call()
                    codes.append(0)
                except ValueError as exc:
                    codes.append("codec" in str(exc) or "dtype object" in str(exc))
        print(json.dumps(codes))
    """)
    done = subprocess.run([ZARR2_PYTHON, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [2, 2, True, True] * 2
    assert not marker.exists()


# --------------------------------------------------- outputs and inputs
def test_fit_refuses_a_model_path_that_is_its_input(tmp_path, capsys, noisy_tif):
    before = noisy_tif.read_bytes()
    assert main(["fit", str(noisy_tif), "--model", str(noisy_tif), *CLI_FIT]) == 2
    assert "--model" in capsys.readouterr().err and noisy_tif.read_bytes() == before


def test_fit_refuses_a_model_path_that_is_a_hard_link_to_or_inside_its_input(tmp_path, capsys, noisy_tif):
    os.link(noisy_tif, tmp_path / "alias.safetensors")
    assert main(["fit", str(noisy_tif), "--model", str(tmp_path / "alias.safetensors"), *CLI_FIT]) == 2
    store = zarr.open(str(tmp_path / "s.zarr"), mode="w", shape=(64, 64), chunks=(32, 32), dtype="f4")
    store[...] = IMAGE
    before = snapshot(tmp_path)
    assert main(["fit", str(tmp_path / "s.zarr"), "--model", str(tmp_path / "s.zarr" / "m.safetensors"), *CLI_FIT]) == 2
    assert snapshot(tmp_path) == before
    assert capsys.readouterr().err.count("error: --model") == 2


def test_fit_refuses_to_replace_a_file_that_is_not_a_model(tmp_path, capsys, noisy_tif):
    other = tmp_path / "other.tif"
    tifffile.imwrite(other, IMAGE)
    before = other.read_bytes()
    assert main(["fit", str(noisy_tif), "--model", str(other), *CLI_FIT]) == 2
    assert "not an n2v-estimator model file" in capsys.readouterr().err and other.read_bytes() == before


def test_a_model_path_naming_a_folder_means_model_safetensors_in_it_for_every_command(tmp_path, capsys, noisy_tif):
    assert main(["fit", str(noisy_tif), "--model", f"{tmp_path / 'out'}/", *CLI_FIT]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["model.safetensors"]
    capsys.readouterr()
    for model in (f"{tmp_path / 'out'}/", str(tmp_path / "out")):  # the folder, with or without a separator
        assert main(["info", model]) == 0 and "n2v-estimator model" in capsys.readouterr().out
        assert (
            main(
                [
                    "transform",
                    "--model",
                    model,
                    str(noisy_tif),
                    "--output",
                    str(tmp_path / "d.tif"),
                    "--quiet",
                    "--overwrite",
                ]
            )
            == 0
        )
    assert main(["info", str(tmp_path)]) == 2  # a folder without a model: where it was looked for
    assert f"no model file at {tmp_path / 'model.safetensors'}" in capsys.readouterr().err


def _labelled_store(tmp_path):
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=2)
    group.create_array("raw", shape=(64, 64), chunks=(32, 32), dtype="f4")[...] = IMAGE
    group.create_array("labels", shape=(64, 64), chunks=(32, 32), dtype="u1")[...] = 1
    return tmp_path / "s.zarr"


@pytest.mark.parametrize("output", ["s.zarr", "s.zarr/raw", "s.zarr/raw/denoised.zarr", "s.zarr/raw/0.tif"])
def test_transform_never_writes_over_into_or_around_a_zarr_input(tmp_path, model_file, capsys, output):
    store = _labelled_store(tmp_path)
    before = snapshot(store)
    assert (
        main(
            ["transform", "--model", str(model_file), str(store / "raw"), "--output", str(tmp_path / output), "--quiet"]
        )
        == 2
    )
    assert snapshot(store) == before
    assert "--output" in capsys.readouterr().err


def test_transform_refuses_an_output_that_is_the_model_or_holds_another_input(tmp_path, model_file, capsys):
    image = tmp_path / "x.tif"
    tifffile.imwrite(image, IMAGE)
    store = _labelled_store(tmp_path)
    model = tmp_path / "model.safetensors"
    model.write_bytes(model_file.read_bytes())
    before = snapshot(tmp_path)
    assert main(["transform", "--model", str(model), str(image), "--output", str(model), "--quiet"]) == 2
    # Several inputs into a folder that is (holds) one of them.
    assert (
        main(["transform", "--model", str(model), str(image), str(store / "raw"), "--output", str(store), "--quiet"])
        == 2
    )
    assert snapshot(tmp_path) == before
    err = capsys.readouterr().err
    assert "is the input" in err and "holds the input" in err


def test_export_refuses_an_output_that_is_its_model_or_test_image(tmp_path, model_file, capsys):
    model = tmp_path / "model.zip"  # a model file may carry any name
    model.write_bytes(model_file.read_bytes())
    args = [
        "export",
        "--model",
        str(model),
        "--test-image",
        str(model),
        "--output",
        str(model),
        "--name",
        "hostile",
        "--description",
        "x",
        "--author",
        "x",
    ]
    assert main(args) == 2
    assert model.read_bytes() == model_file.read_bytes()
    assert "is the input" in capsys.readouterr().err


# ------------------------------------------------- declared sizes
def _ome_tiff(path, size_z):
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
        '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint8" SizeX="64" SizeY="64" '
        f'SizeZ="{size_z}" SizeC="1" SizeT="1"><TiffData/></Pixels></Image></OME>'
    )
    tifffile.imwrite(path, np.zeros((64, 64), np.uint8), description=xml, metadata=None)
    return path


def _deflated_tiff(path, side):
    """A 64x64 zlib-compressed TIFF whose header then declares ``side`` x ``side``."""
    tifffile.imwrite(path, IMAGE, compression="zlib")
    raw = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages.first.tags
        places = [(tags[name].valueoffset, tags[name].dtype) for name in ("ImageWidth", "ImageLength", "RowsPerStrip")]
    for offset, kind in places:
        size = 2 if kind == 3 else 4
        raw[offset : offset + size] = side.to_bytes(size, "little")
    path.write_bytes(bytes(raw))
    return path


CRAFTED = {
    "OME-TIFF declaring SizeZ=2e8": lambda d: _ome_tiff(d / "ome.tif", 200_000_000),
    "deflated TIFF declaring 65535^2": lambda d: _deflated_tiff(d / "deflated.tif", 65535),
    "shaped TIFF declaring 1e9 planes": lambda d: (
        tifffile.imwrite(
            d / "shaped.tif", np.zeros((64, 64), np.uint8), description='{"shape": [1000000000, 64, 64]}', metadata=None
        ),
        d / "shaped.tif",
    )[1],
    "zarr declaring 1e9 x 1e9": lambda d: zarr_v2(d / "huge.zarr", (10**9, 10**9), (1024, 1024)),
    "zarr of 1e6 x 1e6 in 1x1 chunks": lambda d: zarr_v2(d / "tiny.zarr", (10**6, 10**6), (1, 1)),
    "sparse .npy of 20000^2": lambda d: (
        np.lib.format.open_memmap(d / "sparse.npy", "w+", np.float32, (20000, 20000)),
        d / "sparse.npy",
    )[1],
}


@pytest.mark.parametrize("make", CRAFTED.values(), ids=CRAFTED.keys())
def test_a_file_declaring_far_more_than_it_stores_is_refused_from_its_header(tmp_path, make):
    path = make(tmp_path)
    error = bounded(lambda: read_image(path, lazy=True))
    assert isinstance(error, _budget.DeclaredSizeError), error
    assert "declares an image of shape" in str(error) and "--trust-declared-size" in str(error)


@pytest.mark.parametrize("command", ["fit", "transform", "export"])
def test_the_command_line_refuses_a_crafted_file_in_one_line(tmp_path, model_file, capsys, command):
    path = zarr_v2(tmp_path / "huge.zarr", (10**9, 10**9), (1024, 1024))
    args = {
        "fit": ["fit", str(path), "--model", str(tmp_path / "m.safetensors"), *CLI_FIT],
        "transform": ["transform", "--model", str(model_file), str(path), "--output", str(tmp_path / "o.tif")],
        "export": [
            "export",
            "--model",
            str(model_file),
            "--test-image",
            str(path),
            "--output",
            str(tmp_path / "p.zip"),
            "--name",
            "hostile",
            "--description",
            "x",
            "--author",
            "x",
        ],
    }[command]
    assert bounded(lambda: main(args)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "declares an image of shape (1000000000, 1000000000)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.zarr"]


def test_a_mostly_empty_store_is_read_when_its_size_is_trusted(tmp_path):
    path = zarr_v2(tmp_path / "empty.zarr", (4096, 4096), (512, 512))  # 64 MiB declared, every chunk missing
    with pytest.raises(_budget.DeclaredSizeError):
        read_image(path, lazy=True)
    array, _ = read_image(path, lazy=True, trust_declared_size=True)
    assert array.shape == (4096, 4096) and float(array[:8, :8].sum().compute()) == 0.0


def test_real_images_pass_the_size_check(tmp_path):
    noisy = np.random.default_rng(1).normal(1000, 30, (2048, 2048)).astype(np.uint16)  # 8 MiB, compresses ~1.5x
    tifffile.imwrite(tmp_path / "noisy.tif", noisy, compression="zlib")
    store = zarr.open(str(tmp_path / "noisy.zarr"), mode="w", shape=noisy.shape, chunks=(256, 256), dtype="u2")
    store[...] = noisy
    assert np.array_equal(read_image(tmp_path / "noisy.tif")[0], noisy)
    assert np.array_equal(read_image(tmp_path / "noisy.zarr", lazy=True)[0].compute(), noisy)


def test_transform_refuses_an_output_larger_than_the_free_disk_space(
    tmp_path, model_file, capsys, monkeypatch, noisy_tif
):
    monkeypatch.setattr("shutil.disk_usage", lambda path: SimpleNamespace(free=1000))
    assert main(["transform", "--model", str(model_file), str(noisy_tif), "--output", str(tmp_path / "o.tif")]) == 2
    assert "needs 16.0 KiB, and its file system has 1000 bytes free" in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists()


# ------------------------------------------------------ temporaries
def _age(path):
    os.utime(path, (0, 0))


def test_the_next_write_removes_temporaries_of_killed_writers_only(tmp_path):
    import fcntl

    target = tmp_path / "out.zarr"
    stale_file = tmp_path / ".out.zarr.0123456789abcdef.tmp"
    stale_folder = tmp_path / ".out.zarr.00000000000000aa.tmp"
    live_folder = tmp_path / ".out.zarr.fedcba9876543210.tmp"
    users = tmp_path / ".out.zarr.my-notes.tmp"
    other = tmp_path / ".other.zarr.0123456789abcdef.tmp"
    stale_file.write_bytes(b"half")
    for folder in (stale_folder, live_folder):
        (folder / "0").mkdir(parents=True)
        (folder / "0" / "0.0").write_bytes(b"chunk")
    users.write_bytes(b"keep")
    other.write_bytes(b"keep")
    for path in (stale_file, stale_folder, live_folder, users, other):
        _age(path)
    held = os.open(live_folder, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)  # a writer still at work
        write_image(target, IMAGE, "YX")
    finally:
        os.close(held)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.zarr", live_folder.name, users.name, other.name])


def test_a_previous_store_set_aside_by_a_killed_writer_goes_back_into_place(tmp_path):
    old = tmp_path / ".out.zarr.0123456789abcdef.old"
    write_image(tmp_path / "first.zarr", IMAGE, "YX")
    os.replace(tmp_path / "first.zarr", old)
    _age(old)
    _atomic.remove_stale(tmp_path / "out.zarr")
    assert (tmp_path / "out.zarr").is_dir() and not old.exists()
    assert np.array_equal(read_image(tmp_path / "out.zarr")[0], IMAGE)


@pytest.mark.slow  # a subprocess: 8 s
def test_a_transform_killed_mid_write_leaves_a_temporary_that_the_next_one_removes(tmp_path, model_file):
    image = tmp_path / "noisy.npy"
    np.save(image, IMAGE)
    output = tmp_path / "out.zarr"
    script = textwrap.dedent(f"""
        import time
        import n2v_estimator.images.files as io
        import n2v_estimator.images.omezarr as omezarr
        io.LAZY_BYTES = 0  # chunk by chunk, as large inputs are
        omezarr.store_chunks = lambda data, target: time.sleep(600)  # killed while it writes
        from n2v_estimator.cli import main
        main(["transform", "--model", {str(model_file)!r}, {str(image)!r}, "--output", {str(output)!r}, "--quiet"])
    """)
    process = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):
            time.sleep(0.05)
    finally:
        process.kill()  # SIGKILL: no clean-up runs
        process.wait()
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers and not output.exists()
    for path in leftovers:
        _age(path)
    assert main(["transform", "--model", str(model_file), str(image), "--output", str(output), "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noisy.npy", "out.zarr"]


# ----------------------------------------------------- one-line errors
def test_a_corrupt_zarr_chunk_is_one_line_naming_the_store(tmp_path, model_file, capsys):
    store = zarr.open(str(tmp_path / "bad.zarr"), mode="w", shape=(64, 64), chunks=(32, 32), dtype="f4", zarr_format=2)
    store[...] = IMAGE  # zstd-compressed chunks
    (tmp_path / "bad.zarr" / "0.1").write_bytes(b"\x28\xb5\x2f\xfdnot zstd at all")
    assert (
        main(
            [
                "transform",
                "--model",
                str(model_file),
                str(tmp_path / "bad.zarr"),
                "--output",
                str(tmp_path / "o.tif"),
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.zarr: the data at" in err and "damaged" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zarr"]


def test_running_out_of_memory_is_one_line(tmp_path, model_file, capsys, monkeypatch, noisy_tif):
    from n2v_estimator import Noise2VoidDenoiser

    def exhausted(self, X, return_std=False):
        raise MemoryError("Unable to allocate 16.0 GiB")

    monkeypatch.setattr(Noise2VoidDenoiser, "transform", exhausted)
    assert main(["transform", "--model", str(model_file), str(noisy_tif), "--output", str(tmp_path / "o.tif")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of memory (Unable to allocate 16.0 GiB)" in err


# ------------------------------------------------------------ dask inputs
def _declared(function, shape=(64, 64)):
    import dask

    return da.from_delayed(dask.delayed(function)(), shape=shape, dtype=np.float32)


DISHONEST = {
    "complex values": lambda: (IMAGE + 1j).astype(np.complex64),
    "strings": lambda: IMAGE.astype(str),
    "fewer pixels": lambda: IMAGE[:60],
    "float64 values": lambda: IMAGE.astype(np.float64),
}


@pytest.mark.parametrize("values", DISHONEST.values(), ids=DISHONEST.keys())
def test_dask_chunks_unlike_what_the_array_declares_are_refused_by_fit_and_transform(values):
    fitted = tiny(**FAST).fit(IMAGE)
    with pytest.raises(ValueError, match="declares"):
        tiny(**FAST).fit(_declared(values))
    with pytest.raises(ValueError, match="declares"):
        fitted.transform(_declared(values)).compute()


# ------------------------------------------------------- training range
def test_transform_warns_about_values_far_outside_the_training_range():
    from skimage import data

    camera = data.camera()[:64, :64]
    fitted = tiny(**FAST).fit(camera)
    assert (fitted.data_min_, fitted.data_max_) == (camera.min(), camera.max())
    with pytest.warns(UserWarning, match="far outside the training data's range"):
        fitted.transform(np.full((32, 32), 65504, np.float16))
    with pytest.warns(UserWarning, match="far outside"):
        fitted.transform(da.from_array(np.full((32, 32), -5000.0, np.float32), chunks=16)).compute()


def test_transform_of_data_like_the_training_data_does_not_warn(recwarn):
    fitted = tiny(**FAST).fit(IMAGE)
    fitted.transform(IMAGE * 1.5 - 50)  # brighter, within a span of the training range
    assert not [w for w in recwarn if "far outside" in str(w.message)]


def test_the_training_range_survives_save_and_load_and_older_files_have_none(tmp_path):
    from n2v_estimator import Noise2VoidDenoiser

    fitted = tiny(**FAST).fit(IMAGE)
    fitted.save(tmp_path / "m.safetensors")
    loaded = Noise2VoidDenoiser.load(tmp_path / "m.safetensors")
    assert loaded.data_min_ == fitted.data_min_ and loaded.data_max_ == fitted.data_max_
    del fitted.data_min_, fitted.data_max_  # as a model of an earlier version
    fitted.save(tmp_path / "old.safetensors")
    assert not hasattr(Noise2VoidDenoiser.load(tmp_path / "old.safetensors"), "data_min_")


def test_export_reads_only_the_crop_of_the_test_image_it_keeps(tmp_path, model_file, monkeypatch):
    from n2v_estimator import Noise2VoidDenoiser

    image = tmp_path / "large.tif"
    tifffile.imwrite(image, np.zeros((4096, 4096), np.float32))
    given = {}
    monkeypatch.setattr(
        Noise2VoidDenoiser,
        "export_bioimageio",
        lambda self, path, test_image, **kw: given.update(shape=np.shape(test_image), kind=type(test_image)) or path,
    )
    assert (
        main(
            [
                "export",
                "--model",
                str(model_file),
                "--test-image",
                str(image),
                "--output",
                str(tmp_path / "p.zip"),
                "--name",
                "cropped",
                "--description",
                "x",
                "--author",
                "x",
            ]
        )
        == 0
    )
    assert given == {"shape": (512, 512), "kind": np.ndarray}


# ------------------------------------------------------ metadata from a stranger
ESCAPE = "\x1b]0;owned\x07\x1b[2J"  # retitles the terminal, then clears it


def _crafted_ome_zarr(path):
    """An OME-Zarr image whose metadata carries every kind of junk into what reads it."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("0", shape=(1, 64, 64), chunks=(1, 64, 64), dtype="f4")[...] = IMAGE[None]
    axes = [
        {"name": "c", "type": "channel", "junk": "import os"},
        {"name": "y", "type": "space", "unit": f"micrometer{ESCAPE}"},
        {"name": "x", "type": "space", "unit": "µm\nforged line"},
    ]
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": "n" * 2**20,
            "axes": axes,
            "datasets": [
                {
                    "path": "0",
                    "coordinateTransformations": [
                        {"type": "scale", "scale": [1.0, "abc", "1e400"]},
                        {"type": "translation", "translation": [0, float("nan"), 3]},
                    ],
                }
            ],
            "coordinateTransformations": [{"type": "scale", "scale": [1.0, float("nan"), -2.0]}],
        }
    ]
    root.attrs["omero"] = {"channels": [{"label": "L" * 5 * 2**20 + ESCAPE, "color": "javascript:1", "x": 1}]}
    return path


def test_metadata_from_a_file_is_carried_as_a_checked_record_and_what_is_dropped_is_said(tmp_path, model_file, capsys):
    source = _crafted_ome_zarr(tmp_path / "in.ome.zarr")
    assert main(["transform", "--model", str(model_file), str(source), "--output", str(tmp_path / "out.ome.zarr")]) == 0
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err and "\x07" not in out + err and "forged line" not in out, (out, err)
    warning = [line for line in err.splitlines() if "left out of its calibration" in line]
    assert len(warning) == 1 and len(warning[0]) <= 700 and "the unit µm\\nforged line of X" in warning[0], err
    written = json.loads((tmp_path / "out.ome.zarr" / ".zattrs").read_text())
    assert len(json.dumps(written)) < 2000, written  # no megabyte name, no 5 MB label copied
    multiscale = written["multiscales"][0]
    assert all(
        set(axis) <= {"name", "type", "unit"} and axis.get("unit", "micrometer") == "micrometer"
        for axis in multiscale["axes"]
    )
    transforms = multiscale["datasets"][0]["coordinateTransformations"]
    assert transforms == [{"type": "scale", "scale": [1.0, 1.0, 1.0]}] and "coordinateTransformations" not in multiscale
    assert "omero" not in written  # labels a megabyte long or holding escapes are no channel names


def test_imagej_entries_from_a_file_are_checked_before_they_reach_an_output(tmp_path, model_file, capsys):
    source = tmp_path / "in.tif"
    tifffile.imwrite(
        source,
        IMAGE,
        imagej=True,
        resolution=(10, 10),
        metadata={
            "unit": "um",
            "vunit": "V" * 2**16 + ESCAPE,
            "xorigin": 3.0,
            "cf": "nan?",
            "Info": f"line one\nline two{ESCAPE}",
            "Labels": ["a label"],
        },
    )
    assert main(["transform", "--model", str(model_file), str(source), "--output", str(tmp_path / "out.tif")]) == 0
    err = capsys.readouterr().err
    assert "\x1b" not in err and "ImageJ's vunit" in err and "ImageJ's Info" in err
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        written = tif.imagej_metadata
        description = tif.pages.first.description
    assert "vunit" not in written and "Info" not in written and "\x1b" not in description
    assert written["xorigin"] == 3.0 and written["Labels"] in ("a label", ["a label"]) and written["unit"] == "micron"


@pytest.mark.parametrize("make", ["zattrs", "imagej", "imagej_tag", "bigtiff"])
def test_metadata_of_many_megabytes_is_refused_before_it_is_parsed(tmp_path, model_file, capsys, make, monkeypatch):
    """Parsed, a 71 MB .zattrs took 9 s and 1 GB, a 5-million-line ImageJ description 7 s and 1.2 GB;
    tifffile reads a TIFF's text tags whole as it opens the file: they are sized before it opens it."""
    if make == "zattrs":
        source = zarr_v2(tmp_path / "in.zarr", (64, 64), (64, 64))
        (source / ".zattrs").write_text(json.dumps({"junk": ["x" * 100] * 200_000}))  # 21 MB
    elif make in ("imagej_tag", "bigtiff"):
        source = tmp_path / "in.tif"
        if make == "imagej_tag":  # ImageJ's IJMetadata tag, UTF-16: 19 MB
            tifffile.imwrite(source, IMAGE, imagej=True, metadata={"Info": "i" * 9 * 2**20})
        else:
            tifffile.imwrite(source, IMAGE, bigtiff=True, description="d" * 17 * 2**20, metadata=None)
        monkeypatch.setattr(tifffile, "TiffFile", None)  # never opened
    else:
        source = tmp_path / "in.tif"
        tifffile.imwrite(source, IMAGE, imagej=True, metadata={"spacing": 1.0})
        raw = source.read_bytes()
        old = raw[raw.index(b"ImageJ=") : raw.index(b"\x00", raw.index(b"ImageJ="))]
        tifffile.imwrite(source, IMAGE, description=old.decode() + "\nx=1" * 5_000_000, metadata=None)  # 20 MB
    status = bounded(
        lambda: main(["transform", "--model", str(model_file), str(source), "--output", str(tmp_path / "out.tif")])
    )
    err = capsys.readouterr().err
    assert status == 2 and "over the 16,777,216 read" in err and len(err.strip().splitlines()) == 1, err


def test_info_prints_a_model_files_strings_escaped_on_one_line_each(tmp_path, model_file, capsys):
    from n2v_estimator.models.weights import read_model, write_model

    tensors, document = read_model(model_file)
    document["package_version"] = f"9.9{ESCAPE}\nforged: line"
    document["params"]["axes"] = ESCAPE
    write_model(tmp_path / "crafted.safetensors", tensors, document)
    assert main(["info", str(tmp_path / "crafted.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\nforged: line" not in out
    assert "written by version 9.9\\x1b]0;owned\\x07\\x1b[2J\\nforged: line)" in out
    assert main(["info", str(tmp_path / "crafted.safetensors"), "--json"]) == 0
    assert "\x1b" not in capsys.readouterr().out  # JSON escapes it
