"""Axes strings: validation, inference, canonical layout and input checks."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from n2v_estimator.data.axes import check_image_array, from_canonical, resolve_axes, spatial_ndim, to_canonical

# ---------------------------------------------------------------- resolve_axes


def test_resolve_axes_infers_yx_for_2d_arrays():
    assert resolve_axes(None, 2) == "YX"


def test_resolve_axes_infers_syx_for_3d_arrays():
    assert resolve_axes(None, 3) == "SYX"


@pytest.mark.parametrize("ndim", [1, 4, 5])
def test_resolve_axes_cannot_infer_other_ndims_and_names_axes_in_the_error(ndim):
    with pytest.raises(ValueError, match="axes") as info:
        resolve_axes(None, ndim)
    assert f"{ndim}D" in str(info.value)


@pytest.mark.parametrize("axes", ["YXQ", "QYX", "YX1"])
def test_resolve_axes_rejects_unknown_letters(axes):
    with pytest.raises(ValueError, match="unknown"):
        resolve_axes(axes, len(axes))


@pytest.mark.parametrize("axes", ["YYX", "SYXS", "CYXc"])
def test_resolve_axes_rejects_repeated_letters(axes):
    with pytest.raises(ValueError, match="repeats"):
        resolve_axes(axes, len(axes))


@pytest.mark.parametrize("axes", ["SX", "ZY", "SCZ"])
def test_resolve_axes_requires_both_y_and_x(axes):
    with pytest.raises(ValueError, match="Y and X"):
        resolve_axes(axes, len(axes))


@pytest.mark.parametrize("axes, ndim", [("YX", 3), ("SYX", 2), ("SCZYX", 4)])
def test_resolve_axes_rejects_a_length_that_differs_from_ndim(axes, ndim):
    with pytest.raises(ValueError, match="dimensions"):
        resolve_axes(axes, ndim)


def test_resolve_axes_accepts_lower_case_and_returns_upper_case():
    assert resolve_axes("szyxc", 5) == "SZYXC"
    assert resolve_axes("yX", 2) == "YX"


def test_resolve_axes_rejects_a_non_string():
    with pytest.raises(TypeError):
        resolve_axes(["Y", "X"], 2)


def test_spatial_ndim_counts_z():
    assert spatial_ndim("SYX") == 2
    assert spatial_ndim("ZYXC") == 3


# ------------------------------------------------- to_canonical / from_canonical


@st.composite
def layouts(draw):
    extra = draw(st.lists(st.sampled_from("SCZ"), unique=True, max_size=3))
    axes = "".join(draw(st.permutations(extra + ["Y", "X"])))
    sizes = {a: draw(st.integers(1, 4)) for a in axes}
    return axes, sizes


@settings(max_examples=60, deadline=None)
@given(layouts())
def test_from_canonical_inverts_to_canonical_for_every_layout(layout):
    axes, sizes = layout
    shape = tuple(sizes[a] for a in axes)
    array = np.arange(int(np.prod(shape))).reshape(shape)

    canonical = to_canonical(array, axes)

    expected = (sizes.get("S", 1), sizes.get("C", 1))
    expected += ((sizes["Z"],) if "Z" in axes else ()) + (sizes["Y"], sizes["X"])
    assert canonical.shape == expected
    back = from_canonical(canonical, axes)
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)


@settings(max_examples=30, deadline=None)
@given(layouts())
def test_to_canonical_puts_every_value_at_its_named_coordinates(layout):
    axes, sizes = layout
    shape = tuple(sizes[a] for a in axes)
    array = np.arange(int(np.prod(shape))).reshape(shape)
    canonical = to_canonical(array, axes)
    for index in np.ndindex(*shape):
        named = dict(zip(axes, index))
        key = (named.get("S", 0), named.get("C", 0))
        key += ((named["Z"],) if "Z" in axes else ()) + (named["Y"], named["X"])
        assert canonical[key] == array[index]


def test_to_canonical_returns_a_view_not_a_copy():
    array = np.zeros((4, 5, 3), dtype=np.float32)
    canonical = to_canonical(array, "YXC")
    assert canonical.shape == (1, 3, 4, 5)
    assert np.shares_memory(canonical, array)


# ------------------------------------------------------------ check_image_array


@pytest.mark.parametrize(
    "X",
    [
        np.zeros((4, 4), dtype=bool),
        np.array([[1, "a"], [2, None]], dtype=object),
        np.array([["a", "b"], ["c", "d"]]),
        np.array([[b"a", b"b"]]),
    ],
    ids=["bool", "object", "str", "bytes"],
)
def test_check_image_array_rejects_non_numeric_dtypes(X):
    with pytest.raises(TypeError, match="dtype"):
        check_image_array(X)


def test_check_image_array_rejects_complex_data_with_scikit_learns_wording():
    with pytest.raises(ValueError, match="Complex data not supported"):
        check_image_array(np.zeros((4, 4), dtype=np.complex64))


def test_check_image_array_converts_object_arrays_of_numbers():
    out = check_image_array(np.array([[1, 2.5], [3, 4]], dtype=object))
    assert out.dtype == np.float64 and out[0, 1] == 2.5


@pytest.mark.parametrize("shape", [(0,), (0, 5), (3, 0, 4)])
def test_check_image_array_rejects_empty_arrays(shape):
    with pytest.raises(ValueError, match="empty"):
        check_image_array(np.zeros(shape, dtype=np.float32))


def test_check_image_array_rejects_a_ragged_list():
    with pytest.raises((ValueError, TypeError)):
        check_image_array([[1.0, 2.0], [3.0]])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_check_image_array_reports_nonfinite_count_and_first_index(dtype):
    X = np.zeros((3, 4, 5), dtype=dtype)
    X[1, 2, 3] = np.nan
    X[2, 0, 1] = np.inf
    X[2, 3, 4] = -np.inf
    with pytest.raises(ValueError) as info:
        check_image_array(X, name="images")
    message = str(info.value)
    assert "images" in message
    assert "3 non-finite" in message
    assert "(1, 2, 3)" in message


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.uint16, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64]
)
def test_check_image_array_accepts_numeric_arrays_without_copying(dtype):
    X = np.arange(12).reshape(3, 4).astype(dtype)
    out = check_image_array(X)
    assert out is X


def test_check_image_array_converts_a_nested_list():
    out = check_image_array([[1, 2], [3, 4]])
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, [[1, 2], [3, 4]])


# ------------------------------------------------------------------ one verdict, whatever the container


def _verdict(X, axes):
    """What planning a fit says of ``X``: ``"ok"``, or the error's type and message (a list's
    ``X[0]: `` prefix dropped), with the warnings' first words."""
    import warnings

    from n2v_estimator import Noise2VoidDenoiser
    from n2v_estimator.fit.plan import make_plan

    params = Noise2VoidDenoiser(
        axes=axes, patch_size=8, depth=1, n_filters=2, batch_size=2, device="cpu", validation_fraction=0
    ).get_params()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            make_plan(params, X)
            outcome = "ok"
        except (ValueError, TypeError) as exc:
            outcome = f"{type(exc).__name__}: {str(exc).removeprefix('X[0]: ')}"
    said = sorted({str(w.message).split(":")[0][:60] for w in caught if issubclass(w.category, UserWarning)})
    return outcome, said


