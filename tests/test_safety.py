"""Bad input, interruption and untrusted files: every failure is deliberate."""

import json
import os
import pickle

import numpy as np
import pytest
import torch
from conftest import CodeRunningPickle, crash_mid_write, read_model_file, tiny, write_model_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from n2v_estimator import ModelFileError, Noise2VoidDenoiser
from n2v_estimator.models import weights as _persistence

IMAGE = np.random.default_rng(0).normal(size=(24, 24))

# (description, estimator parameters, X, exception, message pattern): the README's table.
BAD_INPUT = [
    (
        "NaN",
        {},
        np.where(np.arange(576).reshape(24, 24) == 30, np.nan, IMAGE),
        ValueError,
        r"1 non-finite value.*\(1, 6\)",
    ),
    ("inf", {}, np.full((8, 8), np.inf), ValueError, r"64 non-finite value.*\(0, 0\)"),
    ("empty", {}, np.zeros((0, 5)), ValueError, "empty"),
    ("1D array", {}, np.zeros(16), ValueError, "Reshape your data"),
    ("4D array, no axes", {}, np.zeros((2, 2, 8, 8)), ValueError, "Pass axes explicitly"),
    ("axes length", {"axes": "ZYX"}, IMAGE, ValueError, "names 3 axes but the array has 2"),
    ("unknown axis", {"axes": "YQ"}, IMAGE, ValueError, "unknown letter"),
    ("repeated axis", {"axes": "YY"}, IMAGE, ValueError, "repeats"),
    ("no X axis", {"axes": "SY"}, IMAGE, ValueError, "both Y and X"),
    ("complex", {}, IMAGE.astype(np.complex64), ValueError, "Complex data not supported"),
    ("object", {}, np.array([["a", 1]], dtype=object), TypeError, "non-numeric"),
    ("bool", {}, IMAGE > 0, TypeError, "boolean"),
    ("strings", {}, np.array([["a", "b"]]), TypeError, "numeric"),
    ("image_shape", {"image_shape": (8, 8)}, np.zeros((4, 60)), ValueError, "needs 64 values per row"),
    ("image_shape, 3D X", {"image_shape": (8, 8)}, np.zeros((4, 8, 8)), ValueError, "must be 2D"),
    ("negative percentage", {"masked_pixel_percentage": -1.0}, IMAGE, ValueError, "masked_pixel_percentage"),
    ("percentage > 100", {"masked_pixel_percentage": 150}, IMAGE, ValueError, "masked_pixel_percentage"),
    ("even kernel", {"kernel_size": 4}, IMAGE, ValueError, "kernel_size must be odd"),
    ("unknown manipulator", {"manipulator": "gaussian"}, IMAGE, ValueError, "manipulator"),
    ("tile overlap >= tile", {"tile_size": 32, "tile_overlap": 32}, IMAGE, ValueError, "tile_overlap"),
    ("patch tuple length", {"patch_size": (8, 8, 8)}, IMAGE, ValueError, "patch_size"),
    ("bad struct mask", {"struct_mask": ("w", 5)}, IMAGE, ValueError, "struct_mask axis"),
    ("even struct span", {"struct_mask": ("x", 4)}, IMAGE, ValueError, "odd"),
    ("cuda without cuda", {"device": "cuda"}, IMAGE, ValueError, "CUDA is not available"),
    ("meta device", {"device": "meta"}, IMAGE, ValueError, "cannot run the denoiser"),
    (
        "image_shape overflow",
        {"image_shape": (2**62, 4)},
        np.zeros((4, 64)),
        ValueError,
        f"needs {2**64} values per row",
    ),
    ("RGB with axes=None", {}, np.zeros((64, 48, 3)), ValueError, "axes='YXC'"),
]


@pytest.mark.parametrize(
    "params, X, error, pattern", [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT]
)
def test_bad_input_is_rejected_with_a_message_naming_the_problem(params, X, error, pattern):
    if params.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(error, match=pattern):
        tiny(**params).fit(X)


