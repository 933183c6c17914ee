"""The fit plan, checked without training: every refusal happens here, before any work."""

import numpy as np
import pytest
import torch
from conftest import TINY, tiny
from skimage import data

from n2v_estimator.fit.plan import make_plan
from n2v_estimator.fit.starting_point import WarmStartState
from n2v_estimator.nets.builder import build_unet

IMAGE = np.random.default_rng(0).normal(size=(40, 48))


def plan(X=IMAGE, previous_fit=None, **overrides):
    estimator = tiny(**overrides)
    estimator._validate_params()
    return make_plan(estimator.get_params(), X, previous_fit)


def test_plan_holds_what_fit_needs():
    p = plan(np.random.default_rng(0).normal(size=(40, 100)), patch_size=16)
    assert p.network["ndim"] == 2 and p.network["in_channels"] == 1 and p.network["depth"] == TINY["depth"]
    assert p.patch_shape == (16, 16)
    assert p.n_features == 100  # a 2D X: its rows have 100 values
    assert p.mean.shape == p.std.shape == (1,)
    # One image: validation is a strip of 10% of its longest axis, and its patches fit in the strip.
    assert [im.shape for im in p.train_images] == [(1, 40, 90)]
    assert [im.shape for im in p.validation_images] == [(1, 40, 10)]
    assert p.validation_shape == (16, 10)
    assert p.initial_weights is None and not p.continuing
    assert p.device == torch.device("cpu")


def test_same_random_state_gives_the_same_seeds_and_another_gives_others():
    assert plan().seeds == plan().seeds
    assert plan().seeds != plan(random_state=1).seeds


def test_patches_shrink_to_small_images_and_stacks_have_no_row_count():
    p = plan(np.zeros((5, 11, 7)) + np.arange(7), patch_size=64)
    assert p.patch_shape == (11, 7)
    assert p.n_features is None


def test_tile_settings_are_checked_against_the_planned_network():
    plan(depth=1, tile_size=8, tile_overlap=4)  # multiples of 2: overlap 4 < tile 8
    with pytest.raises(ValueError, match="tile_overlap"):
        plan(depth=3, tile_size=8, tile_overlap=4)  # both round up to 8 = 2**3


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"tile_size": 32, "tile_overlap": 40}, "tile_overlap"),
        ({"kernel_size": 4}, "kernel_size must be odd"),
        ({"struct_mask": ("z", 3)}, "needs 3D data"),
        (
            {"manipulator": "median", "neighborhood_radius": 1, "struct_mask": [[1, 1, 1], [1, 1, 1], [1, 1, 1]]},
            "needs neighbours",
        ),
        ({"batch_size": 1, "depth": 2, "patch_size": 4}, "batch normalisation"),
        ({"depth": 3, "patch_size": 4}, "patch_size=4 along Y is smaller than 2\\*\\*depth=8"),
        ({"axes": "ZYX", "neighborhood_radius": 8}, "neighborhood_radius"),
        ({"device": "meta"}, "cannot run the denoiser"),
    ],
)
def test_late_settings_are_refused_by_the_plan(overrides, pattern):
    X = np.zeros((8, 16, 16)) if overrides.get("axes") == "ZYX" else IMAGE
    with pytest.raises(ValueError, match=pattern):
        plan(X, **overrides)


