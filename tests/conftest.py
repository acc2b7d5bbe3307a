"""Shared test setup: one torch thread (the CI machine has two cores and may be loaded)."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
