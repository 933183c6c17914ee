"""fit on zarr and dask arrays: patches read on demand, never the whole array."""

import numpy as np
import pytest
import torch
from conftest import tiny

from n2v_estimator.data import ondemand as _ondemand
from n2v_estimator.data.axes import to_canonical
from n2v_estimator.data.ondemand import on_demand_images, sample_blocks
from n2v_estimator.data.patches import split_validation

zarr = pytest.importorskip("zarr")
da = pytest.importorskip("dask.array")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def noisy(shape, seed=0):
    return (100 + 20 * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def as_zarr(array, chunks, store=None):
    z = zarr.create_array(
        store=store or zarr.storage.MemoryStore(), shape=array.shape, chunks=chunks, dtype=array.dtype
    )
    z[...] = array
    return z


class CountingStore(zarr.storage.WrapperStore):
    """Counts the chunk keys read."""

    def __init__(self, store):
        super().__init__(store)
        self.keys = []

    async def get(self, key, *args, **kwargs):
        self.keys.append(key)
        return await super().get(key, *args, **kwargs)


def same_weights(a, b):
    for (name, x), y in zip(a.model_.state_dict().items(), b.model_.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("wrap", ["zarr", "dask"])
def test_an_array_read_on_demand_trains_exactly_as_the_same_array_in_memory(wrap):
    image = noisy((96, 80))
    lazy = as_zarr(image, (32, 32)) if wrap == "zarr" else da.from_array(image, chunks=(40, 30))
    on_demand, in_memory = tiny().fit(lazy), tiny().fit(image)
    same_weights(on_demand, in_memory)
    assert [h["val_loss"] for h in on_demand.history_] == [h["val_loss"] for h in in_memory.history_]
    np.testing.assert_array_equal(on_demand.mean_, in_memory.mean_)


def test_channels_and_volumes_are_cut_in_the_canonical_layout():
    volume = noisy((2, 10, 12, 14, 3), seed=1)
    images, layout = on_demand_images(as_zarr(volume, (1, 5, 6, 7, 3)), "SZYXC")
    canonical = to_canonical(volume, layout)
    assert [im.shape for im in images] == [canonical.shape[1:]] * 2
    window = (slice(2, 7), slice(3, 12), slice(1, 9))
    np.testing.assert_array_equal(images[1].read(window), canonical[1][(slice(None),) + window])
    images[1] = images[1].normalized(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 8.0]))
    expected = (canonical[1][(slice(None),) + window] - np.array([1.0, 2, 3])[:, None, None, None]) / np.array(
        [2.0, 4, 8]
    )[:, None, None, None]
    np.testing.assert_allclose(images[1][(slice(None),) + window].numpy(), expected, rtol=1e-6)


def test_fit_reads_only_the_chunks_under_the_patches_it_samples(monkeypatch):
    monkeypatch.setattr(_ondemand, "SAMPLE_PIXELS", 2**14)  # a sample of one block
    store = CountingStore(zarr.storage.MemoryStore())
    image = as_zarr(noisy((2048, 2048)), (64, 64), store=store)  # 1024 chunks
    store.keys.clear()
    denoiser = tiny(max_epochs=1, steps_per_epoch=2).fit(image)
    chunks_read = {key for key in store.keys if "zarr.json" not in key}
    assert 0 < len(chunks_read) < 200, len(chunks_read)  # the sample, 2 x 4 training and 24 validation patches
    assert np.isfinite(denoiser.mean_).all() and denoiser.std_[0] == pytest.approx(20, rel=0.1)


def test_the_sample_covers_small_arrays_whole_and_large_ones_with_scattered_blocks(monkeypatch):
    small, _ = on_demand_images(as_zarr(noisy((50, 60)), (16, 16)), None)
    assert [b.shape for b in sample_blocks(small)] == [(1, 1, 50, 60)]
    monkeypatch.setattr(_ondemand, "SAMPLE_PIXELS", 3 * 128 * 128)
    large, _ = on_demand_images(as_zarr(noisy((1000, 900)), (100, 100)), None)
    blocks = sample_blocks(large)
    assert [b.shape for b in blocks] == [(1, 1, 128, 128)] * 3
    assert all(b.dtype == np.float64 for b in blocks)


def test_the_validation_split_holds_out_what_the_in_memory_split_does():
    stack = noisy((3, 40, 30))
    images, _ = on_demand_images(as_zarr(stack, (1, 16, 16)), "SYX")
    for fraction in (0.0, 0.1, 0.34, 0.5):
        train, validation = split_validation(images, fraction)
        expected_train, expected_validation = split_validation(stack[:, None], fraction)
        assert [im.shape for im in train] == [im.shape for im in expected_train]
        assert [im.shape for im in validation] == [im.shape for im in expected_validation]


def test_a_list_of_zarr_and_numpy_images_of_different_sizes_trains(monkeypatch):
    images = [as_zarr(noisy((64, 90)), (32, 32)), noisy((70, 50), seed=1), da.from_array(noisy((2, 40, 40), seed=2))]
    denoiser = tiny(noise_model="gaussian").fit(images)
    assert denoiser.noise_sigma_[0] == pytest.approx(20, rel=0.15)
    out = denoiser.transform([np.asarray(images[0]), images[1]])
    assert [o.shape for o in out] == [(64, 90), (70, 50)]


def test_bad_on_demand_input_is_refused_before_training():
    with pytest.raises(ValueError, match="names 3 axes but the array has 2"):
        tiny(axes="ZYX").fit(as_zarr(noisy((32, 32)), (16, 16)))
    with pytest.raises(TypeError, match="boolean"):
        tiny().fit(da.zeros((32, 32), dtype=bool))
    with pytest.raises(ValueError, match=r"X\[1\]: axes='YX' names 2 axes but the array has 3"):
        tiny(axes="YX").fit([as_zarr(noisy((32, 32)), (16, 16)), da.zeros((2, 32, 32))])
    with pytest.raises(ValueError, match=r"X\[0\] has axes 'YXC' and 1 channel\(s\), X\[1\] has axes 'YXC' and 2"):
        tiny(axes="YXC").fit([as_zarr(noisy((32, 32, 1)), (16, 16, 1)), as_zarr(noisy((32, 32, 2)), (16, 16, 2))])


def test_a_non_finite_value_read_on_demand_stops_the_fit_with_its_index():
    image = noisy((64, 64))
    image[5, 7] = np.nan
    with pytest.raises(ValueError, match=r"non-finite value \(NaN or inf\) at index \(5, 7\)"):
        tiny().fit(as_zarr(image, (16, 16)))
    with pytest.raises(ValueError, match=r"X\[0\]: X contains 1 non-finite value"):
        tiny().fit([image, da.from_array(noisy((64, 64)))])
