"""Noise2Void self-supervised image denoising as a scikit-learn estimator."""

from ._calibration import CalibrationWarning
from ._persistence import ModelFileError
from ._plot import plot_history
from ._training import NonFiniteLossError
from ._version import __version__
from .estimator import Noise2VoidDenoiser

__all__ = ["Noise2VoidDenoiser", "CalibrationWarning", "ModelFileError", "NonFiniteLossError", "plot_history", "__version__"]
