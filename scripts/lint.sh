#!/usr/bin/env bash
# Checks formatting and lint: ruff (Python) and clang-format (C++/CUDA), as configured in
# pyproject.toml and .clang-format. Needs the environment scripts/setup.sh makes (the test extra
# installs both tools); `--fix` rewrites the files instead of checking them.
#
#   bash scripts/lint.sh          # check (what CI runs)
#   bash scripts/lint.sh --fix    # format and apply the safe fixes
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${VENV:-.venv}/bin
mapfile -t CXX < <(git ls-files 'csrc/*.cpp' 'csrc/*.h' 'csrc/*.cu' 'csrc/*.cuh' 'csrc/*.inc')
if [ "${1:-}" = "--fix" ]; then
  "$BIN/ruff" check --fix .
  "$BIN/ruff" format .
  "$BIN/clang-format" -i "${CXX[@]}"
else
  "$BIN/ruff" check .
  "$BIN/ruff" format --check .
  "$BIN/clang-format" --dry-run -Werror "${CXX[@]}"
  echo "lint: ruff and clang-format clean (${#CXX[@]} C++/CUDA files)"
fi
