"""Networks built from their description: the masked U-Net or the blind-spot network, and the
weights a description implies, computed without allocating them."""

from __future__ import annotations

import torch

from .blindnet import BlindSpotNetwork
from .geometry import NetworkGeometry
from .unet import _FIELDS, _NOT_BLIND, UNet


def build_unet(description, seed=None):
    """The network a checked ``description`` describes, on the CPU: a
    :class:`UNet`, or a :class:`.blindnet.BlindSpotNetwork` for ``blind_spot="network"``.

    ``seed`` decides the initial weights; the CPU generator is forked, so
    seeding leaves no trace outside (and no GPU generator is touched).
    """
    if seed is None:
        return _build(description)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed))
        return _build(description)


def _build(description):
    kwargs = {key: description[key] for key in _FIELDS if key != "blind_spot"}
    if not NetworkGeometry.of(description).blind:
        return UNet(**kwargs)
    for key in (*_NOT_BLIND, "layout"):
        del kwargs[key]
    return BlindSpotNetwork(**kwargs, description=description)


def expected_state(description):
    """Names, shapes and dtypes of the weights of the network ``description``
    describes, computed on the meta device: no memory is allocated, however
    large the network. Raises ``ValueError`` if its sizes overflow."""
    try:
        with torch.device("meta"):
            state = build_unet(description).state_dict()
    except (RuntimeError, TypeError, OverflowError, MemoryError) as exc:  # e.g. "Storage size calculation overflowed"
        raise ValueError(f"the network {description} cannot be built: {exc}") from exc
    return {name: (tuple(t.shape), t.dtype) for name, t in state.items()}
