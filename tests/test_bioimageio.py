"""BioImage Model Zoo export and import, judged by the zoo's own runtime (bioimageio.core)."""

import io
import json
import re
import socket
import tempfile
import time
import zipfile

import numpy as np
import pytest
import torch
from conftest import tiny

pytest.importorskip(
    "bioimageio.core", reason='the [bioimageio] extra is not installed: pip install "n2v-estimator[bioimageio]"'
)
from bioimageio.core import create_prediction_pipeline, load_description, predict  # noqa: E402
from bioimageio.core import test_model as zoo_model_test  # noqa: E402  (not collected by pytest)
from bioimageio.spec import save_bioimageio_package  # noqa: E402
from bioimageio.spec.model.v0_5 import TensorId  # noqa: E402

from n2v_estimator import (
    ModelFileError,  # noqa: E402
    Noise2VoidDenoiser,  # noqa: E402
    exchange,
)
from n2v_estimator.cli import main  # noqa: E402
from n2v_estimator.gateway import zipcheck as _zipcheck
from n2v_estimator.models import zoo_export, zoo_import

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


@pytest.mark.slow
def test_an_exported_2d_model_passes_the_zoos_model_test(fitted_2d, tmp_path):
    package = exported(fitted_2d, IMAGE_2D, tmp_path / "model.zip")
    assert package == tmp_path / "model.zip"
    assert_passes_the_zoos_model_test(package)
    names = set(zipfile.ZipFile(package).namelist())
    assert {
        "rdf.yaml",
        "README.md",
        "cover.png",
        "weights.pt",
        "weights_torchscript.pt",
        "n2v_unet.py",
        "test_input.npy",
        "test_output.npy",
        zoo_export.MODEL_FILE,
    } <= names


@pytest.mark.usefixtures("both_cpu_kinds")
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
    assert "Denoises test images." in readme and '"depth": 2' in readme
    history = fitted_2d.history_
    best = min((h["val_loss"] for h in history if h.get("val_loss") is not None), default=None)
    training = " ".join(readme.split("## Training", 1)[1].split("## Use", 1)[0].split())
    assert f"{len(history)} epochs; last training loss {history[-1]['train_loss']:.4g}" in training
    assert f"best validation loss {'n/a' if best is None else format(best, '.4g')}" in training
    assert "nan" not in training.lower() and history[-1]["train_loss"] > 0
    assert "x".join(map(str, fitted_2d.patch_shape_)) in training


def test_the_architecture_source_stands_alone_and_computes_our_network(fitted_2d):
    namespace = {}
    exec(compile(zoo_export.architecture_source(), "n2v_unet.py", "exec"), namespace)
    assert not any(
        "n2v_estimator" in line for line in zoo_export.architecture_source().splitlines() if "import" in line
    )
    network = namespace["Noise2VoidNetwork"](
        **zoo_export.architecture_kwargs(fitted_2d.model_.description, fitted_2d.tta)
    ).eval()
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
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        exported(fitted_2d, IMAGE_2D, package)
    with pytest.raises(RuntimeError, match="disk full"):
        exported(fitted_2d, IMAGE_2D, package, overwrite=True)
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
    status = main(
        [
            "export",
            "--model",
            str(model),
            "--test-image",
            str(image),
            "--output",
            str(package),
            "--name",
            "Noise2Void from the CLI",
            "--description",
            "A test.",
            "--author",
            "Jane Doe",
            "--author",
            "John Roe",
            "--tag",
            "confocal",
        ]
    )
    assert status == 0, capsys.readouterr().err
    descr = load_description(str(package))
    assert [a.name for a in descr.authors] == ["Jane Doe", "John Roe"] and "confocal" in descr.tags
    new = np.random.default_rng(14).normal(100, 20, (64, 64))
    np.testing.assert_array_equal(Noise2VoidDenoiser.from_bioimageio(package).transform(new), fitted_2d.transform(new))
    assert (
        main(
            [
                "export",
                "--model",
                str(model),
                "--test-image",
                str(image),
                "--output",
                str(tmp_path / "m.tar"),
                "--name",
                "Noise2Void",
                "--description",
                "x",
                "--author",
                "J",
            ]
        )
        == 2
    )
    assert ".zip" in capsys.readouterr().err
    written = package.read_bytes()
    again = [
        "export",
        "--model",
        str(model),
        "--test-image",
        str(image),
        "--output",
        str(package),
        "--name",
        "Noise2Void again",
        "--description",
        "x",
        "--author",
        "J",
    ]
    assert main(again) == 2 and "exists: add --overwrite" in capsys.readouterr().err and package.read_bytes() == written
    assert main([*again, "--overwrite"]) == 0 and "-> (replaced)" in capsys.readouterr().out


