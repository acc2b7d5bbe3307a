"""AnalyticFunction: the Problem contract, shape handling and validation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.problem import Bounds, Minimum, Problem, describe
from landscapes import AnalyticFunction, get_landscape


def _sphere(**overrides: object) -> AnalyticFunction:
    kwargs: dict[str, object] = dict(
        name="sphere", dim=3, latex=r"f(\mathbf{x}) = \sum x_i^2", fn=lambda x: (x * x).sum(-1),
        bounds=Bounds((-1.0,) * 3, (1.0,) * 3), minima=(Minimum((0.0,) * 3, 0.0),), start=(0.5, -0.5, 0.25),
    )
    kwargs.update(overrides)
    return AnalyticFunction(**kwargs)  # type: ignore[arg-type]


def test_implements_problem_protocol() -> None:
    f = _sphere()
    assert isinstance(f, Problem)
    info = describe(f)
    assert info.name == "sphere" and info.dim == 3 and info.minima == f.minima
    assert f.sample_batch(torch.Generator().manual_seed(0)) is None
    assert f.title == "sphere"  # defaults to the name


def test_x0_is_fresh_float64_cpu() -> None:
    f = _sphere()
    x0 = f.x0()
    assert x0.dtype == torch.float64 and x0.device.type == "cpu" and x0.shape == (3,)
    assert x0.tolist() == [0.5, -0.5, 0.25]
    x0.add_(1.0)
    assert f.x0().tolist() == [0.5, -0.5, 0.25]


def test_start_defaults_to_box_centre() -> None:
    f = _sphere(start=None, bounds=Bounds((0.0, -2.0, 1.0), (1.0, 2.0, 3.0)))
    assert f.start == (0.5, 0.0, 2.0)


def test_loss_shapes() -> None:
    f = _sphere()
    x = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert f.loss(x).tolist() == [14.0, 1.0]
    assert f.loss(x[0]).shape == () and f.loss(x[0]).item() == 14.0
    assert f.loss(x.expand(4, 2, 3)).shape == (4, 2)
    assert f(x).tolist() == [14.0, 1.0]
    assert f.loss(torch.tensor([[1, 2, 3]])).dtype == torch.float64  # integers are promoted


def test_loss_rejects_wrong_shapes() -> None:
    f = _sphere()
    with pytest.raises(ValueError, match=r"shape \[B, 3\].*got shape \[4, 2\]"):
        f.loss(torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"got shape \[\]"):
        f.loss(torch.tensor(1.0))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        f.loss([[0.0, 0.0, 0.0]])  # type: ignore[arg-type]


def test_min_value() -> None:
    f = _sphere(minima=(Minimum((0.0,) * 3, 0.0), Minimum((1.0,) * 3, -2.0, is_global=False)))
    assert f.min_value == 0.0
    assert f.global_minima == (Minimum((0.0,) * 3, 0.0),)
    assert _sphere(minima=()).min_value is None
    assert get_landscape("saddle").min_value is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dim": 0}, "dim must be a positive int"),
        ({"dim": 2}, "bounds have 3 axes but dim=2"),
        ({"start": (0.0, 0.0)}, "start must be 3 finite numbers"),
        ({"start": (0.0, 0.0, float("nan"))}, "start must be 3 finite numbers"),
        ({"minima": (Minimum((0.0, 0.0), 0.0),)}, "has 2 coordinates, expected 3"),
        ({"saddles": ((0.0,),)}, "has 1 coordinates, expected 3"),
    ],
)
def test_validation(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _sphere(**overrides)


def test_frozen() -> None:
    f = _sphere()
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.dim = 4  # type: ignore[misc]
