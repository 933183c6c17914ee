"""BioImage Model Zoo export and import, judged by the zoo's own runtime (bioimageio.core)."""

import json
import socket
import zipfile

import numpy as np
import pytest
import torch
from conftest import tiny

pytest.importorskip("bioimageio.core", reason='the [bioimageio] extra is not installed: pip install "n2v-estimator[bioimageio]"')
from bioimageio.core import create_prediction_pipeline, load_description, predict  # noqa: E402
from bioimageio.core import test_model as zoo_model_test  # noqa: E402  (not collected by pytest)
from bioimageio.spec import save_bioimageio_package  # noqa: E402
from bioimageio.spec.model.v0_5 import TensorId  # noqa: E402

from n2v_estimator import Noise2VoidDenoiser  # noqa: E402
from n2v_estimator import _bioimageio  # noqa: E402
from n2v_estimator._persistence import ModelFileError  # noqa: E402
from n2v_estimator.cli import main  # noqa: E402

META = dict(name="Noise2Void test model", description="Denoises test images.", authors="Jane Doe")
RNG = np.random.default_rng(0)
IMAGE_2D = RNG.normal(100, 20, (64, 64)).astype(np.float32)
IMAGE_RGB = (RNG.normal(100, 20, (64, 64, 3)) * [1, 2, 0.5]).astype(np.float32)
VOLUME = RNG.normal(100, 20, (16, 32, 32)).astype(np.float32)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Every check here runs without a network: a connection attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def fitted_2d():
    return tiny(depth=2).fit(IMAGE_2D)


def exported(denoiser, image, path, **meta):
    return denoiser.export_bioimageio(path, image, **{**META, **meta})


def zoo_prediction(package, image, blocksize=None, weight_format="pytorch_state_dict"):
    """bioimageio.core's prediction of ``image`` (canonical ``(1, C, *spatial)``)."""
    pipeline = create_prediction_pipeline(load_description(str(package)), weight_format=weight_format)
    sample = predict(model=pipeline, inputs={"raw": image}, blocksize_parameter=blocksize)
    return sample.members[TensorId("denoised")].data.values


def assert_passes_the_zoos_model_test(package):
    for weight_format in ("pytorch_state_dict", "torchscript"):
        summary = zoo_model_test(str(package), weight_format=weight_format)
        failures = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status == "failed"]
        assert summary.status == "passed", failures


def test_an_exported_2d_model_passes_the_zoos_model_test(fitted_2d, tmp_path):
    package = exported(fitted_2d, IMAGE_2D, tmp_path / "model.zip")
    assert package == tmp_path / "model.zip"
    assert_passes_the_zoos_model_test(package)
    names = set(zipfile.ZipFile(package).namelist())
    assert {"rdf.yaml", "README.md", "cover.png", "weights.pt", "weights_torchscript.pt", "n2v_unet.py",
            "test_input.npy", "test_output.npy", _bioimageio.MODEL_FILE} <= names


@pytest.mark.parametrize("weight_format", ["pytorch_state_dict", pytest.param("torchscript", marks=pytest.mark.slow)])
def test_the_zoos_prediction_is_our_transform_in_tiles_and_at_the_edges(fitted_2d, tmp_path, weight_format):
    package = exported(fitted_2d, IMAGE_2D, tmp_path / "model.zip")
    new = np.random.default_rng(7).normal(100, 20, (160, 136)).astype(np.float32)  # not the training image
    ours = fitted_2d.transform(new)
    scale = np.abs(ours).max()
    for blocksize in (None, 10):  # the whole image, then the runtime's own tiles (100 wide, with the declared halo)
        theirs = zoo_prediction(package, new[None, None], blocksize, weight_format)[0, 0]
        assert np.abs(theirs - ours).max() <= 1e-6 * scale, blocksize


@pytest.mark.slow
def test_the_zoos_prediction_with_tta_is_our_transform_with_tta(tmp_path):
    denoiser = tiny(depth=2, tta=True).fit(IMAGE_2D)
    package = exported(denoiser, IMAGE_2D, tmp_path / "tta.zip")
    new = np.random.default_rng(8).normal(100, 20, (96, 80)).astype(np.float32)
    ours = denoiser.transform(new)
    assert np.abs(zoo_prediction(package, new[None, None])[0, 0] - ours).max() <= 1e-6 * np.abs(ours).max()


@pytest.mark.slow
def test_an_exported_rgb_model_passes_and_predicts_as_we_do(tmp_path):
    denoiser = tiny(axes="YXC").fit(IMAGE_RGB)
    package = exported(denoiser, IMAGE_RGB, tmp_path / "rgb.zip")
    assert_passes_the_zoos_model_test(package)
    new = (np.random.default_rng(9).normal(100, 20, (96, 80, 3)) * [1, 2, 0.5]).astype(np.float32)
    ours = denoiser.transform(new)
    theirs = np.moveaxis(zoo_prediction(package, np.moveaxis(new, -1, 0)[None])[0], 0, -1)
    assert np.abs(theirs - ours).max() <= 1e-6 * np.abs(ours).max()