def test_the_docstring_examples_run(tmp_path, monkeypatch):
    import doctest

    monkeypatch.chdir(tmp_path)
    assert doctest.testmod(exchange, optionflags=doctest.ELLIPSIS).failed == 0


def test_the_package_config_names_the_version_that_wrote_it(fitted_2d, tmp_path):
    from n2v_estimator import __version__

    descr = load_description(str(exported(fitted_2d, IMAGE_2D, tmp_path / "model.zip")))
    ours = descr.config.model_extra[zoo_export.CONFIG_KEY]
    assert json.loads(json.dumps(ours)) == {"version": __version__, "model_file": zoo_export.MODEL_FILE}


def test_the_readme_reports_the_last_training_loss(fitted_2d, tmp_path):
    readme = zipfile.ZipFile(exported(fitted_2d, IMAGE_2D, tmp_path / "model.zip")).read("README.md").decode()
    assert f"last training loss\n  {fitted_2d.history_[-1]['train_loss']:.4g};" in readme


# ------------------------------------------------- packages from strangers
# Each hostile package is crafted here, small; from_bioimageio must refuse it with
# a ModelFileError naming the fault, in well under a second, writing nothing.
SAFE_RDF = b"format_version: 0.5.4\ntype: model\nname: a stranger's package\n"


@pytest.fixture
def temporary_folder(tmp_path, monkeypatch):
    """tempfile's folder for the test: a refused package leaves it empty."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def package_with(path, members, compression=zipfile.ZIP_DEFLATED):
    """A zip at ``path`` holding ``members`` (name: bytes), and a harmless rdf.yaml unless among them."""
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in {"rdf.yaml": SAFE_RDF, **members}.items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return path


def declare(package, name, size):
    """Rewrite the uncompressed size that ``package``'s central directory declares for ``name``."""
    data = bytearray(package.read_bytes())
    start = data.find(b"PK\x01\x02")
    while start >= 0:
        length = int.from_bytes(data[start + 28 : start + 30], "little")
        if data[start + 46 : start + 46 + length] == name.encode():
            data[start + 24 : start + 28] = size.to_bytes(4, "little")
            package.write_bytes(bytes(data))
            return package
        start = data.find(b"PK\x01\x02", start + 46)
    raise AssertionError(f"{name} not in {package}")


def assert_refused_quickly(package, match, temporary_folder):
    start = time.perf_counter()
    with pytest.raises(ModelFileError, match=match):
        Noise2VoidDenoiser.from_bioimageio(package)
    assert time.perf_counter() - start < 2.0
    assert list(temporary_folder.iterdir()) == []


