"""Models of the TensorFlow n2v package: imported with h5py, they predict what n2v 0.3.3 predicted.

The fixtures in tests/fixtures/n2v_models were made by the real n2v 0.3.3 with TensorFlow 2.15
(tests/fixtures/n2v_models/make_fixtures.py, in a virtual environment of its own); their test images
are made again here (synthetic.py), not stored."""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from n2v_estimator import Noise2VoidDenoiser  # noqa: E402
from n2v_estimator.data.blind_spot_grid import grid_cell_side  # noqa: E402
from n2v_estimator.models.keras_n2v import N2VModelError  # noqa: E402
from n2v_estimator.nets.geometry import NetworkGeometry  # noqa: E402

MODELS = Path(__file__).parent / "fixtures" / "n2v_models"
CASES = json.loads((MODELS / "cases.json").read_text())
_spec = importlib.util.spec_from_file_location("n2v_fixture_images", MODELS / "synthetic.py")
_images = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_images)


def fixture_image(name):
    """The image n2v predicted for the fixture ``name`` (made as make_fixtures.py made it)."""
    return _images.synthetic(tuple(CASES[name]["shape"]), CASES[name]["axes"], seed=2)


IMPORTABLE = [name for name in CASES if name != "per_channel_2channel"]


def inner(array, axes, reach):
    """The part of an image at least ``reach`` pixels from every edge."""
    return array[tuple(slice(reach, -reach) if a in "ZYX" else slice(None) for a in axes)]


def imported(name, **params):
    denoiser = Noise2VoidDenoiser.from_n2v(MODELS / name)
    return denoiser.set_params(axes=CASES[name]["axes"], precision="32", verbose=False, **params)


@pytest.mark.usefixtures("both_cpu_kinds")
@pytest.mark.parametrize("name", IMPORTABLE)
def test_the_imported_model_predicts_what_n2v_predicted_away_from_the_edges(name):
    denoiser = imported(name)
    geometry = NetworkGeometry.of(denoiser.model_.description)
    image, expected = fixture_image(name), np.load(MODELS / name / "prediction.npy")
    scale = float(expected.max() - expected.min())
    assert denoiser.model_.description["layout"] == "n2v-tf"
    ours = denoiser.transform(image)
    assert ours.shape == expected.shape and ours.dtype == np.float32
    np.testing.assert_allclose(
        inner(ours, CASES[name]["axes"], geometry.reach),
        inner(expected, CASES[name]["axes"], geometry.reach),
        rtol=0,
        atol=1e-4 * scale,
    )
    # In tiles (each at least twice the overlap, so that tiles and the whole agree): the same.
    denoiser.set_params(tile_size=max(64, 2 * geometry.overlap))
    tiled = denoiser.transform(image)
    assert max(image.shape) + 2 * geometry.halo > denoiser.tile_size  # really several tiles
    np.testing.assert_allclose(
        inner(tiled, CASES[name]["axes"], geometry.reach),
        inner(expected, CASES[name]["axes"], geometry.reach),
        rtol=0,
        atol=1e-4 * scale,
    )


@pytest.mark.usefixtures("both_cpu_kinds")
@pytest.mark.parametrize("name", [n for n in IMPORTABLE if n != "n2v2_2d"])
def test_n2v_tiled_prediction_is_matched_too(name):
    """n2v's own tiles agree with its whole prediction except with blur-pool (1.2e-3 of the range there)."""
    denoiser = imported(name)
    reach = NetworkGeometry.of(denoiser.model_.description).reach
    image, tiled = fixture_image(name), np.load(MODELS / name / "prediction_tiled.npy")
    scale = float(tiled.max() - tiled.min())
    np.testing.assert_allclose(
        inner(denoiser.transform(image), CASES[name]["axes"], reach),
        inner(tiled, CASES[name]["axes"], reach),
        rtol=0,
        atol=1e-4 * scale,
    )


