"""Noise models for probabilistic Noise2Void, fitted without clean data.

A :class:`NoiseModel` gives the variance of the noise at a pixel as a function
of its clean signal, for a network that works in normalised units (per-channel
``(value - mean) / std``). Its parameters are stored in input units, as logs
(so they stay positive and a step changes them by a ratio, whatever the scale
of the data):

- ``"gaussian"``: variance ``sigma**2``, one ``sigma`` per channel;
- ``"poisson_gaussian"``: variance ``a * signal + b`` per channel, with
  ``a, b >= 0`` (``a``: the gain, input units per photon; ``b``: the read-noise
  variance), the signal clipped at 0.

The network predicts, for every pixel, a prior mean ``mu`` and standard
deviation ``tau`` of its clean signal from its surroundings alone. ``mu`` is
trained as plain Noise2Void trains its output (the squared error to the blind
spot's noisy value); ``tau`` and the noise model are fitted together by
maximising the likelihood of every blind spot's noisy value ``x`` under
``N(mu, tau**2 + noise_variance(mu))``, with ``mu`` held fixed (see
:func:`blind_spot_loss`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..data.normalize import by_channel
from .losses import masked_mean

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from numpy.typing import ArrayLike, NDArray

    from .._typing import Array, Float64Array

NOISE_MODELS = ("gaussian", "poisson_gaussian")
# Smallest prior standard deviation the network may predict (normalised units):
# keeps the likelihood finite where the signal is perfectly predictable.
TAU_FLOOR = 1e-3
# Learning rate of the noise parameters relative to the network's. The robust first
# estimate is within a few percent; at the full rate the noise drifted up by 5-7%
# in short runs, taking up the variance of edges that the network's tau had not
# learned yet (camera crop, 200 steps: sigma 27.1-27.4 instead of 25; at a tenth, 25.9).
NOISE_LEARNING_RATE = 0.1
# A fresh network's prior standard deviation starts at this fraction of the noise's:
# blind-spot priors are typically several times surer than a single noisy pixel.
PRIOR_SCALE_START = 0.25
# Standard deviations per median absolute deviation, for Gaussian data.
_MAD_TO_STD = 1.4826
# Pixels per channel the first estimate looks at (8 Mpx: a few float64 copies, well under 1 GB).
_ESTIMATE_PIXELS = 2**23


def noise_kind(noise_model: str | float | None) -> str | None:
    """The network's noise model for the estimator's ``noise_model`` parameter:
    ``None``, ``"gaussian"`` (also for a known sigma, a number) or ``"poisson_gaussian"``."""
    if noise_model is None or isinstance(noise_model, str):
        return noise_model
    return "gaussian"


class NoiseModel(nn.Module):
    """Per-channel noise variance as a function of the signal.

    Parameters
    ----------
    kind : {"gaussian", "poisson_gaussian"}
    n_channels : int

    Notes
    -----
    The normalisation statistics (``mean``, ``std``, input units) are buffers,
    saved with the parameters: :meth:`variance` takes and returns normalised
    units, :meth:`parameters_in_input_units` reports input units. Set them and
    the initial parameters with :meth:`initialise`.
    """

    mean: torch.Tensor  # (n_channels,) buffers, input units
    std: torch.Tensor

    def __init__(self, kind: str, n_channels: int) -> None:
        super().__init__()
        if kind not in NOISE_MODELS:
            raise ValueError(f"noise model {kind!r} is unknown; use one of {NOISE_MODELS}.")
        self.kind = kind
        self.register_buffer("mean", torch.zeros(n_channels))
        self.register_buffer("std", torch.ones(n_channels))
        names = ("log_sigma",) if kind == "gaussian" else ("log_a", "log_b")
        for name in names:
            self.register_parameter(name, nn.Parameter(torch.zeros(n_channels)))
        self._names = names

    def initialise(
        self, mean: ArrayLike, std: ArrayLike, values: Mapping[str, ArrayLike], learn: bool = True
    ) -> NoiseModel:
        """Set the normalisation statistics and the parameters.

        Parameters
        ----------
        mean, std : array-like of shape (n_channels,)
            The data's normalisation, input units.
        values : dict
            ``{"sigma": ...}`` or ``{"a": ..., "b": ...}``, input units, > 0.
        learn : bool
            Whether training fits the parameters (``False`` for a known sigma).
        """
        with torch.no_grad():
            self.mean.copy_(torch.as_tensor(np.asarray(mean, dtype=np.float64)))
            self.std.copy_(torch.as_tensor(np.asarray(std, dtype=np.float64)))
            for name in self._names:
                value = np.asarray(values[name[4:]], dtype=np.float64)
                getattr(self, name).copy_(torch.as_tensor(np.log(value)))
                getattr(self, name).requires_grad_(learn)
        return self

    def _per_channel(self, name: str, ndim: int) -> torch.Tensor:
        """The parameter ``name`` (a log) as its value, shaped to broadcast over ``ndim``-D batches."""
        return getattr(self, name).exp().reshape((1, -1) + (1,) * (ndim - 2))

    def variance(self, signal: torch.Tensor) -> torch.Tensor:
        """Noise variance, normalised units, of pixels whose normalised clean
        signal is ``signal`` (a ``(B, C, *spatial)`` tensor)."""
        std = self.std.reshape((1, -1) + (1,) * (signal.ndim - 2))
        if self.kind == "gaussian":
            return (self._per_channel("log_sigma", signal.ndim) / std) ** 2
        mean = self.mean.reshape(std.shape)
        photons = torch.relu(signal * std + mean)
        a, b = self._per_channel("log_a", signal.ndim), self._per_channel("log_b", signal.ndim)
        return (a * photons + b) / std**2

    def typical_std(self) -> torch.Tensor:
        """Noise standard deviation at each channel's mean signal, normalised units, (C,) tensor."""
        return self.variance(torch.zeros(1, len(self.mean))).sqrt()[0].detach()

    def parameters_in_input_units(self) -> dict[str, Float64Array]:
        """``{"sigma": ndarray}`` or ``{"a": ndarray, "b": ndarray}``, float64, input units."""
        return {name[4:]: getattr(self, name).detach().double().exp().cpu().numpy() for name in self._names}


