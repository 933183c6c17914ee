"""Does a probabilistic model explain its own blind spots? A check without clean data.

Probabilistic Noise2Void predicts each blind spot's noisy value ``x`` as
``N(mu, tau**2 + v(mu))``: the prior's mean and variance plus the noise model's
variance. Where both are right, the squared residual ``(x - mu)**2`` averages
``tau**2 + v(mu)`` in every intensity range. :func:`blind_spot_calibration`
measures the ratio of the two per intensity bin of ``mu`` on held-out patches,
after training; :func:`calibration_problems` names the bins where it is off.

What a ratio off 1 means:

- **below 1**: the model claims more spread than the residuals show. Where
  ``v(mu)`` alone exceeds the residuals, the noise model overstates the noise
  (a noise model of the wrong form: e.g. one Gaussian sigma for noise that
  grows with the signal is too large in the dark) and the posterior leans on
  the prior more than it should; else ``tau`` is too wide (an undertrained
  prior) and it leans on the noisy pixel: either way its mean is worse than it
  could be.
- **above 1**: residuals larger than claimed: the noise grows faster than the
  model allows, or the prior is over-confident (what the network learned does
  not hold beyond its training patches).
- **tails**: Gaussian residuals exceed 3 predicted standard deviations 0.27% of
  the time; impulse noise (hot pixels, salt and pepper) does far more often,
  and a Gaussian posterior then weighs those pixels wrongly.

Training fits ``tau`` to the residuals of the training patches, so a good
ratio on them says little; on held-out patches it tests both the prior and the
noise model. Only their sum is seen: a noise model too small everywhere, made
up by a wider ``tau``, passes (docs: guide/probabilistic).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

if TYPE_CHECKING:
    import torch
    from numpy.typing import NDArray

    from ..nets.blindnet import BlindSpotNetwork
    from ..nets.unet import UNet
    from .training import MaskedBatch

#: A calibration record, JSON-ready: per-channel lists keyed as :data:`RECORD_KEYS` (and ``patches``
#: once the plan names where its blind spots came from).
CalibrationRecord: TypeAlias = dict[str, Any]

# Intensity bins of the prior mean (equal counts): the dark background and the bright
# structure of a microscopy image fall into different bins.
N_BINS = 4
# A bin is off when its ratio of residual to predicted variance is, beyond its sampling
# error (3 standard errors), outside [1 / TOLERANCE, TOLERANCE].
TOLERANCE = 1.3
# Share of residuals beyond TAIL_Z predicted standard deviations above which the noise
# is called heavy-tailed (0.27% for Gaussian residuals).
TAIL_Z = 3.0
TAIL_LIMIT = 0.02
# Fewest blind spots per bin for a verdict on it.
MIN_COUNT = 200


def blind_spot_calibration(
    model: UNet | BlindSpotNetwork,
    batches: Sequence[MaskedBatch],
    mean: NDArray[np.float64],
    std: NDArray[np.float64],
    precision: str = "32",
) -> CalibrationRecord:
    """The calibration of a probabilistic ``model`` on held-out blind spots.

    Parameters
    ----------
    model : UNet or BlindSpotNetwork
        A network with a ``noise`` model, in eval mode.
    batches : list of (x, x_masked, mask)
        As :func:`n2v_estimator.fit.training.make_validation_set` draws them (normalised).
    mean, std : ndarray of shape (n_channels,)
        The normalisation, to report the bins in input units.
    precision : str
        The network's autocast precision.

    Returns
    -------
    dict
        JSON-ready, one list entry per channel: ``edges`` (``N_BINS + 1``
        bin edges of the prior mean, input units), ``count`` (blind spots per
        bin), ``ratio`` (mean ``(x - mu)**2`` over mean ``tau**2 + v(mu)``),
        ``noise_share`` (mean ``v(mu)`` over mean ``tau**2 + v(mu)``),
        ``tail`` (share of ``|x - mu|`` beyond :data:`TAIL_Z` predicted
        standard deviations) and ``se`` (the ratio's standard error).
    """
    # Here, not above: the verdicts below are read without torch (the command line's info).
    import torch

    from ..nets.noise import quantile_bins
    from ..runtime.compute import autocast

    noise_model = model.noise
    assert noise_model is not None, "a probabilistic network holds its noise model"
    channels = len(mean)
    parts: list[list[torch.Tensor]] = [[] for _ in range(channels)]
    with torch.inference_mode():
        for x, x_masked, mask in batches:
            with autocast(x.device, precision):
                prediction = model(x_masked)
            mu, tau = prediction.float().chunk(2, dim=1)
            noise = noise_model.variance(mu).expand_as(mu)
            total = tau.square() + noise
            for c in range(channels):
                chosen = mask[:, c]
                parts[c].append(torch.stack([t[:, c][chosen] for t in (mu, (x - mu).square(), total, noise)]).cpu())
    result: CalibrationRecord = {key: [] for key in ("edges", "count", "ratio", "noise_share", "tail", "se")}
    for c in range(channels):
        mu, squared, total, noise = torch.cat(parts[c], dim=1).double().numpy()
        signal = mu * float(std[c]) + float(mean[c])
        edges, which = quantile_bins(signal, N_BINS) if signal.size else (np.zeros(N_BINS + 1), signal.astype(int))
        rows = [_bin_summary(squared[which == k], total[which == k], noise[which == k]) for k in range(N_BINS)]
        result["edges"].append([_four_digits(e) for e in edges])
        for key in ("count", "ratio", "noise_share", "tail", "se"):
            result[key].append([row[key] for row in rows])
    return result


def _bin_summary(
    squared: NDArray[np.float64], total: NDArray[np.float64], noise: NDArray[np.float64]
) -> dict[str, int | float | None]:
    """One bin's entries of a record, from its blind spots' squared residuals, predicted variances
    (``tau**2 + v(mu)``) and noise variances ``v(mu)``."""
    n = len(squared)
    if n == 0:
        return {"count": 0, "ratio": None, "noise_share": None, "tail": None, "se": None}
    ratio = squared.sum() / total.sum()
    # Delta-method standard error of a ratio of sums.
    se = math.sqrt(np.sum((squared - ratio * total) ** 2)) / total.sum()
    return {
        "count": int(n),
        "ratio": _four_digits(ratio),
        "noise_share": _four_digits(noise.sum() / total.sum()),
        "tail": _four_digits(np.mean(squared > TAIL_Z**2 * total)),
        "se": _four_digits(se),
    }


def _four_digits(value: float | np.floating[Any]) -> float:
    """``value`` rounded to 4 significant digits: what a record keeps."""
    return float(f"{float(value):.4g}")


def calibration_problems(calibration: Mapping[str, Any]) -> list[str]:
    """What is off, as sentences (an empty list when nothing is), with the bins'
    numbers: see the module's docstring for what each means.

    A ratio below 1 is blamed on the noise model where the noise model alone
    predicts more than the residuals' variance (``noise_share > ratio`` by 3
    standard errors: no ``tau`` could explain that), else on the prior's ``tau``.
    """
    noisy, unsure, high, tails = [], [], [], []
    for c, edges in enumerate(calibration["edges"]):
        where = f" (channel {c})" if len(calibration["edges"]) > 1 else ""
        for k in range(len(edges) - 1):
            count, ratio, se, tail, share = (
                calibration[key][c][k] for key in ("count", "ratio", "se", "tail", "noise_share")
            )
            if count < MIN_COUNT:
                continue
            span = f"[{edges[k]:.4g}, {edges[k + 1]:.4g}]{where}"
            if ratio + 3 * se < 1 / TOLERANCE and share > ratio + 3 * se:
                noisy.append(f"{share / ratio:.2f} times at {span}")
            elif ratio + 3 * se < 1 / TOLERANCE:
                unsure.append(f"{ratio:.2f} times at {span}")
            elif ratio - 3 * se > TOLERANCE:
                high.append(f"{ratio:.2f} times at {span}")
            if tail > TAIL_LIMIT:
                tails.append(f"{tail:.1%} at {span}")
    problems = []
    if noisy:
        problems.append(
            f"the noise model alone predicts {', '.join(noisy)} the residuals' variance (intensities of "
            "the prior mean): it overstates the noise there (noise of another form?)"
        )
    if unsure:
        problems.append(
            f"the residuals' variance is {', '.join(unsure)} what the prior and noise model predict: the "
            "prior is surer than its spread says (an undertrained prior? train longer)"
        )
    if high:
        problems.append(
            f"the residuals' variance is {', '.join(high)} what the prior and noise model predict: the "
            "noise or the prior's error is larger than they claim"
        )
    if tails:
        problems.append(
            f"{', '.join(tails)} of the residuals lie beyond {TAIL_Z:g} predicted standard deviations "
            "(0.3% for Gaussian noise): the noise has heavy tails (hot pixels, impulses?)"
        )
    return problems


# The per-channel lists of a record (blind_spot_calibration's result), one entry per bin but the edges.
RECORD_KEYS = ("edges", "count", "ratio", "noise_share", "tail", "se")
# Where a record's blind spots came from.
RECORD_PATCHES = ("validation", "training")


def check_record(record: object, n_channels: int) -> CalibrationRecord:
    """``record`` if it is a calibration record of ``n_channels`` channels as
    :func:`blind_spot_calibration` makes it, else ``ValueError`` saying what is off: its keys, one
    list per channel of each, ``bins + 1`` finite increasing edges (1 to 64 bins), counts as ints
    and, per bin, finite non-negative numbers (``None`` only in a bin without blind spots). A record
    read from a model file is a stranger's: :func:`calibration_problems` and ``info`` can then
    trust its shape."""

    def check_numbers(values: object, length: int, what: str, counts: Sequence[int] | None = None) -> None:
        if not isinstance(values, list) or len(values) != length:
            raise ValueError(f"its {what} are not {length} values")
        for k, value in enumerate(values):
            empty = counts is not None and counts[k] == 0
            if value is None and empty:
                continue
            if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"its {what} hold {str(value)[:40]!r}, not a finite number >= 0")

    if not isinstance(record, dict) or set(record) != {"patches", *RECORD_KEYS}:
        keys = sorted(map(str, record))[:10] if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"its keys are {keys}, not patches and {list(RECORD_KEYS)}")
    if record["patches"] not in RECORD_PATCHES:
        raise ValueError(f"its patches are {str(record['patches'])[:40]!r}, not one of {list(RECORD_PATCHES)}")
    for key in RECORD_KEYS:
        if not isinstance(record[key], list) or len(record[key]) != n_channels:
            raise ValueError(f"its {key} are not one list per channel ({n_channels})")
    for c in range(n_channels):
        edges, counts = record["edges"][c], record["count"][c]
        if not isinstance(edges, list) or not 2 <= len(edges) <= 65:
            raise ValueError("its edges are not 2 to 65 numbers")
        if any(type(e) not in (int, float) or not math.isfinite(e) for e in edges) or edges != sorted(edges):
            raise ValueError("its edges are not finite increasing numbers")
        bins = len(edges) - 1
        if not isinstance(counts, list) or len(counts) != bins or any(type(n) is not int or n < 0 for n in counts):
            raise ValueError(f"its counts are not {bins} ints >= 0")
        for key in ("ratio", "noise_share", "tail", "se"):
            check_numbers(record[key][c], bins, key, counts)
    return record


class CalibrationWarning(UserWarning):
    """A probabilistic model's prior and noise model do not explain the
    residuals of its held-out blind spots: its posterior may be worse than plain Noise2Void."""


def warn_if_uncalibrated(calibration: Mapping[str, Any], noise_model: str | float, blind_spot: str, where: str) -> None:
    """Warn (:class:`CalibrationWarning`) with the numbers and what to try when
    :func:`calibration_problems` finds any; ``where`` names the patches checked."""
    problems = calibration_problems(calibration)
    if not problems:
        return
    others = [f"noise_model={m!r}" for m in ("gaussian", "poisson_gaussian") if m != noise_model]
    if blind_spot == "mask":
        others.append("blind_spot='network' (a better prior)")
    others.append("noise_model=None (plain Noise2Void)")
    warnings.warn(
        f"The probabilistic model (noise_model={noise_model!r}) does not explain the blind-spot residuals of "
        f"{where}: {'; '.join(problems)}. Its posterior may be worse than plain Noise2Void; try "
        f"{', '.join(others)}. The numbers are in calibration_ (and `n2v-estimator info`).",
        CalibrationWarning,
        stacklevel=5,  # this, the plan's _calibrate and run, fit: the caller of fit
    )
