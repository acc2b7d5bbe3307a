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


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: harmless where xdist is absent
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``--dist loadscope`` (each test file whole on one xdist process), with the browser files as ONE
    unit: two of them at once on 2 cores delayed page loads past the test server's 6 s session
    lifetime (pages re-created without their stylesheets: CDN requests that fail offline)."""
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class BrowserFilesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "tests/browser" if nodeid.startswith("tests/browser/") else super()._split_scope(nodeid)

    return BrowserFilesTogether(config, log)
