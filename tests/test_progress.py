"""Progress events (runtime.progress.watch): what a widget drawing its own progress is told, and how it stops the work."""

import threading

import numpy as np
import pytest
import torch
from tqdm.auto import tqdm

from n2v_estimator import Noise2VoidDenoiser
from n2v_estimator.runtime.progress import progress_bar, watch

SMALL = dict(
    max_epochs=3,
    steps_per_epoch=2,
    patch_size=16,
    batch_size=4,
    depth=1,
    n_filters=8,
    random_state=0,
    verbose=False,
    device="cpu",
    precision="32",
)


def noisy(shape=(48, 48)):
    return np.random.default_rng(0).normal(100, 20, shape).astype(np.float32)


def test_every_step_and_epoch_is_reported_with_its_loss_and_history_record():
    seen = []
    with watch(seen.append):
        denoiser = Noise2VoidDenoiser(**SMALL, validation_fraction=0.25).fit(noisy())
    steps = [p for p in seen if p.epoch is None]
    epochs = [p for p in seen if p.epoch is not None]
    assert [(p.task, p.done, p.total) for p in steps] == [("fit", i, 6) for i in range(1, 7)]
    assert [p.loss for p in steps[:2]] == [None, None]  # read once per epoch, not per step
    assert steps[2].loss == pytest.approx(denoiser.history_[0]["train_loss"], abs=1e-4)
    assert [p.epoch for p in epochs] == denoiser.history_
    assert [p.done for p in epochs] == [2, 4, 6]
    assert epochs[0].loss == denoiser.history_[0]["train_loss"]


def test_an_interrupt_from_the_watcher_stops_fit_as_ctrl_c_does_and_keeps_the_complete_epochs():
    def stop_after_first_epoch(progress):
        if progress.epoch is not None:
            raise KeyboardInterrupt

    denoiser = Noise2VoidDenoiser(**SMALL)
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning, match="after 1 complete epoch"):
        with watch(stop_after_first_epoch):
            denoiser.fit(noisy())
    assert len(denoiser.history_) == 1
    assert np.isfinite(denoiser.transform(noisy())).all()


def test_prediction_reports_its_batches_and_an_interrupt_leaves_the_model_unchanged():
    denoiser = Noise2VoidDenoiser(**SMALL).fit(noisy())
    before = {k: v.clone() for k, v in denoiser.model_.state_dict().items()}
    denoiser.set_params(tile_size=32, tile_overlap=8)
    seen = []
    with watch(seen.append):
        expected = denoiser.transform(noisy((96, 96)))
    assert seen and all(p.task == "predict" for p in seen) and seen[-1].done == seen[-1].total

    def cancel(progress):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), watch(cancel):
        denoiser.transform(noisy((96, 96)))
    for name, tensor in denoiser.model_.state_dict().items():
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0)
    np.testing.assert_array_equal(denoiser.transform(noisy((96, 96))), expected)


def test_without_a_watcher_the_bar_is_plain_tqdm_and_watchers_stay_in_their_thread():
    assert isinstance(progress_bar(range(3), desc="x", unit="y", verbose=False), tqdm)
    seen, other = [], []
    with watch(seen.append):
        worker = threading.Thread(
            target=lambda: other.append(type(progress_bar(range(2), desc="x", unit="y", verbose=False)))
        )
        worker.start()
        worker.join()
        list(progress_bar(range(2), desc="x", unit="y", verbose=False))
    assert other == [tqdm().__class__] and [p.done for p in seen] == [1, 2]
    assert isinstance(progress_bar(range(3), desc="x", unit="y", verbose=False), tqdm)
