"""Shared setup for the landscape tests: repository root importable, one torch thread."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:  # `pytest` (not `python -m pytest`) does not put the rootdir on sys.path
    sys.path.insert(0, _ROOT)

torch.set_num_threads(1)