def test_bad_tile_settings_are_refused_before_training(monkeypatch):
    from n2v_estimator.fit import plan as _plan

    monkeypatch.setattr(_plan, "train", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ValueError, match="tile_overlap"):
        tiny(tile_size=32, tile_overlap=40).fit(IMAGE)


def test_sparse_input_is_rejected():
    import scipy.sparse

    with pytest.raises(TypeError, match="dense data is required"):
        tiny().fit(scipy.sparse.random(8, 8, density=0.5, format="csr"))


def test_channel_count_mismatch_names_both_counts():
    denoiser = tiny(axes="YXC").fit(np.random.default_rng(0).normal(size=(16, 16, 2)))
    with pytest.raises(ValueError, match=r"3 channel\(s\).*fitted on 2"):
        denoiser.transform(np.zeros((16, 16, 3)))


def test_spatial_dimension_mismatch_is_named():
    denoiser = tiny().fit(IMAGE)
    with pytest.raises(ValueError, match="fitted on 2D images but X is 3D"):
        denoiser.set_params(axes="ZYX").transform(np.zeros((4, 8, 8)))


def test_nan_in_transform_input_is_rejected_before_any_work():
    denoiser = tiny().fit(IMAGE)
    X = IMAGE.copy()
    X[3, 4] = np.nan
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        denoiser.transform(X)


def test_failed_fit_keeps_the_previous_model_usable():
    denoiser = tiny().fit(IMAGE)
    before = denoiser.transform(IMAGE)
    with pytest.raises(ValueError):
        denoiser.fit(np.full((8, 8), np.nan))
    np.testing.assert_array_equal(denoiser.transform(IMAGE), before)


def test_crash_during_save_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    first = tiny(random_state=0).fit(IMAGE)
    first.save(path)
    original = path.read_bytes()
    monkeypatch.setattr(_persistence, "_write_all", crash_mid_write)
    with pytest.raises(OSError, match="No space left on device"):
        tiny(random_state=1).fit(IMAGE).save(path, overwrite=True)
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["model.safetensors"]


# ----------------------------------------------------------- untrusted files
def _saved(tmp_path):
    path = tmp_path / "model.safetensors"
    tiny().fit(IMAGE).save(path)
    return path, *read_model_file(path)


def test_loading_a_pickle_never_executes_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.safetensors"
    with open(path, "wb") as f:
        pickle.dump(CodeRunningPickle(str(marker)), f)
    with pytest.raises(ModelFileError):
        Noise2VoidDenoiser.load(path)
    assert not marker.exists()


