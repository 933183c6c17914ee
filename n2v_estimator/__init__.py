"""Noise2Void self-supervised image denoising as a scikit-learn estimator."""

from typing import TYPE_CHECKING

from ._version import __version__

if TYPE_CHECKING:  # for type checkers and the API reference (mkdocstrings reads imports, not __getattr__)
    from ._plot import plot_history
    from .estimator import Noise2VoidDenoiser
    from .fit.calibration import CalibrationWarning
    from .fit.training import NonFiniteLossError
    from .gateway.errors import ModelFileError

# Where each public name lives. They are imported on first use (PEP 562), so that importing the
# package, or running ``n2v-estimator --help``, does not import torch and scikit-learn (seconds).
_PUBLIC = {
    "Noise2VoidDenoiser": "estimator",
    "CalibrationWarning": "fit.calibration",
    "ModelFileError": "gateway.errors",
    "NonFiniteLossError": "fit.training",
    "plot_history": "_plot",
}

__all__ = [
    "Noise2VoidDenoiser",
    "CalibrationWarning",
    "ModelFileError",
    "NonFiniteLossError",
    "plot_history",
    "__version__",
]


def __getattr__(name: str) -> object:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value  # later look-ups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
