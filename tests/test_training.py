"""The training loop alone: kept weights, fixed validation, early stops reported, not raised."""

import numpy as np
import pytest
import torch
from conftest import gen

from n2v_estimator import NonFiniteLossError
from n2v_estimator.data.masking import BlindSpotMasker
from n2v_estimator.data.patches import PatchSampler
from n2v_estimator.fit import training as _training
from n2v_estimator.fit.training import make_validation_set, train
from n2v_estimator.nets.builder import build_unet
from n2v_estimator.nets.unet import network_description

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGES = [np.random.default_rng(0).normal(size=(1, 32, 32)).astype(np.float32)]
SETTINGS = dict(
    depth=1,
    n_filters=4,
    kernel_size=3,
    batch_norm=True,
    residual=False,
    blurpool=False,
    skip_skipone=False,
    independent_channels=True,
    blind_spot="mask",
)


def model():
    return build_unet(network_description(2, 1, SETTINGS), seed=0)


def masker():
    return BlindSpotMasker(2, 5.0)


def validation_set(seed=3):
    return make_validation_set(PatchSampler(IMAGES, (16, 16), augment=False), masker(), 8, 4, torch.device("cpu"), seed)


def run(net, validation, max_epochs=4, **overrides):
    settings = dict(steps_per_epoch=2, batch_size=4, learning_rate=1e-2, device=torch.device("cpu"), seed=0)
    return train(
        net,
        PatchSampler(IMAGES, (16, 16)),
        masker(),
        validation=validation,
        max_epochs=max_epochs,
        **{**settings, **overrides},
    )


def snapshots_with_validation_losses(monkeypatch, losses):
    """Make epoch ``i``'s validation losses ``losses[i]`` (a number: one blind spot's; or a blind
    spot's each) and record the weights of each epoch."""
    snapshots = []

    def fake_validation_losses(net, batches, *args):
        snapshots.append({k: v.clone() for k, v in net.state_dict().items()})
        return np.asarray(losses[len(snapshots) - 1], dtype=np.float64).reshape(-1)

    monkeypatch.setattr(_training, "_validation_losses", fake_validation_losses)
    return snapshots


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_weights_with_the_lowest_validation_loss_are_kept(monkeypatch):
    snapshots = snapshots_with_validation_losses(monkeypatch, [3.0, 1.0, 2.0, 1.5])
    net = model()
    result = run(net, validation_set())
    assert [h["val_loss"] for h in result.history] == [3.0, 1.0, 2.0, 1.5]
    assert_same_weights(result.state, snapshots[1])
    assert_same_weights(net.state_dict(), snapshots[1])
    assert not net.training