def test_loading_a_torch_save_file_never_executes_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save({"weights": CodeRunningPickle(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(ModelFileError):
        Noise2VoidDenoiser.load(path)
    assert not marker.exists()


def _set_tensor(suffix, value):
    def tamper(tensors, document):
        name = next(k for k in tensors if k.endswith(suffix))
        tensors[name].view(-1)[0] = value

    return tamper


def _set_statistic(key, value):
    def tamper(tensors, document):
        document["fitted"][key] = [value]

    return tamper


def _newer_version(tensors, document):
    document["format_version"] = _persistence.FORMAT_VERSION + 1


def _unknown_parameter(tensors, document):
    document["params"]["__class__"] = "os.system"


def _invalid_parameter_value(tensors, document):
    document["params"]["manipulator"] = "rm -rf"


def _missing_tensor(tensors, document):
    tensors.pop(next(iter(tensors)))


def _absurd_network(tensors, document):
    document["fitted"]["network"]["n_filters"] = 10**9


def _network_setting_of_the_wrong_type(tensors, document):
    document["fitted"]["network"]["batch_norm"] = "yes"


def _missing_fitted_section(tensors, document):
    del document["fitted"]


@pytest.mark.parametrize(
    "tamper, message",
    [
        (_newer_version, "format version"),
        (_unknown_parameter, "unknown parameters"),
        (_invalid_parameter_value, "manipulator"),
        (_missing_tensor, "missing"),
        (_absurd_network, "n_filters"),  # refused before the network is built
        (_network_setting_of_the_wrong_type, "batch_norm"),
        (_missing_fitted_section, "invalid model description"),
        (_set_tensor("head.bias", float("nan")), "non-finite"),
        (_set_tensor("down.0.0.weight", float("inf")), "non-finite"),
        (_set_tensor("running_var", -1.0), "negative"),
        (_set_tensor("num_batches_tracked", -5), "negative"),
        (_set_statistic("std", 0.0), "normalisation statistics"),
        (_set_statistic("std", -2.0), "normalisation statistics"),
        (_set_statistic("std", float("inf")), "normalisation statistics"),
        (_set_statistic("std", float("nan")), "normalisation statistics"),
        (_set_statistic("mean", float("nan")), "normalisation statistics"),
    ],
)
def test_a_tampered_model_file_is_refused(tmp_path, tamper, message):
    path, tensors, document = _saved(tmp_path)
    tamper(tensors, document)
    write_model_file(path, tensors, document)
    with pytest.raises(ModelFileError, match=message):
        Noise2VoidDenoiser.load(path)


# ------------------------------------------------------------------ fuzzing
@pytest.fixture(scope="module")
def fitted_2d():
    return tiny(depth=2).fit(np.random.default_rng(0).normal(size=(40, 40)))


@pytest.fixture(scope="module")
def fitted_3d():
    return tiny(axes="ZYX", depth=1, patch_size=(4, 8, 8)).fit(np.random.default_rng(0).normal(size=(6, 12, 12)))


DTYPES = st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64])
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(
    shape=st.tuples(st.integers(1, 80), st.integers(1, 80)),
    dtype=DTYPES,
    n_samples=st.sampled_from([None, 1, 3]),
    layout=st.sampled_from(["YX", "XY"]),
)
def test_transform_keeps_any_2d_shape_and_gives_finite_output(fitted_2d, shape, dtype, n_samples, layout):
    X = (np.random.default_rng(1).random(shape) * 200).astype(dtype)
    axes = layout
    if n_samples is not None:
        X = np.stack([X] * n_samples, axis=-1)
        axes = layout + "S"
    out = fitted_2d.set_params(axes=axes, tile_size=None).transform(X)
    assert out.shape == X.shape
    assert out.dtype == (np.float64 if dtype in (np.float64, np.int32) else np.float32)
    assert np.isfinite(out).all()


@FUZZ
@given(shape=st.tuples(st.integers(1, 12), st.integers(1, 30), st.integers(1, 30)), dtype=DTYPES)
def test_transform_keeps_any_3d_shape_and_gives_finite_output(fitted_3d, shape, dtype):
    X = (np.random.default_rng(2).random(shape) * 200).astype(dtype)
    out = fitted_3d.transform(X)
    assert out.shape == X.shape and np.isfinite(out).all()


@FUZZ
@given(
    shape=st.tuples(st.integers(20, 150), st.integers(20, 150)),
    tile=st.sampled_from([64, 96]),
)
def test_tiled_prediction_equals_untiled_away_from_the_border(fitted_2d, shape, tile):
    X = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    whole = fitted_2d.set_params(axes=None, tile_size=1024, tile_overlap=None).transform(X)
    tiled = fitted_2d.set_params(tile_size=tile, tile_overlap=48).transform(X)
    fitted_2d.set_params(tile_size=None, tile_overlap=None)
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(tiled - whole)[inner].max() <= 1e-4 * max(np.abs(whole).max(), 1e-6)


def test_saved_file_gets_the_usual_permissions(tmp_path):
    path = tmp_path / "model.safetensors"
    tiny().fit(IMAGE).save(path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_batch_norm_with_a_single_value_per_channel_is_refused_early():
    with pytest.raises(ValueError, match="batch normalisation"):
        tiny(batch_size=1, depth=2).fit(np.zeros((4, 4)))


def test_a_huge_neighbourhood_is_refused():
    with pytest.raises(ValueError, match="neighborhood_radius"):
        tiny(axes="ZYX", neighborhood_radius=8).fit(np.zeros((8, 8, 8)))


def test_weights_that_become_non_finite_are_not_kept(monkeypatch):
    from n2v_estimator import NonFiniteLossError

    original_step = torch.optim.Adam.step
    calls = {"n": 0}

    def poisoning_step(self, *args, **kwargs):
        out = original_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 6:  # the last step of the second epoch
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", poisoning_step)
    denoiser = tiny(max_epochs=3, steps_per_epoch=3)
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        denoiser.fit(IMAGE)
    assert all(torch.isfinite(p).all() for p in denoiser.model_.parameters())
    assert np.isfinite(denoiser.transform(IMAGE)).all()


def test_a_gpu_that_is_not_there_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="has 1 GPU"):
        tiny(device="cuda:7").fit(IMAGE)


def test_a_format_1_file_of_the_first_release_still_loads(tmp_path):
    """Version 1 files describe the network without a schema (nor a noise model); they load as schema 1."""
    path, tensors, document = _saved(tmp_path)
    original = Noise2VoidDenoiser.load(path).transform(IMAGE)
    document["format_version"] = 1
    del document["fitted"]["network"]["schema"], document["fitted"]["network"]["noise_model"]
    del document["fitted"]["network"]["blind_spot"], document["params"]["blind_spot"]
    del document["fitted"]["network"]["layout"]
    write_model_file(path, tensors, document)
    np.testing.assert_array_equal(Noise2VoidDenoiser.load(path).transform(IMAGE), original)


def test_a_schema_1_network_of_the_previous_release_loads_as_plain_noise2void(tmp_path):
    path, tensors, document = _saved(tmp_path)
    original = Noise2VoidDenoiser.load(path).transform(IMAGE)
    document["fitted"]["network"]["schema"] = 1
    del document["fitted"]["network"]["noise_model"], document["fitted"]["network"]["blind_spot"]
    del document["fitted"]["network"]["layout"]
    write_model_file(path, tensors, document)
    loaded = Noise2VoidDenoiser.load(path)
    assert loaded.model_.noise is None and not hasattr(loaded, "noise_sigma_")
    np.testing.assert_array_equal(loaded.transform(IMAGE), original)


def test_a_schema_2_network_of_the_previous_release_loads_as_a_masked_one(tmp_path):
    """Schema 2 (noise models) came before blind-spot networks: its networks mask pixels."""
    path, tensors, document = _saved(tmp_path)
    original = Noise2VoidDenoiser.load(path).transform(IMAGE)
    document["fitted"]["network"]["schema"] = 2
    del document["fitted"]["network"]["blind_spot"], document["params"]["blind_spot"]
    del document["fitted"]["network"]["layout"]
    write_model_file(path, tensors, document)
    loaded = Noise2VoidDenoiser.load(path)
    assert loaded.blind_spot == "mask" and loaded.model_.description["blind_spot"] == "mask"
    np.testing.assert_array_equal(loaded.transform(IMAGE), original)


def test_a_schema_2_network_naming_a_blind_spot_is_refused(tmp_path):
    path, tensors, document = _saved(tmp_path)
    document["fitted"]["network"]["schema"] = 2
    write_model_file(path, tensors, document)
    with pytest.raises(ModelFileError, match="schema 2 network description has no field 'blind_spot'"):
        Noise2VoidDenoiser.load(path)


def test_a_schema_3_network_of_the_previous_release_loads_in_this_packages_layout(tmp_path):
    """Schema 3 (blind-spot networks) came before n2v's imported layout: its networks are this package's."""
    path, tensors, document = _saved(tmp_path)
    original = Noise2VoidDenoiser.load(path).transform(IMAGE)
    document["fitted"]["network"]["schema"] = 3
    del document["fitted"]["network"]["layout"]
    write_model_file(path, tensors, document)
    loaded = Noise2VoidDenoiser.load(path)
    assert loaded.model_.description["layout"] == "n2v-estimator"
    np.testing.assert_array_equal(loaded.transform(IMAGE), original)
    document["fitted"]["network"]["layout"] = "n2v-tf"
    write_model_file(path, tensors, document)
    with pytest.raises(ModelFileError, match="schema 3 network description has no field 'layout'"):
        Noise2VoidDenoiser.load(path)


def test_a_schema_1_network_naming_a_noise_model_is_refused(tmp_path):
    path, tensors, document = _saved(tmp_path)
    document["fitted"]["network"]["schema"] = 1
    del document["fitted"]["network"]["blind_spot"], document["fitted"]["network"]["layout"]
    document["fitted"]["network"]["noise_model"] = "gaussian"
    write_model_file(path, tensors, document)
    with pytest.raises(ModelFileError, match="schema 1 network description has no field 'noise_model'"):
        Noise2VoidDenoiser.load(path)


@pytest.mark.parametrize(
    "settings",
    [
        {"n_filters": 10**9},
        {"depth": 8, "n_filters": 2**40, "in_channels": 2**20},
        {"n_filters": 2**70},
        {"kernel_size": 2**70 + 1},
    ],
)
def test_a_huge_network_description_is_refused_without_allocating_it(tmp_path, settings):
    path, _, document = _saved(tmp_path)
    network = dict(document["fitted"]["network"], **settings)
    with _persistence.ModelFile(path) as file, pytest.raises(ModelFileError, match="cannot be built|needs"):
        _persistence.network_from_file(network, file)


# ------------------------------------------------ hostile files: whole families
def _raw_header_file(path, header, data=b""):
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)


