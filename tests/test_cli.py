"""The n2v-estimator command: fit, transform and info on files; user errors are one line and exit 2."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from n2v_estimator import Noise2VoidDenoiser
from n2v_estimator.cli import build_parser, estimator_signature, main, parameter_help, parameter_value
from n2v_estimator.fit import training as _training
from n2v_estimator.images import chunks as _chunks
from n2v_estimator.images import files as _files

tifffile = pytest.importorskip("tifffile")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = [
    "--depth",
    "1",
    "--n-filters",
    "4",
    "--max-epochs",
    "1",
    "--steps-per-epoch",
    "2",
    "--batch-size",
    "4",
    "--patch-size",
    "16",
    "--device",
    "cpu",
    "--precision",
    "32",
    "--random-state",
    "0",
]


def noisy(*shape, seed=0):
    return (100 + 20 * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def write_tiff(path, data, axes=None):
    tifffile.imwrite(path, data, photometric="minisblack", **({"metadata": {"axes": axes}} if axes else {}))
    return path


def run(capsys, *argv):
    """``main(argv)`` in this process: (exit status, stdout, stderr)."""
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two noisy TIFFs of different sizes and a model fitted on them by the command line."""
    folder = tmp_path_factory.mktemp("cli")
    first = write_tiff(folder / "noisy_1.tif", noisy(64, 64))
    second = write_tiff(folder / "noisy_2.tif", noisy(48, 80, seed=1))
    model = folder / "model.safetensors"
    assert main(["fit", str(folder / "noisy_*.tif"), "--model", str(model), "--quiet", *TINY]) == 0
    return {"folder": folder, "images": [first, second], "model": model}


