"""The landscape catalog: minima, gradients, batching, N-D versions and the registry."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.autograd.functional import hessian

from engine.problem import Problem
from landscapes import LANDSCAPES, AnalyticFunction, available_landscapes, get_landscape

NAMES = [
    "quadratic", "rosenbrock", "beale", "booth", "himmelblau", "rastrigin", "ackley", "goldstein_price",
    "six_hump_camel", "styblinski_tang", "levi13", "saddle", "monkey_saddle",
]
CONSTRAINED = ["simplex_linear", "simplex_quadratic", "bilinear_game", "rps_game", "biased_rps_game"]
"""Tested in test_simplex_games.py and test_simplex_rps.py: a constrained minimum has a nonzero
gradient, and a game's equilibrium is a saddle of f, so the generic minimum checks below do not apply."""
BILEVEL = ["bilevel_toy", "ridge_bilevel"]
"""Tested in test_bilevel_problems.py: the listed minimum is the bilevel solution, not a minimum of f."""
ND = ["quadratic", "rosenbrock", "rastrigin", "styblinski_tang", "ackley"]
CASES: list[tuple[str, dict[str, float]]] = [(n, {}) for n in NAMES]
CASES += [(n, {"dim": d}) for n in ND for d in (2, 5, 10)]
CASES += [("quadratic", {"dim": 5, "kappa": 1000.0}), ("quadratic", {"dim": 2, "kappa": 1.0})]
NON_SMOOTH = {"ackley"}  # a cone-shaped kink at its minimum


def _id(case: tuple[str, dict[str, float]]) -> str:
    name, kwargs = case
    return name + "".join(f"-{k}{v:g}" for k, v in kwargs.items())


@pytest.fixture(scope="module", params=CASES, ids=[_id(c) for c in CASES])
def land(request: pytest.FixtureRequest) -> AnalyticFunction:
    name, kwargs = request.param
    return get_landscape(name, **kwargs)


def _t(x: tuple[float, ...] | list[float]) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def _grad(f: AnalyticFunction, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f.loss(x).sum(), x)
    return g


