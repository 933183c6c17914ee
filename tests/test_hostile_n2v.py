"""n2v model folders from strangers: links out of the file or folder, declared-but-unstored weights,
chunk and count bombs, absurd settings. Each is refused with one short line, having read nothing
outside the folder and allocated nothing large (benchmarks/file_attacks.py times them)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from n2v_estimator import Noise2VoidDenoiser  # noqa: E402
from n2v_estimator.models.keras_n2v import N2VModelError  # noqa: E402

MODELS = Path(__file__).parent / "fixtures" / "n2v_models"


@pytest.fixture
def folder(tmp_path):
    """A copy of a real n2v model folder (2D, 8 filters, kernel 5) to craft."""
    target = tmp_path / "model"
    shutil.copytree(MODELS / "n2v_2d", target)
    return target


def refused(folder, match, **kwargs):
    """The one-line message of ``from_n2v(folder)``'s refusal, checked against ``match``."""
    with pytest.raises(N2VModelError, match=match) as info:
        Noise2VoidDenoiser.from_n2v(folder, **kwargs)
    message = str(info.value)
    assert "\n" not in message and len(message) < 500, message
    return message


def altered_copy(source, target, edit):
    """``target``: a copy of the HDF5 file ``source`` changed by ``edit(file)``."""
    shutil.copy(source, target)
    with h5py.File(target, "r+") as f:
        edit(f)
    return target


# ------------------------------------------------------------------------ links
def other_weights(folder):
    """Another weights file beside the model's, with every value changed: what a link would import."""

    def change(f):
        def bump(name, obj):
            if isinstance(obj, h5py.Dataset):
                obj[...] = obj[...] + 1

        f.visititems(bump)

    return altered_copy(folder / "weights_best.h5", folder / "other.h5", change)


def replace_with_link(f, path, link):
    parent, _, name = path.rpartition("/")
    group = f[parent] if parent else f
    del group[name]
    group[name] = link


@pytest.mark.parametrize(
    "path, target",
    [
        ("conv2d", "/conv2d"),  # a layer's group
        ("conv2d/conv2d", "/conv2d/conv2d"),  # the group between a layer and its weights
        ("channel_0middle_0/channel_0middle_0/kernel:0", "/channel_0middle_0/channel_0middle_0/kernel:0"),
    ],  # a weight
)
def test_an_external_link_at_any_level_is_refused_and_the_other_file_never_read(folder, path, target):
    other = other_weights(folder)
    with h5py.File(folder / "weights_best.h5", "r+") as f:
        replace_with_link(f, path, h5py.ExternalLink(other.name, target))
    refused(folder, "ExternalLink.*only objects stored in the file itself are read")


def test_model_weights_as_an_external_link_is_refused(folder):
    other = other_weights(folder)
    with h5py.File(folder / "weights_best.h5", "w") as f:  # a Keras model file: its weights under model_weights
        f["model_weights"] = h5py.ExternalLink(other.name, "/")
    refused(folder, "'model_weights' is a ExternalLink")


def test_a_soft_link_is_refused(folder):
    with h5py.File(folder / "weights_best.h5", "r+") as f:
        replace_with_link(f, "conv2d/conv2d", h5py.SoftLink("/channel_0middle_0/channel_0middle_0"))
    refused(folder, "SoftLink")


def _import_in_a_process(folder, timeout=60):
    code = (
        "import sys\nfrom n2v_estimator import Noise2VoidDenoiser\n"
        f"try:\n    Noise2VoidDenoiser.from_n2v({str(folder)!r})\nexcept ValueError as exc:\n"
        "    print('REFUSED', exc)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are a POSIX thing")
def test_a_link_to_a_named_pipe_and_a_pipe_for_weights_never_block(folder, tmp_path):
    os.mkfifo(folder / "pipe.h5")
    with h5py.File(folder / "weights_best.h5", "r+") as f:
        replace_with_link(f, "conv2d", h5py.ExternalLink("pipe.h5", "/conv2d"))
    done = _import_in_a_process(folder)  # blocked forever before: the parent would wait for a writer
    assert done.stdout.startswith("REFUSED") and "ExternalLink" in done.stdout, done.stderr[-2000:]
    (folder / "weights_best.h5").unlink()
    os.mkfifo(folder / "weights_best.h5")
    done = _import_in_a_process(folder)
    assert done.stdout.startswith("REFUSED") and "not a regular file" in done.stdout, done.stderr[-2000:]


