"""Networks built from their description: the masked U-Net or the blind-spot network, and the
weights a description implies, computed without allocating them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .blindnet import BlindSpotNetwork
from .geometry import NetworkGeometry
from .unet import _NOT_BLIND, FIELDS, UNet

if TYPE_CHECKING:
    from .._typing import Description


def build_unet(description: Description, seed: int | None = None) -> UNet | BlindSpotNetwork:
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


def _build(description: Description) -> UNet | BlindSpotNetwork:
    """The network ``description`` describes, with the weights the default generator draws."""
    kwargs = {key: description[key] for key in FIELDS if key != "blind_spot"}
    if not NetworkGeometry.of(description).blind:
        return UNet(**kwargs)
    for key in (*_NOT_BLIND, "layout"):
        del kwargs[key]
    return BlindSpotNetwork(**kwargs, description=description)


def expected_state(description: Description) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Names, shapes and dtypes of the weights of the network ``description``
    describes, computed on the meta device: no memory is allocated, however
    large the network. Raises ``ValueError`` if its sizes overflow."""
    try:
        with torch.device("meta"):
            state = build_unet(description).state_dict()
    except (RuntimeError, TypeError, OverflowError, MemoryError) as exc:  # e.g. "Storage size calculation overflowed"
        raise ValueError(f"the network {description} cannot be built: {exc}") from exc
    return {name: (tuple(t.shape), t.dtype) for name, t in state.items()}
