"""Dask arrays in ``transform``: lazy, chunk by chunk with a halo, equal to the in-memory result."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
from conftest import tiny
from scipy.ndimage import gaussian_filter

from n2v_estimator.data.axes import fitted_images, is_dask_array
from n2v_estimator.nets.geometry import receptive_radius
from n2v_estimator.nets.unet import UNet
from n2v_estimator.predict.denoise import Denoiser
from n2v_estimator.predict.lazy import halo_width, transform_lazy

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")


def lazily(denoiser, X, return_std=False):
    """transform_lazy as the estimator calls it: X judged at the entrance, the fitted network as a Denoiser."""
    images = fitted_images(X, denoiser.axes, denoiser.image_shape, denoiser._fitted(), lazy=True)
    return transform_lazy(images, denoiser._denoiser(), return_std)


QUICK = dict(max_epochs=1, steps_per_epoch=2, verbose=False)
RNG = np.random.default_rng(0)


def structured(shape, scale=300.0, offset=100.0):
    """Smooth structure plus pixel noise (float32): a network's output varies across it."""
    smooth = gaussian_filter(RNG.standard_normal(shape), 3) * scale + offset
    return (smooth + RNG.normal(0, 10, shape)).astype(np.float32)


IMAGE = structured((61, 75))  # odd sides: neither a multiple of 2**depth nor of any chunk
LARGE = structured((300, 290))  # beyond the default 256x256 tile
STACK = structured((5, 40, 37))
VOLUME = structured((16, 29, 27))
RGB = np.stack([structured((45, 50)), structured((45, 50), scale=600, offset=-50)], axis=-1)


@pytest.fixture(autouse=True, scope="module")
def synchronous_scheduler(one_torch_thread):
    """One thread, for dask and torch: the tests compare numbers, on tiny arrays."""
    with dask.config.set(scheduler="synchronous"):
        yield


@pytest.fixture(scope="module")
def plain():
    return tiny(**QUICK).fit(structured((48, 48)))


@pytest.fixture(scope="module")
def volumetric():
    return tiny(axes="ZYX", **QUICK).fit(structured((16, 32, 32)))


@pytest.fixture(scope="module")
def two_channels():
    return tiny(axes="YXC", **QUICK).fit(RGB[:40, :40])


@pytest.fixture(scope="module")
def probabilistic():
    return tiny(noise_model="gaussian", blind_spot="mask", **QUICK).fit(structured((48, 48)))


def with_params(fitted, **params):
    """A copy of a fitted denoiser with transform-time parameters changed."""
    return copy.deepcopy(fitted).set_params(**params)


def assert_matches_in_memory(denoiser, image, chunks):
    X = da.from_array(image, chunks=chunks)
    lazy = lazily(denoiser, X)
    expected = denoiser.transform(image)
    assert isinstance(lazy, da.Array) and lazy.shape == image.shape and lazy.dtype == expected.dtype
    computed = lazy.compute()
    assert computed.dtype == expected.dtype
    np.testing.assert_allclose(computed, expected, rtol=1e-5, atol=1e-5 * np.ptp(expected))
    return lazy


# ------------------------------------------------------------------ the halo
@pytest.mark.parametrize("depth, kernel_size, blurpool", [(1, 3, False), (2, 3, False), (1, 5, False), (2, 3, True)])
def test_receptive_radius_is_how_far_the_network_looks(depth, kernel_size, blurpool):
    torch.manual_seed(0)
    network = UNet(2, 1, depth=depth, n_filters=8, kernel_size=kernel_size, blurpool=blurpool, batch_norm=False)
    radius = receptive_radius(depth, kernel_size, blurpool)
    side = 2 * radius + 2 ** (depth + 2)
    reach = 0
    for phase in range(2**depth):  # where the pixel sits on the pooling grid
        x = torch.randn(1, 1, side, side, requires_grad=True)
        centre = side // 2 + phase
        network.eval()(x)[0, 0, centre, centre].backward()
        seen = torch.nonzero(x.grad[0, 0].abs().sum(0)).flatten()  # input columns it depends on
        reach = max([reach, *(centre - seen), *(seen - centre)])
    assert reach == radius


