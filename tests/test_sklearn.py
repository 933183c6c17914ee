"""Noise2VoidDenoiser as a scikit-learn citizen: checks, score, search, pipelines."""

import pickle

import numpy as np
import pytest
from conftest import TINY, tiny
from scipy.stats import spearmanr
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from n2v_estimator import Noise2VoidDenoiser
from n2v_estimator.predict.scoring import grid_phases, j_invariant_mse, neighbour_mean

# Without image_shape, a 2D array is ONE image whose rows are image lines: transform
# must accept images of any size, and a pixel's output depends on the lines around it.
# These checks assume rows are independent samples of a fixed length; with image_shape
# the denoiser is a transformer of image rows and meets them (tested below).
_ONE_IMAGE = "a 2D array without image_shape is one image: its rows are image lines, not samples"
EXPECTED_FAILED_CHECKS = {
    "check_n_features_in_after_fitting": _ONE_IMAGE + ", and images of any width may be denoised",
    "check_transformer_general": _ONE_IMAGE + ", and images of any width may be denoised",
    "check_transformer_general(readonly_memmap=True)": _ONE_IMAGE + ", and images of any width may be denoised",
    "check_methods_sample_order_invariance": _ONE_IMAGE + ", so reordering them changes the image",
    "check_methods_subset_invariance": _ONE_IMAGE + ", so a subset of them is another image",
}


def _tiny_for_checks(**params):
    return Noise2VoidDenoiser(
        patch_size=8,
        batch_size=2,
        max_epochs=1,
        steps_per_epoch=2,
        depth=1,
        n_filters=2,
        random_state=0,
        device="cpu",
        **params,
    )


@pytest.mark.slow
@parametrize_with_checks(
    [_tiny_for_checks(), _tiny_for_checks(blind_spot="network", noise_model="gaussian")],
    expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS,
)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def test_grid_phases_start_at_the_origin_and_are_distinct():
    phases = grid_phases(2, 16)
    assert phases[0] == (0, 0) and len(set(phases)) == 16
    assert grid_phases(3, 5)[:1] == [(0, 0, 0)]


def test_neighbour_mean_excludes_the_centre():
    images = np.zeros((1, 1, 5, 5))
    images[0, 0, 2, 2] = 8.0
    mean = neighbour_mean(images)
    assert mean[0, 0, 2, 2] == 0.0 and mean[0, 0, 1, 1] == 1.0


def test_j_invariant_loss_of_the_identity_is_the_loss_of_the_neighbour_mean():
    images = np.random.default_rng(0).normal(size=(2, 1, 16, 16))
    loss = j_invariant_mse(lambda x: x, images, n_phases=16)
    expected = np.mean((neighbour_mean(images) - images) ** 2)
    assert loss == pytest.approx(expected)


def test_score_without_y_is_the_negative_self_supervised_loss(camera_pair):
    """Recomputed through the public transform: blind the grid with the neighbour
    mean, denoise, compare with the noisy values on the grid."""
    _, noisy = camera_pair
    denoiser = tiny(n_score_phases=3).fit(noisy)
    replaced = neighbour_mean(noisy[None, None])[0, 0]
    errors = []
    for phase in grid_phases(2, 3):
        grid = tuple(slice(p, None, 4) for p in phase)
        blind = noisy.copy()
        blind[grid] = replaced[grid]
        errors.append((denoiser.transform(blind)[grid] - noisy[grid]).ravel())
    expected = np.mean(np.concatenate(errors).astype(np.float64) ** 2)
    assert denoiser.score(noisy) == pytest.approx(-expected, rel=1e-6)
    assert denoiser.score(noisy) == denoiser.score(noisy)  # fixed grid: deterministic


