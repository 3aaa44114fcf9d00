"""``python -m trpo_torchrl`` is the ``trpo-torchrl`` command."""

import sys

from trpo_torchrl.app.cli import main

sys.exit(main())
