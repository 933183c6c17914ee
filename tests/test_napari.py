"""The napari plugin: its widgets in a real viewer (napari's fixture, a virtual screen from
pytest-xvfb), the layer rules, the sample data, and the estimator's independence of napari."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

if os.environ.get("N2V_TEST_REQUIRE_NAPARI"):  # CI installs napari: a missing one is a failure there
    import napari  # noqa: F401
napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.layers import Image, Labels  # noqa: E402

from n2v_estimator import Noise2VoidDenoiser  # noqa: E402
from n2v_estimator.napari import denoise_widget, sample_data, session, train_widget, worker_widget  # noqa: E402
from n2v_estimator.napari import layers as rules  # noqa: E402
from n2v_estimator.napari.denoise_widget import DenoiseWidget  # noqa: E402
from n2v_estimator.napari.train_widget import TrainWidget  # noqa: E402

TINY = dict(epochs=2, steps=3, patch=32, batch=4, depth=1, filters=8)


@pytest.fixture
def notes(monkeypatch):
    """The notifications the widgets show, as (kind, message)."""
    seen = []
    for module in (worker_widget, train_widget, denoise_widget):
        for kind in ("error", "warning", "info"):
            if hasattr(module, f"show_{kind}"):
                monkeypatch.setattr(module, f"show_{kind}", lambda message, kind=kind: seen.append((kind, message)))
    return seen


def noisy_image(shape=(96, 96), seed=0):
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).sum(axis=0)
    return (100 + 50 * np.sin(grid / 7.0) + rng.normal(0, 20, shape)).astype(np.float32)


def set_tiny(widget, **changes):
    settings = {**TINY, **changes}
    widget.epochs.setValue(settings["epochs"])
    widget.steps.setValue(settings["steps"])
    widget.patch_size.setValue(settings["patch"])
    widget.batch_size.setValue(settings["batch"])
    widget.unet_depth.setValue(settings["depth"])
    widget.filters.setValue(settings["filters"])
    widget.seed.setValue(0)
    widget.device.setCurrentText("cpu")
    widget.precision.setCurrentText("32")


def viewer_with_trainer(make_napari_viewer, data, name="noisy", tiny=None, **layer_options):
    """A viewer holding ``data`` as the image layer ``name``, its layer, and a Train widget set for a
    tiny run (``tiny``: changes to :data:`TINY`)."""
    viewer = make_napari_viewer()
    layer = viewer.add_image(data, name=name, **layer_options)
    trainer = TrainWidget(viewer)
    set_tiny(trainer, **(tiny or {}))
    return viewer, layer, trainer


def train(qtbot, widget, timeout=120_000):
    worker = widget.start_training()
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)
    return worker


def denoise(qtbot, widget, timeout=120_000):
    worker = widget.start_denoising()
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def test_the_manifest_is_valid_and_contributes_two_widgets_and_two_samples():
    import npe2

    manifest = npe2.PluginManifest.from_distribution("n2v-estimator")
    assert {w.display_name for w in manifest.contributions.widgets} == {"Train Noise2Void", "Denoise with Noise2Void"}
    assert {s.key for s in manifest.contributions.sample_data} == {"noisy_camera", "noisy_volume"}
    for command in manifest.contributions.commands:
        module, name = command.python_name.split(":")
        assert callable(getattr(__import__(module, fromlist=[name]), name))


@pytest.mark.slow
def test_the_estimator_never_imports_napari_or_qt():
    code = (
        "import sys, numpy as np; from n2v_estimator import Noise2VoidDenoiser; "
        "Noise2VoidDenoiser(max_epochs=1, steps_per_epoch=1, patch_size=16, verbose=False).fit(np.random.rand(32, 32)); "
        "import n2v_estimator.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt6', 'PyQt5', 'PySide6')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("shape", "kwargs", "axes"),
    [
        ((40, 50), {}, "YX"),
        ((5, 40, 50), {}, "ZYX"),
        ((3, 5, 40, 50), {}, "SZYX"),
        ((40, 50, 3), {"rgb": True}, "YXC"),
        ((4, 40, 50, 3), {"rgb": True}, "SYXC"),
        ((6, 40, 50), {"axis_labels": ("t", "y", "x")}, "TYX"),
        ((2, 40, 50), {"axis_labels": ("c", "y", "x")}, "CYX"),
    ],
)
def test_axes_are_inferred_from_the_layer(shape, kwargs, axes):
    assert rules.infer_axes(Image(np.zeros(shape, np.float32), **kwargs)) == axes


def test_an_rgb_layer_read_as_a_stack_is_refused_with_the_axes_to_use():
    layer = Image(np.zeros((40, 50, 3), np.uint8), rgb=True, name="photo")
    with pytest.raises(rules.LayerError, match=r"'photo' is RGB.*'YXC'"):
        rules.check_axes(layer, "ZYX")


def test_labels_and_shapes_layers_are_refused_by_name():
    with pytest.raises(rules.LayerError, match="'cells' is a Labels layer.*image layers"):
        rules.check_image_layer(Labels(np.zeros((20, 20), int), name="cells"))


def test_a_big_in_memory_layer_is_given_to_fit_as_a_dask_array(monkeypatch):
    import dask.array as da

    layer = Image(np.zeros((6, 64, 64), np.uint8))
    assert rules.training_array(layer, "SYX") is layer.data
    monkeypatch.setattr(rules, "LAZY_BYTES", 1000)
    lazy = rules.training_array(layer, "SYX")
    assert isinstance(lazy, da.Array) and lazy.chunksize == (1, 64, 64)


def test_the_time_limit_and_the_stop_button_end_the_work_at_the_next_step():
    assert not session.Stopper().requested and session.Stopper(-1).requested
    stopper = session.Stopper()
    stopper.stop()
    outcome = session.fit(
        dict(max_epochs=3, steps_per_epoch=2, patch_size=16, verbose=False), noisy_image((40, 40)), stopper=stopper
    )
    assert outcome.stopped and outcome.estimator is None and outcome.error is None


def test_sample_data_are_noisy_float32_images_of_both_dimensions(make_napari_viewer):
    [(camera, meta, kind)] = sample_data.noisy_camera()
    [(volume, _, _)] = sample_data.noisy_volume()
    assert kind == "image" and camera.dtype == volume.dtype == np.float32
    assert camera.shape == (512, 512) and volume.shape == (64, 128, 128)
    from skimage import data

    assert 24 < float(np.std(camera - data.camera())) < 26
    np.testing.assert_array_equal(camera, sample_data.noisy_camera()[0][0])  # the same every time
    viewer = make_napari_viewer()
    viewer.open_sample("n2v-estimator", "noisy_camera")
    assert viewer.layers[-1].name == "noisy camera"


def test_training_from_the_widget_is_fit_with_the_same_settings_and_reports_progress(make_napari_viewer, qtbot):
    image = noisy_image()
    viewer, _, widget = viewer_with_trainer(make_napari_viewer, image)
    assert widget.axes.text() == "YX"
    seen = []
    widget._relay.progress.connect(seen.append)
    train(qtbot, widget)
    assert widget.estimator is not None and len(widget.estimator.history_) == 2
    assert [p.done for p in seen if p.epoch is None] == list(range(1, 7))
    assert widget.progress.value() == widget.progress.maximum() == 6
    assert len(widget.plot.curves["train"]) == 2
    direct = Noise2VoidDenoiser(**widget.parameters()).fit(image)
    for name, tensor in direct.model_.state_dict().items():
        torch.testing.assert_close(widget.estimator.model_.state_dict()[name], tensor, rtol=0, atol=0)
    np.testing.assert_array_equal(widget.estimator.transform(image), direct.transform(image))


@pytest.mark.usefixtures("both_cpu_kinds")
def test_the_denoised_layer_is_transform_of_the_layer_with_its_scale_and_translation(make_napari_viewer, qtbot, notes):
    image = noisy_image()
    viewer, layer, trainer = viewer_with_trainer(
        make_napari_viewer, image, name="cells", scale=(0.5, 0.25), translate=(10, 20)
    )
    train(qtbot, trainer)
    widget = DenoiseWidget(viewer)
    widget.layer.setCurrentText("cells")
    denoise(qtbot, widget)
    result = viewer.layers["cells denoised"]
    np.testing.assert_array_equal(result.data, trainer.estimator.transform(image))
    np.testing.assert_array_equal(result.scale, layer.scale)
    np.testing.assert_array_equal(result.translate, layer.translate)
    np.testing.assert_array_equal(layer.data, image)  # the input is untouched
    assert not [n for n in notes if n[0] == "error"]


def test_a_3d_layer_trains_and_denoises(make_napari_viewer, qtbot, notes):
    volume = noisy_image((16, 40, 40))
    viewer, _, trainer = viewer_with_trainer(make_napari_viewer, volume, name="volume", tiny={"patch": 16})
    assert trainer.axes.text() == "ZYX"
    train(qtbot, trainer)
    assert trainer.estimator.spatial_ndim_ == 3
    widget = DenoiseWidget(viewer)
    denoise(qtbot, widget)
    np.testing.assert_array_equal(viewer.layers["volume denoised"].data, trainer.estimator.transform(volume))
    assert not [n for n in notes if n[0] == "error"]


def test_stop_keeps_the_best_weights_of_the_complete_epochs(make_napari_viewer, qtbot, notes):
    image = noisy_image()
    viewer, _, widget = viewer_with_trainer(make_napari_viewer, image, tiny={"epochs": 200})

    def stop_after_two_epochs(progress):
        if progress.epoch is not None and progress.epoch["epoch"] == 2:
            widget.stop()

    widget._relay.progress.connect(stop_after_two_epochs)
    train(qtbot, widget)
    assert widget.estimator is not None and 2 <= len(widget.estimator.history_) < 200
    assert np.isfinite(widget.estimator.transform(image)).all()
    assert any(kind == "info" and "best weights" in message for kind, message in notes)


def test_a_probabilistic_model_adds_its_posterior_std_as_a_second_layer(make_napari_viewer, qtbot, notes):
    image = noisy_image()
    viewer, _, trainer = viewer_with_trainer(make_napari_viewer, image, tiny={"patch": 64})
    trainer.noise_model.setCurrentText("gaussian")
    train(qtbot, trainer)
    widget = DenoiseWidget(viewer)
    denoise(qtbot, widget)
    mean, std = trainer.estimator.transform(image, return_std=True)
    np.testing.assert_array_equal(viewer.layers["noisy denoised"].data, mean)
    np.testing.assert_array_equal(viewer.layers["noisy posterior std"].data, std)


def test_bad_choices_are_notifications_naming_the_fix(make_napari_viewer, qtbot, notes, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_labels(np.zeros((64, 64), int), name="labels")
    trainer = TrainWidget(viewer)
    assert trainer.layer_list.count() == 0  # only image layers are offered
    assert trainer.start_training() is None and "Choose one or more image layers" in notes[-1][1]
    viewer.add_image(np.zeros((40, 50, 3), np.uint8), name="photo", rgb=True)
    trainer.select_layers(["photo"])
    trainer.axes.setText("ZYX")
    assert trainer.start_training() is None and "is RGB" in notes[-1][1]
    viewer.add_image(noisy_image((40, 40)), name="small")
    trainer.select_layers(["small"])
    set_tiny(trainer, patch=64)
    assert trainer.start_training() is None and "smaller than the training patches" in notes[-1][1]
    set_tiny(trainer, patch=16)
    trainer.learning_rate.setValue(0)
    train(qtbot, trainer)
    assert notes[-1][0] == "error" and "learning_rate" in notes[-1][1] and trainer.estimator is None
    trainer.learning_rate.setValue(1e-3)
    train(qtbot, trainer)
    denoiser = DenoiseWidget(viewer)
    denoiser.layer.setCurrentText("photo")
    assert denoiser.axes.text() == "YXC"
    assert denoiser.start_denoising() is None and "trained on 1 channel(s)" in notes[-1][1]
    crafted = tmp_path / "model.safetensors"
    crafted.write_bytes(b"\xff" * 8 + b"{not json")
    assert denoiser.load_model(crafted) is None and notes[-1][0] == "error" and "model.safetensors" in notes[-1][1]
    assert crafted.read_bytes() == b"\xff" * 8 + b"{not json"  # read, never changed
    assert denoiser.start_denoising() is None and "No model file read" in notes[-1][1]


def test_save_never_replaces_a_file_unasked_and_the_saved_model_denoises_the_same(
    make_napari_viewer, qtbot, notes, tmp_path
):
    image = noisy_image()
    viewer, _, trainer = viewer_with_trainer(make_napari_viewer, image)
    train(qtbot, trainer)
    existing = tmp_path / "kept.safetensors"
    existing.write_bytes(b"user data")
    assert trainer.save_model(existing) is None and existing.read_bytes() == b"user data"
    path = trainer.save_model(tmp_path / "model")
    assert path.name == "model.safetensors"
    denoiser = DenoiseWidget(viewer)
    assert denoiser.load_model(path) is not None
    denoise(qtbot, denoiser)
    np.testing.assert_array_equal(viewer.layers["noisy denoised"].data, trainer.estimator.transform(image))


def test_cancel_adds_no_layer(make_napari_viewer, qtbot, notes):
    image = noisy_image((300, 300))
    viewer, _, trainer = viewer_with_trainer(make_napari_viewer, image)
    train(qtbot, trainer)
    widget = DenoiseWidget(viewer)
    widget.tile_size.setValue(64)
    widget._relay.progress.connect(lambda progress: widget.stop())
    denoise(qtbot, widget)
    assert "cancelled" in widget.status.text() and "noisy denoised" not in viewer.layers


def test_a_dask_layer_is_read_patch_by_patch_and_denoised_lazily(make_napari_viewer, qtbot, notes):
    import dask.array as da

    class Recording:
        """An array that records how much of it each read asks for."""

        def __init__(self, array):
            self.array, self.shape, self.dtype, self.ndim, self.reads = array, array.shape, array.dtype, array.ndim, []

        def __getitem__(self, key):
            out = self.array[key]
            self.reads.append(out.size)
            return out

    source = Recording(noisy_image((4, 128, 128)))
    viewer = make_napari_viewer()
    viewer.add_image(da.from_array(source, chunks=(1, 64, 64)), name="stack")
    trainer = TrainWidget(viewer)
    set_tiny(trainer)
    trainer.axes.setText("SYX")
    train(qtbot, trainer)
    assert trainer.estimator is not None and max(source.reads) <= 64 * 64
    widget = DenoiseWidget(viewer)
    assert widget.axes.text() == "SYX"  # a 2D model denoises a stack plane by plane
    reads = len(source.reads)
    denoise(qtbot, widget)
    result = viewer.layers["stack denoised"].data
    assert isinstance(result, da.Array)
    assert max(source.reads[reads:], default=0) <= 64 * 64  # napari draws what it shows, chunk by chunk


def screenshot_is_a_viewer_with_an_image(path):
    """A real screenshot: large, with a dark viewer frame and a canvas of varied grey levels."""
    from skimage import io

    picture = io.imread(path)[..., :3].astype(np.float64)
    height, width = picture.shape[:2]
    canvas = picture[height // 4 : 3 * height // 4, width // 4 : width // 2].mean(axis=-1)
    return height >= 600 and width >= 900 and picture.std() > 20 and canvas.std() > 10


def test_the_documented_screenshot_is_of_the_viewer_with_the_widgets():
    assert screenshot_is_a_viewer_with_an_image(pathlib.Path(__file__).parents[1] / "docs" / "images" / "napari.png")


@pytest.mark.slow
def test_the_screenshot_example_docks_the_widgets_trains_denoises_and_draws_a_real_window(tmp_path):
    example = pathlib.Path(__file__).parents[1] / "examples" / "napari_screenshot.py"
    out = tmp_path / "napari.png"
    run = subprocess.run(
        [sys.executable, str(example), "--out", str(out), "--epochs", "2", "--steps", "3"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "trained: 2 epoch(s)" in run.stdout
    assert screenshot_is_a_viewer_with_an_image(out)


def test_an_rgb_layer_trains_jointly_and_denoises_into_an_rgb_layer_of_its_dtype(make_napari_viewer, qtbot, notes):
    rng = np.random.default_rng(0)
    photo = np.clip(noisy_image((64, 64))[..., None] + rng.normal(0, 10, (64, 64, 3)), 0, 255).astype(np.uint8)
    viewer, _, trainer = viewer_with_trainer(make_napari_viewer, photo, name="photo", rgb=True)
    assert trainer.axes.text() == "YXC"
    train(qtbot, trainer)
    assert trainer.estimator.n_channels_ == 3
    widget = DenoiseWidget(viewer)
    denoise(qtbot, widget)
    result = viewer.layers["photo denoised"]
    assert result.rgb and result.data.dtype == np.uint8
    expected = trainer.estimator.set_params(dtype="input").transform(photo)
    np.testing.assert_array_equal(result.data, expected)
    assert not [n for n in notes if n[0] == "error"]


@pytest.mark.slow
def test_the_trained_model_exports_to_the_model_zoo_and_the_package_denoises_the_same(
    make_napari_viewer, qtbot, notes, tmp_path
):
    pytest.importorskip("bioimageio.core", reason="the [bioimageio] extra is not installed")
    image = noisy_image()
    viewer, _, trainer = viewer_with_trainer(make_napari_viewer, image)
    train(qtbot, trainer)
    path = trainer.export_model(tmp_path / "model.zip")
    assert path is not None, notes
    denoiser = DenoiseWidget(viewer)
    assert denoiser.load_model(path) is not None
    denoise(qtbot, denoiser)
    np.testing.assert_array_equal(viewer.layers["noisy denoised"].data, trainer.estimator.transform(image))
    assert trainer.export_model(path) is None and "exists" in notes[-1][1]
