#!/usr/bin/env bash
# Sets up everything trpo_torchrl needs in ./.venv: torch, the package with its extras, and the
# compiled ops (C++ always; CUDA too when a CUDA toolkit is found — no GPU needed to compile).
#
#   bash scripts/setup.sh            # idempotent; re-run after pulling to rebuild the ops
#
# Environment: PYTHON (default python3), VENV (default .venv), TORCH_SPEC (default torch==2.14.1,
# the CUDA build), EXTRAS (default mujoco,test,plot), plus setup.py's switches (FORCE_CUDA,
# USE_CUDA, CUDA_HOME, TORCH_CUDA_ARCH_LIST, TRPO_TORCHRL_NO_EXTENSION).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1}
EXTRAS=${EXTRAS:-mujoco,test,plot}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q --disable-pip-version-check --upgrade pip "setuptools>=69" wheel ninja
# torch first: the extension is compiled against the torch it will be loaded into, so the
# package is built without build isolation (an isolated build would fetch another torch)
"${PIP[@]}" install -q --disable-pip-version-check "$TORCH_SPEC"
# TORCH_CUDA_ARCH_LIST unset: setup.py builds for the visible GPU, or for 9.0 (H100/H200) without one
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
echo "setup: building trpo_torchrl (extras: $EXTRAS)"
"${PIP[@]}" install -q --disable-pip-version-check --no-build-isolation -e ".[${EXTRAS}]"
"$VENV/bin/python" -c "import trpo_torchrl, torch; print('setup: trpo_torchrl', trpo_torchrl.__version__, '| torch', torch.__version__, '| compiled ops loaded:', trpo_torchrl.extension_loaded())"