def blind_spot_nll(prediction: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, noise: NoiseModel) -> torch.Tensor:
    """Negative log-likelihood of the blind spots' noisy values (per blind spot,
    the constant ``log(2 pi) / 2`` left out).

    Parameters
    ----------
    prediction : tensor of shape (B, 2C, *spatial)
        The network's prior mean ``mu`` (first ``C`` channels) and standard
        deviation ``tau`` (last ``C``) of the clean signal, normalised units.
    x : tensor of shape (B, C, *spatial)
        The noisy patches, normalised, before masking.
    mask : bool tensor of x's shape
        The blind spots.
    noise : NoiseModel

    Returns
    -------
    tensor
        The mean over the blind spots of
        ``(log(v) + (x - mu)**2 / v) / 2`` with ``v = tau**2 + noise.variance(mu)``.

    Notes
    -----
    The likelihood sees only the sum ``tau**2 + noise.variance(mu)``. The
    split follows from their form: ``tau`` changes from pixel to pixel with
    what the context tells, the noise model is one curve for the whole image,
    so the noise model takes the variance every pixel shares. Its first values
    must be close (:func:`estimate_noise`), and so must ``tau``'s (see
    :meth:`n2v_estimator.nets.unet.UNet.initialise_prior_scale`): starting ``tau`` at
    softplus(0) = 0.69 let it absorb noise for a whole 600-step run (sigma
    23.3 instead of 25 on camera, posterior 27.7 dB instead of 28.6).
    """
    mu, tau = prediction.chunk(2, dim=1)
    total = tau.square() + noise.variance(mu)
    nll = 0.5 * (torch.log(total) + (x - mu).square() / total)
    return masked_mean(nll, mask)