def test_the_settings_of_the_config_are_the_estimators_parameters():
    denoiser = Noise2VoidDenoiser.from_n2v(MODELS / "n2v2_2d")
    config = json.loads((MODELS / "n2v2_2d" / "config.json").read_text())
    assert (denoiser.blurpool, denoiser.skip_skipone, denoiser.manipulator) == (True, True, "median")
    assert (denoiser.depth, denoiser.n_filters, denoiser.kernel_size) == (2, 8, 3)
    assert denoiser.patch_size == tuple(config["n2v_patch_shape"]) and denoiser.batch_size == config["train_batch_size"]
    np.testing.assert_allclose(denoiser.mean_, [float(m) for m in config["means"]])
    np.testing.assert_allclose(denoiser.std_, [float(s) for s in config["stds"]])
    bsd = Noise2VoidDenoiser.from_n2v(MODELS / "bsd68_small")
    assert bsd.residual and bsd.batch_norm and bsd.masked_pixel_percentage == pytest.approx(100 / 22**2)  # 0.198


def test_last_weights_are_read_on_request(tmp_path):
    folder = copy_model(tmp_path)
    with h5py.File(folder / "weights_last.h5", "r+") as f:
        f["conv2d"]["conv2d/bias:0"][...] += 1.0
    best = Noise2VoidDenoiser.from_n2v(folder)
    last = Noise2VoidDenoiser.from_n2v(folder, weights="last")
    assert float((last.model_.head.bias - best.model_.head.bias).detach()) == pytest.approx(1.0)
    with pytest.raises(N2VModelError, match="weights is 'best', 'last'"):
        Noise2VoidDenoiser.from_n2v(MODELS / "n2v_2d", weights="../n2v_3d/weights_best.h5")


def test_per_channel_networks_of_several_channels_are_refused_with_the_reason():
    """n2v 0.3's per-channel networks all see the last channel (its predictions prove it): refused, with the way out."""
    with pytest.raises(N2VModelError, match="last channel.*from_n2v_config"):
        Noise2VoidDenoiser.from_n2v(MODELS / "per_channel_2channel")


def test_an_imported_model_trains_further_saves_and_loads_in_its_layout(tmp_path):
    denoiser = imported(
        "n2v_2d",
        warm_start=True,
        max_epochs=1,
        steps_per_epoch=2,
        patch_size=32,
        batch_size=4,
        random_state=0,
        validation_fraction=0,
    )
    image = fixture_image("n2v_2d")
    before = denoiser.transform(image)
    denoiser.fit(image)
    assert denoiser.model_.description["layout"] == "n2v-tf" and len(denoiser.history_) == 1
    after = denoiser.transform(image)
    assert np.abs(after - before).max() > 0
    denoiser.save(tmp_path / "model.safetensors")
    np.testing.assert_array_equal(Noise2VoidDenoiser.load(tmp_path / "model.safetensors").transform(image), after)


def copy_model(tmp_path, name="n2v_2d"):
    target = tmp_path / name
    shutil.copytree(MODELS / name, target)
    return target


def test_a_missing_or_altered_weight_is_refused_by_name(tmp_path):
    folder = copy_model(tmp_path)
    with h5py.File(folder / "weights_best.h5", "r+") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]
        f.attrs["layer_names"] = [n.encode() for n in names if n != "channel_0middle_0"]
    with pytest.raises(N2VModelError, match="missing layers \\['channel_0middle_0'\\]"):
        Noise2VoidDenoiser.from_n2v(folder)
    folder = copy_model(tmp_path / "b")
    with h5py.File(folder / "weights_best.h5", "r+") as f:
        layer = f["channel_0middle_0"]
        del layer["channel_0middle_0/kernel:0"]
        layer.create_dataset("channel_0middle_0/kernel:0", data=np.zeros((3, 3, 16, 32), np.float32))
    with pytest.raises(
        N2VModelError, match="channel_0middle_0/kernel has shape \\(3, 3, 16, 32\\).*\\(5, 5, 16, 32\\)"
    ):
        Noise2VoidDenoiser.from_n2v(folder)


