#!/usr/bin/env bash
# The variant rows of the README's Results table (N2V2, structN2V, RGB, 3D), one JSON line each
# appended to results/dev.jsonl (or the file given as the first argument).
set -u
cd "$(dirname "$0")/.."
out=${1:-results/dev.jsonl}
mkdir -p "$(dirname "$out")"
run() { python benchmarks/dev_cases.py --out "$out" "$@"; }
run --image camera --noise gauss25 --setting n2v2 --tta
run --image camera --noise structured --setting n2v
run --image camera --noise structured --setting structn2v
run --image coffee --noise gauss25 --steps 300 --set independent_channels=False
run --image coffee --noise gauss25 --steps 300 --set independent_channels=True
run --image blobs3d --noise gauss25 --steps 300 --set "patch_size=(16,48,48)" batch_size=8