def test_the_halo_adds_the_pooling_grid_and_the_blind_neighbourhood(plain, probabilistic):
    assert halo_width(plain.model_.description) == 10 + 1  # depth 1, kernel 3
    assert halo_width(probabilistic.model_.description, 2) == 10 + 1 + 2
    default = {"ndim": 2, "depth": 2, "kernel_size": 3, "blurpool": False, "noise_model": None, "blind_spot": "mask"}
    assert halo_width(default) == 29
    # A blind-spot network reaches farther and masks nothing: no neighbourhood.
    assert halo_width({**default, "blind_spot": "network", "noise_model": "gaussian"}, 2) == 47 + 3


# ------------------------------------------------- equal to the in-memory result
@pytest.mark.parametrize(
    "chunks",
    [(25, 31), (40, 40), (61, 7)],
    ids=["uneven", "square", "thinner-than-the-halo"],
)
@pytest.mark.usefixtures("both_cpu_kinds")
def test_chunks_of_an_image_denoise_as_the_whole_image(plain, chunks):
    lazy = assert_matches_in_memory(plain, IMAGE, chunks)
    assert lazy.chunks == da.from_array(IMAGE, chunks=chunks).chunks


def test_chunks_larger_than_a_tile_denoise_as_the_whole_image(plain):
    assert_matches_in_memory(plain, LARGE, (280, 150))  # the default tile is 256x256


def test_chunks_larger_than_small_tiles_denoise_as_the_whole_image(plain):
    # An overlap of 24 leaves each tile 12 pixels of context, more than the radius (10).
    assert_matches_in_memory(with_params(plain, tile_size=32, tile_overlap=24), IMAGE, (50, 50))


def test_test_time_augmentation_is_chunked_on_the_whole_images_pooling_grid(plain):
    # Flipped copies pool on a grid that starts at the image's end (odd sides here).
    assert_matches_in_memory(with_params(plain, tta=True), IMAGE, (25, 31))


def test_chunks_of_a_volume_denoise_as_the_whole_volume(volumetric):
    assert_matches_in_memory(volumetric, VOLUME, (9, 15, 14))


def test_chunks_of_a_volume_deeper_than_a_tile_denoise_as_the_whole_volume(volumetric):
    assert_matches_in_memory(volumetric, structured((80, 20, 20)), (70, 11, 20))


def test_samples_may_stay_chunked(plain):
    lazy = assert_matches_in_memory(plain, STACK, (2, 25, 37))
    assert lazy.chunks == ((2, 2, 1), (25, 15), (37,))


def test_channels_are_gathered_into_one_chunk(two_channels):
    lazy = assert_matches_in_memory(two_channels, RGB, (20, 17, 1))
    assert lazy.chunks == ((20, 20, 5), (17, 17, 16), (2,))


def test_threads_share_the_network_safely(plain):
    with dask.config.set(scheduler="threads", num_workers=2):
        assert_matches_in_memory(plain, IMAGE, (25, 31))


def test_transform_of_a_dask_array_is_lazy_and_chunked(plain):
    X = da.from_array(IMAGE, chunks=(40, 40))
    out = plain.transform(X)
    assert is_dask_array(out) and out.chunks == X.chunks
    np.testing.assert_allclose(out.compute(), plain.transform(IMAGE), rtol=1e-5, atol=1e-5 * np.ptp(IMAGE))


# ------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype, expected", [(np.uint8, np.float32), (np.float64, np.float64), (np.int32, np.float64)])
def test_the_dtype_follows_numpy_transform(plain, dtype, expected):
    image = np.clip(IMAGE / 4, 0, 255).astype(dtype)
    lazy = assert_matches_in_memory(plain, image, (40, 75))
    assert lazy.dtype == expected


# ------------------------------------------------------------------ laziness
def test_building_the_graph_reads_nothing_of_x(plain):
    def unreadable():
        raise RuntimeError("X was read")

    X = da.from_delayed(dask.delayed(unreadable)(), shape=(61, 75), dtype=np.float32).rechunk((20, 25))
    out = lazily(plain, X)
    assert out.shape == (61, 75) and out.dtype == np.float32
    with pytest.raises(RuntimeError, match="X was read"):
        out.compute()


