"""Shared test helpers: the device list (CUDA entries skip without a GPU) and RNG seeding."""

from __future__ import annotations

import pytest
import torch


def cpu_and_cuda():
    """Devices to parametrize over; the CUDA entry is skipped on machines without a GPU."""
    return (
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.cuda,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
            ],
        ),
    )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