@st.composite
def arrays_and_axes(draw):
    ndim = draw(st.integers(2, 4))
    shape = tuple(draw(st.sampled_from([1, 2, 3, 4, 9, 16, 20])) for _ in range(ndim))
    axes = draw(st.sampled_from([None, "YX", "SYX", "YXC", "ZYX", "CYX", "SZYX", "YXS"]))
    dtype = draw(st.sampled_from(["float32", "uint8", "int16", "bool"]))
    return shape, axes, dtype


@pytest.mark.slow
@settings(max_examples=int(os.environ.get("N2V_TEST_EXAMPLES", 60)), deadline=None)
@given(arrays_and_axes())
def test_the_same_array_gets_the_same_verdict_in_every_container(case):
    """numpy, a list of one array, dask, zarr and a list of one dask array: one validator judges
    their shape, axes and dtype (values are checked as read for arrays read on demand)."""
    import dask.array as da
    import zarr

    shape, axes, dtype = case
    X = (np.arange(int(np.prod(shape))) % 7).reshape(shape).astype(dtype)
    stored = zarr.create_array(store=zarr.storage.MemoryStore(), shape=shape, dtype=dtype, chunks=shape)
    stored[...] = X
    containers = {
        "numpy": X,
        "list": [X],
        "dask": da.from_array(X, chunks=max(1, shape[0] // 2)),
        "zarr": stored,
        "dask list": [da.from_array(X)],
    }
    if axes is not None and "S" in axes and len(shape) == len(axes) - 1:  # a list is then the S axis itself
        del containers["list"], containers["dask list"]
    verdicts = {name: _verdict(data, axes) for name, data in containers.items()}
    assert len({v[0] for v in verdicts.values()}) == 1, verdicts


# ------------------------------------------------------------------ time


@pytest.mark.parametrize(
    ("axes", "ndim", "expected"),
    [("TYX", 3, "SYX"), ("tzyx", 4, "SZYX"), ("TCYX", 4, "SCYX"), ("TCZYX", 5, "SCZYX"), ("YXT", 3, "YXS")],
)
def test_a_time_axis_is_a_sample_axis_kept_in_its_place(axes, ndim, expected):
    assert resolve_axes(axes, ndim) == expected


def test_time_and_samples_together_and_unknown_letters_are_told_what_to_do():
    with pytest.raises(ValueError, match="both S and T.*Reshape the array to merge them"):
        resolve_axes("STYX", 4)
    with pytest.raises(ValueError, match=r"T \(time\).*'TYX' for a time-lapse"):
        resolve_axes("QYX", 3)


def test_a_time_lapse_trains_frame_by_frame_or_volume_by_volume_and_comes_back_in_its_layout():
    from n2v_estimator import Noise2VoidDenoiser

    small = dict(max_epochs=1, steps_per_epoch=2, batch_size=2, depth=1, n_filters=2, validation_fraction=0)
    frames = np.random.default_rng(0).normal(size=(16, 16, 3)).astype(np.float32)  # Y, X, T: T last
    denoiser = Noise2VoidDenoiser(axes="YXT", patch_size=16, **small).fit(frames)
    assert denoiser.spatial_ndim_ == 2 and denoiser.transform(frames).shape == frames.shape
    volumes = np.random.default_rng(1).normal(size=(2, 2, 8, 16, 16)).astype(np.float32)  # T, C, Z, Y, X
    denoiser = Noise2VoidDenoiser(axes="TCZYX", patch_size=8, **small).fit(volumes)
    assert (denoiser.spatial_ndim_, denoiser.n_channels_) == (3, 2) and denoiser.transform(
        volumes
    ).shape == volumes.shape
