"""PNG and JPEG pictures, read with imageio (scikit-image's own dependency) after their header's size is checked:
a PNG of zeros inflates 1000-fold. Their axes are ``YX`` or ``YXC`` (2 to 4 samples); they carry no
calibration."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..gateway.budget import check_declared

if TYPE_CHECKING:
    from pathlib import Path

    from .._typing import Array


def read_picture(path: Path, lazy_above: int | None, trust: bool) -> tuple[Array, str | None, dict[str, Any]]:
    """The pixels of the PNG or JPEG file ``path`` (always in memory: ``lazy_above`` is not used),
    their axes (``None`` for other layouts) and their metadata
    (:func:`n2v_estimator.images.files.read_image`'s). The header's size is checked first
    (``trust``: it is not)."""
    import imageio.v3 as iio  # scikit-image's own dependency
    from PIL import Image  # imageio's own dependency for PNG and JPEG

    with Image.open(path) as picture:  # the header only: a PNG of zeros inflates 1000-fold
        bands, wide = len(picture.getbands()), picture.mode.startswith("I")
        check_declared(path, (picture.height, picture.width, bands), "u2" if wide else "u1", trust=trust)
    data = iio.imread(path)
    axes = "YX" if data.ndim == 2 else "YXC" if data.ndim == 3 and data.shape[-1] in (2, 3, 4) else None
    return data, axes, {"format": "picture", "calibration": {}}