def test_an_unknown_layer_an_external_weight_and_a_file_that_is_not_hdf5_are_refused(tmp_path):
    folder = copy_model(tmp_path)
    with h5py.File(folder / "weights_best.h5", "r+") as f:
        group = f.create_group("mystery")
        group.attrs["weight_names"] = [b"mystery/kernel:0"]
        group.create_dataset("mystery/kernel:0", data=np.zeros(3, np.float32))
        f.attrs["layer_names"] = [
            *(n if isinstance(n, bytes) else n.encode() for n in f.attrs["layer_names"]),
            b"mystery",
        ]
    with pytest.raises(N2VModelError, match="unknown layers \\['mystery'\\]"):
        Noise2VoidDenoiser.from_n2v(folder)
    folder = copy_model(tmp_path / "b")
    (tmp_path / "secret.bin").write_bytes(np.zeros(8 * 8, np.float32).tobytes())
    with h5py.File(folder / "weights_best.h5", "r+") as f:
        layer = f["conv2d"]
        del layer["conv2d/bias:0"]
        layer.create_dataset(
            "conv2d/bias:0", shape=(1,), dtype=np.float32, external=[(str(tmp_path / "secret.bin"), 0, 4)]
        )
    with pytest.raises(N2VModelError, match="not stored in the file itself"):
        Noise2VoidDenoiser.from_n2v(folder)
    folder = copy_model(tmp_path / "c")
    (folder / "weights_best.h5").write_bytes(b"\x80\x04 not an HDF5 file, perhaps a pickle")
    with pytest.raises(N2VModelError, match="is not an HDF5 file"):
        Noise2VoidDenoiser.from_n2v(folder)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"unet_last_activation": "sigmoid"}, "unet_last_activation='sigmoid' cannot be represented"),
        ({"probabilistic": True}, "probabilistic=True"),
        ({"n_channel_out": 2}, "n_channel_out=2 differs"),
        ({"mystery_setting": 1}, "\\['mystery_setting'\\] are unknown"),
        ({"unet_kern_size": 4}, "unet_kern_size=4 is not an odd int from 1 to 31"),
        ({"n2v_manipulator": "__import__('os')"}, "n2v_manipulator=.* is not one of"),
        ({"means": ["not a number"]}, "means .* are not numbers"),
        ({"stds": ["0"]}, "stds \\[0.0\\] must all be positive"),
        ({"means": ["1", "2"]}, "are not 1 finite number"),
    ],
)
def test_a_config_this_package_cannot_represent_is_refused_naming_the_setting(tmp_path, change, message):
    folder = copy_model(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(N2VModelError, match=message):
        Noise2VoidDenoiser.from_n2v(folder)


# n2v's BSD68 notebook's N2VConfig.
BSD68_NOTEBOOK = dict(
    n_dim=2,
    axes="YXC",
    n_channel_in=1,
    n_channel_out=1,
    means=["0"],
    stds=["1"],
    unet_kern_size=3,
    train_steps_per_epoch=400,
    train_epochs=200,
    train_loss="mse",
    batch_norm=True,
    train_batch_size=128,
    n2v_perc_pix=0.198,
    n2v_patch_shape=(64, 64),
    unet_n_first=96,
    unet_residual=True,
    n2v_manipulator="uniform_withCP",
    n2v_neighborhood_radius=2,
    single_net_per_channel=False,
    unet_n_depth=2,
    train_learning_rate=0.0004,
    unet_last_activation="linear",
    train_reduce_lr=None,
)


def test_from_n2v_config_gives_the_bsd68_notebooks_training_settings():
    denoiser = Noise2VoidDenoiser.from_n2v_config(BSD68_NOTEBOOK)
    assert not hasattr(denoiser, "model_")
    expected = dict(
        axes="YX",
        kernel_size=3,
        steps_per_epoch=400,
        max_epochs=200,
        batch_norm=True,
        batch_size=128,
        masked_pixel_percentage=100 / 22**2,
        patch_size=(64, 64),
        n_filters=96,
        residual=True,
        manipulator="uniform_withCP",
        neighborhood_radius=2,
        independent_channels=False,
        depth=2,
        learning_rate=0.0004,
    )
    assert {k: denoiser.get_params()[k] for k in expected} == expected


@pytest.mark.parametrize(
    "n_dim, perc_pix, box", [(2, 0.198, 22), (3, 0.198, 22), (2, 1.5, 8), (3, 5.0, 4), (3, 100.0, 1)]
)
def test_n2v_perc_pix_becomes_the_share_of_blind_spots_n2v_trains_with_in_2d_and_3d(n_dim, perc_pix, box):
    """n2v places one blind spot per box of side round(sqrt(100 / perc_pix)), in 3D too: here the
    grid cell is that box, so a converted 3D configuration trains with n2v's few blind spots, not
    with 21 times more (0.198% of a 32^3 patch is 65; n2v places about 3)."""
    config = {
        **BSD68_NOTEBOOK,
        "n_dim": n_dim,
        "axes": "ZYXC" if n_dim == 3 else "YXC",
        "n2v_perc_pix": perc_pix,
        "n2v_patch_shape": (32,) * n_dim,
    }
    denoiser = Noise2VoidDenoiser.from_n2v_config(config)
    assert denoiser.masked_pixel_percentage == pytest.approx(100 / box**n_dim)
    assert grid_cell_side(denoiser.masked_pixel_percentage, n_dim) == pytest.approx(box)


def test_from_n2v_config_reads_a_config_file_and_says_what_trains_differently():
    with pytest.warns(UserWarning, match="train_loss='mae': this package trains with the mean squared error"):
        denoiser = Noise2VoidDenoiser.from_n2v_config(MODELS / "n2v_2d" / "config.json")
    assert denoiser.kernel_size == 5 and denoiser.independent_channels


def test_the_pooling_grid_is_centred_as_n2v_pads_only_for_imported_networks():
    ours = NetworkGeometry(ndim=2, depth=2, kernel_size=3)
    theirs = NetworkGeometry(ndim=2, depth=2, kernel_size=3, centred_grid=True)
    assert [ours.grid_phase(n) for n in (8, 9, 10, 11)] == [0, 0, 0, 0]
    assert [theirs.grid_phase(n) for n in (8, 9, 10, 11)] == [0, 1, 1, 0]


def test_the_command_line_imports_a_folder_into_a_model_file_and_replaces_nothing(tmp_path, capsys):
    from n2v_estimator.cli import main

    model = tmp_path / "imported.safetensors"
    assert main(["import-n2v", str(MODELS / "n2v_2d"), "--model", str(model)]) == 0
    assert "2D, 1 channel(s), axes YX" in capsys.readouterr().out
    image = fixture_image("n2v_2d")
    expected = Noise2VoidDenoiser.from_n2v(MODELS / "n2v_2d").set_params(verbose=False).transform(image)
    np.testing.assert_array_equal(Noise2VoidDenoiser.load(model).set_params(verbose=False).transform(image), expected)
    written = model.read_bytes()
    assert main(["import-n2v", str(MODELS / "n2v_3d"), "--model", str(model)]) == 2
    assert "exists: add --overwrite" in capsys.readouterr().err and model.read_bytes() == written
    assert main(["import-n2v", str(MODELS / "n2v_3d"), "--model", str(model), "--overwrite"]) == 0
    assert "(replaced)" in capsys.readouterr().out and Noise2VoidDenoiser.load(model).spatial_ndim_ == 3
    assert main(["import-n2v", str(MODELS / "per_channel_2channel"), "--model", str(tmp_path / "b.safetensors")]) == 2
    assert "last channel" in capsys.readouterr().err and not (tmp_path / "b.safetensors").exists()


@pytest.mark.usefixtures("both_cpu_kinds")
def test_a_dask_array_is_denoised_chunk_by_chunk_as_the_whole_image_is():
    """Chunks are told where the whole image's (centred) pooling grid starts before them."""
    da = pytest.importorskip("dask.array")
    denoiser = imported("bsd68_small")
    image = fixture_image("bsd68_small")
    image = np.concatenate([image, image[:, :31]], axis=1)[:117]  # 117 x 141: no side a multiple of 4
    whole = denoiser.transform(image)
    lazy = denoiser.transform(da.from_array(image, chunks=(50, 60)))
    np.testing.assert_allclose(lazy.compute(), whole, rtol=0, atol=1e-5 * float(whole.max() - whole.min()))


def test_a_crafted_layer_list_is_refused_as_an_unreadable_weights_file(tmp_path):
    folder = copy_model(tmp_path)
    with h5py.File(folder / "weights_best.h5", "r+") as f:
        f.attrs["layer_names"] = [
            *(n if isinstance(n, bytes) else n.encode() for n in f.attrs["layer_names"]),
            b"nowhere",
        ]
    with pytest.raises(N2VModelError, match="'nowhere' is not in the file"):
        Noise2VoidDenoiser.from_n2v(folder)