def test_score_ignores_one_label_per_row_and_refuses_other_targets(camera_pair):
    _, noisy = camera_pair
    denoiser = tiny().fit(noisy)
    labels = np.arange(noisy.shape[0]) % 3  # what a pipeline or search passes along
    assert denoiser.score(noisy, labels) == denoiser.score(noisy)
    with pytest.raises(ValueError, match="neither clean images"):
        denoiser.score(noisy, noisy[:64])


def test_score_with_y_is_the_negative_mse_against_y(camera_pair):
    clean, noisy = camera_pair
    denoiser = tiny().fit(noisy, clean)
    expected = -np.mean((denoiser.transform(noisy) - clean) ** 2)
    assert denoiser.score(noisy, clean) == pytest.approx(expected)


@pytest.mark.slow
def test_self_supervised_score_ranks_like_true_error(camera_pair):
    """Three denoisers of clearly different quality are ranked alike by both scores."""
    clean, noisy = camera_pair
    stack_noisy, stack_clean = noisy[None], clean[None]
    selfsup, true = [], []
    for steps in (1, 8, 40):
        d = tiny(
            patch_size=32,
            batch_size=8,
            max_epochs=1,
            steps_per_epoch=steps,
            n_filters=8,
            learning_rate=2e-3,
            masked_pixel_percentage=5.0,
        ).fit(stack_noisy)
        selfsup.append(d.score(stack_noisy))
        true.append(d.score(stack_noisy, stack_clean))
    assert spearmanr(selfsup, true).statistic == pytest.approx(1.0)


def test_image_shape_denoises_flattened_rows_and_keeps_their_shape():
    rows = np.random.default_rng(0).normal(size=(12, 64))
    denoiser = tiny(image_shape=(8, 8), patch_size=8).fit(rows)
    assert denoiser.n_features_in_ == 64
    assert denoiser.transform(rows).shape == rows.shape


def test_image_shape_rejects_rows_of_the_wrong_length():
    with pytest.raises(ValueError, match="image_shape"):
        tiny(image_shape=(8, 8)).fit(np.zeros((4, 63)))


def test_transform_rejects_rows_of_another_length_than_in_fit():
    denoiser = tiny(image_shape=(8, 8), patch_size=8).fit(np.random.default_rng(0).normal(size=(6, 64)))
    denoiser.set_params(image_shape=(7, 7))
    with pytest.raises(ValueError, match="expecting 64 features"):
        denoiser.transform(np.zeros((3, 49)))


def test_warm_start_continues_from_the_current_weights(camera_pair):
    _, noisy = camera_pair
    denoiser = tiny(warm_start=True).fit(noisy)
    before = {k: v.clone() for k, v in denoiser.model_.state_dict().items()}
    mean = denoiser.mean_.copy()
    denoiser.fit(noisy + 10)
    assert len(denoiser.history_) == 2 * TINY["max_epochs"]
    np.testing.assert_array_equal(denoiser.mean_, mean)
    after = denoiser.model_.state_dict()
    assert any(not (after[k] == before[k]).all() for k in before)


def test_warm_start_refuses_another_network(camera_pair):
    _, noisy = camera_pair
    denoiser = tiny(warm_start=True).fit(noisy)
    with pytest.raises(ValueError, match="warm_start"):
        denoiser.set_params(n_filters=8).fit(noisy)


def test_set_params_on_a_fitted_estimator_takes_effect_at_the_next_fit(camera_pair):
    _, noisy = camera_pair
    denoiser = tiny().fit(noisy)
    denoiser.set_params(n_filters=6)
    assert denoiser.transform(noisy).shape == noisy.shape  # still the fitted network
    assert denoiser.fit(noisy).model_.description["n_filters"] == 6


@pytest.mark.slow
def test_grid_search_over_mask_settings_runs_in_parallel_on_a_stack():
    rng = np.random.default_rng(0)
    stack = rng.normal(size=(4, 24, 24))
    search = GridSearchCV(
        tiny(),
        {"masked_pixel_percentage": [1.0, 5.0], "manipulator": ["uniform_withCP", "median"]},
        cv=2,
        n_jobs=2,
    )
    search.fit(stack)
    assert set(search.best_params_) == {"masked_pixel_percentage", "manipulator"}
    assert search.best_estimator_.transform(stack).shape == stack.shape
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()


