#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the test suite. Extra arguments go to pytest.
#
#   bash scripts/test.sh
#   bash scripts/test.sh -k gae -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec "${VENV:-.venv}/bin/python" -m pytest -q -p no:cacheprovider tests "$@"
