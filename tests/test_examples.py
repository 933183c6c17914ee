"""The examples a reader runs first produce what the README says they do."""

import importlib.util
import pathlib

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).parents[1] / "examples"


def _example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_camera_example_writes_a_titled_before_after_figure_with_a_zoomed_crop(tmp_path):
    pytest.importorskip("matplotlib")
    example = _example("denoise_camera")
    rng = np.random.default_rng(0)
    clean = np.tile(np.linspace(0, 255, 96), (96, 1))
    noisy = clean + rng.normal(0, 25, clean.shape)
    denoised = clean + rng.normal(0, 5, clean.shape)
    figure = example.before_after_figure(noisy, denoised, clean, crop=(slice(10, 42), slice(50, 82)))
    titles = [ax.get_title() for ax in figure.axes]
    psnr = [10 * np.log10(255**2 / np.mean((image - clean) ** 2)) for image in (noisy, denoised)]
    assert titles[:3] == [f"noisy: {psnr[0]:.2f} dB", f"denoised (Noise2Void): {psnr[1]:.2f} dB", "clean (reference)"]
    assert all("32x32 crop" in title for title in titles[3:6])
    assert [ax.get_images()[0].get_array().shape for ax in figure.axes] == [(96, 96)] * 3 + [(32, 32)] * 3
    assert all(len(ax.patches) == 1 for ax in figure.axes[:3])  # the crop, boxed in the full images
    figure.savefig(tmp_path / "before_after.png")
    assert (tmp_path / "before_after.png").stat().st_size > 0


@pytest.mark.slow
def test_the_bioimageio_example_exports_and_checks_a_saved_model(tmp_path, capsys):
    pytest.importorskip("bioimageio.core", reason="the [bioimageio] extra is not installed")
    from conftest import tiny

    model = tmp_path / "model.safetensors"
    tiny(depth=2).fit(np.random.default_rng(0).normal(100, 20, (64, 64))).save(model)
    _example("export_bioimageio").main(["--model", str(model), "--out", str(tmp_path / "model.zip")])
    printed = capsys.readouterr().out
    assert printed.count(": passed") == 2 and "transform identical = True" in printed
    differences = [float(line.split("= ")[1].split()[0]) for line in printed.splitlines() if "max |diff|" in line]
    assert len(differences) == 2 and max(differences) < 1e-5


def _bsd68_stand_in(folder):
    """The notebook's files and dtypes, small: noisy float32 stacks and test pairs of two shapes."""
    rng = np.random.default_rng(0)
    grid = np.indices((180, 180)).sum(axis=0)
    clean = [np.clip(128 + 80 * np.sin(grid / (5 + i)), 0, 255) for i in range(8)]
    stack = np.stack([c + rng.normal(0, 25, c.shape) for c in clean]).astype(np.float32)
    for sub in ("train", "val", "test/images", "test/gt"):
        (folder / sub).mkdir(parents=True)
    np.save(folder / "train" / "DCNN400_train_gaussian25.npy", stack[:6])
    np.save(folder / "val" / "DCNN400_validation_gaussian25.npy", stack[6:])
    for i, shape in enumerate([(96, 128), (128, 96), (96, 128)]):
        gt = np.clip(128 + 80 * np.sin(np.indices(shape).sum(axis=0) / (6 + i)), 0, 255)
        np.save(folder / "test" / "images" / f"test_{i}.npy", (gt + rng.normal(0, 25, shape)).astype(np.float32))
        np.save(folder / "test" / "gt" / f"test_{i}.npy", gt.astype(np.float32))


def test_the_bsd68_example_uses_the_notebooks_configuration_by_default():
    example = _example("bsd68")
    notebook = example.make_denoiser(False, None, {})
    assert (notebook.n_filters, notebook.batch_size, notebook.max_epochs, notebook.steps_per_epoch) == (
        96,
        128,
        200,
        400,
    )
    assert notebook.residual and notebook.masked_pixel_percentage == 100 / 22**2 and notebook.neighborhood_radius == 2
    short = example.make_denoiser(False, 50, {"batch_size": 8})
    assert (short.max_epochs * short.steps_per_epoch, short.batch_size) == (50, 8)
    assert example.make_denoiser(True, None, {}).n_filters == 32