def error_line(err):
    """The one stderr line of a user error."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("n2v-estimator: error: "), err
    return lines[0]


# ----------------------------------------------------------------- options
def test_every_estimator_parameter_is_an_option_with_its_docstring_help():
    helps = parameter_help(Noise2VoidDenoiser.__doc__)
    assert set(Noise2VoidDenoiser().get_params()) <= set(helps)
    assert helps["batch_size"] == "Patches per optimizer step. [int, default=16]"
    fit = build_parser()._subparsers._group_actions[0].choices["fit"]
    options = {option: action for action in fit._actions for option in action.option_strings}
    for name in Noise2VoidDenoiser().get_params():
        dashed = "--" + name.replace("_", "-")
        assert dashed in options and "--" + name in options, name
        assert options[dashed].help.replace("%%", "%").startswith(helps[name])


def test_the_options_are_read_from_the_estimators_source_as_the_estimator_has_them():
    defaults, docstring = estimator_signature()
    assert defaults == Noise2VoidDenoiser().get_params() and list(defaults) == sorted(defaults)
    assert docstring == Noise2VoidDenoiser.__doc__


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize(
    "argv, status",
    [
        (["--help"], 0),
        (["fit", "--help"], 0),
        (["transform", "--help"], 0),
        (["info", "--help"], 0),
        (["--version"], 0),
        (["fit", "--max-epoch", "3"], 2),
        (["transform"], 2),
        (["frobnicate"], 2),
        (["info", str(FIXTURES / "probabilistic_model_0.1.0.safetensors")], 0),
        (["info", str(FIXTURES / "plain_model_0.1.0.safetensors"), "--json"], 0),
        (["info", __file__], 2),
    ],
    ids=lambda value: " ".join(Path(a).name for a in value) if isinstance(value, list) else str(value),
)
def test_help_usage_errors_and_info_import_neither_torch_nor_scikit_learn(argv, status):
    """They answer in a fraction of a second: importing torch and scikit-learn takes seconds."""
    code = (
        "import sys\n"
        "from n2v_estimator.cli import main\n"
        f"status = main({argv!r})\n"
        "heavy = sorted(m for m in ('torch', 'sklearn', 'scipy', 'skimage') if m in sys.modules)\n"
        "print('HEAVY', status, heavy, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stderr.strip().splitlines()[-1] == f"HEAVY {status} []", done.stderr


def test_option_values_are_python_literals_else_strings():
    assert parameter_value("64") == 64
    assert parameter_value("(16, 64, 64)") == (16, 64, 64)
    assert parameter_value("('x', 5)") == ("x", 5)
    assert parameter_value("1e-3") == 1e-3
    assert parameter_value("None") is None and parameter_value("none") is None
    assert parameter_value("True") is True and parameter_value("false") is False
    assert parameter_value("gaussian") == "gaussian"
    assert parameter_value("cuda:0") == "cuda:0"


def test_help_describes_noise2void_with_examples_and_version(capsys):
    status, out, _ = run(capsys, "--help")
    assert status == 0 and "Noise2Void" in out and "Examples:" in out
    assert "n2v-estimator fit noisy_*.tif --model model.safetensors --max-epochs 10" in out
    for command in ("fit", "transform", "info"):
        status, out, _ = run(capsys, command, "--help")
        assert status == 0 and "Examples:" in out and f"n2v-estimator {command}" in out
    status, out, _ = run(capsys, "fit", "--help")
    assert "--masked-pixel-percentage" in out and "Percentage of pixels of each patch made blind" in out
    status, out, _ = run(capsys, "--version")
    assert status == 0 and out.startswith("n2v-estimator 0.")


def test_the_command_runs_as_a_module_as_torchrun_starts_it():
    """``python -m n2v_estimator.cli`` (what ``torchrun -m n2v_estimator.cli`` runs) is the command."""
    done = subprocess.run(
        [sys.executable, "-m", "n2v_estimator.cli", "fit", "x.tif", "--model", "m.safetensors", "--max-epoch", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "did you mean --max-epochs" in error_line(done.stderr)


# --------------------------------------------------------------------- fit
def test_fit_on_tiffs_of_different_sizes_writes_a_model_with_their_axes(files):
    denoiser = Noise2VoidDenoiser.load(files["model"])
    assert denoiser.axes == "YX" and len(denoiser.history_) == 1 and denoiser.patch_shape_ == (16, 16)
    assert denoiser.depth == 1 and denoiser.verbose == "auto"  # the command's progress bar is not saved


def test_parameters_take_both_spellings_and_literal_values(tmp_path, capsys):
    image = write_tiff(tmp_path / "image.tif", noisy(40, 40))
    model = tmp_path / "model.safetensors"
    status, _, err = run(
        capsys,
        "fit",
        image,
        "--model",
        model,
        "--quiet",
        *TINY,
        "--struct_mask",
        "('x', 3)",
        "--manipulator",
        "uniform_withoutCP",
        "--validation_fraction",
        "0",
    )
    assert status == 0, err
    denoiser = Noise2VoidDenoiser.load(model)
    assert denoiser.struct_mask == ("x", 3) and denoiser.manipulator == "uniform_withoutCP"
    assert denoiser.validation_fraction == 0 and denoiser.history_[0]["val_loss"] is None


def test_files_whose_metadata_name_different_axes_ask_for_axes(tmp_path, capsys):
    flat = write_tiff(tmp_path / "flat.tif", noisy(40, 40))
    volume = write_tiff(tmp_path / "volume.tif", noisy(3, 40, 40), axes="ZYX")
    status, _, err = run(capsys, "fit", flat, volume, "--model", tmp_path / "m.safetensors", *TINY)
    assert status == 2 and "name different axes" in error_line(err) and "--axes" in err
    np.save(tmp_path / "four.npy", noisy(2, 3, 40, 40))
    status, _, err = run(capsys, "fit", tmp_path / "four.npy", "--model", tmp_path / "m.safetensors", *TINY)
    assert status == 2 and "--axes" in error_line(err)


def test_fit_reads_zarr_inputs_lazily_with_their_ome_axes(tmp_path, capsys, monkeypatch):
    from test_io import ome_zarr

    da = pytest.importorskip("dask.array")
    source = ome_zarr(tmp_path / "stack.ome.zarr", noisy(2, 64, 64), ["t", "y", "x"])
    seen = []
    original = Noise2VoidDenoiser.fit
    monkeypatch.setattr(Noise2VoidDenoiser, "fit", lambda self, X, y=None: seen.append(X) or original(self, X))
    model = tmp_path / "model.safetensors"
    status, _, err = run(capsys, "fit", source, "--model", model, "--quiet", *TINY)
    assert status == 0, err
    assert isinstance(seen[0], da.Array) and Noise2VoidDenoiser.load(model).axes == "SYX"


def test_ctrl_c_during_fit_saves_the_best_weights_and_exits_130(files, tmp_path, capsys, monkeypatch):
    calls = {"n": 0}
    original = _training.masked_mse

    def interrupt_on_third_step(*args):
        calls["n"] += _training.torch.is_grad_enabled()  # training steps, not validation
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(_training, "masked_mse", interrupt_on_third_step)
    model = tmp_path / "model.safetensors"
    status, _, err = run(capsys, "fit", *files["images"], "--model", model, "--quiet", *TINY, "--max-epochs", "3")
    assert status == 130 and "Traceback" not in err
    assert "interrupted after 1 complete epoch(s); the best validation weights were saved to" in err
    assert len(Noise2VoidDenoiser.load(model).history_) == 1


# --------------------------------------------------------------- transform
def test_transform_one_tiff_to_tiff_is_the_estimators_transform(files, tmp_path, capsys):
    image = write_tiff(tmp_path / "third.tif", noisy(3, 50, 60, seed=2), axes="TYX")
    status, _, err = run(
        capsys, "transform", "--model", files["model"], image, "--output", tmp_path / "out.tif", "--quiet"
    )
    assert status == 0, err
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert tif.series[0].axes == "TYX"  # the input's own letters
        result = tif.series[0].asarray()
    expected = Noise2VoidDenoiser.load(files["model"]).set_params(axes="SYX").transform(tifffile.imread(image))
    np.testing.assert_allclose(result, expected, rtol=1e-5)


def test_transform_of_ome_zarr_streams_to_ome_zarr_equal_to_the_in_memory_transform(
    files, tmp_path, capsys, monkeypatch
):
    from test_io import ome_zarr

    da = pytest.importorskip("dask.array")
    monkeypatch.setattr(_chunks, "LAZY_CHUNK_SIDE", 48)  # several chunks, each with its halo
    data = noisy(2, 96, 90, seed=3)
    source = ome_zarr(tmp_path / "in.ome.zarr", data, ["t", "y", "x"], scale=[1.0, 0.5, 0.5], units={"x": "micrometer"})
    seen = []
    original = Noise2VoidDenoiser.transform
    monkeypatch.setattr(Noise2VoidDenoiser, "transform", lambda self, X, *a: seen.append(X) or original(self, X, *a))
    status, _, err = run(
        capsys, "transform", "--model", files["model"], source, "--output", tmp_path / "out.zarr", "--quiet"
    )
    assert status == 0, err
    assert isinstance(seen[0], da.Array) and seen[0].chunksize == (2, 48, 48)  # the stored t chunk is 2
    result, axes, metadata = _files.read_image(tmp_path / "out.zarr", return_metadata=True)
    _, _, source_metadata = _files.read_image(source, return_metadata=True)
    assert axes == "SYX" and metadata["multiscale"]["axes"] == source_metadata["multiscale"]["axes"]
    assert metadata["multiscale"]["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.5, 0.5]
    expected = original(Noise2VoidDenoiser.load(files["model"]).set_params(axes="SYX"), data)
    np.testing.assert_allclose(result, expected, rtol=1e-5)


def test_several_inputs_go_to_a_folder_named_after_them(files, tmp_path, capsys):
    pytest.importorskip("zarr")
    np.save(tmp_path / "plain.npy", noisy(40, 40, seed=4))
    _files.write_image(tmp_path / "volume.zarr", noisy(2, 40, 40, seed=5), "SYX")
    inputs = [*files["images"], tmp_path / "plain.npy", tmp_path / "volume.zarr"]
    status, out, err = run(capsys, "transform", "--model", files["model"], *inputs, "--output", tmp_path / "out")
    assert status == 0, err
    assert sorted(os.listdir(tmp_path / "out")) == ["noisy_1.tif", "noisy_2.tif", "plain.tif", "volume.zarr"]
    assert f"-> {tmp_path / 'out' / 'plain.tif'}" in out
    assert _files.read_image(tmp_path / "out" / "volume.zarr")[1] == "SYX"
    status, _, err = run(
        capsys, "transform", "--model", files["model"], inputs[2], "--output", f"{tmp_path / 'one'}/", "--quiet"
    )
    assert status == 0 and os.listdir(tmp_path / "one") == ["plain.tif"], err  # a folder for one input


def test_the_models_axes_apply_where_the_file_names_none(tmp_path, capsys):
    volume = noisy(24, 40, 40)
    np.save(tmp_path / "volume.npy", volume)
    model = tmp_path / "model.safetensors"
    status, _, err = run(capsys, "fit", tmp_path / "volume.npy", "--axes", "ZYX", "--model", model, "--quiet", *TINY)
    assert status == 0, err
    status, _, err = run(
        capsys, "transform", "--model", model, tmp_path / "volume.npy", "--output", tmp_path / "out.npy", "--quiet"
    )
    assert status == 0, err
    expected = Noise2VoidDenoiser.load(model).transform(volume)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=1e-5)


# -------------------------------------------------------------------- info
def test_info_describes_the_model_in_words_and_as_json(files, capsys):
    status, out, _ = run(capsys, "info", files["model"])
    assert status == 0
    assert "2D, 1 channel(s), axes YX" in out and "patches 16 x 16" in out and "1 epoch(s)" in out
    assert "* depth = 1" in out and "  kernel_size = 3" in out
    status, out, _ = run(capsys, "info", files["model"], "--json")
    about = json.loads(out)
    assert status == 0 and about["axes"] == "YX" and about["spatial_ndim"] == 2 and about["n_channels"] == 1
    assert about["patch_shape"] == [16, 16] and about["history"]["epochs"] == 1
    assert {"depth", "n_filters", "max_epochs"} <= set(about["non_default_parameters"])
    assert "kernel_size" not in about["non_default_parameters"] and about["noise"] is None
    assert about["history"]["best_val_epoch"] == 1 and len(about["mean"]) == len(about["std"]) == 1


# ------------------------------------------------------------------ errors
def test_user_errors_are_one_line_on_stderr_with_exit_status_2(files, tmp_path, capsys, monkeypatch):
    (tmp_path / "notes.txt").write_text("not an image")
    model, image = files["model"], files["images"][0]
    cases = {
        "missing.tif: no such file": ["fit", tmp_path / "missing.tif", "--model", tmp_path / "m.safetensors"],
        "matches no file": ["fit", tmp_path / "nothing*.tif", "--model", tmp_path / "m.safetensors"],
        "unknown image format '.txt'": [
            "transform",
            "--model",
            model,
            tmp_path / "notes.txt",
            "--output",
            tmp_path / "o.tif",
        ],
        "axes='ZYX' names 3 axes but the array has 2": [
            "transform",
            "--model",
            model,
            image,
            "--axes",
            "ZYX",
            "--output",
            tmp_path / "o.tif",
        ],
        "is a TIFF image, not an n2v-estimator model file": ["info", image],
        "cannot write '.png'": ["transform", "--model", model, image, "--output", tmp_path / "o.png"],
        "would replace it": ["transform", "--model", model, image, "--output", image],
        "unrecognized arguments: --bogus": ["fit", image, "--model", tmp_path / "m.safetensors", "--bogus", "3"],
        "'manipulator' parameter": [
            "fit",
            image,
            "--model",
            tmp_path / "m.safetensors",
            *TINY,
            "--manipulator",
            "nonsense",
        ],
    }
    for message, argv in cases.items():
        status, _, err = run(capsys, *argv)
        assert status == 2 and message in error_line(err), (argv, err)
    assert not (tmp_path / "m.safetensors").exists() and not (tmp_path / "o.tif").exists()
    monkeypatch.setitem(sys.modules, "tifffile", None)
    status, _, err = run(capsys, "transform", "--model", model, image, "--output", tmp_path / "o.tif")
    assert status == 2 and 'pip install "tifffile" (the [tiff] extra)' in error_line(err)


# ------------------------------------------------------- the installed command
@pytest.mark.slow
def test_the_installed_command_end_to_end(tmp_path):
    command = shutil.which("n2v-estimator")
    if command is None:
        pytest.skip("the n2v-estimator command is not installed: python -m pip install -e . --no-deps")
    pytest.importorskip("zarr")

    def cli(*argv):
        done = subprocess.run([command, *map(str, argv)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
        return done.returncode, done.stdout, done.stderr

    write_tiff(tmp_path / "noisy_1.tif", noisy(64, 64))
    write_tiff(tmp_path / "noisy_2.tif", noisy(48, 80, seed=1))
    third = write_tiff(tmp_path / "third.tif", noisy(72, 56, seed=2))
    status, out, err = cli("fit", "noisy_*.tif", "--model", "model.safetensors", "--quiet", *TINY)
    assert status == 0, err
    status, _, err = cli("transform", "--model", "model.safetensors", third, "--output", "denoised.tif", "--quiet")
    assert status == 0, err
    # The zarr writer in this process (the command's own start-up was just shown).
    assert (
        main(
            [
                "transform",
                "--model",
                str(tmp_path / "model.safetensors"),
                str(third),
                "--output",
                str(tmp_path / "denoised.zarr"),
                "--quiet",
            ]
        )
        == 0
    )
    expected = Noise2VoidDenoiser.load(tmp_path / "model.safetensors").transform(tifffile.imread(third))
    np.testing.assert_allclose(tifffile.imread(tmp_path / "denoised.tif"), expected, rtol=1e-5)
    result, axes = _files.read_image(tmp_path / "denoised.zarr")
    assert axes == "YX"
    np.testing.assert_allclose(result, expected, rtol=1e-5)
    status, out, _ = cli("info", "model.safetensors")
    assert status == 0 and "axes YX" in out
    status, out, _ = cli("info", "model.safetensors", "--json")
    assert status == 0 and json.loads(out)["history"]["epochs"] == 1

    (tmp_path / "notes.txt").write_text("not an image")
    # One line each, in a fraction of a second (the errors found after the model is read: in-process tests).
    errors = {
        "no such file": ["transform", "--model", "model.safetensors", "missing.tif", "--output", "o.tif"],
        "unknown image format": ["transform", "--model", "model.safetensors", "notes.txt", "--output", "o.tif"],
        "not an n2v-estimator model file": ["info", third],
    }
    for message, argv in errors.items():
        status, _, err = cli(*argv)
        assert status == 2 and message in error_line(err), (argv, err)


def test_a_model_path_that_cannot_be_written_is_refused_before_training(tmp_path, capsys, monkeypatch):
    image = write_tiff(tmp_path / "image.tif", noisy(40, 40))
    monkeypatch.setattr(Noise2VoidDenoiser, "fit", lambda *a, **k: pytest.fail("trained before checking --model"))
    status, _, err = run(capsys, "fit", image, "--model", tmp_path / "missing" / "m.safetensors", *TINY)
    assert status == 2 and "the folder" in error_line(err) and "does not exist" in err


def test_a_stack_and_single_images_fit_together(tmp_path, capsys):
    stack = write_tiff(tmp_path / "stack.tif", noisy(3, 48, 40), axes="QYX")
    single = write_tiff(tmp_path / "single.tif", noisy(64, 50, seed=1))
    model = tmp_path / "m.safetensors"
    status, _, err = run(capsys, "fit", stack, single, "--model", model, "--quiet", *TINY)
    assert status == 0, err
    assert Noise2VoidDenoiser.load(model).axes == "SYX"


def test_warm_start_continues_with_the_saved_models_axes(tmp_path, capsys):
    write_tiff(tmp_path / "volume.tif", noisy(16, 32, 32), axes="ZYX")
    np.save(tmp_path / "more.npy", noisy(16, 32, 32, seed=1))
    model = tmp_path / "m.safetensors"
    assert run(capsys, "fit", tmp_path / "volume.tif", "--model", model, "--quiet", *TINY)[0] == 0
    status, _, err = run(
        capsys, "fit", tmp_path / "more.npy", "--model", model, "--quiet", *TINY, "--warm-start", "True"
    )
    assert status == 0, err
    denoiser = Noise2VoidDenoiser.load(model)
    assert denoiser.axes == "ZYX" and len(denoiser.history_) == 2


def test_an_invalid_parameter_value_is_named_in_the_estimators_words(files, tmp_path, capsys):
    status, _, err = run(
        capsys,
        "transform",
        "--model",
        files["model"],
        files["images"][0],
        "--output",
        tmp_path / "out.tif",
        "--tile-overlap",
        "0.9",
    )
    assert status == 2 and "tile_overlap" in error_line(err)
    status, _, err = run(
        capsys, "fit", files["images"][0], "--model", tmp_path / "m.safetensors", *TINY, "--batch-size", "0"
    )
    assert status == 2 and "batch_size" in error_line(err)


# ----------------------------------------------- calibration and guidance
def _imagej_series(path):
    """A uint16 ImageJ time series (3 frames, 2 channels) of 0.1 x 0.2 um pixels, 2 s apart."""
    data = noisy(3, 2, 48, 48).astype(np.uint16)
    tifffile.imwrite(
        path, data, imagej=True, resolution=(10, 5), metadata={"axes": "TCYX", "unit": "um", "finterval": 2}
    )
    return path


def test_transform_of_an_imagej_file_writes_imagej_with_its_calibration_and_says_so(tmp_path, capsys):
    source = _imagej_series(tmp_path / "series.tif")
    status, out, err = run(capsys, "fit", source, "--model", tmp_path / "m.safetensors", *TINY)
    assert status == 0, err
    assert "training images: pixel size Y 0.2 µm, X 0.1 µm; frame interval 2 s" in out
    status, out, err = run(capsys, "info", tmp_path / "m.safetensors")
    assert "trained on:    pixel size Y 0.2 µm, X 0.1 µm; frame interval 2 s" in out
    status, out, _ = run(capsys, "info", tmp_path / "m.safetensors", "--json")
    assert json.loads(out)["image_calibration"]["scale"] == {"Y": 0.2, "X": 0.1, "S": 2.0}
    for dtype, written in (["--dtype", "input"], "uint16"), ([], "float32"):
        status, out, err = run(
            capsys,
            "transform",
            "--model",
            tmp_path / "m.safetensors",
            source,
            "--output",
            tmp_path / "out.tif",
            *dtype,
            "--overwrite",
        )
        assert status == 0, err
        with tifffile.TiffFile(tmp_path / "out.tif") as tif:
            assert tif.is_imagej and tif.series[0].axes == "TCYX" and tif.series[0].dtype == written
            assert tif.pages.first.resolution == pytest.approx((10, 5)) and tif.imagej_metadata["finterval"] == 2
        assert f"out.tif ({written}" in out
        assert ("the input is uint16: --dtype input keeps its type" in out) == (written == "float32")
        assert "calibration kept: pixel size Y 0.2 µm, X 0.1 µm; frame interval 2 s" in out


def test_transform_warns_where_calibration_is_lost_or_pixels_differ_from_training(tmp_path, capsys):
    source = _imagej_series(tmp_path / "series.tif")
    assert main(["fit", str(source), "--model", str(tmp_path / "m.safetensors"), "--quiet", *TINY]) == 0
    status, _, err = run(
        capsys, "transform", "--model", tmp_path / "m.safetensors", source, "--output", tmp_path / "o.npy"
    )
    assert status == 0 and "a .npy file keeps no calibration" in err and "write .tif or .zarr" in err
    other = tmp_path / "coarse.tif"
    tifffile.imwrite(
        other,
        noisy(2, 48, 48).astype(np.uint16),
        imagej=True,
        resolution=(2, 2),
        metadata={"axes": "CYX", "unit": "um"},
    )
    status, _, err = run(
        capsys,
        "transform",
        "--model",
        tmp_path / "m.safetensors",
        other,
        "--output",
        tmp_path / "o.tif",
        "--axes",
        "CYX",
    )
    assert status == 0 and "coarse.tif has pixels of 0.5 µm along Y; the model was trained on 0.2 µm" in err
    assert "along X; the model was trained on 0.1 µm" in err


def test_a_model_path_is_a_safetensors_file_and_a_missing_or_wrong_one_is_named(tmp_path, capsys, files):
    image = files["images"][0]
    cases = {
        "--model model.npz: a model is written as one safetensors file; name it model.safetensors": [
            "fit",
            image,
            "--model",
            "model.npz",
            *TINY,
        ],
        f"--model {tmp_path / 'absent.safetensors'}: no model file at": [
            "transform",
            "--model",
            tmp_path / "absent.safetensors",
            image,
            "--output",
            tmp_path / "o.tif",
        ],
        f"{image} is a TIFF image, not an n2v-estimator model file": [
            "transform",
            "--model",
            image,
            image,
            "--output",
            tmp_path / "o.tif",
        ],
        f"info {tmp_path / 'absent'}: no model file at": ["info", tmp_path / "absent"],
        "no model file at": [
            "export",
            "--model",
            tmp_path / "absent",
            "--test-image",
            image,
            "--output",
            tmp_path / "p.zip",
            "--name",
            "a model",
            "--description",
            "d",
            "--author",
            "a",
        ],
    }
    for message, argv in cases.items():
        status, _, err = run(capsys, *argv)
        assert status == 2 and message in error_line(err), (argv, err)
    assert not os.path.exists("model.npz")


def test_an_axes_error_names_the_file_its_shape_the_axes_and_the_fix(tmp_path, capsys):
    two = write_tiff(tmp_path / "two.tif", noisy(2, 64, 64), axes="CYX")
    depth2 = [a if a != "1" or TINY[k - 1] != "--depth" else "2" for k, a in enumerate(TINY)]
    for given in ("YXC", "ZYX"):
        status, _, err = run(
            capsys,
            "fit",
            two,
            "--axes",
            given,
            "--model",
            tmp_path / "m.safetensors",
            *depth2,
            "--validation-fraction",
            "0",
        )
        line = error_line(err)
        assert status == 2 and f"two.tif (shape (2, 64, 64), axes {given} from --axes; its metadata names CYX: " in line
        assert "leave out --axes to use them" in line and f"With axes='{given}'" in line and "only 2 pixel(s)" in line
    status, _, err = run(
        capsys, "fit", two, "--model", tmp_path / "m.safetensors", *depth2, "--validation-fraction", "0"
    )
    assert status == 0, err


def test_yes_or_no_options_take_a_value_or_none_in_every_command(files, tmp_path, capsys):
    model, image = files["model"], files["images"][0]
    for tta in (["--tta"], ["--tta", "True"], ["--tta=false"], ["--tta", "no"]):
        status, out, err = run(
            capsys,
            "transform",
            "--model",
            model,
            *tta,
            image,
            "--output",
            tmp_path / "o.tif",
            "--quiet",
            "false",
            "--overwrite",
            "yes",
        )
        assert status == 0 and "o.tif" in out, (tta, err)
    status, _, err = run(capsys, "fit", image, "--model", tmp_path / "m.safetensors", *TINY, "--warm-start", "--quiet")
    assert status == 0 and err.count("warning") <= 1, err
    status, out, _ = run(capsys, "info", model, "--json", "yes")
    assert status == 0 and json.loads(out)["axes"] == "YX"
    status, _, err = run(capsys, "transform", "--model", model, image, "--output", tmp_path / "o.tif", "--tta", "maybe")
    assert status == 2 and "unrecognized arguments: maybe" in error_line(err)  # --tta alone, then a stray word


def test_a_misspelled_option_gets_the_closest_one(files, tmp_path, capsys):
    image = files["images"][0]
    status, _, err = run(capsys, "fit", image, "--model", tmp_path / "m.safetensors", "--max-epoch", "1")
    line = error_line(err)
    assert status == 2 and "unrecognized arguments: --max-epoch 1; did you mean --max-epochs" in line
    assert "(see 'n2v-estimator fit --help')" in line
    status, _, err = run(
        capsys, "transform", "--model", files["model"], image, "--output", tmp_path / "o.tif", "--tile-sise", "64"
    )
    assert status == 2 and "did you mean --tile-size" in error_line(err)


def test_a_3d_file_without_axes_trains_as_a_stack_of_2d_images_with_a_note(tmp_path, capsys):
    np.save(tmp_path / "volume.npy", noisy(16, 32, 32))
    status, _, err = run(
        capsys,
        "fit",
        tmp_path / "volume.npy",
        "--model",
        tmp_path / "m.safetensors",
        *TINY,
        "--validation-fraction",
        "0",
    )
    assert status == 0 and "warning: X of shape (16, 32, 32) with axes=None is trained as a stack of 16 separate" in err
    assert "--axes ZYX" in err


# What the README's fit line trains for here: its options as written, then these (the last value of
# an option wins): a few steps of a narrow network instead of 500 steps of the default one.
README_BUDGET = ["--steps-per-epoch", "2", "--n-filters", "8", "--batch-size", "4"]


@pytest.mark.slow
def test_the_readmes_command_lines_run_as_written(tmp_path, monkeypatch, capsys):
    """Each command of the README's command-line block, on small files of the names it uses, in
    this process (the installed command itself: test_the_installed_command_end_to_end)."""
    import shlex

    readme = Path(__file__).parent.parent / "README.md"
    if not readme.exists():
        pytest.skip("needs the repository's README")
    pytest.importorskip("zarr")
    pytest.importorskip("bioimageio.core")
    block = readme.read_text().split("## Quickstart: command line", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").strip().splitlines()]
    assert [line[:2] for line in lines] == [
        ["n2v-estimator", name] for name in ("fit", "transform", "transform", "info", "export")
    ]
    write_tiff(tmp_path / "noisy_01.tif", noisy(32, 32))
    write_tiff(tmp_path / "noisy_02.tif", noisy(40, 32, seed=1))
    _files.write_image(tmp_path / "big.ome.zarr", noisy(48, 48), "YX")
    monkeypatch.chdir(tmp_path)
    for line in lines:
        # As a shell would run it: the glob expanded by the command itself (it expands patterns).
        status = main(line[1:] + (README_BUDGET if line[1] == "fit" else []))
        assert status == 0, (line, capsys.readouterr().err)
    assert (tmp_path / "denoised_01.tif").exists() and (tmp_path / "denoised.ome.zarr").is_dir()
    assert (tmp_path / "model.zip").exists()


@pytest.fixture(scope="module")
def models_2d_3d(tmp_path_factory):
    """A one-channel 2D model and a one-channel 3D model, fitted by the command line."""
    folder = tmp_path_factory.mktemp("models")
    np.save(folder / "plane.npy", noisy(48, 48))
    np.save(folder / "volume.npy", noisy(16, 32, 32))
    for name, axes in (("plane", "YX"), ("volume", "ZYX")):
        assert (
            main(
                [
                    "fit",
                    str(folder / f"{name}.npy"),
                    "--axes",
                    axes,
                    "--model",
                    str(folder / f"{name}.safetensors"),
                    "--quiet",
                    *TINY,
                    "--validation-fraction",
                    "0",
                ]
            )
            == 0
        )
    return {"YX": folder / "plane.safetensors", "ZYX": folder / "volume.safetensors"}


def _calibrated_input(path, flavour, tiff_axes, data):
    """A file of ``flavour`` with 0.1 x 0.2 um pixels, 0.5 um slices and 2 s frames."""
    if flavour == "imagej":
        tifffile.imwrite(
            path,
            data,
            imagej=True,
            resolution=(10, 5),
            metadata={"axes": tiff_axes, "unit": "um", "spacing": 0.5, "finterval": 2},
        )
    elif flavour == "ome-tiff":
        tifffile.imwrite(
            path,
            data,
            ome=True,
            metadata={
                "axes": tiff_axes,
                "PhysicalSizeX": 0.1,
                "PhysicalSizeY": 0.2,
                "PhysicalSizeZ": 0.5,
                "TimeIncrement": 2,
            },
        )
    else:
        ours = tiff_axes.replace("T", "S")
        record = {
            "scale": {"S": 2, "Z": 0.5, "Y": 0.2, "X": 0.1},
            "unit": dict.fromkeys("ZYX", "micrometer") | {"S": "second"},
        }
        _files.write_image(path, data, ours, {"calibration": record})
    return path


@pytest.mark.parametrize("flavour, suffix", [("imagej", ".tif"), ("ome-tiff", ".tif"), ("ome-zarr", ".zarr")])
@pytest.mark.parametrize("tiff_axes, shape", [("YX", (48, 48)), ("ZYX", (16, 32, 32)), ("TYX", (3, 48, 48))])
def test_transform_keeps_each_formats_calibration_and_flavour(
    tmp_path, capsys, models_2d_3d, flavour, suffix, tiff_axes, shape
):
    source = _calibrated_input(tmp_path / f"in{suffix}", flavour, tiff_axes, noisy(*shape))
    model = models_2d_3d["ZYX" if "Z" in tiff_axes else "YX"]
    status, out, err = run(capsys, "transform", "--model", model, source, "--output", tmp_path / f"out{suffix}")
    assert status == 0, err
    _, axes, metadata = _files.read_image(source, return_metadata=True)
    _, written_axes, written = _files.read_image(tmp_path / f"out{suffix}", return_metadata=True)
    assert written_axes == axes and written["calibration"] == metadata["calibration"]
    expected = {"Y": 0.2, "X": 0.1, **({"Z": 0.5} if "Z" in axes else {}), **({"S": 2.0} if "S" in axes else {})}
    assert written["calibration"]["scale"] == pytest.approx(expected)
    assert written["format"] == metadata["format"] and written.get("imagej") == metadata.get("imagej")
    assert written.get("ome") == metadata.get("ome") and "calibration kept: pixel size" in out


def test_no_command_replaces_an_existing_file_without_overwrite_and_each_says_what_it_replaced(files, tmp_path, capsys):
    """fit --model, transform --output (every output checked before any is written), export --output
    and import-n2v: an existing target is refused in one line naming --overwrite, and left as it was."""
    model, images = files["model"], files["images"]
    kept = tmp_path / "kept.safetensors"
    kept.write_bytes(model.read_bytes())
    before = kept.read_bytes()
    status, _, err = run(capsys, "fit", images[0], "--model", kept, *TINY)
    assert status == 2 and "exists: add --overwrite to replace it" in err and kept.read_bytes() == before
    status, out, err = run(capsys, "fit", images[0], "--model", kept, *TINY, "--overwrite")
    assert status == 0 and f"Replaced {kept}" in out, err
    status, out, err = run(capsys, "fit", images[0], "--model", kept, *TINY, "--warm-start")  # continues it
    assert status == 0 and f"Replaced {kept}" in out, err
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / images[1].name).write_bytes(b"mine")
    status, _, err = run(capsys, "transform", "--model", model, *images, "--output", f"{folder}/")
    assert status == 2 and "exists: add --overwrite" in err and sorted(os.listdir(folder)) == [images[1].name]
    assert (folder / images[1].name).read_bytes() == b"mine"
    status, out, err = run(capsys, "transform", "--model", model, *images, "--output", f"{folder}/", "--overwrite")
    assert status == 0 and out.count("-> (replaced)") == 1, err


def test_an_imagej_time_lapse_named_tyx_comes_back_with_its_frame_interval_and_pixel_size(tmp_path, capsys):
    """The microscopist's TYX: 0.2 um pixels, 2.5 s frames, uint16; --axes TYX is the file's own
    order, and the result is an ImageJ time-lapse again."""
    rng = np.random.default_rng(0)
    frames = (1000 + 200 * np.sin(np.indices((4, 48, 48)).sum(0) / 6) + rng.normal(0, 50, (4, 48, 48))).astype(
        np.uint16
    )
    source = tmp_path / "lapse.tif"
    tifffile.imwrite(
        source, frames, imagej=True, resolution=(5, 5), metadata={"axes": "TYX", "unit": "um", "finterval": 2.5}
    )
    status, _, err = run(capsys, "fit", source, "--axes", "TYX", "--model", tmp_path / "m.safetensors", *TINY)
    assert status == 0, err
    status, _, err = run(
        capsys,
        "transform",
        "--model",
        tmp_path / "m.safetensors",
        source,
        "--axes",
        "TYX",
        "--output",
        tmp_path / "out.tif",
    )
    assert status == 0, err
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert tif.is_imagej and tif.series[0].axes == "TYX" and tif.series[0].shape == frames.shape
        assert tif.imagej_metadata["finterval"] == 2.5 and tif.pages.first.resolution == pytest.approx((5, 5))
