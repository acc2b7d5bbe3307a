"""Shared test setup, the one place for it: one torch thread (the CI machine has two cores and may
be loaded; every tensor in the tests is small) and the ``device`` fixture."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)

DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
"""Where device-parametrised tests run: the CPU, and CUDA too where one is present."""


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    """Each device the machine has: tests that take it run on the CPU and, with a GPU, again on it."""
    return request.param
