#!/usr/bin/env bash
# The GPU check, one prepared script of at most about 8 minutes on one H200: the reference fit,
# inference of a 4096^2 image (and with larger tiles), peak GPU memory, time to 27 dB, the host's
# waits per training step, a profile of the steps, a torch.compile trial, a 2-GPU fit where two are
# visible; then ours against careamics 0.3.5 on the same GPU (benchmarks/speed.py --device cuda),
# when careamics can run: from N2V_CAREAMICS_PYTHON, else from wheels in .whl
# (bash benchmarks/careamics_wheels.sh here first, then carry .whl to the GPU machine).
#     bash benchmarks/gpu_check.sh [OUT]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-benchmarks/results}}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
timeout 300 python3 benchmarks/gpu_check.py --device cuda --out "$out" || echo "gpu_check.py failed or ran out of time"
careamics="${N2V_CAREAMICS_PYTHON:-}"
if [ -z "$careamics" ] && compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}" && careamics=python3
fi
with=() limit=120
if [ -n "$careamics" ]; then with=(--careamics-python "$careamics") limit=200; fi
timeout "$limit" python3 benchmarks/speed.py --device cuda "${with[@]}" --rounds 3 --budgets 100 200 300 500 --out "$out" \
    || echo "speed.py failed or ran out of time"
