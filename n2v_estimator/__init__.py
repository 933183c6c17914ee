"""Noise2Void self-supervised image denoising as a scikit-learn estimator."""

from ._plot import plot_history
from ._version import __version__
from .estimator import Noise2VoidDenoiser
from .fit.calibration import CalibrationWarning
from .fit.training import NonFiniteLossError
from .io.models import ModelFileError

__all__ = ["Noise2VoidDenoiser", "CalibrationWarning", "ModelFileError", "NonFiniteLossError", "plot_history", "__version__"]