def test_pipeline_on_digit_rows_runs_in_cross_validation_and_search():
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = digits.data[:120] + np.random.default_rng(0).normal(0, 4, (120, 64))
    y = digits.target[:120]
    pipe = make_pipeline(tiny(image_shape=(8, 8), patch_size=8), PCA(10), LogisticRegression(max_iter=200))
    scores = cross_val_score(pipe, X, y, cv=2)
    assert scores.shape == (2,) and scores.min() > 0.3  # ten classes: chance is 0.1
    grid = {"noise2voiddenoiser__masked_pixel_percentage": [1.0, 5.0]}
    search = GridSearchCV(pipe, grid, cv=2).fit(X, y)
    best = int(np.argmax(search.cv_results_["mean_test_score"]))
    assert search.best_params_ == search.cv_results_["params"][best]
    refitted = search.best_estimator_.named_steps["noise2voiddenoiser"]
    assert refitted.masked_pixel_percentage == search.best_params_["noise2voiddenoiser__masked_pixel_percentage"]
    assert refitted.n_features_in_ == 64


def test_pipeline_of_digit_rows_sets_pandas_output_with_a_column_per_pixel():
    from sklearn.datasets import load_digits

    rows = load_digits().data[:120]
    pipe = make_pipeline(tiny(image_shape=(8, 8), patch_size=8), PCA(10)).set_output(transform="pandas")
    out = pipe.fit_transform(rows)
    assert list(out.columns) == [f"pca{i}" for i in range(10)]
    denoised = pipe[0].transform(rows)
    assert list(denoised.columns) == [f"x{i}" for i in range(64)] and denoised.shape == rows.shape
    names = [f"p{i}" for i in range(64)]
    assert list(pipe[0].get_feature_names_out(names)) == names


def test_pandas_output_of_whole_images_is_refused_with_the_reason(camera_pair):
    from sklearn.exceptions import NotFittedError

    _, noisy = camera_pair
    with pytest.raises(NotFittedError):
        tiny().get_feature_names_out()
    denoiser = tiny().fit(noisy).set_output(transform="pandas")
    with pytest.raises(ValueError, match="flattened images only, fitted and denoised with image_shape"):
        denoiser.transform(noisy)


def test_pickled_fitted_estimator_clones_and_transforms_identically(camera_pair):
    _, noisy = camera_pair
    fitted = tiny().fit(noisy)
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.transform(noisy), fitted.transform(noisy))
    assert clone(restored).get_params() == fitted.get_params()


def test_with_image_shape_rows_are_independent_samples():
    """What check_methods_subset_invariance / sample_order_invariance ask of rows."""
    rows = np.random.default_rng(0).normal(size=(10, 64)).astype(np.float32)
    denoiser = tiny(image_shape=(8, 8), patch_size=8).fit(rows)
    full = denoiser.transform(rows)
    order = np.random.default_rng(1).permutation(10)
    np.testing.assert_allclose(denoiser.transform(rows[order]), full[order], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(denoiser.transform(rows[:3]), full[:3], rtol=1e-5, atol=1e-6)


def test_one_dimensional_input_asks_to_reshape():
    with pytest.raises(ValueError, match="Reshape your data"):
        tiny().fit(np.zeros(16))


def test_neighbour_mean_at_the_border_uses_only_pixels_inside_the_image():
    images = np.arange(9.0).reshape(1, 1, 3, 3)
    mean = neighbour_mean(images)
    assert mean[0, 0, 0, 0] == pytest.approx((1 + 3 + 4) / 3)  # the corner's own value 0 never enters
    assert mean[0, 0, 0, 1] == pytest.approx((0 + 2 + 3 + 4 + 5) / 5)
