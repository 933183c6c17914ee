#!/usr/bin/env bash
# The GPU check, one prepared script of at most about 8 minutes on one H200: the reference fit,
# inference of a 4096^2 image, peak GPU memory, time to 27 dB, and a 2-GPU fit where two are visible.
# With N2V_CAREAMICS_PYTHON (a venv with careamics 0.3.5) the CPU comparison of benchmarks/speed.py
# runs too (careamics' side of it measures on the CPU only).
#     bash benchmarks/gpu_check.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-benchmarks/results}}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
timeout 420 python benchmarks/gpu_check.py --device cuda --out "$out"
if [ -n "${N2V_CAREAMICS_PYTHON:-}" ]; then
    timeout 240 python benchmarks/speed.py --careamics-python "$N2V_CAREAMICS_PYTHON" --skip-quality --out "$out"
fi
