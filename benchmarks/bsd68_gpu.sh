#!/usr/bin/env bash
# The BSD68 experiment at full length, where a GPU is available (hours: the notebook's 80,000 steps of
# batch 128 take most of them). DATA is n2v's notebook layout (make_n2v_layout.py of the BSD68 and
# Train400 images writes it); every run prints its JSON summary last, collected in OUT/bsd68_gpu.jsonl.
#     bash benchmarks/bsd68_gpu.sh DATA [OUT]
# 1. this package's defaults at the reference budget (1500 steps of batch 16), its wall time T;
# 2. the probabilistic default (noise_model='gaussian', a blind-spot network) given T (max_time);
# 3. the probabilistic default at the reference budget;
# 4. the n2v notebook's configuration in full (80,000 steps), with test-time augmentation.
set -uo pipefail
cd "$(dirname "$0")/.."
data="${1:?usage: bash benchmarks/bsd68_gpu.sh DATA [OUT]}"
out="${2:-benchmarks/results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv || true
# Each run's --set names the device (a second --set would replace the first).
run() { python3 examples/bsd68.py "$data" "$@" | tail -n 1 | tee -a "$out/bsd68_gpu.jsonl"; }
plain=$(run --defaults --set "device='cuda'")
seconds=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["fit_seconds"])' "$plain")
run --defaults --max-time "$seconds" --set "noise_model='gaussian'" "device='cuda'"
run --defaults --set "noise_model='gaussian'" "device='cuda'"
run --tta --set "device='cuda'"
