"""Device and dtype, resolved once.

Every tensor the engine creates goes through :func:`resolve_device` so that a run
is on ``cuda`` when a GPU is present and on ``cpu`` otherwise, and nothing else
in the code base decides it again.
"""

from __future__ import annotations

import torch

DEFAULT_DTYPE = torch.float64
"""Landscapes and races run in float64: the explorer's job is numbers people can trust,
and a 2-D race is far too small for float32 to buy any speed."""


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """Return the device for ``spec``: ``"auto"`` means ``cuda`` if available, else ``cpu``."""
    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={spec!r} was requested but CUDA is not available on this machine")
    return device


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh, explicitly seeded generator (the engine never touches global RNG state)."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    return torch.Generator(device=torch.device(device)).manual_seed(seed)
