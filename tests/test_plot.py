"""plot_history: the training curve, behind the [plot] extra."""

import doctest
import sys

import numpy as np
import pytest
from conftest import tiny

from n2v_estimator import _plot, plot_history

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")


def test_the_docstring_example_runs():
    assert doctest.testmod(_plot, optionflags=doctest.ELLIPSIS).failed == 0


def test_one_line_per_loss_and_per_channel_of_a_noise_parameter():
    denoiser = tiny(axes="YXC", noise_model="gaussian", verbose=False).fit(
        np.random.default_rng(0).normal(100, 20, (96, 96, 2))
    )
    ax = plot_history(denoiser, keys=("train_loss", "val_loss", "noise_sigma"))
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["train_loss", "val_loss", "noise_sigma[0]", "noise_sigma[1]"]
    assert list(ax.get_lines()[0].get_xdata()) == [1, 2]
    assert ax.get_xlabel() == "epoch"


def test_a_loss_missing_in_every_epoch_is_left_out_and_an_unknown_key_refused():
    history = [{"epoch": 1, "train_loss": 2.0, "val_loss": None}, {"epoch": 2, "train_loss": 1.0, "val_loss": None}]
    _, ax = matplotlib.pyplot.subplots()
    assert plot_history(history, ax=ax) is ax
    assert [line.get_label() for line in ax.get_lines()] == ["train_loss"]
    with pytest.raises(ValueError, match=r"No epoch records \['noise_a'\]"):
        plot_history(history, keys=("noise_a",))
    with pytest.raises(ValueError, match="fitted denoiser"):
        plot_history(tiny())


def test_without_matplotlib_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r'pip install "matplotlib[^"]*".* \(the \[plot\] extra\)'):
        plot_history([{"epoch": 1, "train_loss": 1.0}])


def test_epochs_of_warm_start_fits_follow_each_other():
    denoiser = tiny(warm_start=True, verbose=False).fit(np.random.default_rng(0).normal(100, 20, (96, 96)))
    denoiser.fit(np.random.default_rng(1).normal(100, 20, (96, 96)))
    ax = plot_history(denoiser)
    assert list(ax.get_lines()[0].get_xdata()) == [1, 2, 3, 4] and ax.get_xlabel() == "epoch (all fits)"