@pytest.mark.slow
def test_an_exported_3d_model_passes_and_predicts_as_we_do(tmp_path):
    denoiser = tiny(axes="ZYX", patch_size=8).fit(VOLUME)
    package = exported(denoiser, VOLUME, tmp_path / "volume.zip")
    assert_passes_the_zoos_model_test(package)
    new = np.random.default_rng(10).normal(100, 20, (24, 40, 36)).astype(np.float32)  # sides >= 2 halos + step
    ours = denoiser.transform(new)
    assert np.abs(zoo_prediction(package, new[None, None])[0, 0] - ours).max() <= 1e-6 * np.abs(ours).max()


@pytest.mark.slow
@pytest.mark.parametrize(
    "params",
    [
        dict(blurpool=True, skip_skipone=True, manipulator="median"),  # N2V2
        dict(struct_mask=("x", 3)),  # structN2V
        dict(residual=True, batch_norm=False, kernel_size=5, independent_channels=False, depth=1),
    ],
)
def test_variants_pass_the_zoos_model_test_and_predict_as_we_do(params, tmp_path):
    denoiser = tiny(**params).fit(IMAGE_2D)
    package = exported(denoiser, IMAGE_2D, tmp_path / "variant.zip")
    assert_passes_the_zoos_model_test(package)
    new = np.random.default_rng(11).normal(100, 20, (128, 112)).astype(np.float32)
    ours = denoiser.transform(new)
    for blocksize in (None, 10):
        theirs = zoo_prediction(package, new[None, None], blocksize)[0, 0]
        assert np.abs(theirs - ours).max() <= 1e-6 * np.abs(ours).max()
    rdf = zipfile.ZipFile(package).read("rdf.yaml").decode()
    if "struct_mask" in params:
        assert "structn2v" in rdf and "10.1109/ISBI45749.2020.9098336" in rdf
    if "blurpool" in params:
        assert "n2v2" in rdf


def test_export_then_from_bioimageio_gives_an_identical_denoiser(fitted_2d, tmp_path):
    package = exported(fitted_2d, IMAGE_2D, tmp_path / "model.zip")
    again = Noise2VoidDenoiser.from_bioimageio(package)
    new = np.random.default_rng(12).normal(100, 20, (50, 70))
    np.testing.assert_array_equal(again.transform(new), fitted_2d.transform(new))
    assert again.get_params() == fitted_2d.get_params()
    np.testing.assert_array_equal(again.mean_, fitted_2d.mean_)
    assert again.history_ == fitted_2d.history_


def test_the_package_describes_our_normalisation_halo_and_tile_step(fitted_2d, tmp_path):
    descr = load_description(str(exported(fitted_2d, IMAGE_2D, tmp_path / "model.zip")))
    (preprocessing,) = [p for p in descr.inputs[0].preprocessing if p.id == "fixed_zero_mean_unit_variance"]
    assert preprocessing.kwargs.mean == pytest.approx(list(fitted_2d.mean_))
    assert preprocessing.kwargs.std == pytest.approx(list(fitted_2d.std_))
    (postprocessing,) = [p for p in descr.outputs[0].postprocessing if p.id == "scale_linear"]
    assert postprocessing.kwargs.gain == pytest.approx(list(fitted_2d.std_))
    assert postprocessing.kwargs.offset == pytest.approx(list(fitted_2d.mean_))
    halo = {str(a.id): a.halo for a in descr.outputs[0].axes if hasattr(a, "halo")}
    assert halo == {"y": 28, "x": 28}  # the receptive radius 26 of depth 2, on the pooling grid of 4
    steps = {str(a.id): a.size.step for a in descr.inputs[0].axes if hasattr(a.size, "step")}
    assert steps == {"y": 4, "x": 4}
    assert descr.weights.pytorch_state_dict.architecture.kwargs["depth"] == 2
    readme = zipfile.ZipFile(tmp_path / "model.zip").read("README.md").decode()
    assert "Denoises test images." in readme and "epochs" in readme and '"depth": 2' in readme


