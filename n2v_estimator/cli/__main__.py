"""``python -m n2v_estimator.cli`` (and ``torchrun -m n2v_estimator.cli``): the command, as ``n2v-estimator`` runs it."""

from __future__ import annotations

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