def test_the_bsd68_example_reads_the_notebooks_object_arrays_without_running_pickle(tmp_path):
    """n2v's notebook ships its test set as object arrays (pickled): the example rebuilds numpy
    arrays of numbers from them and refuses anything else a crafted file names."""
    import os
    import pickle

    example = _example("bsd68")
    _bsd68_stand_in(tmp_path)
    images = sorted((tmp_path / "test" / "images").glob("*.npy"))
    for name, folder in (("bsd68_gaussian25.npy", "images"), ("bsd68_groundtruth.npy", "gt")):
        arrays = [np.load(tmp_path / "test" / folder / p.name) for p in images]
        np.save(tmp_path / "test" / name, np.array(arrays + [None], dtype=object)[:-1], allow_pickle=True)
    _, _, pairs = example.read_data(tmp_path)
    assert [(x.shape, g.shape) for _, x, g in pairs] == [(np.load(p).shape,) * 2 for p in images]
    np.testing.assert_array_equal(pairs[1][1], np.load(images[1]))

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch ran",))

    crafted = tmp_path / "test" / "bsd68_gaussian25.npy"
    header = crafted.read_bytes()[: crafted.read_bytes().index(b"\n") + 1]
    crafted.write_bytes(header + pickle.dumps(np.array([Payload(), None], dtype=object)[:1]))
    with pytest.raises(pickle.UnpicklingError, match="is not a numpy array"):
        example.read_data(tmp_path)
    assert not (tmp_path / "ran").exists() and not os.path.exists("ran")


@pytest.mark.slow
def test_the_bsd68_example_runs_end_to_end_on_a_stand_in(tmp_path):
    import json
    import subprocess
    import sys

    _bsd68_stand_in(tmp_path)
    run = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "bsd68.py"),
            str(tmp_path),
            "--steps",
            "50",
            "--set",
            "batch_size=8",
            "n_filters=16",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["test_0", "test_1", "test_2"]
    summary = json.loads(lines[-1])
    assert summary["images"] == 3 and summary["steps"] == 50 and summary["configuration"] == "n2v notebook"
    assert summary["psnr"] > 20.2  # noisy input is about 20.2 dB: 50 short steps already denoise


@pytest.mark.slow
def test_the_gpu_check_runs_as_a_smoke_test_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.py is prepared for a GPU; on the CPU it runs a tiny version end to end."""
    import json
    import subprocess
    import sys

    script = EXAMPLES.parent / "benchmarks" / "gpu_check.py"
    run = subprocess.run(
        [
            sys.executable,
            str(script),
            "--device",
            "cpu",
            "--steps",
            "4",
            "--predict-size",
            "256",
            "--budgets",
            "2",
            "--tiles",
            "128",
            "--probe-steps",
            "2",
            "--compile",
            "no",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert results["fit"]["steps"] == 4 and results["inference"]["size"] == 256
    assert results["tiles"][0]["tile"] == 128 and results["profile"]["steps"] == 2
    assert results["profile"]["aten_operations_per_step"] > 0
    assert "aten::" in (tmp_path / "gpu_profile.txt").read_text()
    assert "| fit (s) | steps/s |" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.slow
def test_the_bsd68_example_trains_for_the_time_it_is_given(tmp_path):
    import json
    import subprocess
    import sys

    _bsd68_stand_in(tmp_path)
    args = [sys.executable, str(EXAMPLES / "bsd68.py"), str(tmp_path), "--defaults", "--max-time", "3"]
    run = subprocess.run([*args, "--set", "batch_size=8", "n_filters=8"], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["steps"] >= 1 and summary["configuration"] == "defaults"


def test_the_benchmark_shell_scripts_parse():
    import subprocess

    for script in (EXAMPLES.parent / "benchmarks").glob("*.sh"):
        assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0, script.name
