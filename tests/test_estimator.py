import pickle
import warnings

import numpy as np
import pytest
import torch
from conftest import psnr, read_model_file, tiny, write_model_file
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from n2v_estimator import ModelFileError, Noise2VoidDenoiser, NonFiniteLossError
from n2v_estimator.fit import training as _training


@pytest.mark.slow
def test_fit_transform_raises_psnr_on_a_real_image(camera_pair):
    clean, noisy = camera_pair
    denoiser = Noise2VoidDenoiser(
        patch_size=32,
        batch_size=8,
        max_epochs=4,
        steps_per_epoch=20,
        n_filters=16,
        masked_pixel_percentage=5.0,
        learning_rate=2e-3,
        random_state=0,
        device="cpu",
    )
    denoised = denoiser.fit_transform(noisy)
    # 80 steps give +4.4 to +5.1 dB over seeds 0-3 (noisy: 20.2 dB).
    assert psnr(denoised, clean) >= psnr(noisy, clean) + 3.0


@pytest.mark.parametrize(
    "axes, shape",
    [
        ("YX", (20, 23)),
        ("SYX", (2, 20, 23)),
        ("YXC", (20, 23, 2)),
        ("CYX", (3, 20, 17)),
        ("SCYX", (2, 2, 17, 20)),
        ("XY", (23, 20)),
        ("ZYX", (9, 20, 18)),
        ("SZYX", (2, 9, 18, 20)),
        ("ZYXC", (9, 18, 20, 2)),
    ],
)
def test_transform_returns_the_input_shape_for_every_layout(axes, shape):
    X = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    out = tiny(axes=axes).fit(X).transform(X)
    assert out.shape == X.shape
    assert np.isfinite(out).all()


@pytest.mark.parametrize(
    "dtype, expected",
    [
        (np.uint8, np.float32),
        (np.int16, np.float32),
        (np.uint16, np.float32),
        (np.float32, np.float32),
        (np.float64, np.float64),
        (">f8", np.float64),
        (np.int32, np.float64),
        (np.uint32, np.float64),
        (np.int64, np.float64),
        (np.uint64, np.float64),
    ],
)
def test_output_dtype_is_float64_for_float64_and_wide_integers_else_float32(dtype, expected):
    X = (np.random.default_rng(0).random((24, 24)) * 200).astype(dtype)
    assert tiny().fit(X).transform(X).dtype == expected


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_dtype_input_gives_the_input_dtype_back_rounded_and_clipped(dtype):
    top = np.iinfo(dtype).max
    X = np.clip(np.random.default_rng(0).normal(0.5, 0.4, (32, 32)) * top, 0, top).astype(dtype)
    denoiser = tiny(dtype="input").fit(X)
    out = denoiser.transform(X)
    as_float = denoiser.set_params(dtype="float").transform(X)
    assert out.dtype == dtype and as_float.dtype == np.float32
    assert not np.array_equal(as_float, np.rint(as_float))  # (test_normalize checks the clipping)
    np.testing.assert_array_equal(out, np.clip(np.rint(as_float), 0, top).astype(dtype))


def test_dtype_input_keeps_float_input_and_the_std_as_float():
    X = np.random.default_rng(0).normal(100, 20, (32, 32))
    denoiser = tiny(dtype="input", noise_model="gaussian").fit(X.astype(np.uint8))
    assert denoiser.transform(X.astype(np.float16)).dtype == np.float16
    mean, std = denoiser.transform(X.astype(np.uint8), return_std=True)
    assert mean.dtype == np.uint8 and std.dtype == np.float32


def test_dtype_input_applies_to_dask_arrays_and_survives_save_and_load(tmp_path):
    da = pytest.importorskip("dask.array")
    X = (np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)
    tiny(dtype="input").fit(X).save(tmp_path / "model.safetensors")
    denoiser = Noise2VoidDenoiser.load(tmp_path / "model.safetensors")
    assert denoiser.dtype == "input" and clone(denoiser).dtype == "input"
    lazy = denoiser.transform(da.from_array(X, chunks=20))
    assert lazy.dtype == np.uint8
    np.testing.assert_array_equal(lazy.compute(), denoiser.transform(X))


def test_transform_output_is_in_the_input_intensity_scale(camera_pair):
    _, noisy = camera_pair
    out = tiny().fit(noisy).transform(noisy)
    assert abs(out.mean() - noisy.mean()) < 0.2 * noisy.std()