def blind_spot_loss(prediction: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, noise: NoiseModel) -> torch.Tensor:
    """The training loss of a probabilistic network: the squared error of ``mu``
    plus :func:`blind_spot_nll` with ``mu`` held fixed.

    ``mu`` then gets exactly plain Noise2Void's gradient, and ``tau`` and the
    noise parameters exactly the likelihood's. Letting the likelihood train
    ``mu`` too weights every blind spot's error by ``1 / (tau**2 + v)``: the
    network then fits flat regions at the expense of edges, where the prior is
    least sure, and (Poisson-Gaussian) moves ``mu`` to change the noise
    variance ``v(mu)``. At the reference budget (GPU, 9 runs on the dev
    cases, seeds 0-2) the posterior gained 0.12 dB on average over the
    likelihood alone (-0.04 to +0.38), and camera's share of pixels within one
    posterior std (Gaussian 25) moved from 0.78 to 0.75 (docs: guide/probabilistic).

    Parameters and returns as :func:`blind_spot_nll`.
    """
    mu, tau = prediction.chunk(2, dim=1)
    return masked_mean((x - mu).square(), mask) + blind_spot_nll(torch.cat([mu.detach(), tau], 1), x, mask, noise)


def posterior(prior: torch.Tensor, x: torch.Tensor, noise: NoiseModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The posterior mean and standard deviation of the clean signal.

    With the prior ``N(mu, tau**2)`` and a noisy observation
    ``x ~ N(signal, v)``, ``v`` the noise variance evaluated at ``mu``, Bayes'
    rule gives the mean ``(v * mu + tau**2 * x) / (tau**2 + v)`` and the
    variance ``tau**2 * v / (tau**2 + v)``.

    Parameters
    ----------
    prior : tensor of shape (S, 2C, *spatial)
        ``mu`` and ``tau`` (as in :func:`blind_spot_nll`), normalised units.
    x : tensor of shape (S, C, *spatial)
        The noisy images, normalised.
    noise : NoiseModel

    Returns
    -------
    mean, std : tensors of x's shape, normalised units
    """
    mu, tau = prior.chunk(2, dim=1)
    prior_variance = tau.square()
    noise_variance = noise.variance(mu)
    total = prior_variance + noise_variance
    mean = (noise_variance * mu + prior_variance * x) / total
    return mean, torch.sqrt(prior_variance * noise_variance / total)


def posterior_risk(prediction: torch.Tensor, x: torch.Tensor, noise: NoiseModel) -> torch.Tensor:
    """The validation loss of a probabilistic network: the posterior mean's squared error to the
    blind spots' noisy values, plus twice its weight on them times the noise variance.

    With a blind prior (``mu`` and ``tau`` not computed from ``x``), the posterior mean is
    ``f = w * x + (1 - w) * mu`` with ``w = tau**2 / (tau**2 + v(mu))``, and for zero-mean noise ``n``
    of variance ``v`` (``x = signal + n``), ``E[(f - x)**2] + 2 * E[w * v] = E[(f - signal)**2] + E[v]``:
    the posterior's true squared error plus the noise variance, as plain Noise2Void's validation
    loss (the squared error) is its prediction's. It thus ranks a fit's epochs by what ``transform``
    returns, on the scale of a plain fit's loss on the same data; the training loss does not (its
    negative log-likelihood scores ``tau`` and the noise model too).

    ``w * v`` is the posterior variance (``v`` the noise model's at ``mu``), so the loss is
    ``(f - x)**2 + 2 * std**2`` of :func:`posterior`. Parameters as :func:`blind_spot_nll`, without the
    mask: it returns every pixel's value (``x``'s shape), for the blind spots to be picked.
    """
    mean, std = posterior(prediction, x, noise)
    return (mean - x).square() + 2 * std.square()


def estimate_noise(images: Array | list[Array], kind: str, n_bins: int = 16) -> dict[str, Float64Array]:
    """A robust first estimate of the noise parameters of each channel, input units.

    The residual of the separable filter ``[1, -2, 1]`` along every spatial
    axis (Immerkær 1996) cancels a locally linear signal and keeps
    ``6**ndim`` times the noise variance; its median absolute deviation
    ignores the edges where the signal leaks in. For ``"poisson_gaussian"``
    the pixels are binned by the mean of their ``3**ndim`` neighbourhood, and a
    line ``a * mean + b`` is fitted to the bins' robust variances.

    Parameters
    ----------
    images : ndarray of shape (S, C, *spatial), or a list of them
        Input units. Axes shorter than 3 pixels are left out of the filter.
    kind : {"gaussian", "poisson_gaussian"}

    Returns
    -------
    dict
        ``{"sigma": (C,)}`` or ``{"a": (C,), "b": (C,)}``, float64, all > 0.

    Notes
    -----
    At most :data:`_ESTIMATE_PIXELS` pixels per channel are used (the first
    images, or a central slab of a larger one): the estimate holds a few
    float64 copies of them.
    """
    parts = images if isinstance(images, list) else [images]
    residual, local, pixels = (np.concatenate(arrays, axis=1) for arrays in zip(*map(_residual, _bounded(parts))))
    spread = np.maximum(pixels.std(axis=1, dtype=np.float64), 1e-12)

    def robust_variance(r: Array) -> float:
        return (_MAD_TO_STD * np.median(np.abs(r - np.median(r)))) ** 2

    if kind == "gaussian":
        sigma = np.sqrt([robust_variance(r) for r in residual])
        return {"sigma": np.maximum(sigma, 1e-3 * spread)}
    a, b = [], []
    for r, m, s in zip(residual, local, spread):
        _, which = quantile_bins(m, n_bins)
        centres, variances = [], []
        for k in range(n_bins):
            chosen = which == k
            if chosen.sum() >= 16:
                centres.append(np.median(m[chosen]))
                variances.append(robust_variance(r[chosen]))
        if len(centres) >= 2 and np.ptp(centres) > 0:
            slope, intercept = np.polyfit(centres, variances, 1)
        else:
            slope, intercept = 0.0, float(np.mean(variances)) if variances else s**2
        overall = max(float(np.median(variances)) if variances else s**2, 1e-6 * s**2)
        a.append(max(slope, 1e-3 * overall / max(abs(float(np.median(m))), s)))
        b.append(max(intercept, 1e-3 * overall))
    return {"a": np.array(a), "b": np.array(b)}


def quantile_bins(values: Array, n_bins: int) -> tuple[Float64Array, NDArray[np.intp]]:
    """Equal-count bins of the 1D ``values``: their ``n_bins + 1`` edges and each value's bin."""
    edges = np.quantile(values, np.linspace(0, 1, n_bins + 1))
    return edges, np.clip(np.searchsorted(edges, values, side="right") - 1, 0, n_bins - 1)