def _random_points(f: AnalyticFunction, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return f.bounds.sample(n, gen, dtype=torch.float64, device=torch.device("cpu"))


# --------------------------------------------------------------------------- minima


def test_value_at_each_minimum_is_the_stated_value(land: AnalyticFunction) -> None:
    for m in land.minima:
        value = land.loss(_t(m.x)).item()
        assert value == pytest.approx(m.value, rel=1e-12, abs=1e-12), m


def test_global_minimum_is_below_random_points(land: AnalyticFunction) -> None:
    if land.min_value is None:
        assert land.minima == () and land.saddles  # unbounded below: a saddle landscape
        return
    values = land.loss(_random_points(land, 4096, seed=1))
    assert bool(torch.isfinite(values).all())
    assert values.min().item() >= land.min_value - 1e-12
    assert all(m.value >= land.min_value for m in land.minima)
    assert land.min_value == min(m.value for m in land.minima)


def test_gradient_vanishes_at_minima_and_saddles(land: AnalyticFunction) -> None:
    points = [m.x for m in land.minima] + list(land.saddles)
    assert points, "every landscape lists a minimum or a saddle"
    for p in points:
        g = _grad(land, _t(p))
        scale = max(1.0, abs(land.loss(_t(p)).item()))
        # coordinates are float64-rounded exact stationary points: |grad| ~ |Hessian| * 1e-16
        assert g.norm().item() <= 1e-10 * scale, (p, g)


def test_minima_are_strict_local_minima(land: AnalyticFunction) -> None:
    if land.name in NON_SMOOTH:
        pytest.skip("minimum at a kink: no Hessian")
    for m in land.minima:
        h = hessian(lambda x: land.loss(x), _t(m.x))
        eig = torch.linalg.eigvalsh(h)
        assert eig.min().item() > 1e-6, (m, eig)


def test_saddles_are_not_minima(land: AnalyticFunction) -> None:
    for s in land.saddles:
        eig, vec = torch.linalg.eigh(hessian(lambda x: land.loss(x), _t(s)))
        assert eig.min().item() < 1e-12 and (eig.min().item() < 0 or land.name == "monkey_saddle")
        # a small step along an axis or a Hessian eigenvector decreases f
        x = _t(s)
        dirs = torch.cat([torch.eye(land.dim, dtype=torch.float64), vec.T])
        steps = 1e-3 * torch.cat([dirs, -dirs])
        assert land.loss(x + steps).min().item() < land.loss(x).item()


def test_start_is_in_bounds_and_not_stationary(land: AnalyticFunction) -> None:
    x0 = land.x0()
    assert x0.dtype == torch.float64 and x0.shape == (land.dim,)
    box = zip(x0.tolist(), land.bounds.low, land.bounds.high, strict=True)
    assert all(lo <= v <= hi for v, lo, hi in box)
    assert _grad(land, x0).norm().item() > 1e-3


def test_global_minima_inside_bounds(land: AnalyticFunction) -> None:
    for m in land.minima:
        assert all(lo <= v <= hi for v, lo, hi in zip(m.x, land.bounds.low, land.bounds.high, strict=True))


# --------------------------------------------------------------------------- gradients and batching


def test_autograd_matches_finite_differences(land: AnalyticFunction) -> None:
    x = _random_points(land, 6, seed=2)
    n, d = x.shape
    h = 1e-4
    eye = torch.eye(d, dtype=torch.float64) * h
    # 5-point central stencil, O(h^4): (-f(x+2h) + 8 f(x+h) - 8 f(x-h) + f(x-2h)) / 12h, all in one batch
    shifts = torch.stack([2 * eye, eye, -eye, -2 * eye])  # [4, d, d]
    pts = (x[:, None, None, :] + shifts[None]).reshape(-1, d)
    fv = land.loss(pts).reshape(n, 4, d)
    fd = (-fv[:, 0] + 8 * fv[:, 1] - 8 * fv[:, 2] + fv[:, 3]) / (12 * h)
    ad = _grad(land, x)
    scale = max(1.0, ad.abs().max().item())
    torch.testing.assert_close(ad, fd, rtol=1e-6, atol=1e-6 * scale)


def test_batched_equals_row_by_row_exactly(land: AnalyticFunction) -> None:
    for dtype in (torch.float64, torch.float32):
        x = _random_points(land, 37, seed=3).to(dtype)
        batched = land.fn(x)
        rows = torch.cat([land.fn(x[i : i + 1]) for i in range(x.shape[0])])
        assert batched.shape == (37,) and batched.dtype == dtype
        assert torch.equal(batched, rows)


def test_float32_close_to_float64(land: AnalyticFunction) -> None:
    x = _random_points(land, 64, seed=4)
    f64 = land.loss(x)
    f32 = land.loss(x.float())
    assert f32.dtype == torch.float32
    scale = f64.abs().max().item() + 1.0
    torch.testing.assert_close(f32.double(), f64, rtol=1e-4, atol=1e-5 * scale)


def test_meta_device_no_hidden_cpu_tensors(land: AnalyticFunction) -> None:
    out = land.loss(torch.empty(5, land.dim, device="meta", dtype=torch.float64))
    assert out.device.type == "meta" and out.shape == (5,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(land: AnalyticFunction) -> None:
    x = _random_points(land, 64, seed=5)
    out = land.loss(x.cuda())
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), land.loss(x), rtol=1e-12, atol=1e-12)
    assert _grad(land, x.cuda()).device.type == "cuda"


# --------------------------------------------------------------------------- specific facts


@pytest.mark.parametrize("dim", [2, 5, 10])
@pytest.mark.parametrize("kappa", [1.0, 10.0, 1000.0, 1e6])
def test_quadratic_condition_number_is_kappa(dim: int, kappa: float) -> None:
    f = get_landscape("quadratic", dim=dim, kappa=kappa)
    h = hessian(lambda x: f.loss(x), _random_points(f, 1, seed=6)[0])
    eig = torch.linalg.eigvalsh(h)
    assert eig.max().item() / eig.min().item() == pytest.approx(kappa, rel=1e-12)
    assert eig.min().item() == pytest.approx(1.0, rel=1e-12)
    ratios = eig[1:] / eig[:-1]  # log-spaced: constant ratio kappa^(1/(d-1))
    torch.testing.assert_close(ratios, torch.full_like(ratios, kappa ** (1 / (dim - 1))), rtol=1e-12, atol=0)


@pytest.mark.parametrize("dim", [2, 5, 10])
def test_nd_minima(dim: int) -> None:
    ones = torch.ones(dim, dtype=torch.float64)
    assert get_landscape("rosenbrock", dim=dim).loss(ones).item() == 0.0
    assert get_landscape("rastrigin", dim=dim).loss(0 * ones).item() == 0.0
    assert get_landscape("ackley", dim=dim).loss(0 * ones).item() == pytest.approx(0.0, abs=1e-14)
    assert get_landscape("quadratic", dim=dim).loss(0 * ones).item() == 0.0
    st = get_landscape("styblinski_tang", dim=dim)
    assert st.min_value == pytest.approx(-39.16617 * dim, abs=1e-5 * dim)  # SFU / Wikipedia: -39.16617 d
    assert st.loss(-2.903534 * ones).item() == pytest.approx(st.min_value, rel=1e-10)
    assert st.global_minima[0].x == (pytest.approx(-2.903534, abs=1e-6),) * dim


