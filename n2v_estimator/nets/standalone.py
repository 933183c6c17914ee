"""The U-Net's own source as a standalone module that needs torch only: what a BioImage Model Zoo package
carries, so that its runtime builds our network without this package.

The parts are copied from their source here, beside the modules that define them, so that a new piece of
the U-Net (a helper its blocks call) is added to the copy in the same folder; a test builds the copy and
compares its output with the U-Net's.
"""

from __future__ import annotations

import inspect
from typing import Any

from .noise import TAU_FLOOR
from .unet import (
    DESCRIPTION_SCHEMA,
    FIELDS,
    UNet,
    _batch_norm,
    _conv,
    _ConvBlock,
    _interleave,
    _KerasMaxBlurPool,
    _MaxBlurPool,
    _pad_to_multiple,
    _prior_scale,
)
from .widths import BlockWidths, UNetWidths, unet_widths

_HEADER = (
    "from __future__ import annotations\n\nimport itertools\nimport math\nfrom dataclasses import dataclass\n\n"
    "import torch\nimport torch.nn.functional as F\nfrom torch import nn"
)


def unet_source(*extra: object) -> str:
    """The source of a module defining :class:`n2v_estimator.nets.unet.UNet` (masked, without a noise model)
    and everything it calls, then the source of each of ``extra`` (functions or classes whose own imports
    the header covers: itertools, math, dataclass, torch, F, nn)."""
    parts = [
        _HEADER,
        f"DESCRIPTION_SCHEMA = {DESCRIPTION_SCHEMA!r}\nFIELDS = {FIELDS!r}\n"
        f"TAU_FLOOR = {TAU_FLOOR!r}\nNoiseModel = None  # probabilistic networks are not exported",
    ]
    pieces: tuple[Any, ...] = (BlockWidths, UNetWidths, unet_widths, _conv, _batch_norm, _interleave)
    pieces += (_ConvBlock, _MaxBlurPool, _KerasMaxBlurPool, UNet, _prior_scale, _pad_to_multiple, *extra)
    parts += [inspect.getsource(piece).rstrip() for piece in pieces]
    return "\n\n\n".join(parts) + "\n"
