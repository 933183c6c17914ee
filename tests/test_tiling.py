"""Tiled prediction: tile layout, stitching and test-time augmentation."""

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from n2v_estimator.nets.geometry import NetworkGeometry, border_width, default_overlap, receptive_radius
from n2v_estimator.nets.unet import UNet
from n2v_estimator.predict.tiling import augmentations, axis_tiles, mirror_index, predict_tiled

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ axis_tiles


@st.composite
def tilings(draw):
    multiple = draw(st.sampled_from([1, 2, 4, 8, 16]))
    tile = multiple * draw(st.integers(1, 24))
    overlap = multiple * draw(st.integers(0, tile // multiple - 1))
    length = draw(st.integers(1, 500))
    return length, tile, overlap, multiple


@settings(max_examples=300, deadline=None)
@given(tilings())
def test_axis_tiles_cover_the_axis_exactly_once_with_enough_context(params):
    length, tile, overlap, multiple = params
    tiles = axis_tiles(length, tile, overlap, multiple)

    assert tiles[0][2] == 0
    assert tiles[-1][3] == length
    for start, stop, lo, hi in tiles:
        assert start % multiple == 0
        assert 0 <= start <= lo < hi <= stop <= length  # writes inside what it reads
        assert stop - start <= tile
    for left, right in zip(tiles, tiles[1:]):
        assert left[3] == right[2]  # contiguous: no gap, no double write
        # the boundary has at least overlap // 2 pixels of context on both sides
        assert left[1] - left[3] >= overlap // 2
        assert right[2] - right[0] >= overlap // 2


def test_axis_tiles_single_tile_when_the_axis_fits():
    assert axis_tiles(37, 64, 16, 8) == [(0, 37, 0, 37)]
    assert axis_tiles(64, 64, 16, 8) == [(0, 64, 0, 64)]


def test_axis_tiles_only_the_last_tile_may_be_short():
    tiles = axis_tiles(150, 64, 16, 4)
    sides = [stop - start for start, stop, _, _ in tiles]
    assert all(s == 64 for s in sides[:-1])
    assert sides[-1] <= 64


# --------------------------------------------------------------- augmentations


def test_augmentations_2d_are_the_eight_symmetries_of_the_square():
    pairs = augmentations(2)
    assert len(pairs) == 8
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    outputs = {tuple(forward(x).flatten().tolist()) for forward, _ in pairs}
    assert len(outputs) == 8


@pytest.mark.parametrize("ndim, shape", [(2, (2, 3, 5, 7)), (3, (1, 2, 3, 4, 5))])
def test_augmentation_inverse_undoes_forward_on_non_square_input(ndim, shape):
    x = torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(shape)
    for forward, inverse in augmentations(ndim):
        assert torch.equal(inverse(forward(x)), x)


def test_augmentations_3d_are_the_eight_flips_keeping_axes_in_place():
    pairs = augmentations(3)
    assert len(pairs) == 8
    x = torch.arange(3 * 4 * 5, dtype=torch.float32).reshape(1, 1, 3, 4, 5)
    outputs = set()
    for forward, _ in pairs:
        y = forward(x)
        assert y.shape == x.shape
        outputs.add(tuple(y.flatten().tolist()))
    assert len(outputs) == 8


# --------------------------------------------------------------- predict_tiled


def random_unet(ndim, depth, channels=1):
    torch.manual_seed(0)
    return UNet(ndim=ndim, in_channels=channels, depth=depth, n_filters=4).eval()


def untiled(model, images):
    with torch.no_grad():
        return model(torch.from_numpy(images)).numpy()


@pytest.mark.parametrize(
    "depth, shape, tile",
    [
        (1, (1, 1, 70, 45), (32, 32)),
        (1, (2, 2, 37, 101), (40, 32)),
        (1, (1, 1, 13, 9), (32, 32)),  # smaller than a tile
        (2, (1, 1, 150, 97), (64, 64)),
        (2, (1, 1, 61, 66), (64, 64)),
        (2, (1, 1, 6, 10), (64, 64)),
    ],
)
def test_predict_tiled_equals_untiled_prediction_in_2d(depth, shape, tile):
    multiple = 2**depth
    overlap = 12 * multiple
    model = random_unet(2, depth, channels=shape[1])
    images = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    tiled = predict_tiled(model, images, tile, (overlap, overlap), 3, CPU, multiple=multiple)
    whole = untiled(model, images)
    assert tiled.dtype == np.float32 and tiled.shape == images.shape
    scale = np.abs(whole).max()
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize(
    "depth, shape, tile",
    [
        (1, (1, 1, 40, 37, 21), (32, 32, 32)),
        (1, (2, 1, 5, 7, 9), (32, 32, 32)),  # smaller than a tile
        (2, (1, 1, 6, 70, 11), (64, 64, 64)),
    ],
)
def test_predict_tiled_equals_untiled_prediction_in_3d(depth, shape, tile):
    multiple = 2**depth
    overlap = 12 * multiple
    model = random_unet(3, depth, channels=shape[1])
    images = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    tiled = predict_tiled(model, images, tile, (overlap,) * 3, 2, CPU, multiple=multiple)
    whole = untiled(model, images)
    scale = np.abs(whole).max()
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize("start, stop, length", [(-3, 8, 5), (-12, 20, 5), (0, 4, 4), (-1, 2, 1), (-28, 40, 13)])
def test_mirror_index_is_numpys_symmetric_padding(start, stop, length):
    values = np.arange(length)
    padded = np.pad(values, (max(0, -start), max(0, stop - length)), mode="symmetric")
    expected = padded[start + max(0, -start) : stop + max(0, -start)]
    np.testing.assert_array_equal(values[mirror_index(start, stop, length)], expected)


@pytest.mark.parametrize(
    "depth, kernel_size, blurpool, width",
    [(1, 3, False, 10), (2, 3, False, 28), (2, 3, True, 32), (3, 3, False, 64), (2, 5, False, 48)],
)
def test_border_width_covers_the_receptive_field_on_the_pooling_grid(depth, kernel_size, blurpool, width):
    assert border_width(depth, kernel_size, blurpool) == width
    assert width >= receptive_radius(depth, kernel_size, blurpool) and width % 2**depth == 0


@pytest.mark.parametrize(
    "depth, shape, tile",
    [
        (1, (1, 1, 70, 45), (40, 40)),
        (1, (2, 2, 37, 101), (48, 40)),
        (1, (1, 1, 13, 9), (40, 40)),  # with its border, smaller than a tile
        (1, (1, 1, 3, 2), (40, 40)),  # smaller than the border
        (2, (1, 1, 150, 97), (128, 128)),
        (2, (1, 1, 61, 66), (112, 112)),  # smaller than a tile, not with its border
    ],
)
def test_predict_tiled_with_a_border_is_the_network_on_the_mirror_extended_image(depth, shape, tile):
    multiple = 2**depth
    width = border_width(depth, 3)
    model = random_unet(2, depth, channels=shape[1])
    images = np.random.default_rng(5).normal(size=shape).astype(np.float32)
    tile = tuple(max(t, 2 * default_overlap(depth, 3)) for t in tile)  # room for the whole overlap
    overlap = (default_overlap(depth, 3),) * 2
    tiled = predict_tiled(model, images, tile, overlap, 3, CPU, multiple=multiple, border=(width, width))
    extended = np.pad(images, ((0, 0), (0, 0), (width, width), (width, width)), mode="symmetric")
    whole = untiled(model, extended)[..., width:-width, width:-width]
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=2e-6 * np.abs(whole).max())


def test_predict_tiled_does_not_modify_its_input():
    images = np.random.default_rng(2).normal(size=(1, 1, 50, 40)).astype(np.float32)
    before = images.copy()
    predict_tiled(random_unet(2, 1), images, (32, 32), (24, 24), 4, CPU, multiple=2)
    np.testing.assert_array_equal(images, before)


def test_predict_tiled_predicts_the_next_batch_before_finishing_the_one_before():
    """Double buffering: the device gets batch i + 1 before the host waits for batch i (on a GPU
    the host then stitches while the device works), every batch is finished once, in order."""
    events = []

    class Recorder(nn.Module):
        def forward(self, x):
            events.append(("predict", float(x[0, 0, 0, 0])))
            return x

    def finish(y):
        events.append(("finish", float(y[0, 0, 0, 0])))
        return y

    images = np.arange(5, dtype=np.float32)[:, None, None, None] * np.ones((5, 1, 16, 16), np.float32)
    out = predict_tiled(Recorder(), images, (16, 16), (0, 0), 2, CPU, finish=finish)
    np.testing.assert_array_equal(out, images)
    assert events == [("predict", 0), ("predict", 2), ("finish", 0), ("predict", 4), ("finish", 2), ("finish", 4)]


@pytest.mark.parametrize("shape", [(2, 3, 21, 34), (1, 2, 5, 9, 7)])
def test_predict_tiled_with_tta_and_identity_model_returns_the_input(shape):
    images = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    ndim = len(shape) - 2
    out = predict_tiled(nn.Identity(), images, (16,) * ndim, (8,) * ndim, 4, CPU, multiple=4, tta=True)
    np.testing.assert_allclose(out, images, rtol=0, atol=1e-6)


def test_predict_tiled_with_tta_averages_the_augmented_predictions():
    model = random_unet(2, 1)
    images = np.random.default_rng(4).normal(size=(1, 1, 14, 18)).astype(np.float32)
    out = predict_tiled(model, images, (32, 32), (24, 24), 1, CPU, multiple=2, tta=True)
    x = torch.from_numpy(images)
    with torch.no_grad():
        expected = sum(inv(model(fwd(x))) for fwd, inv in augmentations(2)) / 8
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_tile_geometry_rounds_to_the_networks_pooling_grid():
    from n2v_estimator.predict.tiling import tile_geometry

    assert tile_geometry(None, None, NetworkGeometry(2, depth=2, kernel_size=3)) == ((256, 256), (56, 56))
    # a default tile holds the whole overlap twice: 64 slices would cut it to 32 (tiles inexact along Z)
    assert tile_geometry(None, None, NetworkGeometry(3, depth=2, kernel_size=3)) == ((112, 128, 128), (56, 56, 56))
    assert tile_geometry(None, None, NetworkGeometry(2, depth=3, kernel_size=5)) == ((416, 416), (208, 208))
    assert tile_geometry(30, 5, NetworkGeometry(2, depth=2, kernel_size=3)) == ((32, 32), (8, 8))
    assert tile_geometry((64, 100), 0, NetworkGeometry(2, depth=3, kernel_size=5)) == ((64, 104), (0, 0))


def test_tile_geometry_overlap_grows_with_the_kernel_and_stays_below_half_a_tile():
    from n2v_estimator.predict.tiling import tile_geometry

    assert default_overlap(2, 3) == 56 and default_overlap(2, 7) == 136
    assert default_overlap(2, 3, blurpool=True) == 64
    assert tile_geometry(512, None, NetworkGeometry(2, depth=2, kernel_size=7)) == ((512, 512), (136, 136))
    assert tile_geometry(128, None, NetworkGeometry(2, depth=2, kernel_size=7)) == ((128, 128), (64, 64))


def test_tiles_chosen_too_small_for_the_networks_overlap_are_warned_about_where_they_cut():
    from n2v_estimator.predict.tiling import tile_geometry, warn_if_seams

    geometry = NetworkGeometry(2, depth=2, kernel_size=7)
    tile, overlap = tile_geometry(128, None, geometry)
    with pytest.warns(UserWarning, match="at least 272 pixels"):
        warn_if_seams(tile, overlap, (300, 100), geometry, None)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_seams(tile, overlap, (120, 100), geometry, None)  # one tile: no seam
        warn_if_seams(tile, (8, 8), (300, 300), geometry, 8)  # an overlap the user chose


@st.composite
def networks_and_images(draw):
    """A network (our layout or n2v's, 2D or 3D, depth 1-4, kernels 3-7, blur-pool), an image whose
    sides take every residue modulo 2**depth (so n2v's grid phase too) and a tile size."""
    layout = draw(st.sampled_from(["n2v-estimator", "n2v-tf"]))
    ndim = draw(st.sampled_from([2, 2, 3]))
    depth = draw(st.integers(1, 4 if ndim == 2 else 2))
    kernel = draw(st.sampled_from([3] if depth == 4 else [3, 5, 7] if ndim == 2 else [3, 5]))
    blurpool = draw(st.booleans()) and not (layout == "n2v-tf" and ndim == 3)
    geometry = NetworkGeometry(
        ndim, depth=depth, kernel_size=kernel, blurpool=blurpool, centred_grid=layout == "n2v-tf"
    )
    sides = [draw(st.integers(1, 2 * geometry.overlap + 40)) for _ in range(ndim)]
    tile = draw(st.sampled_from([None, "just enough", "larger"]))
    if tile == "just enough":
        tile = 2 * geometry.overlap
    elif tile == "larger":
        tile = 2 * geometry.overlap + draw(st.integers(1, 40))
    return layout, ndim, depth, kernel, blurpool, sides, tile


@pytest.mark.slow
@settings(max_examples=int(os.environ.get("N2V_TEST_EXAMPLES", 25)), deadline=None)
@given(networks_and_images())
def test_tiled_equals_untiled_for_every_layout_grid_phase_depth_kernel_and_tile_size(case):
    """What transform runs (mirrored halo, n2v's centred grid, tiles), against one tile holding the
    whole image: equal to float rounding. Weights are scaled up so that far pixels count."""
    from n2v_estimator.predict.denoise import PredictPlan, denoise

    layout, ndim, depth, kernel, blurpool, sides, tile = case
    torch.manual_seed(0)
    net = UNet(
        ndim=ndim, depth=depth, kernel_size=kernel, n_filters=2, batch_norm=False, blurpool=blurpool, layout=layout
    ).eval()
    with torch.no_grad():
        for name, weight in net.named_parameters():
            if name.endswith("weight"):
                weight.mul_(1.5)
    images = np.random.default_rng(0).normal(size=(1, 1, *sides)).astype(np.float32)

    def plan(tile_size):
        return PredictPlan(
            tile_size=tile_size,
            tile_overlap=None,
            batch_pixels=4096,
            device=CPU,
            precision="32",
            tta=False,
            verbose=False,
            manipulator="uniform_withCP",
            neighborhood_radius=5,
        )

    one = max(sides) + 2 * NetworkGeometry.of(net.description).overlap + 64
    whole = denoise(net, images, np.zeros(1), np.ones(1), plan(one))
    tiled = denoise(net, images, np.zeros(1), np.ones(1), plan(tile))
    scale = max(float(np.ptp(whole)), float(np.abs(whole).max()), 1e-6)
    assert np.abs(tiled - whole).max() <= 1e-5 * scale, (case, np.abs(tiled - whole).max() / scale)


@pytest.mark.parametrize(
    "size, overlap, pattern",
    [
        (32, 32, "smaller than tile_size"),
        ((8, 8, 8), None, "2 ints"),
        (-1, None, "at least 1"),
        (32, (4, -4), "at least 0"),
    ],
)
def test_tile_geometry_refuses_impossible_settings(size, overlap, pattern):
    from n2v_estimator.predict.tiling import tile_geometry

    with pytest.raises(ValueError, match=pattern):
        tile_geometry(size, overlap, NetworkGeometry(2, depth=1, kernel_size=3))
