"""fit is all-or-nothing: a fit that raises leaves a fitted estimator bit-for-bit as it was;
Ctrl-C and a non-finite loss keep the best weights of the epochs that completed."""

import copy

import numpy as np
import pytest
import torch
from conftest import tiny

from n2v_estimator import Noise2VoidDenoiser, NonFiniteLossError
from n2v_estimator.fit import plan as _plan
from n2v_estimator.fit import training as _training

ROWS = np.random.default_rng(0).normal(size=(24, 64))  # 24 flattened 8x8 images
IMAGE = np.random.default_rng(1).normal(size=(40, 40))


def fitted_rows(**overrides):
    return tiny(image_shape=(8, 8), patch_size=8, **overrides).fit(ROWS)


def fitted_state(estimator):
    return {
        "output": estimator.transform(ROWS),
        "history": copy.deepcopy(estimator.history_),
        "n_features_in": estimator.n_features_in_,
        "mean": estimator.mean_.copy(),
        "weights": {k: v.clone() for k, v in estimator.model_.state_dict().items()},
    }


def assert_unchanged(estimator, before):
    after = fitted_state(estimator)
    np.testing.assert_array_equal(after["output"], before["output"])
    assert after["history"] == before["history"]
    assert after["n_features_in"] == before["n_features_in"]
    np.testing.assert_array_equal(after["mean"], before["mean"])
    assert all(torch.equal(after["weights"][k], v) for k, v in before["weights"].items())


def optimizer_step_failing_on_call(monkeypatch, n, exception):
    original = torch.optim.Adam.step
    calls = {"n": 0}

    def step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise exception
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)


@pytest.mark.parametrize("warm_start", [False, True])
def test_a_failure_in_the_middle_of_training_leaves_the_fitted_estimator_as_it_was(monkeypatch, warm_start):
    estimator = fitted_rows(warm_start=warm_start)
    before = fitted_state(estimator)
    # Another data set (other statistics, other row count) and a failure on the second step.
    optimizer_step_failing_on_call(monkeypatch, 2, RuntimeError("CUDA out of memory"))
    with pytest.raises(RuntimeError, match="out of memory"):
        estimator.fit(ROWS[:12] * 3 + 5)
    assert_unchanged(estimator, before)


def test_a_failure_in_a_later_epoch_leaves_the_fitted_estimator_as_it_was(monkeypatch):
    estimator = fitted_rows()
    before = fitted_state(estimator)
    optimizer_step_failing_on_call(monkeypatch, 5, OSError("disk full"))  # in the second epoch
    with pytest.raises(OSError):
        estimator.fit(ROWS + 1)
    assert_unchanged(estimator, before)


def test_a_failed_first_fit_leaves_an_unfitted_estimator(monkeypatch):
    optimizer_step_failing_on_call(monkeypatch, 2, RuntimeError("boom"))
    estimator = tiny()
    with pytest.raises(RuntimeError):
        estimator.fit(IMAGE)
    assert not any(name.endswith("_") and not name.startswith("_") for name in vars(estimator))


@pytest.mark.parametrize(
    "late_setting, pattern",
    [
        ({"tile_size": 32, "tile_overlap": 40}, "tile_overlap"),
        ({"struct_mask": ("z", 3)}, "needs 3D data"),
        ({"manipulator": "median", "neighborhood_radius": 1, "struct_mask": np.ones((3, 3))}, "needs neighbours"),
        ({"image_shape": (4, 16), "patch_size": 8, "depth": 3}, "2\\*\\*depth=8"),
        ({"kernel_size": 4}, "odd"),
    ],
)
def test_a_refit_refused_late_leaves_the_fitted_estimator_as_it_was(monkeypatch, late_setting, pattern):
    estimator = fitted_rows()
    before = fitted_state(estimator)
    monkeypatch.setattr(_plan, "train", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ValueError, match=pattern):
        estimator.set_params(**late_setting).fit(ROWS)
    estimator.set_params(**{k: tiny(image_shape=(8, 8), patch_size=8).get_params()[k] for k in late_setting})
    assert_unchanged(estimator, before)


def test_a_non_finite_loss_in_the_first_epoch_leaves_the_fitted_estimator_as_it_was(monkeypatch):
    estimator = fitted_rows()
    before = fitted_state(estimator)
    original = _training.masked_mse
    monkeypatch.setattr(_training, "masked_mse", lambda *a: original(*a) * float("nan"))
    with pytest.raises(NonFiniteLossError, match="left as it was"):
        estimator.fit(ROWS + 1)
    assert_unchanged(estimator, before)


