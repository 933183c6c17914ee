"""Model files: safetensors + JSON, atomic writes, no code execution on read."""

import json
import os
import pickle

import numpy as np
import pytest
import torch
from conftest import CodeRunningPickle, crash_mid_write
from safetensors.torch import save_file

from n2v_estimator import ModelFileError
from n2v_estimator.models import weights as _weights
from n2v_estimator.models.file_format import FORMAT_NAME, FORMAT_VERSION
from n2v_estimator.models.weights import read_model, write_model


def tensors():
    torch.manual_seed(0)
    return {
        "down.0.weight": torch.randn(4, 1, 3, 3),
        "down.0.bias": torch.randn(4),
        "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
        "half": torch.randn(2, 3).to(torch.float16),
    }


DOCUMENT = {
    "params": {"depth": 2, "patch_size": [64, 64], "struct_mask": None, "tta": False},
    "state": {"mean": [1.5, 2.0], "std": [0.5, 3.0], "axes": "SYX", "n_iter": 12},
}


def test_write_then_read_round_trips_tensors_and_document(tmp_path):
    path = tmp_path / "model.n2v"
    original = tensors()
    write_model(path, original, DOCUMENT)
    loaded, document = read_model(path)
    assert set(loaded) == set(original)
    for name, tensor in original.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor)
    assert document["format"] == FORMAT_NAME
    assert document["format_version"] == FORMAT_VERSION
    assert {k: document[k] for k in DOCUMENT} == DOCUMENT


def test_write_converts_numpy_values_to_json(tmp_path):
    path = tmp_path / "model.n2v"
    document = {
        "mean": np.array([1.0, 2.0]),
        "count": np.int64(3),
        "scale": np.float32(0.5),
        "shape": (16, 16),
        "nested": {"values": [np.int32(1), (2, 3)]},
    }
    write_model(path, {"w": torch.zeros(2)}, document)
    _, loaded = read_model(path)
    assert loaded["mean"] == [1.0, 2.0]
    assert loaded["count"] == 3
    assert loaded["scale"] == 0.5
    assert loaded["shape"] == [16, 16]
    assert loaded["nested"] == {"values": [1, [2, 3]]}


def test_write_accepts_non_contiguous_tensors(tmp_path):
    path = tmp_path / "model.n2v"
    t = torch.arange(12.0).reshape(3, 4).T
    assert not t.is_contiguous()
    write_model(path, {"t": t}, {})
    loaded, _ = read_model(path)
    assert torch.equal(loaded["t"], t)


def test_write_replaces_an_existing_file(tmp_path):
    path = tmp_path / "model.n2v"
    write_model(path, {"w": torch.zeros(2)}, {"run": 1})
    write_model(path, {"w": torch.ones(3)}, {"run": 2})
    loaded, document = read_model(path)
    assert torch.equal(loaded["w"], torch.ones(3))
    assert document["run"] == 2
    assert os.listdir(tmp_path) == ["model.n2v"]


def test_failed_write_keeps_the_existing_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "model.n2v"
    write_model(path, {"w": torch.zeros(2)}, {"run": 1})
    before = path.read_bytes()
    monkeypatch.setattr(_weights, "_write_all", crash_mid_write)
    with pytest.raises(OSError, match="No space left on device"):
        write_model(path, {"w": torch.ones(2)}, {"run": 2})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.n2v"]


