"""Image files: every format round-trips with its axes, lazy reads read nothing, writes are atomic."""

import os
import sys

import numpy as np
import pytest

from n2v_estimator.images import chunks, tiff
from n2v_estimator.images import files as _files
from n2v_estimator.images.errors import MissingDependencyError
from n2v_estimator.images.files import read_image, write_image
from n2v_estimator.images.tiff import axes_from_tiff, axes_to_tiff

tifffile = pytest.importorskip("tifffile")
RNG = np.random.default_rng(0)


def image(*shape, dtype=np.float32):
    return RNG.random(shape).astype(dtype) if np.dtype(dtype).kind == "f" else RNG.integers(0, 255, shape, dtype=dtype)


def zarr_module():
    return pytest.importorskip("zarr")


def dask_array():
    return pytest.importorskip("dask.array")


def leftovers(folder):
    """Temporary files or folders a writer left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------ TIFF axes
@pytest.mark.parametrize(
    "tiff_axes, ours",
    [
        ("YX", "YX"),
        ("ZYX", "ZYX"),
        ("YXS", "YXC"),
        ("SYX", "CYX"),
        ("TCYX", "SCYX"),
        ("TZCYX", "SZCYX"),
        ("IYX", "SYX"),
        ("QYX", "SYX"),
        ("CTYX", None),
        ("TQYX", None),
        ("SCYX", None),
        ("YXE", None),
        ("ZX", None),
    ],
)
def test_tifffile_axes_map_to_ours_or_to_none(tiff_axes, ours):
    assert axes_from_tiff(tiff_axes) == ours


@pytest.mark.parametrize("ours", ["YX", "ZYX", "SYX", "SCYX", "SZCYX", "YXC", "CZYX"])
def test_our_axes_map_to_tifffile_axes_and_back(ours):
    assert axes_from_tiff(axes_to_tiff(ours)) == ours


@pytest.mark.parametrize(
    "data, options, axes",
    [
        (image(20, 30), {}, "YX"),
        (image(4, 20, 30), {"metadata": {"axes": "ZYX"}}, "ZYX"),
        (image(20, 30, 3, dtype=np.uint8), {"photometric": "rgb"}, "YXC"),
        (image(2, 3, 20, 30), {"ome": True, "metadata": {"axes": "TCYX"}}, "SCYX"),
        (image(2, 3, 2, 20, 30), {"imagej": True, "metadata": {"axes": "TZCYX"}}, "SZCYX"),
        (image(3, 20, 30, dtype=np.uint16), {"metadata": None}, "SYX"),  # pages without axes: IYX
        (image(20, 30, 2), {"metadata": {"axes": "YXT"}}, None),  # a trailing time axis: no letter of ours
    ],
    ids=["grey", "ZYX", "rgb", "ome-TCYX", "imagej-TZCYX", "pages", "unmappable"],
)
def test_tiff_files_are_read_with_their_axes(tmp_path, data, options, axes):
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, data, **{"photometric": "minisblack", **options})
    array, found = read_image(path)
    assert found == axes
    np.testing.assert_array_equal(array, data)


# ------------------------------------------------------------- round trips
CASES = {"YX": (20, 30), "ZYX": (4, 20, 30), "SCYX": (2, 3, 20, 30), "YXC": (20, 30, 3), "SZCYX": (2, 3, 2, 20, 30)}


@pytest.mark.parametrize("lazy", [False, True], ids=["numpy", "dask"])
@pytest.mark.parametrize("suffix", [".tif", ".zarr", ".npy"])
@pytest.mark.parametrize("axes", list(CASES))
def test_write_then_read_round_trips_data_and_axes(tmp_path, axes, suffix, lazy):
    if suffix == ".zarr":
        zarr_module()
    data = image(*CASES[axes])
    path = tmp_path / f"out{suffix}"
    write_image(path, dask_array().from_array(data, chunks=7) if lazy else data, axes)
    array, found = read_image(path)
    if suffix == ".npy":
        assert found is None
        np.testing.assert_array_equal(array, data)
    elif suffix == ".zarr":  # OME-Zarr orders the axes t, c, z, y, x
        order = [axes.index(letter) for letter in "SCZYX" if letter in axes]
        assert found == "".join(axes[i] for i in order)
        np.testing.assert_array_equal(array, data.transpose(order))
    else:
        assert found == axes
        np.testing.assert_array_equal(array, data)
    assert leftovers(tmp_path) == []


def test_tiff_output_is_ome_where_ome_holds_the_axes_and_bigtiff_over_the_limit(tmp_path, monkeypatch):
    write_image(tmp_path / "ome.tif", image(2, 3, 20, 30), "SCYX")
    write_image(tmp_path / "two.tif", image(20, 30, 2), "YXC")  # two colour samples: not OME (RGB only)
    monkeypatch.setattr(tiff, "BIGTIFF_BYTES", 100)
    write_image(tmp_path / "big.tif", image(20, 30), "YX")
    with tifffile.TiffFile(tmp_path / "ome.tif") as tif:
        assert tif.is_ome and tif.series[0].axes == "TCYX" and not tif.is_bigtiff
    with tifffile.TiffFile(tmp_path / "two.tif") as tif:
        assert not tif.is_ome and tif.series[0].axes == "YXS"
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        assert tif.is_bigtiff


@pytest.mark.parametrize("source, written", [("QYX", "QYX"), ("IYX", "TYX"), ("TYX", "TYX")])
def test_tiff_output_reuses_the_input_tiff_axes_letters(tmp_path, source, written):
    data = image(3, 20, 30)
    write_image(tmp_path / "out.tif", data, "SYX", {"format": "tiff", "tiff_axes": source})
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert tif.series[0].axes == written


@pytest.mark.parametrize(
    "shape, axes", [((20, 30), "YX"), ((20, 30, 3), "YXC"), ((20, 30, 4), "YXC")], ids=["grey", "rgb", "rgba"]
)
def test_png_files_are_read_grey_as_yx_and_colour_as_yxc(tmp_path, shape, axes):
    import imageio.v3 as iio

    data = image(*shape, dtype=np.uint8)
    iio.imwrite(tmp_path / "picture.png", data)
    array, found = read_image(tmp_path / "picture.png")
    assert found == axes
    np.testing.assert_array_equal(array, data)


def test_jpeg_files_are_read_with_their_axes(tmp_path):
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "photo.jpg", image(24, 32, 3, dtype=np.uint8))
    array, found = read_image(tmp_path / "photo.jpg")
    assert found == "YXC" and array.shape == (24, 32, 3)


def test_npy_files_are_memory_mapped_read_only_without_pickle(tmp_path):
    data = image(3, 20, 30)
    np.save(tmp_path / "stack.npy", data)
    array, found = read_image(tmp_path / "stack.npy")
    assert found is None and isinstance(array, np.memmap) and not array.flags.writeable
    np.testing.assert_array_equal(array, data)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="objects.npy could not be read as NPY"):
        read_image(tmp_path / "objects.npy")


# -------------------------------------------------------------------- zarr
def ome_zarr(path, data, names, version="0.4", scale=None, units=None):
    """An OME-Zarr image written with zarr itself: 0.4 (zarr format 2, attributes at the top)
    or 0.5 (zarr format 3, attributes under "ome")."""
    zarr = zarr_module()
    major = int(zarr.__version__.split(".")[0])
    axes = [{"name": n, "type": {"t": "time", "c": "channel"}.get(n, "space")} for n in names]
    for axis in axes:
        if units and axis["name"] in units:
            axis["unit"] = units[axis["name"]]
    multiscale = {
        "axes": axes,
        "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale or [1.0] * len(names)}]}
        ],
    }
    if version == "0.5":
        if major < 3:
            pytest.skip("OME-Zarr 0.5 is zarr format 3, which zarr 2 cannot write")
        group = zarr.open_group(str(path), mode="w", zarr_format=3)
        group.attrs["ome"] = {"version": "0.5", "multiscales": [multiscale]}
    else:
        group = zarr.open_group(str(path), mode="w", **({"zarr_format": 2} if major >= 3 else {}))
        group.attrs["multiscales"] = [{"version": "0.4", **multiscale}]
    make = group.create_array if major >= 3 else group.create_dataset
    array = make("0", shape=data.shape, chunks=tuple(min(16, n) for n in data.shape), dtype=data.dtype)
    array[...] = data
    return path


def test_a_plain_zarr_array_is_read_without_axes(tmp_path):
    zarr = zarr_module()
    data = image(3, 20, 30)
    array = zarr.open(str(tmp_path / "plain.zarr"), mode="w", shape=data.shape, chunks=(1, 16, 16), dtype=data.dtype)
    array[...] = data
    out, found = read_image(tmp_path / "plain.zarr")
    assert found is None and isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, data)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize(
    "names, axes", [("yx", "YX"), ("cyx", "CYX"), ("tyx", "SYX"), ("zyx", "ZYX"), ("tczyx", "SCZYX")]
)
def test_ome_zarr_images_are_read_at_full_resolution_with_their_axes(tmp_path, names, axes, version):
    data = image(*[{"t": 2, "c": 2, "z": 3}.get(n, 20) for n in names])
    path = ome_zarr(tmp_path / "image.ome.zarr", data, list(names), version)
    array, found, metadata = read_image(path, return_metadata=True)
    assert found == axes and metadata["format"] == "ome-zarr" and metadata["ome_version"] == version
    np.testing.assert_array_equal(array, data)


def test_a_zarr_group_without_ome_metadata_names_its_arrays(tmp_path):
    zarr = zarr_module()
    group = zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    (group.create_array if hasattr(group, "create_array") else group.create_dataset)("raw", shape=(8, 8), dtype="f4")
    with pytest.raises(ValueError, match=r"without OME-Zarr 'multiscales' metadata.*group.zarr/raw"):
        read_image(tmp_path / "group.zarr")


def test_zarr_output_keeps_the_input_ome_axes_units_and_scales(tmp_path):
    data = image(2, 20, 30)
    source = ome_zarr(tmp_path / "in.zarr", data, ["t", "y", "x"], scale=[1.0, 0.5, 0.25], units={"y": "micrometer"})
    array, axes, metadata = read_image(source, return_metadata=True)
    write_image(tmp_path / "out.zarr", array, axes, metadata)
    _, found, written = read_image(tmp_path / "out.zarr", return_metadata=True)
    assert found == "SYX" and written["ome_version"] == "0.4"
    assert written["multiscale"]["axes"] == metadata["multiscale"]["axes"]
    assert written["multiscale"]["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.5, 0.25]


# ---------------------------------------------------------------- calibration
# Input layouts: 2D, a 3D volume, a time series of 2-channel volumes (tifffile's axes, ours, shape).
LAYOUTS = [("YX", "YX", (20, 30)), ("ZYX", "ZYX", (4, 20, 30)), ("TZCYX", "SZCYX", (3, 4, 2, 20, 30))]


def _calibrated_record(axes):
    """What a calibrated input of ``axes`` should read as: 0.1 x 0.2 um pixels, 0.5 um slices,
    2 s frames, channels DAPI and GFP (each where ``axes`` has the axis)."""
    scale = {"S": 2.0, "Z": 0.5, "Y": 0.2, "X": 0.1}
    unit = {"S": "second", "Z": "micrometer", "Y": "micrometer", "X": "micrometer"}
    record = {
        "scale": {a: v for a, v in scale.items() if a in axes},
        "unit": {a: v for a, v in unit.items() if a in axes},
    }
    return {**record, "channel_names": ["DAPI", "GFP"]} if "C" in axes else record


def _same_record(found, expected):
    assert set(found) == set(expected), (found, expected)
    for key in ("scale", "unit"):
        assert (
            found.get(key, {}) == pytest.approx(expected.get(key, {}))
            if key == "scale"
            else found.get(key) == expected.get(key)
        )
    assert found.get("channel_names") == expected.get("channel_names")


def _labels(data):
    """ImageJ slice labels, one per plane."""
    return [f"plane {k}" for k in range(data.size // (data.shape[-1] * data.shape[-2]))]


def imagej_tiff(path, data, tiff_axes):
    metadata = {"axes": tiff_axes, "unit": "um", "spacing": 0.5, "finterval": 2.0, "zorigin": 1.5}
    metadata["Labels"] = _labels(data)
    tifffile.imwrite(path, data, imagej=True, resolution=(10.0, 5.0), metadata=metadata)
    return path


def ome_tiff(path, data, tiff_axes):
    metadata = {
        "axes": tiff_axes,
        "PhysicalSizeX": 0.1,
        "PhysicalSizeY": 0.2,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeYUnit": "µm",
        "PhysicalSizeZ": 500,
        "PhysicalSizeZUnit": "nm",
        "TimeIncrement": 2000,
        "TimeIncrementUnit": "ms",
    }
    if "C" in tiff_axes:
        metadata["Channel"] = {"Name": ["DAPI", "GFP"]}
    tifffile.imwrite(path, data, ome=True, metadata=metadata)
    return path


@pytest.mark.parametrize("tiff_axes, ours, shape", LAYOUTS)
@pytest.mark.parametrize("lazy", [False, True])
def test_an_imagej_tiff_comes_back_as_imagej_with_its_calibration(tmp_path, tiff_axes, ours, shape, lazy):
    source = imagej_tiff(tmp_path / "in.tif", image(*shape, dtype=np.uint16), tiff_axes)
    array, axes, metadata = read_image(source, return_metadata=True)
    assert axes == ours
    expected = _calibrated_record(ours)
    expected.pop("channel_names", None)  # ImageJ has slice labels, not channel names
    _same_record(metadata["calibration"], expected)
    result = array.astype(np.float32)
    write_image(tmp_path / "out.tif", dask_array().from_array(result, chunks=8) if lazy else result, axes, metadata)
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert tif.is_imagej and not tif.is_ome and tif.series[0].axes == tiff_axes
        written = tif.imagej_metadata
        assert tif.pages.first.resolution == pytest.approx((10.0, 5.0)) and written["unit"] == "micron"
        assert written.get("zorigin") == 1.5 and "Ranges" not in written and "LUTs" not in written
        assert ("spacing" in written) == ("Z" in ours) and ("finterval" in written) == ("S" in ours)
        labels = written["Labels"]
        assert ([labels] if isinstance(labels, str) else labels) == _labels(result)  # one label reads as a string
        np.testing.assert_array_equal(tif.asarray(), result)
    _same_record(read_image(tmp_path / "out.tif", return_metadata=True)[2]["calibration"], expected)


def test_imagej_data_imagej_cannot_hold_comes_back_as_ome_tiff_with_the_calibration_and_a_warning(tmp_path):
    source = imagej_tiff(tmp_path / "in.tif", image(4, 20, 30, dtype=np.uint8), "ZYX")
    array, axes, metadata = read_image(source, return_metadata=True)
    with pytest.warns(UserWarning, match="ImageJ cannot hold float64 data.*OME-TIFF, with the same calibration"):
        write_image(tmp_path / "out.tif", array.astype(np.float64), axes, metadata)
    _, _, written = read_image(tmp_path / "out.tif", return_metadata=True)
    assert written["ome"] and written["calibration"] == metadata["calibration"]


@pytest.mark.parametrize("tiff_axes, ours, shape", LAYOUTS)
def test_an_ome_tiff_comes_back_as_ome_tiff_with_physical_sizes_time_increment_and_channel_names(
    tmp_path, tiff_axes, ours, shape
):
    source = ome_tiff(tmp_path / "in.tif", image(*shape), tiff_axes)
    array, axes, metadata = read_image(source, return_metadata=True)
    expected = _calibrated_record(ours)
    expected["unit"] = {**expected["unit"], **({"Z": "nanometer"} if "Z" in ours else {})}
    expected["scale"] = {
        **expected["scale"],
        **({"Z": 500.0} if "Z" in ours else {}),
        **({"S": 2000.0} if "S" in ours else {}),
    }
    if "S" in ours:
        expected["unit"]["S"] = "millisecond"
    _same_record(metadata["calibration"], expected)
    write_image(tmp_path / "out.tif", array, axes, metadata)
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert tif.is_ome and tif.series[0].axes == tiff_axes
        xml = tif.ome_metadata
    assert 'PhysicalSizeX="0.1"' in xml and 'PhysicalSizeXUnit="µm"' in xml and 'PhysicalSizeY="0.2"' in xml
    assert ('PhysicalSizeZUnit="nm"' in xml) == ("Z" in ours) and ('TimeIncrementUnit="ms"' in xml) == ("S" in ours)
    assert ('Name="GFP"' in xml) == ("C" in ours)
    _same_record(read_image(tmp_path / "out.tif", return_metadata=True)[2]["calibration"], expected)


@pytest.mark.parametrize(
    "names, ours, shape", [("yx", "YX", (20, 30)), ("zyx", "ZYX", (4, 20, 30)), ("tczyx", "SCZYX", (3, 2, 4, 20, 30))]
)
def test_an_ome_zarr_comes_back_with_its_units_scales_and_channel_labels(tmp_path, names, ours, shape):
    scales = {"t": 2.0, "c": 1.0, "z": 0.5, "y": 0.2, "x": 0.1}
    units = {"t": "second", "z": "micrometer", "y": "micrometer", "x": "micrometer"}
    source = ome_zarr(tmp_path / "in.zarr", image(*shape), list(names), scale=[scales[n] for n in names], units=units)
    if "c" in names:
        zarr_module().open_group(str(source), mode="r+").attrs["omero"] = {
            "channels": [{"label": "DAPI", "color": "0000FF", "window": {"start": 0, "end": 1}}, {"label": "GFP"}]
        }
    array, axes, metadata = read_image(source, return_metadata=True)
    _same_record(metadata["calibration"], _calibrated_record(ours))
    write_image(tmp_path / "out.zarr", array, axes, metadata)
    _, _, written = read_image(tmp_path / "out.zarr", return_metadata=True)
    _same_record(written["calibration"], _calibrated_record(ours))
    if "c" in names:  # labels and colours kept, the display window (of the noisy data) not
        assert written["omero"]["channels"] == [{"label": "DAPI", "color": "0000FF"}, {"label": "GFP"}]


@pytest.mark.parametrize("writer, suffix", [(imagej_tiff, ".zarr"), (ome_tiff, ".zarr"), (ome_tiff, ".tif")])
def test_calibration_crosses_formats(tmp_path, writer, suffix):
    source = writer(tmp_path / "in.tif", image(3, 4, 2, 20, 30, dtype=np.uint16), "TZCYX")
    array, axes, metadata = read_image(source, return_metadata=True)
    write_image(tmp_path / f"out{suffix}", array, axes, metadata)
    _, _, written = read_image(tmp_path / f"out{suffix}", return_metadata=True)
    _same_record(written["calibration"], metadata["calibration"])
    if suffix == ".zarr":  # and back to TIFF from the zarr: OME-TIFF
        write_image(tmp_path / "back.tif", array, axes, written)
        _same_record(read_image(tmp_path / "back.tif", return_metadata=True)[2]["calibration"], metadata["calibration"])


def test_a_plain_tiffs_resolution_tags_are_its_calibration_and_are_kept(tmp_path):
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, image(20, 30), resolution=(1e4, 5e3), resolutionunit="CENTIMETER")
    array, axes, metadata = read_image(path, return_metadata=True)
    _same_record(
        metadata["calibration"], {"scale": {"X": 1e-4, "Y": 2e-4}, "unit": {"X": "centimeter", "Y": "centimeter"}}
    )
    write_image(tmp_path / "out.tif", array, axes, metadata)
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert tif.pages.first.resolution == pytest.approx((1e4, 5e3)) and tif.pages.first.resolutionunit == 3
    tifffile.imwrite(path, image(20, 30))  # no resolution: no calibration
    assert read_image(path, return_metadata=True)[2]["calibration"] == {}


# -------------------------------------------------------------------- lazy
def test_lazy_zarr_is_a_dask_array_in_spatial_blocks_that_reads_nothing_until_computed(tmp_path, monkeypatch):
    da = dask_array()
    monkeypatch.setattr(chunks, "LAZY_CHUNK_SIDE", 40)
    data = image(2, 90, 100) + 1  # no zero: zero is the fill value of chunks that are not there
    path = ome_zarr(tmp_path / "image.zarr", data, ["t", "y", "x"])
    array, axes = read_image(path, lazy=True)
    assert isinstance(array, da.Array) and axes == "SYX"
    # About 40 a side and one sample, as multiples of the stored 2 x 16 x 16 chunks.
    assert array.chunksize == (2, 32, 32)
    for chunk in (path / "0").iterdir():  # the chunks go: only what is read afterwards is missing
        if not chunk.name.startswith("."):
            chunk.rename(tmp_path / f"gone-{chunk.name}")
    assert array.compute().max() == 0


def test_lazy_tiff_over_the_threshold_is_a_memory_mapped_dask_array(tmp_path, monkeypatch):
    da = dask_array()
    data = image(3, 40, 50)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, photometric="minisblack", metadata={"axes": "ZYX"})
    small, _ = read_image(path, lazy=True)
    assert isinstance(small, np.ndarray)  # under LAZY_BYTES
    monkeypatch.setattr(_files, "LAZY_BYTES", 0)
    array, axes = read_image(path, lazy=True)
    assert isinstance(array, da.Array) and axes == "ZYX"
    writer = tifffile.memmap(path, mode="r+")  # the file changes after reading: the result follows
    writer[...] = 7
    writer.flush()
    del writer
    assert np.all(array.compute() == 7)


def test_lazy_compressed_tiff_reads_no_tile_until_computed(tmp_path, monkeypatch):
    da = dask_array()
    pytest.importorskip("zarr", minversion="3")  # tifffile's zarr store
    data = image(100, 90)
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, data, tile=(32, 32), compression="zlib", photometric="minisblack")
    monkeypatch.setattr(_files, "LAZY_BYTES", 0)
    original = tifffile.FileHandle.read_segments

    def no_reading(*args, **kwargs):
        raise AssertionError("a tile was read")

    monkeypatch.setattr(tifffile.FileHandle, "read_segments", no_reading)
    array, axes = read_image(path, lazy=True)
    monkeypatch.setattr(tifffile.FileHandle, "read_segments", original)
    assert isinstance(array, da.Array) and axes == "YX"
    np.testing.assert_array_equal(array.compute(), data)


def test_lazy_npy_over_the_threshold_is_a_dask_array(tmp_path, monkeypatch):
    da = dask_array()
    monkeypatch.setattr(_files, "LAZY_BYTES", 0)
    data = image(30, 40)
    np.save(tmp_path / "image.npy", data)
    array, _ = read_image(tmp_path / "image.npy", lazy=True)
    assert isinstance(array, da.Array)
    np.testing.assert_array_equal(array.compute(), data)


# ------------------------------------------------------------------ atomic
def failing_dask_array(shape, fail_in_block):
    """A dask array whose computation raises in one block (after others were written)."""
    da = dask_array()

    def block(x, block_info=None):
        if block_info[0]["chunk-location"] == fail_in_block:
            raise RuntimeError("disk full")
        return x

    return da.map_blocks(block, da.ones(shape, chunks=(10, 10), dtype=np.float32), dtype=np.float32)


@pytest.mark.parametrize("suffix", [".tif", ".npy", ".zarr"])
def test_a_failed_write_leaves_nothing_at_the_path_and_no_temporary(tmp_path, suffix):
    if suffix == ".zarr":
        zarr_module()
    import dask

    path = tmp_path / f"out{suffix}"
    with dask.config.set(scheduler="synchronous"), pytest.raises(RuntimeError, match="disk full"):
        write_image(path, failing_dask_array((30, 30), (2, 1)), "YX")
    assert not path.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_a_failed_write_keeps_the_previous_file(tmp_path, suffix):
    if suffix == ".zarr":
        zarr_module()
    import dask

    path = tmp_path / f"out{suffix}"
    previous = image(30, 30)
    write_image(path, previous, "YX")
    with dask.config.set(scheduler="synchronous"), pytest.raises(RuntimeError, match="disk full"):
        write_image(path, failing_dask_array((30, 30), (1, 1)), "YX")
    np.testing.assert_array_equal(read_image(path)[0], previous)
    assert leftovers(tmp_path) == []
    write_image(path, np.zeros((30, 30), np.float32), "YX")  # and a good write replaces it
    assert np.all(read_image(path)[0] == 0) and leftovers(tmp_path) == []


# ------------------------------------------------------------------ errors
def test_missing_paths_unknown_formats_and_plain_folders_are_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing.tif: no such file.*Supported formats: TIFF"):
        read_image(tmp_path / "nothing.tif")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"notes.txt: unknown image format '.txt'. Supported formats"):
        read_image(tmp_path / "notes.txt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match=r"folder is a folder but not a zarr store"):
        read_image(tmp_path / "folder")
    (tmp_path / "broken.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(ValueError, match=r"broken.tif could not be read as TIFF"):
        read_image(tmp_path / "broken.tif")


def test_outputs_of_other_formats_missing_folders_and_folders_in_the_way_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"cannot write '.png'; write .tif or .tiff"):
        write_image(tmp_path / "out.png", image(8, 8), "YX")
    with pytest.raises(FileNotFoundError, match="the folder .*missing does not exist"):
        write_image(tmp_path / "missing" / "out.tif", image(8, 8), "YX")
    (tmp_path / "taken.zarr").mkdir()
    (tmp_path / "taken.zarr" / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a zarr store is in the way"):
        write_image(tmp_path / "taken.zarr", image(8, 8), "YX")
    assert (tmp_path / "taken.zarr" / "precious.txt").exists()
    with pytest.raises(ValueError, match="names 3 axes but the array has 2"):
        write_image(tmp_path / "out.tif", image(8, 8), "ZYX")


@pytest.mark.parametrize("module, extra, suffix", [("tifffile", "tiff", ".tif"), ("zarr", "zarr", ".zarr")])
def test_a_missing_extra_says_what_to_install_in_a_command_that_works_as_written(
    tmp_path, monkeypatch, module, extra, suffix
):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    os.mkdir(tmp_path / "image.zarr") if suffix == ".zarr" else (tmp_path / "image.tif").write_bytes(b"")
    if suffix == ".zarr":
        (tmp_path / "image.zarr" / ".zarray").write_text("{}")
    # The extra's own requirements (the package itself is not on the registry while unreleased).
    expected = rf'pip install "{module}[^"]*" \(the \[{extra}\] extra\)'
    with pytest.raises(MissingDependencyError, match=expected):
        read_image(tmp_path / f"image{suffix}")
    with pytest.raises(ImportError, match=expected):
        write_image(tmp_path / f"out{suffix}", image(8, 8), "YX")


def test_a_lazily_read_file_pickles_as_its_place_not_its_data(tmp_path, monkeypatch):
    import pickle

    dask_array()
    monkeypatch.setattr(_files, "LAZY_BYTES", 0)
    data = image(200, 300)
    np.save(tmp_path / "image.npy", data)
    array, _ = read_image(tmp_path / "image.npy", lazy=True)
    shipped = pickle.dumps(array)  # what a dask cluster sends its workers
    assert len(shipped) < data.nbytes / 10
    np.testing.assert_array_equal(pickle.loads(shipped).compute(), data)
