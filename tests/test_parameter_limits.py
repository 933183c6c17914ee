"""Parameter values beyond what can be trained or allocated are refused at once,
by a message that names them; reasonable values pass the same checks."""

import re
import time
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from conftest import tiny

from n2v_estimator.data.manipulators import MAX_NEIGHBOURHOOD
from n2v_estimator.data.struct_mask import resolve_struct_mask
from n2v_estimator.fit.plan import make_plan
from n2v_estimator.nets.builder import build_unet
from n2v_estimator.nets.unet import network_description
from n2v_estimator.runtime import memory as _memory
from n2v_estimator.runtime.memory import check_fit_memory, network_values, training_memory

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGE = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
# One step is enough for a model to transform with.
QUICK = dict(max_epochs=1, steps_per_epoch=1, validation_fraction=0, batch_norm=False)
CPU = torch.device("cpu")
# The architecture parameters at the estimator's defaults.
DEFAULTS = dict(
    depth=2,
    n_filters=32,
    kernel_size=3,
    batch_norm=None,
    residual=False,
    blurpool=False,
    skip_skipone=False,
    independent_channels=True,
    blind_spot="mask",
)


@contextmanager
def within(seconds):
    """The block must finish within ``seconds`` (a refusal comes before any work)."""
    start = time.perf_counter()
    yield
    assert time.perf_counter() - start < seconds


def network(ndim=2, channels=1, noise_model=None, layout="n2v-estimator", **settings):
    return network_description(ndim, channels, {**DEFAULTS, **settings}, noise_model, layout)


def refused(**params):
    """Fit ``params`` on a 64x64 image: it must raise ``ValueError`` within 2 s; its message."""
    with within(2), pytest.raises(ValueError) as error:
        tiny(**params).fit(IMAGE)
    return str(error.value)


@pytest.mark.parametrize("learning_rate", [1e300, float("inf"), 10.0])
def test_a_learning_rate_too_large_to_train_is_refused(learning_rate):
    assert "learning_rate" in refused(learning_rate=learning_rate)  # inf: by the declared constraint


def test_a_learning_rate_zero_in_float32_is_refused():
    assert re.search(r"learning_rate=1e-300 cannot train", refused(learning_rate=1e-300))


def test_a_batch_size_that_overflows_int64_is_refused_by_the_memory_check():
    assert re.search(r"batch_size=9223372036854775808, .*this machine has", refused(batch_size=2**63))


def test_a_batch_size_beyond_the_machines_memory_is_refused_naming_it():
    message = refused(batch_size=10**9)
    assert re.search(r"batch_size=1000000000, patches of \(16, 16\).* need about .* bytes.* more than the", message)


def test_n_filters_beyond_the_machines_memory_are_refused_naming_them():
    assert re.search(r"n_filters=1000000, kernel_size=3, depth=1 need about", refused(n_filters=10**6))


def test_a_kernel_larger_than_the_patches_is_refused_naming_both():
    message = refused(kernel_size=100001)
    assert re.search(r"kernel_size=100001 is larger than the training patches \(16, 16\).*kernel_size <= 31", message)


def test_the_largest_kernel_whose_every_weight_sees_the_patches_is_accepted():
    estimator = tiny(kernel_size=31, patch_size=16)
    estimator._validate_params()
    assert make_plan(estimator.get_params(), IMAGE).network["kernel_size"] == 31


def test_a_kernel_size_whose_weights_overflow_is_named_by_the_memory_check():
    huge = network(kernel_size=2**40 + 1)  # 10**24 values per convolution: beyond int64
    with within(2), pytest.raises(ValueError, match=r"kernel_size=1099511627777.* need about [\d.]+e\+\d+ bytes"):
        check_fit_memory(huge, 1, (2**41, 2**41), CPU)


def test_a_struct_mask_larger_than_the_patches_is_refused_before_its_offsets_are_computed():
    assert "struct_mask of shape (3001, 3001) is larger than the training patches (16, 16)" in refused(
        struct_mask=np.ones((3001, 3001))
    )


def test_a_struct_mask_of_more_values_than_a_neighbourhood_may_hold_is_refused():
    with (
        within(2),
        pytest.raises(ValueError, match=rf"struct_mask of shape \(1, 10000001\) .* at most {MAX_NEIGHBOURHOOD}"),
    ):
        resolve_struct_mask(("x", 10**7 + 1), 2)  # never allocated


def test_a_struct_mask_that_fits_the_patches_gives_its_offsets():
    assert len(resolve_struct_mask(("x", 15), 2, (16, 16))) == 14