def test_transform_never_modifies_its_input(camera_pair):
    _, noisy = camera_pair
    X = noisy.copy()
    denoiser = tiny().fit(X)
    np.testing.assert_array_equal(X, noisy)
    denoiser.transform(X)
    np.testing.assert_array_equal(X, noisy)


def test_same_random_state_gives_identical_weights_and_output(camera_pair):
    _, noisy = camera_pair
    a, b = tiny().fit(noisy), tiny().fit(noisy)
    for (name, p), q in zip(a.model_.state_dict().items(), b.model_.state_dict().values()):
        assert torch.equal(p, q), name
    np.testing.assert_array_equal(a.transform(noisy), b.transform(noisy))


def test_different_random_states_give_different_weights(camera_pair):
    _, noisy = camera_pair
    a, b = tiny(random_state=0).fit(noisy), tiny(random_state=1).fit(noisy)
    assert not np.array_equal(a.transform(noisy), b.transform(noisy))


def test_history_has_one_record_per_epoch(camera_pair):
    _, noisy = camera_pair
    denoiser = tiny(max_epochs=3).fit(noisy)
    assert [h["epoch"] for h in denoiser.history_] == [1, 2, 3]
    for record in denoiser.history_:
        assert set(record) == {"epoch", "train_loss", "val_loss", "learning_rate", "seconds", "steps"}
        assert record["steps"] == denoiser.steps_per_epoch
        assert np.isfinite(record["train_loss"]) and np.isfinite(record["val_loss"])
        assert record["learning_rate"] > 0 and record["seconds"] >= 0
    # The rate recorded is the one of each epoch's last step; it decays towards 1% of the peak.
    steps = denoiser.max_epochs * denoiser.steps_per_epoch
    schedule = _training.warmup_cosine(steps)
    expected = [denoiser.learning_rate * schedule(e * denoiser.steps_per_epoch - 1) for e in (1, 2, 3)]
    np.testing.assert_allclose([h["learning_rate"] for h in denoiser.history_], expected, rtol=1e-9)
    assert expected[0] > expected[1] > expected[2] > 0.01 * denoiser.learning_rate


def test_without_validation_history_has_no_validation_loss(camera_pair):
    _, noisy = camera_pair
    denoiser = tiny(validation_fraction=0.0).fit(noisy)
    assert all(h["val_loss"] is None for h in denoiser.history_)


def test_a_single_image_too_small_to_validate_warns_that_the_last_weights_are_kept():
    small = np.random.default_rng(0).normal(size=(64, 64))
    with pytest.warns(UserWarning, match=r"validation_fraction=0.1 held out nothing.*64x64.*validation_fraction=0"):
        denoiser = tiny().fit(small)
    assert all(h["val_loss"] is None for h in denoiser.history_)