def test_published_coordinates() -> None:
    """The refined constants agree with the digits printed in the references."""
    him = get_landscape("himmelblau")
    published = [(3.0, 2.0), (-2.805118, 3.131312), (-3.779310, -3.283186), (3.584428, -1.848126)]
    for m, p in zip(him.minima, published, strict=True):
        assert m.x == pytest.approx(p, abs=1e-6)
    camel = get_landscape("six_hump_camel")
    assert camel.min_value == pytest.approx(-1.0316, abs=1e-4)
    assert {(round(m.x[0], 4), round(m.x[1], 4)) for m in camel.global_minima} == {(0.0898, -0.7127),
                                                                                   (-0.0898, 0.7127)}
    assert get_landscape("goldstein_price").min_value == 3.0
    assert get_landscape("beale").minima[0].x == (3.0, 0.5)
    assert get_landscape("booth").minima[0].x == (1.0, 3.0)
    assert get_landscape("levi13").minima[0].x == (1.0, 1.0)
    assert len(him.global_minima) == 4 and len(camel.global_minima) == 2


def test_rosenbrock_spurious_local_minimum() -> None:
    """For d >= 4 the chained Rosenbrock has a local minimum near (-1, 1, ..., 1) (Kok & Sandrock 2009)."""
    assert len(get_landscape("rosenbrock", dim=2).minima) == 1
    assert len(get_landscape("rosenbrock", dim=3).minima) == 1
    for dim, value in [(4, 3.701428610430017), (5, 3.930839434133028), (10, 3.986579112347138)]:
        local = [m for m in get_landscape("rosenbrock", dim=dim).minima if not m.is_global]
        assert len(local) == 1
        assert local[0].value == pytest.approx(value, rel=1e-13)  # 40-digit Newton reference
        assert local[0].x[0] == pytest.approx(-1.0, abs=0.25)


def test_ackley_gradient_at_kink_is_zero_not_nan() -> None:
    f = get_landscape("ackley")
    g = _grad(f, torch.zeros(2, dtype=torch.float64))
    assert torch.equal(g, torch.zeros(2, dtype=torch.float64))


def test_saddle_landscapes() -> None:
    for name in ("saddle", "monkey_saddle"):
        f = get_landscape(name)
        assert f.minima == () and f.saddles == ((0.0, 0.0),) and f.min_value is None
    h = hessian(lambda x: get_landscape("monkey_saddle").loss(x), torch.zeros(2, dtype=torch.float64))
    assert torch.equal(h, torch.zeros(2, 2, dtype=torch.float64))  # degenerate


# --------------------------------------------------------------------------- registry


def test_available_landscapes() -> None:
    assert available_landscapes() == NAMES + BILEVEL + CONSTRAINED
    assert list(LANDSCAPES) == NAMES + BILEVEL + CONSTRAINED
    with pytest.raises(TypeError):
        LANDSCAPES["x"] = get_landscape  # type: ignore[index]


@pytest.mark.parametrize("name", NAMES)
def test_every_landscape_is_a_documented_problem(name: str) -> None:
    f = get_landscape(name)
    assert isinstance(f, Problem) and f.name == name
    assert f.latex.startswith("f(") and "=" in f.latex
    assert f.description.endswith(".") and len(f.description) > 30
    assert LANDSCAPES[name].__doc__ and ("Wikipedia" in LANDSCAPES[name].__doc__ or name in (
        "quadratic", "saddle", "monkey_saddle", "six_hump_camel"))


def test_log_scale_hints() -> None:
    assert get_landscape("rosenbrock").log_scale and get_landscape("goldstein_price").log_scale
    assert not get_landscape("booth").log_scale