def test_the_denoiser_enters_the_graph_as_one_key_every_chunk_depends_on(plain):
    from dask.core import get_dependencies

    out = lazily(plain, da.from_array(IMAGE, chunks=(20, 25)))  # 4 x 3 chunks, the last row merged
    graph = dict(out.__dask_graph__())
    holders = [key for key in graph if str(key).startswith("n2v-denoiser-")]
    chunks = [key for key in graph if isinstance(key, tuple) and key[0].startswith("n2v-denoise-")]
    assert len(holders) == 1 and len(chunks) == 9
    assert all(holders[0] in get_dependencies(graph, key) for key in chunks)


def test_the_user_s_denoiser_is_left_as_it_was(plain):
    verbose = plain.verbose
    lazily(with_params(plain, verbose=True), da.from_array(IMAGE, chunks=40)).compute()
    assert plain.verbose == verbose


# -------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "fixture, X",
    [
        ("two_channels", np.zeros((30, 30, 3), np.float32)),  # channels
        ("volumetric", np.zeros((30, 30), np.float32)),  # ZYX given 2D
        ("plain", np.zeros((2, 3, 30, 30), np.float32)),  # 4D with axes=None
        ("plain", np.zeros((30, 30, 3), np.float32)),  # looks like colour with axes=None
        ("plain", np.zeros((30, 30), bool)),
        ("plain", np.zeros((0, 30), np.float32)),
    ],
    ids=["channels", "dimensionality", "unnamed-axes", "colour", "bool", "empty"],
)
def test_a_bad_x_is_refused_at_call_time_as_numpy_transform_refuses_it(request, fixture, X):
    denoiser = request.getfixturevalue(fixture)
    with pytest.raises((TypeError, ValueError)) as in_memory:
        denoiser.transform(X)
    with pytest.raises(in_memory.type) as lazy:
        lazily(denoiser, da.from_array(X, chunks=10))
    assert str(lazy.value) == str(in_memory.value)


def test_a_3d_model_refuses_2d_images_at_call_time(volumetric):
    with pytest.raises(ValueError, match="fitted on 3D images but X is 2D"):
        lazily(with_params(volumetric, axes="SYX"), da.zeros((4, 30, 30), chunks=10))


def test_image_shape_is_refused(plain):
    with pytest.raises(ValueError, match="image_shape=.*not supported for dask"):
        lazily(with_params(plain, image_shape=(8, 8)), da.zeros((10, 64), chunks=5))


def test_an_unfitted_denoiser_is_refused():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        lazily(tiny(), da.zeros((30, 30), chunks=10))


def test_return_std_with_a_plain_model_is_refused_as_numpy_transform_refuses_it(plain):
    with pytest.raises(ValueError) as in_memory:
        plain.transform(IMAGE, return_std=True)
    with pytest.raises(ValueError) as lazy:
        lazily(plain, da.from_array(IMAGE, chunks=30), return_std=True)
    assert str(lazy.value) == str(in_memory.value)


def test_non_finite_values_are_refused_when_their_chunk_is_computed(plain):
    image = IMAGE.copy()
    image[5, 60] = np.nan  # in one chunk's block only: rows [0, 30 + 11), columns [40 - 11, 75)
    out = lazily(plain, da.from_array(image, chunks=(30, 40)))  # no error yet
    with pytest.raises(ValueError, match=r"non-finite .* index \(5, 31\).* block of X that starts at \(0, 29\)"):
        out.compute()


# ------------------------------------------------------------- probabilistic
def test_probabilistic_chunks_differ_from_the_whole_image_by_the_blind_draws_only(probabilistic):
    mean, std = lazily(probabilistic, da.from_array(IMAGE, chunks=(31, 38)), return_std=True)
    assert mean.shape == std.shape == IMAGE.shape and mean.dtype == std.dtype == np.float32
    assert mean.chunks == std.chunks == ((31, 30), (38, 37))
    mean, std = dask.compute(mean, std)
    expected_mean, expected_std = probabilistic.transform(IMAGE, return_std=True)
    # Measured: 0.025 (mean) and 0.31 (max) posterior stds apart, std maps within 1.2%; the
    # in-memory results of the image and of it shifted by (3, 5) pixels: 0.034, 0.43, 2.6%.
    spread = expected_std.mean()
    assert np.abs(mean - expected_mean).mean() < 0.25 * spread
    assert np.abs(mean - expected_mean).max() < 3 * spread
    np.testing.assert_allclose(std, expected_std, rtol=0.25)
    alone = lazily(probabilistic, da.from_array(IMAGE, chunks=(31, 38))).compute()
    np.testing.assert_array_equal(alone, mean)  # the draws are seeded per chunk