@pytest.mark.parametrize("name", ["weights_best.h5", "config.json"])
def test_a_weights_file_or_config_that_links_outside_the_folder_is_refused(folder, tmp_path, name):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (folder / name).rename(outside / name)
    (folder / name).symlink_to(outside / name)
    refused(folder, "link to a file outside")


def test_a_link_that_stays_inside_the_folder_is_the_folders_own_file(folder):
    (folder / "weights_best.h5").rename(folder / "kept.h5")
    (folder / "weights_best.h5").symlink_to("kept.h5")
    assert Noise2VoidDenoiser.from_n2v(folder).n_filters == 8


# ------------------------------------------------------------------------ bombs
def test_weights_declared_but_never_stored_are_refused_before_they_are_read(folder):
    with h5py.File(folder / "weights_best.h5", "r+") as f:
        layer = f["channel_0middle_0"]
        del layer["channel_0middle_0/kernel:0"]
        layer.create_dataset("channel_0middle_0/kernel:0", shape=(5, 5, 16, 32), dtype=np.float32)  # fill value only
    refused(folder, "declares 51200 bytes and stores 0")


def test_a_config_far_larger_than_its_weights_file_is_refused_before_the_network_is_built(folder):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "unet_n_first": 1024}))  # 94 KB -> 1.17 GB before
    message = refused(folder, "bytes of weights; .* cannot hold them")
    assert "weights_best.h5 has 296,624" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("unet_n_first", 10**400),
        ("unet_n_first", 8192),
        ("train_batch_size", 2**40),
        ("n2v_patch_shape", [10**30, 64]),
        ("n_channel_in", 10**9),
    ],
)
def test_absurd_numbers_in_a_config_are_refused_in_one_short_line(folder, key, value):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, key: value}))
    refused(folder, f"n2v setting {key}=")


def test_a_chunk_far_larger_than_its_weight_is_refused_before_it_is_decompressed(folder):
    with h5py.File(folder / "weights_best.h5", "r+") as f:
        layer = f["channel_0middle_0"]
        del layer["channel_0middle_0/kernel:0"]
        layer.create_dataset(
            "channel_0middle_0/kernel:0",
            shape=(5, 5, 16, 32),
            maxshape=(None,) * 4,
            chunks=(5, 5, 16, 2**14),
            compression="gzip",
            dtype=np.float32,
            fillvalue=0.5,
        )
        layer["channel_0middle_0/kernel:0"][...] = 0.25  # writes the one chunk: 26 MB, gzipped to a few KB
    refused(folder, "chunks of 26214400 bytes for 51200 bytes of data")


def with_layer_names(folder, names):
    """The model's weights file written anew in HDF5's latest format (whose attributes may be large),
    listing ``names`` as its layers."""
    source = folder / "weights_best.h5"
    source.rename(folder / "original.h5")
    with h5py.File(folder / "original.h5", "r") as old, h5py.File(source, "w", libver="latest") as new:
        for key in old:
            old.copy(key, new)
        new.attrs.create("layer_names", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
    (folder / "original.h5").unlink()


def test_a_list_of_a_hundred_thousand_layers_is_refused_before_any_is_opened(folder):
    with_layer_names(folder, [f"layer_{i}" for i in range(100_000)])  # 10 s of group lookups before
    refused(folder, "layer_names lists 100000 names")


def test_a_megabyte_layer_name_gives_a_short_message(folder):
    with h5py.File(folder / "weights_best.h5", "r") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]
    with_layer_names(folder, [*names, "x" * 2**20])
    refused(folder, "")  # one line under 500 characters


def test_an_unknown_filter_is_refused_before_any_plugin_is_asked_for(folder):
    with h5py.File(folder / "weights_best.h5", "r+") as f:
        layer = f["conv2d"]
        del layer["conv2d/bias:0"]
        layer.create_dataset(
            "conv2d/bias:0", shape=(1,), dtype=np.float32, chunks=(1,), compression=32015, allow_unknown_filter=True
        )
    refused(folder, "needs HDF5 filter\\(s\\) \\[32015\\]")
