"""scikit-learn's parameter constraints, imported in this one place.

The estimator declares its parameters' constraints as scikit-learn does
(``_parameter_constraints``, checked by ``BaseEstimator._validate_params``), with
scikit-learn's constraint objects. They live in a private module,
``sklearn.utils._param_validation``; scikit-learn's own estimators and its
``check_estimator`` use them, so vendoring a copy would validate differently from
the estimators it is used beside. Instead the dependency is pinned to the versions
tested (``scikit-learn>=1.6,<1.10`` in ``pyproject.toml``), and every use goes
through this module, so that a change in scikit-learn touches one file; the test
suite checks that these names still exist.
"""

from sklearn.utils._param_validation import (
    Interval,
    InvalidParameterError,
    Options,
    StrOptions,
    validate_parameter_constraints,
)

__all__ = ["Interval", "InvalidParameterError", "Options", "StrOptions", "validate_parameter_constraints"]
