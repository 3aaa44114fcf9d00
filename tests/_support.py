"""Helpers the test files share: the device list, the marks that skip what a machine lacks, and a
free loopback port for tests that start process groups."""

from __future__ import annotations

import importlib.util
import socket

import pytest

# conftest.py skips every test with this mark on a machine without a GPU, so one mark both selects
# the CUDA tests (`pytest -m cuda`) and skips them where they cannot run
needs_cuda = pytest.mark.cuda

needs_mujoco = pytest.mark.skipif(importlib.util.find_spec("mujoco") is None, reason="needs mujoco")


def cpu_and_cuda():
    """Devices to parametrize over; the CUDA entry is skipped on machines without a GPU."""
    return ("cpu", pytest.param("cuda", marks=needs_cuda))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it), for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