def test_an_interrupt_before_the_first_epoch_leaves_the_fitted_estimator_as_it_was(monkeypatch):
    estimator = fitted_rows()
    before = fitted_state(estimator)
    optimizer_step_failing_on_call(monkeypatch, 1, KeyboardInterrupt())
    with pytest.warns(UserWarning, match="left as it was"), pytest.raises(KeyboardInterrupt):
        estimator.fit(ROWS + 1)
    assert_unchanged(estimator, before)


def test_an_interrupt_after_an_epoch_keeps_the_new_weights_and_re_raises(monkeypatch):
    estimator = fitted_rows(max_epochs=3)
    before = fitted_state(estimator)
    optimizer_step_failing_on_call(monkeypatch, 5, KeyboardInterrupt())  # second epoch of the refit
    with pytest.warns(UserWarning, match="after 1 complete epoch"), pytest.raises(KeyboardInterrupt):
        estimator.fit(ROWS[:12] + 1)
    assert len(estimator.history_) == 1
    assert not np.array_equal(estimator.mean_, before["mean"])
    assert np.isfinite(estimator.transform(ROWS)).all()


def test_a_stack_refit_drops_the_row_length_of_a_2d_fit():
    estimator = tiny().fit(IMAGE)
    assert estimator.n_features_in_ == 40
    estimator.fit(np.stack([IMAGE, IMAGE]))
    assert not hasattr(estimator, "n_features_in_")


def test_warm_start_does_not_train_the_previous_network_in_place():
    estimator = tiny(warm_start=True).fit(IMAGE)
    previous_model = estimator.model_
    weights = {k: v.clone() for k, v in previous_model.state_dict().items()}
    estimator.fit(IMAGE)
    assert estimator.model_ is not previous_model
    assert all(torch.equal(previous_model.state_dict()[k], v) for k, v in weights.items())
    assert len(estimator.history_) == 2 * estimator.max_epochs


def test_transform_uses_the_fitted_network_not_the_current_parameters():
    estimator = tiny(depth=2).fit(IMAGE)
    expected = estimator.transform(IMAGE)
    estimator.set_params(depth=4, kernel_size=7, n_filters=64)  # they take effect at the next fit
    np.testing.assert_array_equal(estimator.transform(IMAGE), expected)


# Every boundary value the parameter constraints allow fits, saves, loads and
# transforms the same after loading.
BOUNDARIES = [
    pytest.param({"kernel_size": 31, "patch_size": 16}, marks=pytest.mark.slow),  # a halo of 122 pixels: 5 s
    {"kernel_size": 1},
    {"depth": 8, "patch_size": 256, "n_filters": 1, "batch_size": 2, "validation_fraction": 0.0},
    {"depth": 1, "n_filters": 1},
    {"batch_size": 1},
    {"max_epochs": 1, "steps_per_epoch": 1},
    {"masked_pixel_percentage": 100.0},
    {"masked_pixel_percentage": 1e-3},
    {"neighborhood_radius": 1, "manipulator": "median"},
    {"neighborhood_radius": 31},
    {"validation_fraction": 0.0},
    {"validation_fraction": 0.999},
    {"learning_rate": 1e-12},
    {"tile_size": 1, "tile_overlap": 0},
    {"n_score_phases": 1},
    {"n_score_phases": 10_000, "patch_size": 8},
    {"batch_norm": False, "residual": True, "blurpool": True, "skip_skipone": True},
]


@pytest.mark.parametrize("params", BOUNDARIES, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_every_boundary_value_fits_saves_and_loads(tmp_path, params):
    X = np.random.default_rng(2).normal(size=(256, 256) if params.get("depth") == 8 else (48, 48))
    estimator = tiny(**params).fit(X)
    path = tmp_path / "model.safetensors"
    estimator.save(path)
    loaded = Noise2VoidDenoiser.load(path)
    assert loaded.get_params() == estimator.get_params()
    np.testing.assert_array_equal(loaded.transform(X), estimator.transform(X))
    assert np.isfinite(loaded.score(X))


def test_a_warm_start_on_data_the_old_statistics_cannot_normalise_is_refused_before_training(monkeypatch):
    estimator = tiny(warm_start=True).fit(IMAGE * 1e-3)
    before = estimator.transform(IMAGE * 1e-3)
    monkeypatch.setattr(_plan, "train", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ValueError, match="standard deviations"):
        estimator.fit(IMAGE * 1e40)
    np.testing.assert_array_equal(estimator.transform(IMAGE * 1e-3), before)


def test_score_computes_in_the_precision_transform_returns():
    X = (2**31 + np.add.outer(np.arange(40), np.arange(40)) * 3).astype(np.uint32)
    estimator = tiny().fit(X)
    assert estimator.score(X) == estimator.score(X.astype(np.float64))
