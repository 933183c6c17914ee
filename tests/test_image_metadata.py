"""Image calibration: one neutral record, read from and written to every format's own words."""

import json
import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from n2v_estimator.gateway.budget import ome_declared
from n2v_estimator.images.metadata import (
    check_calibration,
    common_calibration,
    describe,
    differs,
    for_axes,
    make_calibration,
    unit_name,
)
from n2v_estimator.images.tiff_calibration import imagej_options, ome_tiff_metadata, resolution_options
from n2v_estimator.images.zarr_calibration import ome_zarr_entries, zarr_calibration

MICRONS = {"Y": "micrometer", "X": "micrometer"}


@pytest.mark.parametrize(
    "spelling, name",
    [
        ("um", "micrometer"),
        ("µm", "micrometer"),
        ("\u03bcm", "micrometer"),
        ("\\u00B5m", "micrometer"),
        ("micron", "micrometer"),
        ("Microns", "micrometer"),
        ("nm", "nanometer"),
        ("mm", "millimeter"),
        ("inch", "inch"),
        ("sec", "second"),
        ("s", "second"),
        ("ms", "millisecond"),
        ("min", "minute"),
        ("hour", "hour"),
        ("pixel", None),
        ("", None),
        (None, None),
        ("furlong", "furlong"),
    ],
)
def test_unit_spellings_of_imagej_ome_and_ome_zarr_map_to_one_name(spelling, name):
    assert unit_name(spelling) == name


def test_a_record_keeps_only_positive_finite_scales_text_units_and_letters_of_the_axes():
    record = make_calibration(
        {"X": 0.1, "Y": "0.2", "Z": -1, "S": float("nan"), "C": 3.0}, {"X": "um", "Y": 7, "Z": "um"}, ["a", 1], "ZYX"
    )
    assert record == {"scale": {"X": 0.1, "Y": 0.2}, "unit": {"X": "micrometer", "Z": "micrometer"}}
    assert make_calibration({}, {}, []) == {}


def test_a_model_files_record_is_checked_and_crafted_ones_are_refused():
    record = make_calibration({"Y": 0.1, "X": 0.1, "S": 2}, {**MICRONS, "S": "s"}, ["DAPI", "GFP"])
    assert check_calibration(json.loads(json.dumps(record)), "m") == record and check_calibration(None, "m") is None
    crafted = [
        {"scale": {"X": -1.0}},
        {"scale": {"Q": 1.0}},
        {"unit": {"X": 3}},
        {"channel_names": ["a"] * 5000},
        {"scale": {"X": 1.0}, "code": "import os"},
        {"scale": [1.0]},
        ["scale"],
        {"channel_names": "DAPI"},
        {"unit": {"X": "m" * 1000}},
    ]
    for saved in crafted:
        with pytest.raises(ValueError, match="calibration record is malformed"):
            check_calibration(saved, "m")


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.sampled_from("SZYX"), st.floats(allow_nan=True, allow_infinity=True)),
    st.dictionaries(st.sampled_from("SZYX"), st.sampled_from(["um", "nm", "sec", "pixel", "furlong", ""])),
    st.lists(st.text(max_size=300), max_size=4),
)
def test_every_record_made_from_a_file_saves_and_loads_back(scale, unit, names):
    record = make_calibration(scale, unit, names)
    assert check_calibration(json.loads(json.dumps(record)), "m") == record
    assert all(math.isfinite(v) and v > 0 for v in record.get("scale", {}).values())


def test_the_common_calibration_of_training_files_keeps_what_all_agree_on():
    a = make_calibration({"Y": 0.1, "X": 0.1}, MICRONS, ["DAPI"])
    b = make_calibration({"Y": 0.1, "X": 0.2}, MICRONS, ["GFP"])
    assert common_calibration([a, b]) == {"scale": {"Y": 0.1}, "unit": MICRONS}
    assert common_calibration([a, {}]) is None and common_calibration([a, a]) == a


def test_a_record_limited_to_axes_keeps_channel_names_only_for_as_many_channels():
    record = make_calibration({"Z": 0.5, "Y": 0.1, "X": 0.1}, {"Z": "um", **MICRONS}, ["a", "b"])
    assert for_axes(record, "CYX", 2) == {"scale": {"Y": 0.1, "X": 0.1}, "unit": MICRONS, "channel_names": ["a", "b"]}
    assert "channel_names" not in for_axes(record, "CYX", 3) and for_axes(None, "YX") == {}


def test_describe_says_pixel_sizes_frame_interval_and_channels():
    record = make_calibration({"Y": 0.1, "X": 0.1, "S": 2}, {**MICRONS, "S": "sec"}, ["DAPI", "GFP"])
    assert describe(record) == "pixel size Y 0.1 µm, X 0.1 µm; frame interval 2 s; channels DAPI, GFP"
    assert describe(None) == "none"


def test_a_pixel_size_unlike_the_training_ones_is_found_in_the_same_units_only():
    trained = make_calibration({"Y": 0.1, "X": 0.1}, MICRONS)
    assert differs(trained, make_calibration({"Y": 0.1, "X": 0.2}, MICRONS)) == [("X", 0.1, 0.2, "micrometer")]
    assert differs(trained, make_calibration({"Y": 0.11, "X": 0.1}, MICRONS)) == []
    assert differs(trained, make_calibration({"Y": 1, "X": 1}, {"Y": "nm", "X": "nm"})) == []
    assert differs(None, trained) == []


