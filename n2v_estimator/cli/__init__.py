"""The ``n2v-estimator`` command: train a denoiser on image files, denoise files, describe a model file.

Every estimator parameter is an option of ``fit``, generated from
``Noise2VoidDenoiser``'s constructor with its help taken from the class
docstring's Parameters section, so the command line never lags behind the
estimator. Both are read from the estimator's source, not imported: torch and
scikit-learn take seconds to import, and ``--help``, a usage error and ``info``
need neither (each command imports what it needs). Errors a user can make are
one line on stderr and exit status 2.

:func:`main` runs it (the console script ``n2v-estimator``, and ``python -m n2v_estimator.cli``).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence

from .info_command import describe_model
from .messages import INTERRUPTED, MAX_MESSAGE, PROG, USER_ERRORS, print_on_stderr, show_warning_on_one_line
from .options import estimator_signature, parameter_help, parameter_value
from .parser import build_parser
from .paths import MODEL_NAME, expand_inputs, model_path

__all__ = [
    "INTERRUPTED",
    "MAX_MESSAGE",
    "MODEL_NAME",
    "PROG",
    "USER_ERRORS",
    "build_parser",
    "describe_model",
    "estimator_signature",
    "expand_inputs",
    "main",
    "model_path",
    "parameter_help",
    "parameter_value",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); return the exit status:
    0, 2 for an error a user can make (one line on stderr), 130 when interrupted."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse has printed
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    with warnings.catch_warnings():
        warnings.showwarning = show_warning_on_one_line
        try:
            status: int = args.run(args)
            return status
        except KeyboardInterrupt:
            print_on_stderr("interrupted.")
            return INTERRUPTED
        except MemoryError as exc:
            detail = " ".join(str(exc).split())
            print_on_stderr(
                f"error: out of memory{f' ({detail})' if detail else ''}; use smaller inputs, tiles "
                "(--tile-size) or batches (--batch-size), or a machine with more memory."
            )
            return 2
        except USER_ERRORS as exc:
            print_on_stderr(f"error: {str(exc) or type(exc).__name__}")
            return 2
        except RuntimeError as exc:  # a rank that failed or could not join: its one line
            distributed = sys.modules.get("n2v_estimator.fit.distributed")
            if distributed is None or not isinstance(exc, distributed.DistributedTrainingError):
                raise
            print_on_stderr(f"error: {exc}")
            return 2