def _residual(images: Array) -> tuple[Float64Array, Float64Array, Float64Array]:
    """The noise residual of ``(S, C, *spatial)`` images, scaled to the noise's
    units, the local means it is binned by, and the pixels, each ``(C, n)`` float64."""
    residual = local = images.astype(np.float64)
    factor = 1.0
    for axis in range(2, images.ndim):
        if images.shape[axis] < 3:
            continue
        n = images.shape[axis]
        lower, centre, upper = (residual.take(np.arange(k, n - 2 + k), axis=axis) for k in range(3))
        residual = lower - 2 * centre + upper
        neighbours = [local.take(np.arange(k, n - 2 + k), axis=axis) for k in range(3)]
        local = (neighbours[0] + neighbours[1] + neighbours[2]) / 3
        factor *= 6.0
    return by_channel(residual) / math.sqrt(factor), by_channel(local), by_channel(images).astype(np.float64)


def _bounded(parts: Sequence[Array]) -> list[Array]:
    """The first images of ``parts`` (a list of ``(S, C, *spatial)`` arrays), or
    a central slab of the first, with at most :data:`_ESTIMATE_PIXELS` pixels per channel."""
    kept: list[Array] = []
    budget = _ESTIMATE_PIXELS
    for images in parts:
        n_samples, _, first, *rest = images.shape
        per_image = first * math.prod(rest)
        if n_samples * per_image <= budget:
            taken = images
        elif per_image <= budget:
            taken = images[: budget // per_image]
        elif not kept:
            rows = max(3, budget // math.prod(rest))
            start = (first - rows) // 2
            taken = images[:1, :, start : start + rows]
        else:
            break
        kept.append(taken)
        budget -= taken[:, 0].size
        if budget <= 0:
            break
    return kept