def test_unknown_name_lists_known() -> None:
    known = "known landscapes: quadratic, rosenbrock, beale,"
    with pytest.raises(ValueError, match=f"unknown landscape 'sphere'; {known}"):
        get_landscape("sphere")


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("quadratic", {"dim": 0}, "dim must be an int >= 1, got 0"),
        ("quadratic", {"dim": 2.5}, "dim must be an int >= 1"),
        ("quadratic", {"dim": True}, "dim must be an int >= 1"),
        ("quadratic", {"kappa": 0.5}, "kappa must be a finite number >= 1"),
        ("quadratic", {"kappa": float("inf")}, "kappa must be a finite number >= 1"),
        ("quadratic", {"kappa": "big"}, "kappa must be a finite number >= 1"),
        ("quadratic", {"dim": 1, "kappa": 10.0}, "1-D bowl has condition number 1"),
        ("rosenbrock", {"dim": 1}, "dim must be an int >= 2"),
        ("rastrigin", {"dim": -3}, "dim must be an int >= 1"),
        ("beale", {"dim": 3}, "landscape 'beale' does not take 'dim'; it takes: no parameters"),
        ("rosenbrock", {"kappa": 3.0}, "does not take 'kappa'; it takes: dim"),
    ],
)
def test_bad_kwargs(name: str, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_landscape(name, **kwargs)


def test_params_record_kwargs() -> None:
    f = get_landscape("quadratic", dim=3, kappa=100)
    assert dict(f.params) == {"dim": 3, "kappa": 100.0}
    assert math.isclose(get_landscape("quadratic", dim=1, kappa=1).loss(torch.ones(1)).item(), 0.5)


# --------------------------------------------------------------------------- declared option ranges


def test_every_factory_keyword_has_a_declared_range() -> None:
    from landscapes.networks import NETWORKS
    from landscapes.sizes import OPTIONS, accepted

    assert set(OPTIONS) == {*LANDSCAPES, *NETWORKS, "expression"}
    for name in [*LANDSCAPES, *NETWORKS]:
        undeclared = set(accepted(name)) - set(OPTIONS[name])
        assert not undeclared, f"{name}: declare {undeclared} in landscapes/sizes.py OPTIONS"


SIZED = [(n, {}) for n in [*NAMES, *CONSTRAINED]] + [(n, {"dim": d}) for n in ND for d in (3, 17)]
SIZED += [("bilinear_game", {"n": 7})]


@pytest.mark.parametrize(("name", "kwargs"), SIZED, ids=[_id(c) for c in SIZED])
def test_sizes_are_estimated_without_building(name: str, kwargs: dict) -> None:
    from landscapes.sizes import problem_size

    size = problem_size(name, kwargs)
    assert size.params == get_landscape(name, **kwargs).dim
    assert size.label == " ".join([name, *(f"{k}={v}" for k, v in kwargs.items())])


@pytest.fixture
def factories_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every factory raises if called: a refusal must come before anything is built."""
    import functools

    from landscapes import catalog, networks

    def failing(fn: Any) -> Any:
        @functools.wraps(fn)
        def build(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"{fn.__name__} was called")
        return build

    real = catalog._factory
    monkeypatch.setattr(catalog, "_factory", lambda name: failing(real(name)))
    for name, fn in list(networks.NETWORKS.items()):
        monkeypatch.setitem(networks.NETWORKS, name, failing(fn))


@pytest.mark.parametrize(("name", "kwargs", "error", "message"), [
    ("quadratic", {"dim": 2 * 10**6}, "LimitError", r"^quadratic: dim=2e6 is over its limit of 1e6$"),
    ("quadratic", {"dim": 10**9}, "LimitError", r"^quadratic: dim=1e9 is over its limit of 1e6$"),
    ("rosenbrock", {"dim": 10**8}, "LimitError", r"^rosenbrock: dim=1e8 is over its limit of 1e6$"),
    ("bilinear_game", {"n": 10**6}, "LimitError", r"^bilinear_game: n=1e6 is over its limit of 5e5$"),
    ("bilinear_game", {"coupling": "x"}, "ValueError",
     r"^bilinear_game: coupling must be a finite number, got"),
    ("digits_mlp", {"width": 20_000, "depth": 3}, "LimitError",
     r"^digits_mlp: width=20000 is over its limit of 8192$"),
    ("digits_mlp", {"depth": 100}, "LimitError", r"^digits_mlp: depth=100 is over its limit of 16$"),
    ("digits_mlp", {"batch_size": 10**9}, "LimitError",
     r"^digits_mlp: batch_size=1e9 is over its limit of 1e6$"),
    ("digits_mlp", {"seed": "a"}, "ValueError", r"^digits_mlp: seed must be an integer >= 0, got 'a'$"),
    ("digits_mlp", {"classes": 5}, "ValueError",
     r"^digits_mlp: classes must be a list of integers, got 5$"),
    ("moons_mlp", {"noise": "x"}, "ValueError",
     r"^moons_mlp: noise must be a finite number >= 0, got 'x'$"),
    ("matrix_sensing", {"n": 3000}, "LimitError", r"^matrix_sensing: n=3000 is over its limit of 2000$"),
    ("matrix_sensing", {"m": 10**7}, "LimitError", r"^matrix_sensing: m=1e7 is over its limit of 1e6$"),
    ("digits_cnn", {"width": 3}, "ValueError",
     r"network problem 'digits_cnn' does not take 'width'; it takes"),
])
def test_out_of_range_options_are_refused_before_building(factories_fail: None, name: str, kwargs: dict,
                                                          error: str, message: str) -> None:
    from landscapes import get_network
    from landscapes.networks import NETWORKS

    build = get_network if name in NETWORKS else get_landscape
    with pytest.raises(ValueError, match=message) as info:
        build(name, **kwargs)
    assert type(info.value).__name__ == error
