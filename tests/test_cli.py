"""The n2v-estimator command: fit, transform and info on files; user errors are one line and exit 2."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from n2v_estimator import Noise2VoidDenoiser, _io, _training
from n2v_estimator.cli import build_parser, main, parameter_help, parameter_value

tifffile = pytest.importorskip("tifffile")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["--depth", "1", "--n-filters", "4", "--max-epochs", "1", "--steps-per-epoch", "2", "--batch-size", "4",
        "--patch-size", "16", "--device", "cpu", "--precision", "32", "--random-state", "0"]  # fmt: skip


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


# --------------------------------------------------------------------- fit
def test_fit_on_tiffs_of_different_sizes_writes_a_model_with_their_axes(files):
    denoiser = Noise2VoidDenoiser.load(files["model"])
    assert denoiser.axes == "YX" and len(denoiser.history_) == 1 and denoiser.patch_shape_ == (16, 16)
    assert denoiser.depth == 1 and denoiser.verbose == "auto"  # the command's progress bar is not saved


def test_parameters_take_both_spellings_and_literal_values(tmp_path, capsys):
    image = write_tiff(tmp_path / "image.tif", noisy(40, 40))
    model = tmp_path / "model.safetensors"
    status, _, err = run(capsys, "fit", image, "--model", model, "--quiet", *TINY, "--struct_mask", "('x', 3)",
                         "--manipulator", "uniform_withoutCP", "--validation_fraction", "0")  # fmt: skip
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
    status, _, err = run(capsys, "transform", "--model", files["model"], image, "--output", tmp_path / "out.tif", "--quiet")
    assert status == 0, err
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert tif.series[0].axes == "TYX"  # the input's own letters
        result = tif.series[0].asarray()
    expected = Noise2VoidDenoiser.load(files["model"]).set_params(axes="SYX").transform(tifffile.imread(image))
    np.testing.assert_allclose(result, expected, rtol=1e-5)


def test_transform_of_ome_zarr_streams_to_ome_zarr_equal_to_the_in_memory_transform(files, tmp_path, capsys, monkeypatch):
    from test_io import ome_zarr

    da = pytest.importorskip("dask.array")
    monkeypatch.setattr(_io, "LAZY_CHUNK_SIDE", 48)  # several chunks, each with its halo
    data = noisy(2, 96, 90, seed=3)
    source = ome_zarr(tmp_path / "in.ome.zarr", data, ["t", "y", "x"], scale=[1.0, 0.5, 0.5], units={"x": "micrometer"})
    seen = []
    original = Noise2VoidDenoiser.transform
    monkeypatch.setattr(Noise2VoidDenoiser, "transform", lambda self, X, *a: seen.append(X) or original(self, X, *a))
    status, _, err = run(capsys, "transform", "--model", files["model"], source, "--output", tmp_path / "out.zarr", "--quiet")
    assert status == 0, err
    assert isinstance(seen[0], da.Array) and seen[0].chunksize == (2, 48, 48)  # the stored t chunk is 2
    result, axes, metadata = _io.read_image(tmp_path / "out.zarr", return_metadata=True)
    _, _, source_metadata = _io.read_image(source, return_metadata=True)
    assert axes == "SYX" and metadata["multiscale"]["axes"] == source_metadata["multiscale"]["axes"]
    assert metadata["multiscale"]["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.5, 0.5]
    expected = original(Noise2VoidDenoiser.load(files["model"]).set_params(axes="SYX"), data)
    np.testing.assert_allclose(result, expected, rtol=1e-5)


def test_several_inputs_go_to_a_folder_named_after_them(files, tmp_path, capsys):
    pytest.importorskip("zarr")
    np.save(tmp_path / "plain.npy", noisy(40, 40, seed=4))
    _io.write_image(tmp_path / "volume.zarr", noisy(2, 40, 40, seed=5), "SYX")
    inputs = [*files["images"], tmp_path / "plain.npy", tmp_path / "volume.zarr"]
    status, out, err = run(capsys, "transform", "--model", files["model"], *inputs, "--output", tmp_path / "out")
    assert status == 0, err
    assert sorted(os.listdir(tmp_path / "out")) == ["noisy_1.tif", "noisy_2.tif", "plain.tif", "volume.zarr"]
    assert f"-> {tmp_path / 'out' / 'plain.tif'}" in out
    assert _io.read_image(tmp_path / "out" / "volume.zarr")[1] == "SYX"
    status, _, err = run(capsys, "transform", "--model", files["model"], inputs[2], "--output", f"{tmp_path / 'one'}/", "--quiet")
    assert status == 0 and os.listdir(tmp_path / "one") == ["plain.tif"], err  # a folder for one input


def test_the_models_axes_apply_where_the_file_names_none(tmp_path, capsys):
    volume = noisy(24, 40, 40)
    np.save(tmp_path / "volume.npy", volume)
    model = tmp_path / "model.safetensors"
    status, _, err = run(capsys, "fit", tmp_path / "volume.npy", "--axes", "ZYX", "--model", model, "--quiet", *TINY)
    assert status == 0, err
    status, _, err = run(capsys, "transform", "--model", model, tmp_path / "volume.npy", "--output", tmp_path / "out.npy", "--quiet")
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
        "unknown image format '.txt'": ["transform", "--model", model, tmp_path / "notes.txt", "--output", tmp_path / "o.tif"],
        "axes='ZYX' names 3 axes but the array has 2": ["transform", "--model", model, image, "--axes", "ZYX", "--output", tmp_path / "o.tif"],
        "is not a readable safetensors model file": ["info", image],
        "cannot write '.png'": ["transform", "--model", model, image, "--output", tmp_path / "o.png"],
        "would replace it": ["transform", "--model", model, image, "--output", image],
        "unrecognized arguments: --bogus": ["fit", image, "--model", tmp_path / "m.safetensors", "--bogus", "3"],
        "'manipulator' parameter": ["fit", image, "--model", tmp_path / "m.safetensors", *TINY, "--manipulator", "nonsense"],
    }  # fmt: skip
    for message, argv in cases.items():
        status, _, err = run(capsys, *argv)
        assert status == 2 and message in error_line(err), (argv, err)
    assert not (tmp_path / "m.safetensors").exists() and not (tmp_path / "o.tif").exists()
    monkeypatch.setitem(sys.modules, "tifffile", None)
    status, _, err = run(capsys, "transform", "--model", model, image, "--output", tmp_path / "o.tif")
    assert status == 2 and 'pip install "n2v-estimator[tiff]"' in error_line(err)


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
    for output in ("denoised.tif", "denoised.zarr"):
        status, _, err = cli("transform", "--model", "model.safetensors", third, "--output", output, "--quiet")
        assert status == 0, err
    expected = Noise2VoidDenoiser.load(tmp_path / "model.safetensors").transform(tifffile.imread(third))
    np.testing.assert_allclose(tifffile.imread(tmp_path / "denoised.tif"), expected, rtol=1e-5)
    result, axes = _io.read_image(tmp_path / "denoised.zarr")
    assert axes == "YX"
    np.testing.assert_allclose(result, expected, rtol=1e-5)
    status, out, _ = cli("info", "model.safetensors")
    assert status == 0 and "axes YX" in out
    status, out, _ = cli("info", "model.safetensors", "--json")
    assert status == 0 and json.loads(out)["history"]["epochs"] == 1

    (tmp_path / "notes.txt").write_text("not an image")
    errors = {
        "no such file": ["transform", "--model", "model.safetensors", "missing.tif", "--output", "o.tif"],
        "unknown image format": ["transform", "--model", "model.safetensors", "notes.txt", "--output", "o.tif"],
        "names 3 axes but the array has 2": ["transform", "--model", "model.safetensors", third, "--axes", "ZYX", "--output", "o.tif"],
        "not a readable safetensors model file": ["info", third],
    }  # fmt: skip
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
    status, _, err = run(capsys, "fit", tmp_path / "more.npy", "--model", model, "--quiet", *TINY, "--warm-start", "True")
    assert status == 0, err
    denoiser = Noise2VoidDenoiser.load(model)
    assert denoiser.axes == "ZYX" and len(denoiser.history_) == 2


def test_an_invalid_parameter_value_is_named_in_the_estimators_words(files, tmp_path, capsys):
    status, _, err = run(capsys, "transform", "--model", files["model"], files["images"][0],
                         "--output", tmp_path / "out.tif", "--tile-overlap", "0.9")  # fmt: skip
    assert status == 2 and "tile_overlap" in error_line(err)
    status, _, err = run(capsys, "fit", files["images"][0], "--model", tmp_path / "m.safetensors", *TINY,
                         "--batch-size", "0")  # fmt: skip
    assert status == 2 and "batch_size" in error_line(err)
