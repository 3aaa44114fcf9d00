#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the main job.
# Until the training application lands, the main job is the GAE benchmark: our fused scan
# against TorchRL's GAE on this machine (table on stdout, JSON in bench_out/gae.json).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
mkdir -p bench_out
exec "${VENV:-.venv}/bin/python" benchmarks/gae.py --out bench_out/gae.json "$@"