def alias_bomb(levels):
    """A 'billion laughs' rdf.yaml: ``10**levels`` strings from a few KB of aliases."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return (SAFE_RDF.decode() + "\n".join(lines) + "\n").encode()


def test_an_alias_bomb_in_rdf_yaml_is_refused_before_it_expands(tmp_path, temporary_folder):
    rdf = alias_bomb(9)  # 10**9 strings: minutes and GiBs for a YAML loader
    assert len(rdf) < 4096
    package = package_with(tmp_path / "bomb.zip", {"rdf.yaml": rdf})
    assert_refused_quickly(package, r"bomb.zip: rdf.yaml uses the YAML anchor or alias 'a0'", temporary_folder)


def test_an_alias_bomb_in_any_yaml_member_is_refused(tmp_path, temporary_folder):
    # bioimageio.spec takes e.g. "a.rdf.yaml" before "rdf.yaml", and reads conda environment files.
    package = package_with(tmp_path / "bomb.zip", {"a.rdf.yaml": alias_bomb(9)})
    assert_refused_quickly(package, r"a\.rdf\.yaml uses the YAML anchor or alias", temporary_folder)


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system", "!!python/name:os.system", "!custom"])
def test_yaml_tags_that_construct_objects_are_refused(tmp_path, temporary_folder, tag):
    marker = tmp_path / "ran"
    rdf = SAFE_RDF + f'description: {tag} ["touch {marker}"]\n'.encode()
    package = package_with(tmp_path / "tagged.zip", {"rdf.yaml": rdf})
    assert_refused_quickly(package, r"rdf.yaml has the YAML tag '.*(python|custom).*' \(line 4\)", temporary_folder)
    assert not marker.exists()


@pytest.mark.parametrize(
    "url",
    [
        "https://example.org/weights.pt",
        "HTTP://example.org/huge.npy",
        "s3://bucket/x",
        "http:127.0.0.1:8765/weights.pt",
        "http:/example.org/x",
        "file:/etc/passwd",
        "FILE:///etc/passwd",
        "ftp:host/x",
        "//example.org/x",
    ],
)
def test_files_a_package_would_download_or_open_are_refused_in_any_spelling(tmp_path, temporary_folder, url):
    rdf = SAFE_RDF + f"weights:\n  pytorch_state_dict:\n    source: {url}\n".encode()
    package = package_with(tmp_path / "remote.zip", {"rdf.yaml": rdf})
    assert_refused_quickly(
        package,
        r"rdf.yaml names the file .* \(line 6\), which is not a relative path inside the "
        r"package: bioimageio.spec would download it",
        temporary_folder,
    )


@pytest.mark.parametrize(
    "source", ["/etc/passwd", "~/.ssh/id_rsa", "../outside.npy", "C:\\secret.npy", "a/../../b.npy"]
)
def test_a_path_outside_the_package_is_refused_and_no_hash_of_it_is_printed(tmp_path, temporary_folder, source):
    """bioimageio.spec opened an absolute path to check its sha256, and its error printed the file's
    actual sha256 (an oracle for any file the user can read)."""
    rdf = (
        SAFE_RDF
        + f"inputs:\n  - id: raw\n    test_tensor:\n      source: '{source}'\n      sha256: {'0' * 64}\n".encode()
    )
    package = package_with(tmp_path / "local.zip", {"rdf.yaml": rdf})
    with pytest.raises(ModelFileError) as info:
        Noise2VoidDenoiser.from_bioimageio(package)
    assert "not a relative path inside the package" in str(info.value)
    assert not re.search(r"[0-9a-f]{64}", str(info.value).replace("0" * 64, ""))


def test_a_source_that_is_not_a_member_is_refused(tmp_path, temporary_folder):
    rdf = SAFE_RDF + b"documentation: README.md\ncovers: [cover.png]\n"
    package = package_with(tmp_path / "missing.zip", {"rdf.yaml": rdf, "cover.png": b"png"})
    assert_refused_quickly(
        package, r"rdf.yaml names documentation 'README.md', which is not a file of the package", temporary_folder
    )


def test_deeply_nested_yaml_is_refused(tmp_path, temporary_folder):
    rdf = SAFE_RDF + b"description: " + b"[" * 1000 + b"]" * 1000 + b"\n"
    package = package_with(tmp_path / "nested.zip", {"rdf.yaml": rdf})
    # Our count, or libyaml's own nesting limit (PyYAML with its C parser stops at 1000 levels first).
    assert_refused_quickly(
        package, r"rdf.yaml (is nested more than 32 levels deep|.*exceeded maximum nesting depth)", temporary_folder
    )


def test_yaml_of_too_many_events_is_refused(tmp_path, temporary_folder):
    rdf = SAFE_RDF + b"description: [" + b",".join([b"x"] * 20_000) + b"]\n"  # 40 KB: seconds for ruyaml
    package = package_with(tmp_path / "dense.zip", {"rdf.yaml": rdf})
    assert_refused_quickly(package, r"rdf.yaml has more than 10000 YAML events", temporary_folder)


def test_an_rdf_yaml_over_one_mib_is_refused_unread(tmp_path, temporary_folder):
    rdf = SAFE_RDF + b"# " + b" " * (4 * 2**20) + b"\n"  # deflates to a few KB
    package = package_with(tmp_path / "large.zip", {"rdf.yaml": rdf})
    assert package.stat().st_size < 2**16
    assert_refused_quickly(
        package, rf"rdf.yaml' declares {len(rdf)} bytes .* more than the 1048576 read", temporary_folder
    )


@pytest.mark.parametrize("name", [zoo_export.MODEL_FILE, "test_input.npy"])
def test_a_member_declaring_gigabytes_in_a_small_zip_is_refused_unread(tmp_path, temporary_folder, name):
    package = declare(package_with(tmp_path / "bomb.zip", {name: bytes(2**20)}), name, 2**31)
    assert_refused_quickly(package, rf"'{name}' declares 2147483648 bytes", temporary_folder)


def test_a_member_that_inflates_over_a_hundred_times_is_refused(tmp_path, temporary_folder):
    package = package_with(tmp_path / "bomb.zip", {"test_input.npy": bytes(16 * 2**20)})  # deflated ~1000x
    assert_refused_quickly(
        package, r"'test_input.npy' declares 16777216 bytes compressed to \d+, more than 100 times", temporary_folder
    )


def test_members_that_together_inflate_beyond_the_budget_are_refused(tmp_path, temporary_folder):
    # Each 1 MiB member is too small to be judged by its ratio; 65 MiB from a ~100 KB zip is not.
    members = {f"part{i}.bin": bytes(2**20) for i in range(65)}
    package = package_with(tmp_path / "bomb.zip", members)
    assert_refused_quickly(
        package, r"66 members declare 68157\d+ bytes uncompressed in all, but a zip of \d+ bytes", temporary_folder
    )


def test_a_model_file_over_its_cap_is_refused_unread(tmp_path, temporary_folder, monkeypatch):
    monkeypatch.setattr(_zipcheck, "MAX_MODEL_BYTES", 1000)
    package = package_with(tmp_path / "big.zip", {zoo_export.MODEL_FILE: RNG.bytes(2000)}, zipfile.ZIP_STORED)
    assert_refused_quickly(
        package,
        r"the model file 'n2v_estimator_model.safetensors' declares 2000 bytes, "
        r"more than the 1000",
        temporary_folder,
    )


def test_a_package_of_too_many_members_is_refused(tmp_path, temporary_folder):
    package = package_with(tmp_path / "many.zip", {f"file{i}.txt": b"" for i in range(1000)})
    assert_refused_quickly(package, r"many.zip holds 1001 files, more than the 256", temporary_folder)


@pytest.mark.parametrize(
    "name", ["/etc/cron.d/evil", "../evil.py", "weights/../../evil.py", "C:\\evil.py", "..\\evil.py"]
)
def test_members_with_paths_outside_the_package_are_refused(tmp_path, temporary_folder, name):
    package = package_with(tmp_path / "escape.zip", {name: b"import os"})
    assert_refused_quickly(package, r"has an absolute path or a '\.\.' component", temporary_folder)


def test_a_member_named_twice_is_refused(tmp_path, temporary_folder):
    package = package_with(tmp_path / "twice.zip", {})
    with zipfile.ZipFile(package, "a") as archive, pytest.warns(UserWarning, match="Duplicate name"):
        archive.writestr("rdf.yaml", SAFE_RDF)
    assert_refused_quickly(package, r"the member 'rdf.yaml' is in the zip twice", temporary_folder)


def test_errors_of_bioimageio_spec_become_model_file_errors(tmp_path, temporary_folder, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("the YAML library broke")

    monkeypatch.setattr("bioimageio.spec.load_description", fail)
    package = package_with(tmp_path / "safe.zip", {})
    assert_refused_quickly(
        package, r"safe.zip could not be read .* by bioimageio.spec \(RuntimeError: the YAML", temporary_folder
    )


def test_copying_the_model_file_stops_past_its_declared_size(tmp_path):
    with open(tmp_path / "copy", "wb") as sink, pytest.raises(ModelFileError, match="inflates past the 10 bytes"):
        zoo_import._copy_bounded(io.BytesIO(bytes(11)), sink, 10, "the model file")


def test_a_calibrated_models_package_carries_its_pixel_sizes_and_its_readme_no_dead_link(fitted_2d, tmp_path):
    """The command line records the training files' calibration (0.2 um pixels): the package's space
    axes carry it (spec 0.5 scale and unit), a unit the spec does not know is left out, and the
    README links nowhere (the package is not on an index yet)."""
    import copy

    import yaml

    denoiser = copy.deepcopy(fitted_2d)
    denoiser.image_calibration_ = {"scale": {"Y": 0.2, "X": 0.25}, "unit": {"Y": "micrometer", "X": "micrometer"}}
    package = exported(denoiser, IMAGE_2D, tmp_path / "calibrated.zip")
    with zipfile.ZipFile(package) as archive:
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
        readme = archive.read("README.md").decode()
    for tensor in (rdf["inputs"][0], rdf["outputs"][0]):
        space = {
            axis["id"]: (axis.get("scale"), axis.get("unit")) for axis in tensor["axes"] if axis["type"] == "space"
        }
        assert space == {"y": (0.2, "micrometer"), "x": (0.25, "micrometer")}
    assert "http" not in readme
    assert Noise2VoidDenoiser.from_bioimageio(package).image_calibration_ == denoiser.image_calibration_
    denoiser.image_calibration_ = {"scale": {"Y": 2.5, "X": 2.5}, "unit": {"Y": "second", "X": "furlong"}}
    package = exported(denoiser, IMAGE_2D, tmp_path / "odd.zip")
    with zipfile.ZipFile(package) as archive:
        axes = yaml.safe_load(archive.read("rdf.yaml"))["inputs"][0]["axes"]
    assert [(a.get("scale"), a.get("unit")) for a in axes if a["type"] == "space"] == [(2.5, None), (2.5, None)]