NOISY = torch.randn(400, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_a_later_epoch_no_clearly_worse_than_the_lowest_is_kept(monkeypatch):
    # Epoch 3's blind spots differ from epoch 2's by noise of std 1 (standard error 0.05): 0.05 higher
    # is chance, and the later weights (of a lower learning rate) are kept, as epoch 4's 0.02 over the lowest.
    base = 10 * NOISY
    noise = torch.randn(400, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    losses = [base + 5, base + 1, base + 1 + 0.05 + noise - noise.mean(), base + 1 + 0.02 + noise - noise.mean()]
    snapshots = snapshots_with_validation_losses(monkeypatch, losses)
    net = model()
    result = run(net, validation_set())
    assert result.history[1]["val_loss"] == min(h["val_loss"] for h in result.history)
    assert_same_weights(result.state, snapshots[3])


def test_a_later_epoch_clearly_worse_than_the_lowest_is_not_kept(monkeypatch):
    # 0.3 higher is 6 standard errors: the lowest epoch's weights stay; epoch 4 is compared with
    # the lowest too, not with epoch 3, so that small steps cannot add up to a drift.
    base = 10 * NOISY
    noise = torch.randn(400, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    jitter = noise - noise.mean()
    losses = [base + 5, base + 1, base + 1.3 + jitter, base + 1.35 + jitter]
    snapshots = snapshots_with_validation_losses(monkeypatch, losses)
    net = model()
    result = run(net, validation_set())
    assert_same_weights(result.state, snapshots[1])


def test_paired_differences_decide_not_the_spread_of_the_losses(monkeypatch):
    # The blind spots' losses spread by 10 (noise variance), but epoch 3 is higher at every one of them:
    # clearly worse, though its mean is 0.1 above, a hundredth of the spread.
    base = 10 * NOISY
    losses = [base + 1, base + 1.1, base + 1.1]
    snapshots = snapshots_with_validation_losses(monkeypatch, losses)
    result = run(model(), validation_set(), max_epochs=3)
    assert_same_weights(result.state, snapshots[0])


def test_an_epoch_whose_validation_loss_is_not_finite_is_never_kept(monkeypatch):
    base = 10 * NOISY.numpy()
    jitter = np.random.default_rng(1).normal(size=400)
    level = base + 1 + jitter - jitter.mean()  # level with the first: kept, being later
    losses = [base + 1, np.where(np.arange(400) == 7, np.nan, base + 1), level, np.full(400, np.inf)]
    snapshots = snapshots_with_validation_losses(monkeypatch, losses)
    result = run(model(), validation_set())
    assert_same_weights(result.state, snapshots[2])


def test_validation_losses_are_the_blind_spots_own(monkeypatch):
    net = model()
    validation = validation_set()
    copies = []
    to_host = _training._to_host
    monkeypatch.setattr(_training, "_to_host", lambda values: copies.append(values.shape) or to_host(values))
    losses = _training._validation_losses(net, validation, "32", _training.squared_error)
    assert net.training  # back in training mode
    assert len(copies) == 1  # one copy to the host for all batches
    assert losses.dtype == np.float64
    assert len(losses) == sum(int(mask.sum()) for _, _, mask in validation)
    net.eval()
    with torch.no_grad():
        expected = torch.cat([(net(xm) - x).square()[m] for x, xm, m in validation]).double().numpy()
    np.testing.assert_allclose(losses, expected, rtol=1e-6)


def test_without_validation_the_last_epoch_is_kept():
    net = model()
    result = run(net, validation=[])
    assert [h["val_loss"] for h in result.history] == [None] * 4
    assert_same_weights(result.state, net.state_dict())
    assert not result.interrupted and result.error is None


def test_validation_patches_and_masks_are_drawn_once_and_reused_every_epoch(monkeypatch):
    seen = []

    def recording_validation_losses(net, batches, *args):
        seen.append([(x.clone(), m.clone()) for x, _, m in batches])
        return np.ones(1)

    monkeypatch.setattr(_training, "_validation_losses", recording_validation_losses)
    run(model(), validation_set())
    assert len(seen) == 4
    for epoch in seen[1:]:
        for (x, m), (x0, m0) in zip(epoch, seen[0]):
            assert torch.equal(x, x0) and torch.equal(m, m0)


def test_validation_set_is_reproducible_and_masks_do_not_replay_the_patch_stream():
    a, b = validation_set(seed=3), validation_set(seed=3)
    for (x, xm, m), (y, ym, n) in zip(a, b):
        assert torch.equal(x, y) and torch.equal(xm, ym) and torch.equal(m, n)
    # Patches from seed, blind spots from seed + 1: the masks are not what the patch stream would draw.
    x = a[0][0]
    _, replayed = masker()(x, gen(3))
    _, own = masker()(x, gen(4))
    assert torch.equal(a[0][2], own) and not torch.equal(a[0][2], replayed)


def test_an_interrupt_is_reported_with_the_weights_kept(monkeypatch):
    snapshots = snapshots_with_validation_losses(monkeypatch, [2.0, 1.0, 5.0, 5.0])
    calls = {"n": 0}
    original = _training.masked_mse

    def interrupt_in_the_third_epoch(*args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(_training, "masked_mse", interrupt_in_the_third_epoch)
    net = model()
    result = run(net, validation_set())
    assert result.interrupted and len(result.history) == 2
    assert_same_weights(net.state_dict(), snapshots[1])


def test_a_non_finite_loss_is_reported_with_the_last_good_weights(monkeypatch):
    original = _training.masked_mse
    calls = {"n": 0}

    def nan_in_the_second_epoch(*args):
        calls["n"] += 1
        return original(*args) * (float("nan") if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(_training, "masked_mse", nan_in_the_second_epoch)
    net = model()
    result = run(net, validation=[])
    assert isinstance(result.error, NonFiniteLossError) and len(result.history) == 1
    assert all(torch.isfinite(v).all() for v in net.state_dict().values() if v.is_floating_point())


def test_other_exceptions_propagate(monkeypatch):
    def broken(*args):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(_training, "masked_mse", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        run(model(), validation=[])


@pytest.mark.parametrize(
    "history, was_fitted, expected",
    [
        ([{"val_loss": 1.0}], True, "after 1 complete epoch\\(s\\); the best validation weights are kept"),
        ([{"val_loss": None}] * 2, False, "after 2 complete epoch\\(s\\); the weights of the last complete epoch"),
        ([], True, "before any epoch completed; the estimator is left as it was\\."),
        ([], False, "before any epoch completed; the estimator is left as it was \\(not fitted\\)"),
    ],
)
def test_a_stop_says_what_is_kept(history, was_fitted, expected):
    interrupted = _training.TrainingResult({}, history, interrupted=True)
    with pytest.warns(UserWarning, match=expected), pytest.raises(KeyboardInterrupt, match=expected):
        interrupted.raise_if_stopped_early(was_fitted)
    failed = _training.TrainingResult({}, history, error=NonFiniteLossError("The loss became nan."))
    with pytest.raises(NonFiniteLossError, match="The loss became nan. Training stopped " + expected):
        failed.raise_if_stopped_early(was_fitted)
    _training.TrainingResult({}, history).raise_if_stopped_early(was_fitted)  # a complete run: nothing


class _SkippingScaler:
    """A float16 gradient scaler whose first two steps overflow. As with CUDA's fused Adam, the
    optimizer's step is called every batch and the skip happens inside it (here: no update)."""

    def __init__(self):
        self.calls = 0

    def is_enabled(self):
        return True

    def get_scale(self):  # pragma: no cover - reading the scale would make the host wait
        raise AssertionError("the training step read the gradient scale")

    def scale(self, loss):
        return loss

    def step(self, optimizer):
        self.calls += 1
        if self.calls <= 2:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None  # an overflowed step changes nothing
        optimizer.step()

    def update(self):
        pass


def test_the_schedule_follows_the_batches_without_reading_the_float16_scale(monkeypatch, recwarn):
    """Knowing whether the scaler skipped a step would make the host wait for the device at every
    step; the schedule moves on with every batch (a skipped warm-up step or two changes little)."""
    monkeypatch.setattr(_training, "grad_scaler", lambda device, precision: _SkippingScaler())
    result = run(model(), None, max_epochs=2)
    assert not [w for w in recwarn if "lr_scheduler" in str(w.message)]
    expected = _training.warmup_cosine(4)  # 4 batches: the rate of each epoch's last batch
    assert result.history[0]["learning_rate"] == pytest.approx(1e-2 * expected(1))
    assert result.history[1]["learning_rate"] == pytest.approx(1e-2 * expected(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="float16 training with a gradient scaler needs CUDA")
def test_float16_training_on_cuda_warns_nothing(recwarn):
    net = model().cuda()
    train(
        net,
        PatchSampler(IMAGES, (16, 16)),
        masker(),
        validation=None,
        max_epochs=2,
        steps_per_epoch=3,
        batch_size=4,
        learning_rate=1e-2,
        device=torch.device("cuda"),
        seed=0,
        precision="16-mixed",
    )
    assert not [str(w.message) for w in recwarn], [str(w.message) for w in recwarn]


# ---------------------------------------------------------------- a time budget
class _Clock:
    """A clock that moves ``tick`` seconds each time it is read: training's time, without waiting."""

    def __init__(self, tick):
        self.now, self.tick = 0.0, tick

    def perf_counter(self):
        self.now += self.tick
        return self.now


def timed_run(monkeypatch, max_time, max_epochs=None, tick=0.05):
    monkeypatch.setattr(_training, "time", _Clock(tick))
    return run(model(), validation_set(), max_epochs=max_epochs, steps_per_epoch=5, max_time=max_time)


def test_a_fit_given_a_time_ends_when_it_is_spent_in_a_short_validated_epoch(monkeypatch):
    result = timed_run(monkeypatch, max_time=2.0)
    steps = [record["steps"] for record in result.history]
    assert 2 <= len(steps) < 100 and all(n == 5 for n in steps[:-1]) and 1 <= steps[-1] <= 5
    assert all(record["val_loss"] is not None for record in result.history)
    assert not result.interrupted and result.error is None


def test_the_schedule_is_laid_over_the_time_given_not_cut_short(monkeypatch):
    history = timed_run(monkeypatch, max_time=2.0).history
    rates = [record["learning_rate"] for record in history]
    assert max(rates) > 0.5e-2  # the peak is reached within the time
    assert rates[-1] <= 0.06e-2  # and the cosine has decayed (a cut-short schedule would be near the peak)


def test_with_steps_and_a_time_the_first_spent_ends_the_fit(monkeypatch):
    by_steps = timed_run(monkeypatch, max_time=1000.0, max_epochs=3).history
    assert [record["steps"] for record in by_steps] == [5, 5, 5]
    assert by_steps[-1]["learning_rate"] <= 0.06e-2  # the steps' budget spent: decayed as well
    by_time = timed_run(monkeypatch, max_time=1.0, max_epochs=1000).history
    assert len(by_time) < 1000


def test_without_a_time_the_steps_schedule_is_the_one_it_always_was():
    history = run(model(), validation_set(), max_epochs=4).history
    expected = [_training.warmup_cosine(8)(2 * (epoch + 1) - 1) * 1e-2 for epoch in range(4)]
    assert [record["learning_rate"] for record in history] == pytest.approx(expected)
    assert [record["steps"] for record in history] == [2, 2, 2, 2]