def test_the_architecture_source_stands_alone_and_computes_our_network(fitted_2d):
    namespace = {}
    exec(compile(_bioimageio.architecture_source(), "n2v_unet.py", "exec"), namespace)
    assert not any("n2v_estimator" in line for line in _bioimageio.architecture_source().splitlines() if "import" in line)
    network = namespace["Noise2VoidNetwork"](**_bioimageio.architecture_kwargs(fitted_2d)).eval()
    network.load_state_dict(fitted_2d.model_.state_dict())
    x = torch.from_numpy(np.random.default_rng(13).normal(size=(1, 1, 37, 45)).astype(np.float32))
    with torch.no_grad():
        torch.testing.assert_close(network(x), fitted_2d.model_.eval()(x))  # the layouts may differ


def test_a_probabilistic_model_is_refused_with_the_reason(tmp_path):
    denoiser = tiny(noise_model="gaussian").fit(IMAGE_2D)
    with pytest.raises(ValueError, match="probabilistic.*cannot be exported.*noise_model=None"):
        exported(denoiser, IMAGE_2D, tmp_path / "model.zip")
    assert not (tmp_path / "model.zip").exists()


def test_a_failed_export_leaves_an_existing_package_and_no_debris(fitted_2d, tmp_path, monkeypatch):
    package = tmp_path / "model.zip"
    package.write_bytes(b"the previous package")

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("bioimageio.spec.save_bioimageio_package", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        exported(fitted_2d, IMAGE_2D, package)
    assert package.read_bytes() == b"the previous package"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zip"]


def test_export_refuses_a_missing_folder_and_a_test_image_unlike_the_training_data(fitted_2d, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        exported(fitted_2d, IMAGE_2D, tmp_path / "missing" / "model.zip")
    with pytest.raises(ValueError):
        exported(fitted_2d, IMAGE_RGB, tmp_path / "model.zip")


def test_from_bioimageio_refuses_what_it_cannot_represent(fitted_2d, tmp_path):
    not_a_zip = tmp_path / "model.safetensors"
    fitted_2d.save(not_a_zip)
    with pytest.raises(ModelFileError, match="not a BioImage Model Zoo package"):
        Noise2VoidDenoiser.from_bioimageio(not_a_zip)
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(ModelFileError, match="no rdf.yaml"):
        Noise2VoidDenoiser.from_bioimageio(empty)
    invalid = tmp_path / "invalid.zip"
    with zipfile.ZipFile(invalid, "w") as archive:
        archive.writestr("rdf.yaml", "format_version: 0.5.12\ntype: model\nname: x\n")
    with pytest.raises(ModelFileError, match="not a valid BioImage Model Zoo model of spec 0.5"):
        Noise2VoidDenoiser.from_bioimageio(invalid)
    # Another tool's model: the same package without our config entry and model file.
    descr = load_description(str(exported(fitted_2d, IMAGE_2D, tmp_path / "model.zip")))
    others = descr.model_copy(update={"config": type(descr.config)(), "attachments": []})
    foreign = save_bioimageio_package(others, output_path=tmp_path / "foreign.zip")
    with pytest.raises(ModelFileError, match="not exported by n2v-estimator"):
        Noise2VoidDenoiser.from_bioimageio(foreign)


def test_the_command_line_exports_a_saved_model(fitted_2d, tmp_path, capsys):
    model, image, package = tmp_path / "model.safetensors", tmp_path / "noisy.npy", tmp_path / "model.zip"
    fitted_2d.save(model)
    np.save(image, IMAGE_2D)
    status = main(["export", "--model", str(model), "--test-image", str(image), "--output", str(package),
                   "--name", "Noise2Void from the CLI", "--description", "A test.", "--author", "Jane Doe",
                   "--author", "John Roe", "--tag", "confocal"])
    assert status == 0, capsys.readouterr().err
    descr = load_description(str(package))
    assert [a.name for a in descr.authors] == ["Jane Doe", "John Roe"] and "confocal" in descr.tags
    new = np.random.default_rng(14).normal(100, 20, (64, 64))
    np.testing.assert_array_equal(Noise2VoidDenoiser.from_bioimageio(package).transform(new), fitted_2d.transform(new))
    assert main(["export", "--model", str(model), "--test-image", str(image), "--output", str(tmp_path / "m.tar"),
                 "--name", "Noise2Void", "--description", "x", "--author", "J"]) == 2
    assert ".zip" in capsys.readouterr().err


def test_the_docstring_examples_run(tmp_path, monkeypatch):
    import doctest

    monkeypatch.chdir(tmp_path)
    assert doctest.testmod(_bioimageio, optionflags=doctest.ELLIPSIS).failed == 0


def test_the_package_config_names_the_version_that_wrote_it(fitted_2d, tmp_path):
    from n2v_estimator import __version__

    descr = load_description(str(exported(fitted_2d, IMAGE_2D, tmp_path / "model.zip")))
    ours = descr.config.model_extra[_bioimageio.CONFIG_KEY]
    assert json.loads(json.dumps(ours)) == {"version": __version__, "model_file": _bioimageio.MODEL_FILE}
