"""A training step never makes the host wait for the device.

On a GPU the host queues a step's kernels and goes on to the next step while they run; an
operation whose result the host needs (a value read back, a count for a boolean selection, a
``nonzero``) stops it until the device has finished everything queued before. For a network as
small as Noise2Void's, that wait, at every step, costs more than the kernels. These tests record
every operation of a training step on the CPU, where they run the same way, and refuse those.
"""

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from n2v_estimator import Noise2VoidDenoiser
from n2v_estimator.data.blind_spot_grid import candidate_spots
from n2v_estimator.data.masking import BlindSpotMasker
from n2v_estimator.fit import training
from n2v_estimator.fit.plan import make_plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")

aten = torch.ops.aten
# Operations whose output the host must see before it can go on.
_READ_BACK = {
    aten._local_scalar_dense,
    aten.nonzero,
    aten.masked_select,
    aten.masked_scatter_,
    aten.masked_scatter,
    aten.is_nonzero,
    aten.equal,
    aten._unique2,
    aten.unique_dim,
    aten.unique_consecutive,
}
_INDEXING = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}


class HostWaits(TorchDispatchMode):
    """Records the operations that would make the host wait for the device: ``waits`` (names)."""

    def __init__(self, host_side=()):
        super().__init__()
        self.host_side = {id(t) for t in host_side}  # tensors that live on the host by design
        self.waits = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if packet in _READ_BACK and not (args and id(args[0]) in self.host_side):
            self.waits.append(str(func))
        elif packet in _INDEXING and any(i is not None and i.dtype == torch.bool for i in args[1]):
            self.waits.append(f"{func} with a boolean index")
        return func(*args, **(kwargs or {}))


def test_the_recorder_sees_what_waits():
    x = torch.arange(6.0)
    with HostWaits() as mode:
        x.sum().item()
        _ = x[x > 2]
        x[x > 4] = 0
        torch.nonzero(x)
        bool((x > 0).any())
    assert len(mode.waits) == 5, mode.waits
    with HostWaits() as mode:
        (x * (x > 2)).sum() / (x > 2).sum()
    assert mode.waits == []


CASES = {
    "n2v": {},
    "n2v2": {"blurpool": True, "skip_skipone": True, "manipulator": "median"},
    "structn2v": {"struct_mask": ("x", 5)},
    "probabilistic": {"noise_model": "gaussian", "blind_spot": "mask"},
    "blind-spot network": {"noise_model": "poisson_gaussian", "blind_spot": "network"},
    "two channels": {},
    "3d": {"patch_size": 16},
}


def one_step(case, budget=None):
    """A plan's ``training._Step`` for ``case``, after one step (Adam's state exists)."""
    rng = np.random.default_rng(0)
    if case == "3d":
        X, axes = rng.normal(size=(32, 48, 48)).astype(np.float32), "ZYX"
    elif case == "two channels":
        X, axes = rng.normal(size=(64, 64, 2)).astype(np.float32), "YXC"
    else:
        X, axes = rng.normal(size=(96, 96)).astype(np.float32), "YX"
    params = dict(
        n_filters=8,
        depth=2,
        batch_size=4,
        patch_size=32,
        max_epochs=1,
        steps_per_epoch=2,
        validation_fraction=0.0,
        masked_pixel_percentage=2.0,
        axes=axes,
        device="cpu",
        random_state=0,
        verbose=False,
    )
    estimator = Noise2VoidDenoiser(**{**params, **CASES[case]})
    estimator._validate_params()
    plan = make_plan(estimator.get_params(), X)
    model = plan.build_network()
    objective = plan._objective(model)
    from n2v_estimator.data.patches import PatchSampler

    sampler = PatchSampler(plan.train_images, plan.patch_shape)
    step = training._Step(
        model,
        sampler,
        plan.masker,
        objective.get("loss", training.masked_mse),
        1e-3,
        budget if budget is not None else training.Budget(10, None),
        plan.batch_size,
        torch.device("cpu"),
        plan.precision,
        0,
    )
    step(0)
    return step