def test_a_header_over_the_cap_is_refused_without_being_parsed(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    path.write_bytes(
        (_persistence.MAX_HEADER_BYTES + 1).to_bytes(8, "little") + b" " * (_persistence.MAX_HEADER_BYTES + 1)
    )
    monkeypatch.setattr(_persistence.json, "loads", lambda *a, **k: pytest.fail("parsed"))
    with pytest.raises(ModelFileError, match="header size"):
        Noise2VoidDenoiser.load(path)


def test_unexpected_tensors_are_refused_before_any_tensor_is_read(tmp_path, monkeypatch):
    path, _, document = _saved(tmp_path)
    header = {"__metadata__": {_persistence.FORMAT_NAME: json.dumps(document)}}
    header.update({f"t{i}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]} for i in range(20_000)})
    _raw_header_file(path, header, b"\0" * 20_000)
    monkeypatch.setattr(_persistence.ModelFile, "tensor", lambda *a: pytest.fail("a tensor was read"))
    with pytest.raises(ModelFileError, match="unexpected"):
        Noise2VoidDenoiser.load(path)


def test_a_deeply_nested_document_is_a_model_file_error(tmp_path):
    path, tensors, document = _saved(tmp_path)
    text = json.dumps(document).replace('"history": [', '"history": [' + "[" * 100_000 + "]" * 100_000 + ", ", 1)
    json.loads(text.replace("[" * 100_000 + "]" * 100_000, "[]"))  # valid JSON but for the depth
    save_file(tensors, str(path), metadata={_persistence.FORMAT_NAME: text})
    with pytest.raises(ModelFileError, match="nested"):
        Noise2VoidDenoiser.load(path)


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_something_that_is_not_a_regular_file_is_refused_at_once(tmp_path, kind):
    import threading

    path = tmp_path / "model.safetensors"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(_load_error(path)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert outcome and isinstance(outcome[0], ModelFileError) and "not a regular file" in str(outcome[0])


def _load_error(path):
    try:
        Noise2VoidDenoiser.load(path)
    except Exception as exc:
        return exc
    return None


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory):
    path, _, _ = _saved(tmp_path_factory.mktemp("model"))
    return path.read_bytes()


@FUZZ
@given(data=st.data())
def test_any_corruption_of_a_model_file_loads_or_raises_model_file_error(tmp_path_factory, model_bytes, data):
    path = tmp_path_factory.mktemp("fuzz") / "model.safetensors"
    raw = bytearray(model_bytes)
    header_end = 8 + int.from_bytes(raw[:8], "little")
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(
            st.integers(0, len(raw) - 1) if data.draw(st.booleans()) else st.integers(0, header_end - 1)
        )
        raw[position] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    path.write_bytes(bytes(raw))
    try:
        loaded = Noise2VoidDenoiser.load(path)
    except ModelFileError:
        return
    assert np.isfinite(loaded.transform(IMAGE)).all()


# ------------------------------------------------------------- save hygiene
def test_save_removes_the_temporary_files_of_killed_writers_but_not_of_live_ones(tmp_path):
    import fcntl

    path = tmp_path / "model.safetensors"
    stale = tmp_path / ".model.safetensors.0123456789abcdef.tmp"
    live = tmp_path / ".model.safetensors.fedcba9876543210.tmp"
    other = tmp_path / ".other.safetensors.0123456789abcdef.tmp"  # another model's
    users = tmp_path / ".model.safetensors.my-notes.tmp"  # not one of ours
    pipe = tmp_path / ".model.safetensors.00000000000000ff.tmp"  # must not block the save
    for f in (stale, live, other, users):
        f.write_bytes(b"half a file")
        os.utime(f, (0, 0))
    os.mkfifo(pipe)
    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a writer still at work
        tiny().fit(IMAGE).save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [path.name, live.name, other.name, users.name, pipe.name]
    )


def test_save_errors_name_the_target(tmp_path):
    target = tmp_path / "missing-folder" / "model.safetensors"
    with pytest.raises(OSError, match="Cannot save the model to .*missing-folder/model.safetensors"):
        tiny().fit(IMAGE).save(target)


@pytest.mark.parametrize("where", ["", "folder"])
def test_save_refuses_an_empty_or_directory_path(tmp_path, where):
    target = str(tmp_path) if where == "folder" else ""
    with pytest.raises(ValueError, match="empty|directory"):
        tiny().fit(IMAGE).save(target)


def test_save_refuses_what_load_would_refuse(tmp_path):
    estimator = tiny().fit(IMAGE)
    estimator.history_ = estimator.history_ * 20_000
    with pytest.raises(ValueError, match="shorten history_"):
        estimator.save(tmp_path / "model.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_a_huge_but_finite_mean_loads_and_transform_refuses_rather_than_return_inf(tmp_path):
    # A model fitted on float64 data of that scale is legitimate; float32 input is not like it.
    path, tensors, document = _saved(tmp_path)
    _set_statistic("mean", 1e300)(tensors, document)
    write_model_file(path, tensors, document)
    with pytest.raises(ValueError, match="standard deviations from the training data's mean"):
        Noise2VoidDenoiser.load(path).transform(IMAGE.astype(np.float32))


def test_an_unterminated_string_in_a_header_is_scanned_in_linear_time(tmp_path):
    from n2v_estimator.models.file_format import _JSON_STRING

    assert _JSON_STRING.sub("", '[1, "ab\\"c"]') == "[1, ]"
    assert _JSON_STRING.sub("", '[1, "never closed \\" [[[') == "[1, "  # runs to the end
    body = ('"' + '\\"' * 32_000).encode()  # took 12 s with a backtracking scan
    path = tmp_path / "model.safetensors"
    path.write_bytes(len(body).to_bytes(8, "little") + body)
    with pytest.raises(ModelFileError, match="malformed JSON header"):
        Noise2VoidDenoiser.load(path)


def test_a_file_replaced_while_it_is_read_cannot_mix_into_the_loaded_model(tmp_path):
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    tiny(random_state=0).fit(IMAGE).save(first)
    tiny(random_state=1).fit(IMAGE * 3 + 7).save(second)
    expected, _ = _persistence.read_model(first)
    with _persistence.ModelFile(first) as file:
        os.replace(second, first)  # another process saves to the same path meanwhile
        for name, tensor in expected.items():
            assert torch.equal(file.tensor(name), tensor)


def test_numpy_scalars_from_a_parameter_grid_save_and_load(tmp_path):
    estimator = tiny(tta=np.True_, batch_norm=np.False_, n_filters=np.int64(4), learning_rate=np.float32(1e-3))
    estimator.fit(IMAGE).save(tmp_path / "model.safetensors")
    loaded = Noise2VoidDenoiser.load(tmp_path / "model.safetensors")
    np.testing.assert_array_equal(loaded.transform(IMAGE), estimator.transform(IMAGE))