def test_failed_write_of_a_new_file_leaves_nothing(tmp_path, monkeypatch):
    def broken_save(fd, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(_weights, "_write_all", broken_save)
    with pytest.raises(KeyboardInterrupt):
        write_model(tmp_path / "model.n2v", {"w": torch.ones(2)}, {})
    assert os.listdir(tmp_path) == []


def test_read_of_a_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_model(tmp_path / "missing.n2v")


@pytest.mark.parametrize("content", [b"", b"not a model at all", b"\xff" * 64, json.dumps({"a": 1}).encode()])
def test_read_of_a_non_safetensors_file_raises_model_file_error(tmp_path, content):
    path = tmp_path / "junk.n2v"
    path.write_bytes(content)
    with pytest.raises(ModelFileError):
        read_model(path)


def test_read_of_a_foreign_safetensors_file_raises_model_file_error(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ModelFileError, match="not written by n2v_estimator"):
        read_model(path)
    save_file({"w": torch.zeros(2)}, str(path), metadata={"other": "x"})
    with pytest.raises(ModelFileError, match="not written by n2v_estimator"):
        read_model(path)


def _write_raw(path, payload):
    save_file({"w": torch.zeros(2)}, str(path), metadata={FORMAT_NAME: payload})


@pytest.mark.parametrize("version", [0, FORMAT_VERSION + 1, "1", "2", None, True, 1.0])
def test_read_of_another_format_version_raises_model_file_error(tmp_path, version):
    path = tmp_path / "model.n2v"
    _write_raw(path, json.dumps({"format": FORMAT_NAME, "format_version": version}))
    with pytest.raises(ModelFileError, match="format version"):
        read_model(path)


@pytest.mark.parametrize("payload", ["{not json", "", '{"format": "n2v_estimator", '])
def test_read_of_malformed_json_raises_model_file_error(tmp_path, payload):
    path = tmp_path / "model.n2v"
    _write_raw(path, payload)
    with pytest.raises(ModelFileError, match="malformed JSON"):
        read_model(path)


@pytest.mark.parametrize("payload", ["[1, 2]", '"text"', json.dumps({"format": "other", "format_version": 1})])
def test_read_of_a_document_of_the_wrong_kind_raises_model_file_error(tmp_path, payload):
    path = tmp_path / "model.n2v"
    _write_raw(path, payload)
    with pytest.raises(ModelFileError):
        read_model(path)


def test_payload_used_below_does_execute_code_when_unpickled(tmp_path):
    # Sanity check of the crafted payload itself, with plain pickle.
    marker = tmp_path / "pwned_by_pickle"
    pickle.loads(pickle.dumps(CodeRunningPickle(marker))).close()
    assert marker.exists()


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_read_of_a_crafted_pickle_raises_and_executes_no_code(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.n2v"
    payload = {"state_dict": {"w": torch.zeros(2)}, "evil": CodeRunningPickle(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(ModelFileError):
        read_model(path)
    assert not marker.exists()


def test_write_never_changes_the_process_umask(tmp_path, monkeypatch):
    # Another thread creating files meanwhile would get the wrong permissions.
    monkeypatch.setattr(os, "umask", lambda *a: pytest.fail("umask changed"))
    write_model(tmp_path / "model.n2v", {"w": torch.zeros(2)}, {})


def test_a_new_file_gets_the_usual_permissions_and_a_replaced_file_keeps_its_own(tmp_path):
    umask = os.umask(0o022)
    try:
        path = tmp_path / "model.n2v"
        write_model(path, {"w": torch.zeros(2)}, {})
        assert path.stat().st_mode & 0o777 == 0o644
        path.chmod(0o600)
        write_model(path, {"w": torch.ones(2)}, {})
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(umask)


def test_parameters_that_differ_from_the_defaults_are_compared_as_a_model_file_stores_them():
    from n2v_estimator import Noise2VoidDenoiser
    from n2v_estimator.models.file_format import non_default_parameters

    defaults = Noise2VoidDenoiser().get_params()
    mask = np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0]])
    params = {**defaults, "struct_mask": mask, "patch_size": (64, 64), "depth": 2, "n_filters": 16}
    assert non_default_parameters(params, defaults) == ["n_filters", "patch_size", "struct_mask"]
    assert non_default_parameters({"patch_size": (64, 64)}, {"patch_size": [64, 64]}) == []  # as JSON


@pytest.mark.parametrize("kind", ["plain", "probabilistic"])
def test_a_model_file_written_before_the_package_was_split_into_subpackages_loads_and_predicts_the_same(kind):
    """tests/fixtures holds files that the flat layout (the commit before the subpackages) wrote, and what
    they predicted for this image."""
    from pathlib import Path

    from n2v_estimator import Noise2VoidDenoiser

    data = Path(__file__).parent / "fixtures"
    denoiser = Noise2VoidDenoiser.load(data / f"{kind}_model_0.1.0.safetensors")
    image = np.random.default_rng(0).normal(100, 20, (48, 48)).astype(np.float32)
    expected = np.load(data / f"{kind}_model_0.1.0_transform.npy")
    np.testing.assert_allclose(denoiser.transform(image), expected, rtol=1e-5, atol=1e-4)
    assert (denoiser.noise_model is not None) == (kind == "probabilistic")