@pytest.mark.parametrize("manipulator", ["median", "mean", "normal_fitted", "uniform_withoutCP", "normal_withoutCP"])
def test_thin_patches_without_usable_neighbours_are_refused_for_manipulators_that_need_them(manipulator):
    # Images 2 pixels high: with the horizontal struct mask of 5 and radius 2 the
    # remaining neighbours of every pixel are 2 rows away, outside the image.
    X = np.random.default_rng(0).normal(size=(6, 2, 40))
    with pytest.raises(ValueError, match="no neighbour within neighborhood_radius=2 outside the struct mask"):
        plan(X, manipulator=manipulator, struct_mask=[[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    plan(X, manipulator="uniform_withCP", struct_mask=("x", 5))  # can always take the pixel itself


def test_an_rgb_photograph_with_default_axes_is_refused_naming_the_axes():
    with pytest.raises(ValueError, match="axes='YXC'.*axes='SYX'"):
        plan(data.coffee())
    assert plan(data.coffee()[:64, :64], axes="YXC").network["in_channels"] == 3


@pytest.mark.parametrize(
    "X, pattern",
    [
        (np.zeros((1, 10)), "found array with 1 sample"),
        (np.zeros((10, 1)), r"found array with 1 feature\(s\)"),
        (np.zeros((4, 3, 40)), "only 3 pixel\\(s\\) along Y"),
    ],
)
def test_images_too_small_for_the_network_are_refused(X, pattern):
    with pytest.raises(ValueError, match=pattern):
        plan(X, depth=2)


def test_warm_start_plan_trains_a_copy_of_the_previous_weights():
    first = plan()
    weights = build_unet(first.network, seed=0).state_dict()
    name = next(iter(weights))
    original = weights[name].clone()
    previous_fit = WarmStartState(first.network, weights, np.array([5.0]), np.array([2.0]), n_epochs=3)
    p = plan(previous_fit=previous_fit, warm_start=True)
    assert p.continuing
    np.testing.assert_array_equal(p.mean, [5.0])
    assert torch.equal(p.build_network().state_dict()[name], original)
    p.initial_weights[name].add_(1.0)  # what training does to the plan's weights
    assert torch.equal(weights[name], original)
    assert p.seeds != first.seeds  # continued training draws new patches


def test_warm_start_refuses_another_network():
    first = plan()
    previous_fit = WarmStartState(first.network, {}, first.mean, first.std, n_epochs=1)
    with pytest.raises(ValueError, match="warm_start=True needs the same network"):
        plan(previous_fit=previous_fit, warm_start=True, n_filters=8)


def test_a_too_small_axis_is_named_in_the_users_layout():
    with pytest.raises(ValueError, match=r"along Y.*found array with 4 feature\(s\)"):
        plan(np.zeros((64, 4)), axes="XY", depth=3)
    with pytest.raises(ValueError, match="along Z"):
        plan(np.zeros((16, 16, 2)), axes="YXZ", depth=2)


def test_default_budget_and_patches_follow_the_dimensionality():
    estimator = tiny(max_epochs=None, patch_size=None)
    estimator._validate_params()
    two = make_plan(estimator.get_params(), np.random.default_rng(0).normal(size=(80, 80)))
    three = make_plan(estimator.set_params(axes="ZYX").get_params(), np.random.default_rng(0).normal(size=(20, 40, 40)))
    assert (two.max_epochs, two.patch_shape) == (30, (64, 64))
    assert (three.max_epochs, three.patch_shape) == (6, (16, 32, 32))


def test_a_search_hears_once_what_the_fit_changed_not_once_per_fold(recwarn):
    """GridSearchCV over a stack with axes=None, 3 folds x 2 settings: the stack and the shrunk patches
    are each said once (the folds differ only in their number of images)."""
    import warnings

    from sklearn.model_selection import GridSearchCV

    from n2v_estimator import Noise2VoidDenoiser

    X = np.random.default_rng(0).normal(size=(6, 24, 24)).astype(np.float32)
    search = GridSearchCV(
        Noise2VoidDenoiser(
            max_epochs=1,
            steps_per_epoch=1,
            batch_size=2,
            depth=1,
            n_filters=2,
            patch_size=32,
            validation_fraction=0,
            device="cpu",
        ),
        {"neighborhood_radius": [2, 3]},
        cv=3,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        search.fit(X)
    said = [str(w.message) for w in recwarn if issubclass(w.category, UserWarning)]
    assert sum("trained as a stack" in m for m in said) == 1, said
    assert sum("patch_size (32, 32) is larger than the training images" in m for m in said) == 1, said


@pytest.mark.parametrize("lazy", [False, True], ids=["numpy", "dask"])
def test_one_2d_image_inside_model_selection_is_said_to_split_by_its_rows(monkeypatch, lazy):
    from n2v_estimator.fit import plan as fit_plan

    monkeypatch.setattr(fit_plan, "inside_model_selection", lambda: True)
    X = pytest.importorskip("dask.array").from_array(IMAGE, chunks=20) if lazy else IMAGE
    with pytest.warns(UserWarning, match=r"on one 2D image \(40x48 here\)"):
        plan(X)
