"""``python -m trpo_torchrl`` is the ``trpo-torchrl`` command."""

import sys

from trpo_torchrl.app.cli import main

if __name__ == "__main__":  # a spawned collector worker re-imports this module
    sys.exit(main())
