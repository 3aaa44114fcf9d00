#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the main job: `trpo-torchrl train`, which with no
# arguments trains CartPole-v1 with the rl-zoo3 preset (100k frames, ~15 s of training on 2 CPU
# cores; the first setup takes minutes), evaluates it and prints where the logs, checkpoint and learning curve are.
# Extra arguments go to `trpo-torchrl train` (e.g. --env HalfCheetah-v5).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec "${VENV:-.venv}/bin/trpo-torchrl" train "$@"