# ------------------------------------------------------------------ writers
def test_imagej_options_write_units_spacing_interval_and_the_kept_entries_in_ascii():
    record = make_calibration({"Z": 0.5, "Y": 0.2, "X": 0.1, "S": 3}, {"Z": "nm", **MICRONS, "S": "min"})
    options = imagej_options(record, {"Labels": ["µ"], "zorigin": 2.0}, "TZYX", np.dtype("float32"))
    assert options["resolution"] == (10.0, 5.0) and options["imagej"] is True
    metadata = options["metadata"]
    assert metadata["unit"] == "micron" and metadata["zunit"] == "nm" and metadata["spacing"] == 0.5
    assert metadata["finterval"] == 3 and metadata["tunit"] == "min" and metadata["zorigin"] == 2.0
    assert metadata["Labels"] == ["µ"]  # the IJMetadata tag holds UTF-16: kept as it is
    assert imagej_options(record, {}, "TZYX", np.dtype("float64")) is None  # ImageJ has no float64
    assert imagej_options(record, {}, "ZTYX", np.dtype("uint8")) is None  # nor this order
    assert imagej_options(record, {}, "YXS", np.dtype("float32")) is None  # nor float colour
    assert imagej_options(record, {}, "YXS", np.dtype("uint8"))["imagej"]
    assert (
        imagej_options({"unit": {"X": "furlong"}, "scale": {"X": 1.0}}, {}, "YX", np.dtype("uint8"))["metadata"]["unit"]
        == "furlong"
    )


def test_a_crafted_unit_cannot_add_lines_to_an_imagej_description(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    record = make_calibration({"X": 1.0, "Y": 1.0}, {"X": "um\nimages=99\nchannels=7", "Y": "um"})
    options = imagej_options(record, {"vunit": "a\r\nslices=3"}, "YX", np.dtype("float32"))
    tifffile.imwrite(tmp_path / "out.tif", np.zeros((8, 8), np.float32), **options)
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        description = tif.pages.first.description
        assert tif.imagej_metadata["images"] == 1 and "channels=7" not in description.splitlines()
        assert "slices=3" not in description.splitlines() and tif.series[0].shape == (8, 8)


def test_ome_tiff_metadata_names_physical_sizes_in_ome_symbols_and_leaves_unknown_units_out():
    record = make_calibration({"Z": 2, "Y": 0.1, "X": 0.1, "S": 0.5}, {"Z": "furlong", **MICRONS, "S": "ms"}, ["a"])
    assert ome_tiff_metadata(record, 1) == {
        "PhysicalSizeX": 0.1,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": 0.1,
        "PhysicalSizeYUnit": "µm",
        "TimeIncrement": 0.5,
        "TimeIncrementUnit": "ms",
        "Channel": {"Name": ["a"]},
    }
    assert "Channel" not in ome_tiff_metadata(record, 2)


def test_resolution_tags_are_pixels_per_centimetre_for_lengths_only():
    assert resolution_options(make_calibration({"Y": 0.1, "X": 0.2}, MICRONS)) == {
        "resolution": pytest.approx((50000.0, 100000.0)),
        "resolutionunit": "CENTIMETER",
    }
    assert resolution_options(make_calibration({"Y": 1, "X": 1}, {"Y": "second", "X": "second"})) == {}


def test_ome_zarr_entries_and_reading_them_back_round_trip():
    record = make_calibration({"S": 2, "Z": 0.5, "Y": 0.1, "X": 0.1}, {"S": "s", "Z": "um", **MICRONS}, ["a", "b"])
    types = {"S": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}
    entries, scales, omero = ome_zarr_entries(record, "SCZYX", types)
    assert scales == [2.0, 1.0, 0.5, 0.1, 0.1] and entries[0] == {"name": "t", "type": "time", "unit": "second"}
    multiscale = {
        "axes": entries,
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scales}]}],
    }
    assert zarr_calibration(multiscale, omero, "SCZYX") == record
    # The multiscale's own scale multiplies the level's; scales of 1 without a unit say nothing.
    multiscale["coordinateTransformations"] = [{"type": "scale", "scale": [1, 1, 2, 2, 2]}]
    assert zarr_calibration(multiscale, None, "SCZYX")["scale"] == {"S": 2.0, "Z": 1.0, "Y": 0.2, "X": 0.2}
    bare = {
        "axes": [{"name": "y"}, {"name": "x"}],
        "datasets": [{"coordinateTransformations": [{"type": "scale", "scale": [1, 1]}]}],
    }
    assert zarr_calibration(bare, None, "YX") == {}


# ------------------------------------------------------------ crafted XML
@pytest.mark.parametrize(
    "description",
    [
        "<OME>" + "<Pixels a" * 400_000,
        "<OME><Pixels " + 'a="' * 20_000 + ">",
        "<OME><Pixels " + 'Type="' * 10_000 + ">",
        "<OME><Pixels SizeC='2'>" + ("<Channel " + " " * 4000) * 2_000 + ">",
    ],
)
def test_crafted_ome_xml_is_read_in_linear_time(description):
    from n2v_estimator.images.tiff_calibration import _ome_tiff_record

    start = time.perf_counter()
    ome_declared(description)
    _ome_tiff_record(description, "CYX", "CYX")
    assert time.perf_counter() - start < 1.0  # one regular expression for the element took 112 s on the first