@pytest.mark.parametrize("case", list(CASES))
def test_a_training_step_makes_the_host_wait_nowhere(case):
    step = one_step(case)
    # The patches are drawn from a generator on the host (their corners are host numbers): take
    # them out of the recording, as the step's work is what runs on the device.
    batch = step.sampler.sample(step.batch_size, step.patch_generator)
    step.sampler.sample = lambda n, generator: batch
    # Adam keeps its step counts on the host unless fused (as on CUDA), and reads them there.
    counts = [state["step"] for state in step.optimizer.state.values()]
    with HostWaits(host_side=counts) as mode:
        loss, _ = step(0)
    assert mode.waits == [], mode.waits
    assert torch.isfinite(loss)


def test_a_step_of_a_fit_given_a_time_makes_the_host_wait_nowhere():
    """The clock is the host's: the time budget and its schedule read nothing from the device."""
    step = one_step("n2v", budget=training.Budget(None, 3600.0))
    batch = step.sampler.sample(step.batch_size, step.patch_generator)
    step.sampler.sample = lambda n, generator: batch
    counts = [state["step"] for state in step.optimizer.state.values()]
    with HostWaits(host_side=counts) as mode:
        step(0)
        step.budget.spent()
    assert mode.waits == [], mode.waits


def test_an_epoch_reads_its_losses_once_at_its_end():
    step = one_step("n2v")
    batch = step.sampler.sample(step.batch_size, step.patch_generator)
    step.sampler.sample = lambda n, generator: batch
    counts = [state["step"] for state in step.optimizer.state.values()]

    class Progress:
        def update(self):
            pass

        def set_postfix(self, **kwargs):
            pass

    with HostWaits(host_side=counts) as mode:
        mean, _ = training._epoch(step, 0, 4, Progress())
    assert mode.waits == ["aten._local_scalar_dense.default"]  # the epoch's one read, for 4 steps
    assert np.isfinite(mean)


def test_the_masker_chooses_without_a_wait_and_as_many_candidates_for_any_draw():
    masker = BlindSpotMasker(2, 3.0, "median")
    x = torch.randn(3, 2, 20, 24)
    sizes = set()
    for seed in range(5):
        with HostWaits() as mode:
            spots, valid = candidate_spots(x.shape, masker.masked_pixel_percentage, torch.Generator().manual_seed(seed))
            masker(x, torch.Generator().manual_seed(seed))
        assert mode.waits == []
        sizes.add(len(spots))
    assert len(sizes) == 1  # static: the count of candidates depends on the shape alone


def test_an_epoch_with_validation_reads_the_device_twice_and_copies_the_validation_losses_once(monkeypatch):
    """The epoch's loss and the weights' finiteness: one read each, not one per tensor; the validation
    blind spots' losses: one copy to the host, not one per validation batch (picked there)."""
    adam = torch.optim.Adam
    # The fused Adam, as on CUDA (on the CPU the unfused one reads its step counts, kept on the host).
    monkeypatch.setattr(torch.optim, "Adam", lambda *args, **kwargs: adam(*args, **{**kwargs, "fused": True}))
    step = one_step("n2v")
    batch = step.sampler.sample(step.batch_size, step.patch_generator)
    step.sampler.sample = lambda n, generator: batch
    counts = [state["step"] for state in step.optimizer.state.values()]
    validation = training.make_validation_set(step.sampler, step.masker, 12, 4, torch.device("cpu"), 0)
    copies = []
    to_host = training._to_host
    monkeypatch.setattr(training, "_to_host", lambda values: copies.append(1) or to_host(values))
    with HostWaits(host_side=counts) as mode:
        history = training.train(
            step.model,
            step.sampler,
            step.masker,
            validation=validation,
            max_epochs=1,
            steps_per_epoch=3,
            batch_size=4,
            learning_rate=1e-3,
            device=torch.device("cpu"),
            seed=0,
        )
    reads = [w for w in mode.waits if "_local_scalar_dense" in w]
    assert len(reads) == 2 and len(reads) == len(mode.waits), mode.waits
    assert copies == [1]
    assert np.isfinite(history.history[0]["val_loss"])
