"""Noise2Void self-supervised image denoising as a scikit-learn estimator."""

__version__ = "0.1.0"

from ._persistence import ModelFileError  # noqa: E402
from ._training import NonFiniteLossError  # noqa: E402
from .estimator import Noise2VoidDenoiser  # noqa: E402

__all__ = ["Noise2VoidDenoiser", "ModelFileError", "NonFiniteLossError", "__version__"]
