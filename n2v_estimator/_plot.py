"""The training curve of a fitted denoiser (the optional extra ``[plot]``: matplotlib)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._extras import install_command

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from .estimator import Noise2VoidDenoiser


def plot_history(
    history: Noise2VoidDenoiser | Sequence[Mapping[str, Any]],
    keys: Sequence[str] = ("train_loss", "val_loss"),
    ax: Axes | None = None,
) -> Axes:
    """Plot a denoiser's training record, epoch by epoch (like n2v's ``plot_history``).

    Parameters
    ----------
    history : Noise2VoidDenoiser or list of dict
        A fitted denoiser (its ``history_``) or such a list of epoch records.
    keys : sequence of str, default=("train_loss", "val_loss")
        The record fields to plot, one line each; fields that are ``None`` in
        every epoch (``val_loss`` without validation) are left out. Noise
        parameters (``"noise_sigma"``, ``"noise_a"``, ``"noise_b"``) plot one
        line per channel.
    ax : matplotlib Axes, optional
        Where to draw; a new figure's axes by default.

    Returns
    -------
    matplotlib Axes

    Raises
    ------
    ImportError
        Without matplotlib (the ``[plot]`` extra).
    ValueError
        For an unfitted denoiser, an empty history, or a key no epoch records.

    Examples
    --------
    >>> import numpy as np
    >>> from n2v_estimator import Noise2VoidDenoiser, plot_history
    >>> noisy = np.random.default_rng(0).normal(100, 20, (128, 128))
    >>> denoiser = Noise2VoidDenoiser(max_epochs=2, steps_per_epoch=2, patch_size=32, verbose=False).fit(noisy)
    >>> ax = plot_history(denoiser)
    >>> [line.get_label() for line in ax.get_lines()]
    ['train_loss', 'val_loss']
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(f"plot_history needs matplotlib ({exc}): {install_command('plot')}") from exc
    records = getattr(history, "history_", history)
    if not isinstance(records, list) or not records:
        raise ValueError("plot_history needs a fitted denoiser or a non-empty list of epoch records (its history_).")
    unknown = [key for key in keys if not any(key in record for record in records)]
    if unknown:
        raise ValueError(f"No epoch records {unknown}; the records hold {sorted(records[0])}.")
    if ax is None:
        ax = plt.figure(figsize=(6, 3.5)).add_subplot()
    epochs = list(range(1, len(records) + 1))  # epochs restart with each warm_start fit: count them all
    for key in keys:
        values = [record.get(key) for record in records]
        if all(v is None for v in values):
            continue
        if isinstance(values[0], list):  # one value per channel
            for channel, series in enumerate(zip(*values)):
                ax.plot(epochs, series, marker=".", label=f"{key}[{channel}]")
        else:
            ax.plot(epochs, [float("nan") if v is None else v for v in values], marker=".", label=key)
    ax.set_xlabel("epoch (all fits)" if len(records) > 1 and records[-1]["epoch"] != len(records) else "epoch")
    ax.set_ylabel(", ".join(keys) if len(keys) == 1 else "loss")
    ax.legend()
    return ax
