"""Shared test setup: one torch thread (the CI machine has two cores and may be loaded),
and a ``--runslow`` switch for checks marked ``slow``."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow check: run with --runslow (.ci/run does on CI)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