def test_a_blind_spot_network_s_chunks_give_the_in_memory_posterior(one_torch_thread):
    """Its prior is blind by construction, not by random draws: chunks agree to float rounding."""
    denoiser = tiny(blind_spot="network", noise_model="poisson_gaussian", **QUICK).fit(structured((48, 48)))
    image = structured((120, 110))  # the halo is 20 at depth 1: several chunks with a full halo
    mean, std = dask.compute(*lazily(denoiser, da.from_array(image, chunks=(45, 50)), return_std=True))
    expected_mean, expected_std = denoiser.transform(image, return_std=True)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-5, atol=1e-5 * np.ptp(expected_mean))
    np.testing.assert_allclose(std, expected_std, rtol=1e-5, atol=1e-5 * np.ptp(expected_std))


# ------------------------------------------------------ distributed (slow)
class CountingDenoiser(Denoiser):
    """Counts, per process, how often it is unpickled."""

    unpickled = 0

    def __setstate__(self, state):
        type(self).unpickled += 1
        self.__dict__.update(state)


def _unpickled():
    return CountingDenoiser.unpickled


@pytest.fixture(scope="module")
def cluster_client():
    distributed = pytest.importorskip("distributed")
    with dask.config.set(scheduler=None):
        with (
            distributed.LocalCluster(
                n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            yield client


@pytest.mark.slow
def test_a_local_cluster_denoises_as_in_memory_unpickling_the_denoiser_once_per_worker(plain, cluster_client):
    shipped = plain._denoiser()
    counting = CountingDenoiser(**{field.name: getattr(shipped, field.name) for field in dataclasses.fields(shipped)})
    image = structured((90, 110))
    X = da.from_array(image, chunks=(30, 37))
    out = transform_lazy(fitted_images(X, plain.axes, None, plain._fitted(), lazy=True), counting, False)
    computed = cluster_client.compute(out).result()
    np.testing.assert_allclose(computed, plain.transform(image), rtol=1e-5, atol=1e-5 * np.ptp(image))
    counts = cluster_client.run(_unpickled)
    assert len(counts) == 2 and 1 <= sum(counts.values()) and max(counts.values()) == 1, counts


@pytest.mark.slow
def test_a_grid_search_runs_on_a_local_cluster_through_joblib(cluster_client):
    import joblib
    from sklearn.model_selection import GridSearchCV

    grid = {"masked_pixel_percentage": [0.5, 2.0]}
    search = GridSearchCV(tiny(**QUICK), grid, cv=2, n_jobs=-1)
    with joblib.parallel_backend("dask"):
        search.fit(structured((4, 32, 32)))
    assert search.best_params_["masked_pixel_percentage"] in grid["masked_pixel_percentage"]
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()


# ------------------------------------------------------------- each check once
def _counting(monkeypatch, module, name):
    """Count the calls of ``module.name`` (the function itself is still called)."""
    calls = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_a_dask_array_on_a_zarr_store_has_its_codecs_checked_once_and_its_plan_resolved_once(
    plain, monkeypatch, tmp_path
):
    """The one entrance judges the array (its store's codecs once); the Denoiser resolves its plan once for
    every chunk it denoises in a process, not once per chunk."""
    zarr = pytest.importorskip("zarr")
    from n2v_estimator.data import axes
    from n2v_estimator.predict import denoise

    store = zarr.open(str(tmp_path / "image.zarr"), mode="w", shape=IMAGE.shape, chunks=(30, 37), dtype="f4")
    store[:] = IMAGE
    sources = _counting(monkeypatch, axes, "check_source")
    plans = _counting(monkeypatch, denoise.PredictPlan, "of")
    with dask.config.set(scheduler="synchronous"):
        out = plain.transform(da.from_zarr(store)).compute()
    assert len(sources) == 1 and len(plans) == 1
    assert out.shape == IMAGE.shape


def test_score_resolves_one_plan_for_all_its_phases(plain, monkeypatch):
    from n2v_estimator.predict import denoise

    plans = _counting(monkeypatch, denoise.PredictPlan, "of")
    assert plain.n_score_phases > 1
    plain.score(IMAGE)
    assert len(plans) == 1