@pytest.mark.parametrize("shape, fraction", [((80, 80), 0.1), ((64, 64), 0.0), ((8, 64, 64), 0.2)])
def test_no_validation_warning_where_validation_happens_or_is_switched_off(shape, fraction):
    images = np.random.default_rng(0).normal(size=shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        denoiser = tiny(validation_fraction=fraction, axes="SYX" if len(shape) == 3 else None).fit(images)
    assert all((h["val_loss"] is None) == (fraction == 0) for h in denoiser.history_)


def test_cross_validation_on_one_2d_image_warns_that_folds_are_its_rows():
    from sklearn.model_selection import cross_val_score

    image = np.random.default_rng(0).normal(size=(96, 96))
    with pytest.warns(UserWarning, match="one 2D image .* takes its rows for samples"):
        cross_val_score(tiny(validation_fraction=0), image, cv=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cross_val_score(tiny(validation_fraction=0, axes="SYX"), image.reshape(4, 48, 48), cv=2)


def test_a_3d_array_without_axes_trains_as_a_stack_of_2d_images_and_says_so():
    stack = np.random.default_rng(0).normal(size=(4, 32, 32))
    with pytest.warns(
        UserWarning, match=r"X of shape \(4, 32, 32\) with axes=None is trained as a stack of 4 separate 2D"
    ):
        denoiser = tiny(validation_fraction=0).fit(stack)
    assert denoiser.spatial_ndim_ == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny(validation_fraction=0, axes="SYX").fit(stack)  # said: no note
        tiny(validation_fraction=0).fit(stack[0])  # 2D: nothing to say


def test_load_restores_every_saved_parameter_verbose_included(tmp_path, camera_pair):
    """The documented rule: a model saved with verbose=True shows bars after load until set_params says otherwise."""
    _, noisy = camera_pair
    tiny(verbose=True).fit(noisy).save(tmp_path / "model.safetensors")
    assert Noise2VoidDenoiser.load(tmp_path / "model.safetensors").verbose is True


def test_learning_rate_warms_up_then_decays():
    multiplier = _training.warmup_cosine(1000)
    values = [multiplier(t) for t in range(1000)]
    peak = int(np.argmax(values))
    assert 0 < peak <= 60
    assert values[0] < values[peak] == pytest.approx(1.0, abs=0.02)
    assert all(x >= y for x, y in zip(values[peak:], values[peak + 1 :]))
    assert values[-1] == pytest.approx(0.01, abs=0.005)


def test_clone_get_params_and_set_params_behave_like_scikit_learn():
    denoiser = Noise2VoidDenoiser(masked_pixel_percentage=1.5, struct_mask=("x", 5))
    params = denoiser.get_params()
    assert params["masked_pixel_percentage"] == 1.5 and params["struct_mask"] == ("x", 5)
    cloned = clone(denoiser)
    assert cloned is not denoiser and cloned.get_params() == params
    assert denoiser.set_params(depth=3) is denoiser and denoiser.depth == 3


def test_init_stores_parameters_untouched():
    weird = object()
    denoiser = Noise2VoidDenoiser(device=weird, patch_size=[8, 8])
    assert denoiser.device is weird and denoiser.patch_size == [8, 8]


def test_transform_before_fit_raises_not_fitted():
    with pytest.raises(NotFittedError):
        Noise2VoidDenoiser().transform(np.zeros((8, 8)))


def test_channel_count_must_match_between_fit_and_transform():
    X = np.random.default_rng(0).normal(size=(16, 16, 2))
    denoiser = tiny(axes="YXC").fit(X)
    with pytest.raises(ValueError, match="2"):
        denoiser.transform(np.zeros((16, 16, 3)))


def test_images_smaller_than_the_patch_are_fitted_with_a_smaller_patch():
    X = np.random.default_rng(0).normal(size=(5, 11, 7))
    denoiser = tiny(patch_size=64).fit(X)
    assert denoiser.patch_shape_ == (11, 7)
    assert denoiser.transform(X).shape == X.shape


def test_tiled_transform_equals_whole_image_transform(camera_pair):
    _, noisy = camera_pair
    denoiser = tiny(depth=2).fit(noisy)
    whole = denoiser.transform(noisy)
    tiled = denoiser.set_params(tile_size=64, tile_overlap=48).transform(noisy)
    inner = (slice(16, -16), slice(16, -16))
    scale = np.abs(whole).max()
    assert np.abs(tiled - whole)[inner].max() <= 1e-4 * scale
    # The default overlap (two borders) makes tiles exact, up to the image's edges.
    assert noisy.shape[0] + 2 * 28 > 128  # with its mirrored border, more than one tile
    exact = denoiser.set_params(tile_size=128, tile_overlap=None).transform(noisy)
    assert np.abs(exact - whole).max() <= 1e-5 * scale


def test_save_then_load_gives_bitwise_identical_transform(tmp_path, camera_pair):
    _, noisy = camera_pair
    denoiser = tiny(struct_mask=("x", 3), patch_size=(16, 24)).fit(noisy)
    path = tmp_path / "model.safetensors"
    denoiser.save(path)
    loaded = Noise2VoidDenoiser.load(path)
    assert loaded.get_params() == denoiser.get_params()
    assert loaded.history_ == denoiser.history_
    np.testing.assert_array_equal(loaded.transform(noisy), denoiser.transform(noisy))


def test_load_can_move_a_model_saved_for_a_gpu_to_another_device(tmp_path, camera_pair):
    _, noisy = camera_pair
    denoiser = tiny().fit(noisy)
    expected = denoiser.transform(noisy)
    path = tmp_path / "model.safetensors"
    denoiser.set_params(device="cuda").save(path)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='auto'"):
            Noise2VoidDenoiser.load(path).transform(noisy)
    moved = Noise2VoidDenoiser.load(path, device="cpu")
    assert moved.device == "cpu"
    np.testing.assert_array_equal(moved.transform(noisy), expected)


def test_save_replaces_an_existing_model_only_with_overwrite(tmp_path, camera_pair):
    _, noisy = camera_pair
    path = tmp_path / "model.safetensors"
    tiny(random_state=0).fit(noisy).save(path)
    written = path.read_bytes()
    second = tiny(random_state=1).fit(noisy)
    with pytest.raises(FileExistsError, match="exists: pass overwrite=True to replace it"):
        second.save(path)
    assert path.read_bytes() == written
    second.save(path, overwrite=True)
    np.testing.assert_array_equal(Noise2VoidDenoiser.load(path).transform(noisy), second.transform(noisy))
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_load_refuses_a_file_with_tensors_of_the_wrong_shape(tmp_path, camera_pair):
    _, noisy = camera_pair
    path = tmp_path / "model.safetensors"
    tiny().fit(noisy).save(path)
    tensors, document = read_model_file(path)
    name = next(k for k in tensors if k.endswith("weight"))
    tensors[name] = torch.zeros(3, 3)
    write_model_file(path, tensors, document)
    with pytest.raises(ModelFileError, match="shape"):
        Noise2VoidDenoiser.load(path)


def test_pickle_round_trip_of_fitted_and_unfitted_estimators(camera_pair):
    _, noisy = camera_pair
    unfitted = pickle.loads(pickle.dumps(tiny()))
    assert unfitted.get_params() == tiny().get_params()
    fitted = tiny().fit(noisy)
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.transform(noisy), fitted.transform(noisy))


def test_keyboard_interrupt_keeps_a_usable_estimator(monkeypatch, camera_pair):
    _, noisy = camera_pair
    calls = {"n": 0}
    original = _training.masked_mse

    def interrupt_on_fifth_step(*args):
        calls["n"] += torch.is_grad_enabled()  # training steps only, not validation
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(_training, "masked_mse", interrupt_on_fifth_step)
    denoiser = tiny(max_epochs=5, steps_per_epoch=2)
    # The interrupt reaches the caller (a loop of fits or a search stops too), after
    # the best weights so far are kept.
    with pytest.warns(UserWarning, match="interrupted after 2 complete"), pytest.raises(KeyboardInterrupt):
        denoiser.fit(noisy)
    assert len(denoiser.history_) == 2
    assert np.isfinite(denoiser.transform(noisy)).all()


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_good_weights(monkeypatch, camera_pair):
    _, noisy = camera_pair
    calls = {"n": 0}
    original = _training.masked_mse

    def nan_from_the_sixth_call(prediction, target, mask):
        calls["n"] += 1
        loss = original(prediction, target, mask)
        return loss * float("nan") if calls["n"] >= 6 else loss

    monkeypatch.setattr(_training, "masked_mse", nan_from_the_sixth_call)
    denoiser = tiny(max_epochs=4, steps_per_epoch=2, validation_fraction=0.0)
    with pytest.raises(NonFiniteLossError, match="finite"):
        denoiser.fit(noisy)
    assert np.isfinite(denoiser.transform(noisy)).all()


def test_verbose_shows_a_progress_bar(capsys, camera_pair):
    _, noisy = camera_pair
    tiny(verbose=True).fit(noisy)
    assert "fit" in capsys.readouterr().err
    tiny(verbose=False).fit(noisy)
    assert capsys.readouterr().err == ""


def test_by_default_short_calls_are_quiet_and_long_ones_show_progress(capsys, camera_pair, monkeypatch):
    from n2v_estimator.runtime import progress as _progress

    _, noisy = camera_pair
    assert Noise2VoidDenoiser().verbose == "auto"
    monkeypatch.setattr(_progress, "AUTO_DELAY_SECONDS", 3600.0)  # a short call, however busy the machine
    denoiser = tiny().fit(noisy)
    denoiser.transform(noisy)
    assert capsys.readouterr().err == ""  # a fraction of a second: no bar
    monkeypatch.setattr(_progress, "AUTO_DELAY_SECONDS", 0.0)  # as if the calls had run long
    denoiser.fit(noisy)
    denoiser.transform(noisy)
    err = capsys.readouterr().err
    assert "fit" in err and "predict" in err


def test_fit_does_not_touch_the_global_torch_seed(camera_pair):
    _, noisy = camera_pair
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny().fit(noisy)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("dtype", [np.uint32, np.int64, np.uint64])
def test_wide_integers_keep_their_signal_far_from_zero(dtype):
    """uint32 data near 2**31 with a signal of +-200: float32 output would have a step of 256."""
    rng = np.random.default_rng(0)
    signal = np.round(200 * np.sin(np.arange(48) / 4)[:, None] * np.cos(np.arange(48) / 5)[None, :])
    X = (2**31 + signal + rng.normal(0, 20, (48, 48)).round()).astype(dtype)
    out = tiny(max_epochs=3).fit(X).transform(X)
    residual = out - 2.0**31
    assert len(np.unique(residual)) > 1000
    assert np.corrcoef(residual.ravel(), signal.ravel())[0, 1] > 0.5


def test_a_huge_pixel_gives_finite_statistics_and_output():
    X = np.random.default_rng(0).normal(100, 10, (32, 32))
    X[5, 5] = 1e200
    denoiser = tiny().fit(X)
    assert np.isfinite(denoiser.mean_).all() and np.isfinite(denoiser.std_).all()
    assert np.isfinite(denoiser.transform(X)).all()


def test_transform_refuses_values_float32_cannot_normalise_instead_of_returning_nan():
    X = np.random.default_rng(0).normal(100, 10, (32, 32))
    denoiser = tiny().fit(X)
    X[3, 3] = 1e40
    with pytest.raises(ValueError, match="standard deviations"):
        denoiser.transform(X)
    with pytest.raises(ValueError, match="standard deviations"):
        denoiser.score(X)


def test_transform_never_returns_non_finite_values(monkeypatch):
    X = np.random.default_rng(0).normal(100, 10, (32, 32))
    denoiser = tiny().fit(X)
    with torch.no_grad():
        denoiser.model_.head.bias.fill_(3e38)  # overflows in float32 arithmetic
        denoiser.model_.head.weight.fill_(3e38)
    with pytest.raises(ValueError, match="non-finite"):
        denoiser.transform(X)


def test_by_default_worker_processes_of_a_parallel_search_stay_quiet(monkeypatch):
    import multiprocessing

    from n2v_estimator.runtime import progress as _progress

    monkeypatch.setattr(_progress, "AUTO_DELAY_SECONDS", 0.0)
    assert not _progress.progress_bar(total=3, desc="fit", unit="step", verbose="auto").disable
    monkeypatch.setattr(multiprocessing, "parent_process", lambda: object())
    assert _progress.progress_bar(total=3, desc="fit", unit="step", verbose="auto").disable
    assert not _progress.progress_bar(total=3, desc="fit", unit="step", verbose=True).disable


def test_by_default_fits_inside_a_search_or_cross_validation_stay_quiet(capsys, monkeypatch):
    from sklearn.model_selection import cross_val_score

    from n2v_estimator.runtime import progress as _progress

    monkeypatch.setattr(_progress, "AUTO_DELAY_SECONDS", 0.0)  # as if every fit ran long
    stack = np.random.default_rng(0).normal(size=(4, 24, 24))
    cross_val_score(tiny(), stack, cv=2)
    assert capsys.readouterr().err == ""
    tiny().fit(stack)
    assert "fit" in capsys.readouterr().err


def test_fit_and_transform_respect_the_users_thread_setting(camera_pair):
    _, noisy = camera_pair
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tiny().fit(noisy).transform(noisy)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_fit_given_seconds_alone_trains_about_that_long_and_keeps_its_best_weights(camera_pair):
    _, noisy = camera_pair
    denoiser = tiny(max_epochs=None, max_time=1.5, steps_per_epoch=5).fit(noisy)
    history = denoiser.history_
    assert len(history) >= 1 and sum(record["steps"] for record in history) >= 1
    # The last step starts before the time is spent; it and the short epoch's validation may add a little.
    assert sum(record["seconds"] for record in history) < 1.5 + 5
    assert history[-1]["learning_rate"] < 0.1 * denoiser.learning_rate  # decayed over the time, not cut short
    assert np.isfinite(denoiser.transform(noisy)).all()


def test_a_time_budget_is_refused_for_several_processes_in_one_line():
    with pytest.raises(ValueError, match=r"max_time=2\.0 with n_devices=2: .* max_epochs instead"):
        tiny(max_time=2.0, n_devices=2).fit(np.random.default_rng(0).normal(size=(64, 64)))
