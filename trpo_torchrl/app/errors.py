"""The training app's own error type: what the user asked for cannot be done.

The command line prints these as one line and exits with status 2; any other exception is a bug
and keeps its traceback."""

from __future__ import annotations


class AppError(ValueError):
    """A setting, file, checkpoint or environment the app cannot use; the message says which and why."""