def test_a_probabilistic_transform_of_a_one_pixel_image_names_its_size_and_the_minimum():
    estimator = tiny(noise_model="gaussian", **QUICK).fit(IMAGE)
    with within(2), pytest.raises(ValueError, match=r"images of 1x1 pixel .* at least 2 pixels"):
        estimator.transform(np.ones((1, 1), np.float32), return_std=True)
    mean, spread = estimator.transform(np.ones((1, 2), np.float32), return_std=True)  # the minimum
    assert np.isfinite(mean).all() and np.isfinite(spread).all()


def test_transform_refuses_batches_of_tiles_beyond_the_devices_memory(monkeypatch):
    estimator = tiny(**QUICK).fit(IMAGE)
    monkeypatch.setattr(_memory, "device_memory", lambda device: (2**20, "this machine has"))
    with within(2), pytest.raises(ValueError, match=r"1 tile\(s\) of \(1020, 1020\) pixels.* lower tile_size"):
        estimator.set_params(tile_size=4096).transform(np.zeros((1000, 1000), np.float32))


def test_the_refusal_suggests_the_largest_batch_size_that_fits(monkeypatch):
    monkeypatch.setattr(_memory, "device_memory", lambda device: (2**30, "this machine has"))
    with pytest.raises(ValueError, match=r"batch_size \(at most (\d+) fit") as error:
        check_fit_memory(network(), 10**6, (64, 64), CPU)
    largest = int(re.search(r"batch_size \(at most (\d+) fit", str(error.value)).group(1))
    check_fit_memory(network(), largest, (64, 64), CPU)
    with pytest.raises(ValueError):
        check_fit_memory(network(), largest + 1, (64, 64), CPU)


@pytest.mark.parametrize(
    "description",
    [
        network(),
        network(
            3, 2, "poisson_gaussian", batch_norm=True, blurpool=True, skip_skipone=True, independent_channels=False
        ),
        network(2, 3, "gaussian", blind_spot="network", depth=3, kernel_size=5),
        network(3, 1, blind_spot="network", batch_norm=True),
        # Networks imported from n2v: a wider bottom, narrower decoders, a bias before each batch norm.
        network(layout="n2v-tf"),
        network(3, 2, layout="n2v-tf", depth=3, skip_skipone=True, independent_channels=False),
        network(2, 3, layout="n2v-tf", batch_norm=False, blurpool=True, skip_skipone=True),
    ],
    ids=["default", "3d-n2v2-joint", "blind-probabilistic", "blind-3d", "n2v-tf", "n2v-tf-3d-joint", "n2v-tf-n2v2"],
)
def test_the_estimate_counts_the_networks_weights_exactly(description):
    with torch.device("meta"):
        state = build_unet(description).state_dict()
    assert network_values(description) == sum(t.numel() for t in state.values())


# (network, batch_size, patch_shape): settings the check must accept on any machine of 8 GiB.
REASONABLE = {
    "2D defaults": (network(), 16, (64, 64)),
    "n2v's BSD68 recipe": (network(n_filters=96), 128, (64, 64)),
    "3D defaults": (network(3), 16, (16, 32, 32)),
    "depth 4": (network(depth=4), 16, (64, 64)),
    "blind-spot network": (network(blind_spot="network"), 16, (64, 64)),
}


@pytest.mark.parametrize("settings", REASONABLE.values(), ids=REASONABLE.keys())
def test_reasonable_settings_pass_the_memory_check(settings, monkeypatch):
    description, batch_size, patch_shape = settings
    check_fit_memory(
        description,
        batch_size,
        patch_shape,
        CPU,
        validation_shape=patch_shape,
        validation_batches=4,
        masked_pixel_percentage=2.0,
        offsets_per_spot=25,
    )  # this machine
    monkeypatch.setattr(_memory, "device_memory", lambda device: (8 * 2**30, "a laptop has"))
    check_fit_memory(
        description,
        batch_size,
        patch_shape,
        CPU,
        validation_shape=patch_shape,
        validation_batches=4,
        masked_pixel_percentage=2.0,
        offsets_per_spot=25,
    )


def test_the_estimate_grows_with_the_batch_and_halves_its_activations_in_reduced_precision():
    single, double = (training_memory(network(), b, (64, 64)) for b in (16, 32))
    assert double["activations"] > 1.9 * single["activations"] and double["weights"] == single["weights"]
    reduced = training_memory(network(), 16, (64, 64), precision="bf16")
    assert reduced["activations"] < 0.6 * single["activations"]


def test_the_device_memory_of_a_cpu_is_the_machines_physical_memory():
    assert _memory.device_memory(CPU)[0] == _memory.physical_memory() > 2**28
