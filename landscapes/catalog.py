r"""The catalog of classic optimization landscapes and the name -> factory registry.

Formulas, domains and minima follow Wikipedia, "Test functions for optimization"
(https://en.wikipedia.org/wiki/Test_functions_for_optimization) and Surjanovic & Bingham, "Virtual
Library of Simulation Experiments" (https://www.sfu.ca/~ssurjano/optimization.html). Where those
give only a few digits (Himmelblau, six-hump camel, Styblinski-Tang) the coordinates here were
refined by Newton's method in 40-digit arithmetic (mpmath) and rounded to float64, so that the
gradient at every stored minimum vanishes to machine precision.

Every ``fn`` uses elementwise torch ops plus a last-axis ``sum`` only, and powers are written as
products (``x * x``), which keeps ``fn([B, d])`` bit-identical to evaluating row by row on cpu.
"""

from __future__ import annotations

import inspect
import itertools
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

import torch

from engine.problem import Bounds, Minimum
from landscapes.analytic import AnalyticFunction
from landscapes.bilevel import bilevel_toy, ridge_bilevel
from landscapes.games import bilinear_game
from landscapes.simplex import simplex_linear, simplex_quadratic
from landscapes.simplex_games import biased_rps_game, rps_game
from landscapes.sizes import check_options

__all__ = [
    "LANDSCAPES",
    "ackley",
    "available_landscapes",
    "beale",
    "booth",
    "get_landscape",
    "goldstein_price",
    "himmelblau",
    "levi13",
    "monkey_saddle",
    "quadratic",
    "rastrigin",
    "rosenbrock",
    "saddle",
    "six_hump_camel",
    "styblinski_tang",
]

_PI = math.pi
_E = math.e

# Styblinski-Tang: the roots of 4t^3 - 32t + 5 = 0 that are minima of g(t) = (t^4 - 16t^2 + 5t) / 2.
_ST_GLOBAL_X = -2.903534027771177
_ST_GLOBAL_F = -39.16616570377141546  # g at the global root, per coordinate
_ST_LOCAL_X = 2.746802770990837
_ST_LOCAL_F = -25.02944665528394261
# Rastrigin: the 1-D local minimum next to the origin, root of 2t + 20 pi sin(2 pi t) = 0.
_RA_LOCAL_X = 0.9949586376523348
_RA_LOCAL_F = 0.9949590570932914


# --------------------------------------------------------------------------- argument checks


def _check_dim(dim: object, landscape: str, *, minimum: int = 1) -> int:
    if isinstance(dim, bool):
        raise ValueError(f"{landscape}: dim must be an int >= {minimum}, got {dim!r}")
    try:
        d = operator.index(dim)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{landscape}: dim must be an int >= {minimum}, got {dim!r}") from None
    if d < minimum:
        raise ValueError(f"{landscape}: dim must be an int >= {minimum}, got {d}")
    return d


def _check_kappa(kappa: object) -> float:
    if isinstance(kappa, bool):
        raise ValueError(f"quadratic: kappa must be a finite number >= 1, got {kappa!r}")
    try:
        k = float(kappa)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"quadratic: kappa must be a finite number >= 1, got {kappa!r}") from None
    if not (math.isfinite(k) and k >= 1.0):
        raise ValueError(f"quadratic: kappa must be a finite number >= 1, got {kappa!r}")
    return k


def _box(low: float, high: float, dim: int) -> Bounds:
    return Bounds(low=(float(low),) * dim, high=(float(high),) * dim)


def _tile(pattern: Sequence[float], dim: int) -> tuple[float, ...]:
    return tuple(float(pattern[i % len(pattern)]) for i in range(dim))


def _num(v: float) -> str:
    """A number for LaTeX: ``10`` rather than ``10.0``, ``1000`` rather than ``1e+03``."""
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:g}"


# --------------------------------------------------------------------------- landscapes


def quadratic(*, dim: int = 2, kappa: float = 10.0) -> AnalyticFunction:
    r"""Ill-conditioned quadratic bowl :math:`f(x) = \tfrac12 \sum_i \lambda_i x_i^2`.

    :math:`\lambda_i = \kappa^{(i-1)/(d-1)}` is log-spaced from 1 to :math:`\kappa`, so the Hessian
    is :math:`\mathrm{diag}(\lambda)` with condition number exactly :math:`\kappa`. Minimum 0 at 0.
    """
    dim = _check_dim(dim, "quadratic")
    kappa = _check_kappa(kappa)
    if dim == 1 and kappa != 1.0:
        raise ValueError(f"quadratic: a 1-D bowl has condition number 1; got kappa={kappa!r} with dim=1")
    lams = tuple(kappa ** (i / (dim - 1)) for i in range(dim)) if dim > 1 else (1.0,)

    def fn(x: torch.Tensor) -> torch.Tensor:
        lam = torch.tensor(lams, dtype=x.dtype, device=x.device)
        return 0.5 * (lam * x * x).sum(-1)

    k = _num(kappa)
    if dim == 2:
        latex = rf"f(x, y) = \tfrac{{1}}{{2}}\left(x^2 + {k}\, y^2\right)"
    else:
        latex = (rf"f(\mathbf{{x}}) = \tfrac{{1}}{{2}} \sum_{{i=1}}^{{d}} "
                 rf"\kappa^{{\frac{{i-1}}{{d-1}}}} x_i^2,\quad \kappa = {k},\ d = {dim}")
    return AnalyticFunction(
        name="quadratic", title=f"Quadratic bowl (kappa = {k})", dim=dim, latex=latex, fn=fn,
        bounds=_box(-5.0, 5.0, dim), minima=(Minimum((0.0,) * dim, 0.0),), start=_tile((-4.0, 2.0), dim),
        log_scale=kappa > 100.0, params=(("dim", dim), ("kappa", kappa)),
        description=("A convex bowl whose condition number kappa sets how badly plain gradient descent "
                     "zig-zags and how much momentum or preconditioning helps."),
    )


def _rosenbrock_local_min(dim: int) -> Minimum | None:
    """The spurious local minimum near (-1, 1, ..., 1) of the chained Rosenbrock, d >= 4.

    Newton's method on the tridiagonal Hessian from (-1, 1, ..., 1); returned only if it converges
    to a point other than (1, ..., 1) with a positive definite Hessian (Kok & Sandrock 2009).
    """
    if not 4 <= dim <= 1000:
        return None
    x = [-1.0] + [1.0] * (dim - 1)
    for _ in range(100):
        g = [0.0] * dim
        diag = [0.0] * dim
        off = [0.0] * (dim - 1)
        for i in range(dim - 1):
            t = x[i + 1] - x[i] * x[i]
            g[i] += -400.0 * x[i] * t - 2.0 * (1.0 - x[i])
            g[i + 1] += 200.0 * t
            diag[i] += 1200.0 * x[i] * x[i] - 400.0 * x[i + 1] + 2.0
            diag[i + 1] += 200.0
            off[i] = -400.0 * x[i]
        # Thomas algorithm for H dx = g; the pivots are positive iff H is positive definite.
        piv = [diag[0]]
        rhs = [g[0]]
        for i in range(1, dim):
            m = off[i - 1] / piv[i - 1]
            piv.append(diag[i] - m * off[i - 1])
            rhs.append(g[i] - m * rhs[i - 1])
        if min(piv) <= 0.0:
            return None
        dx = [0.0] * dim
        dx[-1] = rhs[-1] / piv[-1]
        for i in range(dim - 2, -1, -1):
            dx[i] = (rhs[i] - off[i] * dx[i + 1]) / piv[i]
        x = [a - b for a, b in zip(x, dx, strict=True)]
        if max(abs(v) for v in dx) < 1e-15:
            break
    gnorm = math.sqrt(sum(v * v for v in g))
    if gnorm > 1e-9 or max(abs(v - 1.0) for v in x) < 1e-3:
        return None
    value = math.fsum(100.0 * (x[i + 1] - x[i] * x[i]) ** 2 + (1.0 - x[i]) ** 2 for i in range(dim - 1))
    return Minimum(tuple(x), value, is_global=False)


def rosenbrock(*, dim: int = 2) -> AnalyticFunction:
    r"""Rosenbrock's banana valley, chained form (Rosenbrock 1960; Wikipedia; SFU "rosen").

    :math:`f(x) = \sum_{i=1}^{d-1} \left[100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2\right]`, global minimum 0
    at :math:`(1, \dots, 1)`. For :math:`d \ge 4` a local minimum near :math:`(-1, 1, \dots, 1)` is
    included (Kok & Sandrock 2009, Evol. Comput. 17(3)), located by Newton's method.
    """
    dim = _check_dim(dim, "rosenbrock", minimum=2)

    def fn(x: torch.Tensor) -> torch.Tensor:
        a = x[..., :-1]
        t = x[..., 1:] - a * a
        u = 1.0 - a
        return (100.0 * t * t + u * u).sum(-1)

    if dim == 2:
        latex = r"f(x, y) = (1 - x)^2 + 100\,(y - x^2)^2"
        bounds = Bounds(low=(-2.0, -1.0), high=(2.0, 3.0))
    else:
        latex = (r"f(\mathbf{x}) = \sum_{i=1}^{d-1} \left[100\,(x_{i+1} - x_i^2)^2 + (1 - x_i)^2\right],"
                 rf"\quad d = {dim}")
        bounds = _box(-2.0, 2.0, dim)
    minima = [Minimum((1.0,) * dim, 0.0)]
    local = _rosenbrock_local_min(dim)
    if local is not None:
        minima.append(local)
    return AnalyticFunction(
        name="rosenbrock", title="Rosenbrock", dim=dim, latex=latex, fn=fn, bounds=bounds,
        minima=tuple(minima), start=_tile((-1.2, 1.0), dim), log_scale=True, params=(("dim", dim),),
        description=("A long, curved, nearly flat valley: finding it is easy, following it to (1, 1) is "
                     "hard for methods that ignore curvature."),
    )


def beale() -> AnalyticFunction:
    r"""Beale's function (Beale 1958; Wikipedia; SFU "beale").

    :math:`f = (1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2` on
    :math:`[-4.5, 4.5]^2`; minimum 0 at :math:`(3, 0.5)`, saddle at :math:`(0, 1)` with value 14.203125.
    """

    def fn(x: torch.Tensor) -> torch.Tensor:
        a, b = x[..., 0], x[..., 1]
        ab = a * b
        t1 = 1.5 - a + ab
        t2 = 2.25 - a + ab * b
        t3 = 2.625 - a + ab * b * b
        return t1 * t1 + t2 * t2 + t3 * t3

    return AnalyticFunction(
        name="beale", title="Beale", dim=2,
        latex=r"f(x, y) = (1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2",
        fn=fn, bounds=_box(-4.5, 4.5, 2), minima=(Minimum((3.0, 0.5), 0.0),), start=(1.0, 1.5),
        log_scale=True, saddles=((0.0, 1.0),),
        description=("Sharp ridges and flat plateaus around a narrow minimum at (3, 0.5) that punish a "
                     "fixed step size."),
    )


def booth() -> AnalyticFunction:
    r"""Booth's function (Wikipedia; SFU "booth").

    :math:`f = (x + 2y - 7)^2 + (2x + y - 5)^2` on :math:`[-10, 10]^2`; minimum 0 at :math:`(1, 3)`.
    """

    def fn(x: torch.Tensor) -> torch.Tensor:
        a, b = x[..., 0], x[..., 1]
        t1 = a + 2.0 * b - 7.0
        t2 = 2.0 * a + b - 5.0
        return t1 * t1 + t2 * t2

    return AnalyticFunction(
        name="booth", title="Booth", dim=2, latex=r"f(x, y) = (x + 2y - 7)^2 + (2x + y - 5)^2",
        fn=fn, bounds=_box(-10.0, 10.0, 2), minima=(Minimum((1.0, 3.0), 0.0),), start=(-7.0, -6.0),
        description="A tilted convex quadratic (condition number 9): the baseline every method should solve.",
    )


def himmelblau() -> AnalyticFunction:
    r"""Himmelblau's function (Himmelblau 1972; Wikipedia).

    :math:`f = (x^2 + y - 11)^2 + (x + y^2 - 7)^2` on :math:`[-5, 5]^2`: four global minima of value 0,
    four saddles, and a local maximum 181.617 at :math:`(-0.270845, -0.923039)`.
    """

    def fn(x: torch.Tensor) -> torch.Tensor:
        a, b = x[..., 0], x[..., 1]
        t1 = a * a + b - 11.0
        t2 = a + b * b - 7.0
        return t1 * t1 + t2 * t2

    minima = (
        Minimum((3.0, 2.0), 0.0),
        Minimum((-2.805118086952745, 3.131312518250573), 0.0),
        Minimum((-3.779310253377747, -3.2831859912861696), 0.0),
        Minimum((3.5844283403304917, -1.8481265269644036), 0.0),
    )
    saddles = (
        (3.385154183607021, 0.07385187983774928),
        (-3.0730257507643897, -0.08135304428796751),
        (0.08667750455539636, 2.884254701174776),
        (-0.12796134673068008, -1.9537149802445763),
    )
    return AnalyticFunction(
        name="himmelblau", title="Himmelblau", dim=2,
        latex=r"f(x, y) = (x^2 + y - 11)^2 + (x + y^2 - 7)^2",
        fn=fn, bounds=_box(-5.0, 5.0, 2), minima=minima, start=(-0.5, 0.5), log_scale=True,
        saddles=saddles,
        description=("Four equally good minima: which one an optimizer reaches depends on where it starts "
                     "and on its dynamics, not on the function."),
    )


def rastrigin(*, dim: int = 2) -> AnalyticFunction:
    r"""Rastrigin's function, :math:`A = 10` (Rastrigin 1974; Wikipedia; SFU "rastr").

    :math:`f(x) = 10d + \sum_i \left[x_i^2 - 10\cos(2\pi x_i)\right]` on :math:`[-5.12, 5.12]^d`;
    global minimum 0 at 0. The local minimum next to it, :math:`(0.994959, 0, \dots, 0)` with value
    0.994959, is listed too.
    """
    dim = _check_dim(dim, "rastrigin")

    def fn(x: torch.Tensor) -> torch.Tensor:
        return (x * x - 10.0 * torch.cos((2.0 * _PI) * x) + 10.0).sum(-1)

    if dim == 2:
        latex = r"f(x, y) = 20 + x^2 - 10\cos(2\pi x) + y^2 - 10\cos(2\pi y)"
    else:
        latex = (rf"f(\mathbf{{x}}) = 10d + \sum_{{i=1}}^{{d}} \left[x_i^2 - 10\cos(2\pi x_i)\right],"
                 rf"\quad d = {dim}")
    local = Minimum((_RA_LOCAL_X,) + (0.0,) * (dim - 1), _RA_LOCAL_F, is_global=False)
    return AnalyticFunction(
        name="rastrigin", title="Rastrigin", dim=dim, latex=latex, fn=fn, bounds=_box(-5.12, 5.12, dim),
        minima=(Minimum((0.0,) * dim, 0.0), local), start=_tile((-4.5, 3.7), dim), params=(("dim", dim),),
        description=("A bowl covered in a regular egg-crate of local minima: gradient methods stop in the "
                     "nearest dimple, so it measures exploration, not descent."),
    )


def ackley(*, dim: int = 2) -> AnalyticFunction:
    r"""Ackley's function (Ackley 1987; Wikipedia; SFU "ackley", a=20, b=0.2, c=2\pi).

    :math:`f(x) = -20\exp\left(-0.2\sqrt{\tfrac1d\sum x_i^2}\right) - \exp\left(\tfrac1d\sum
    \cos 2\pi x_i\right) + 20 + e` on :math:`[-5, 5]^d`; minimum 0 at 0, where it has a cone-shaped
    kink (the gradient there is taken as 0, a valid subgradient).
    """
    dim = _check_dim(dim, "ackley")

    def fn(x: torch.Tensor) -> torch.Tensor:
        s = (x * x).sum(-1) / dim
        pos = s > 0
        # sqrt with a zero gradient at s = 0 (the double-where trick keeps autograd free of NaN).
        r = torch.where(pos, torch.sqrt(torch.where(pos, s, torch.ones_like(s))), torch.zeros_like(s))
        c = torch.cos((2.0 * _PI) * x).sum(-1) / dim
        return 20.0 * (1.0 - torch.exp(-0.2 * r)) + (_E - torch.exp(c))

    if dim == 2:
        latex = (r"f(x, y) = -20\exp\left(-0.2\sqrt{\tfrac{1}{2}(x^2 + y^2)}\right)"
                 r" - \exp\left(\tfrac{1}{2}(\cos 2\pi x + \cos 2\pi y)\right) + e + 20")
    else:
        latex = (r"f(\mathbf{x}) = -20\exp\left(-0.2\sqrt{\tfrac{1}{d}\sum_{i=1}^{d} x_i^2}\right)"
                 r" - \exp\left(\tfrac{1}{d}\sum_{i=1}^{d}\cos 2\pi x_i\right) + e + 20,"
                 rf"\quad d = {dim}")
    return AnalyticFunction(
        name="ackley", title="Ackley", dim=dim, latex=latex, fn=fn, bounds=_box(-5.0, 5.0, dim),
        minima=(Minimum((0.0,) * dim, 0.0),), start=_tile((3.2, -2.6), dim), params=(("dim", dim),),
        description=("A nearly flat, rippled plateau around one deep funnel: local ripples trap small steps "
                     "while the global trend points home."),
    )


def goldstein_price() -> AnalyticFunction:
    r"""Goldstein-Price function (Goldstein & Price 1971; Wikipedia; SFU "goldpr").

    :math:`f = [1 + (x+y+1)^2 (19 - 14x + 3x^2 - 14y + 6xy + 3y^2)]
    [30 + (2x-3y)^2 (18 - 32x + 12x^2 + 48y - 36xy + 27y^2)]` on :math:`[-2, 2]^2`; global minimum 3 at
    :math:`(0, -1)`. Local minima 30 at (-0.6, -0.4), 84 at (1.8, 0.2), 840 at (1.2, 0.8) (exact: both
    factors are stationary there; checked in 40-digit arithmetic).
    """

    def fn(x: torch.Tensor) -> torch.Tensor:
        a, b = x[..., 0], x[..., 1]
        u = a + b + 1.0
        p = 19.0 - 14.0 * a + 3.0 * a * a - 14.0 * b + 6.0 * a * b + 3.0 * b * b
        v = 2.0 * a - 3.0 * b
        q = 18.0 - 32.0 * a + 12.0 * a * a + 48.0 * b - 36.0 * a * b + 27.0 * b * b
        return (1.0 + u * u * p) * (30.0 + v * v * q)

    latex = (r"f(x, y) = \left[1 + (x + y + 1)^2 (19 - 14x + 3x^2 - 14y + 6xy + 3y^2)\right]"
             r"\left[30 + (2x - 3y)^2 (18 - 32x + 12x^2 + 48y - 36xy + 27y^2)\right]")
    minima = (
        Minimum((0.0, -1.0), 3.0),
        Minimum((-0.6, -0.4), 30.0, is_global=False),
        Minimum((1.8, 0.2), 84.0, is_global=False),
        Minimum((1.2, 0.8), 840.0, is_global=False),
    )
    return AnalyticFunction(
        name="goldstein_price", title="Goldstein-Price", dim=2, latex=latex, fn=fn, bounds=_box(-2.0, 2.0, 2),
        minima=minima, start=(-1.5, 1.5), log_scale=True,
        description=("Values span six decades over a small box, with several local minima: a test of step "
                     "size control under wildly varying gradient scale."),
    )


def six_hump_camel() -> AnalyticFunction:
    r"""Six-hump camel function (Dixon & Szegő 1978; SFU "camel6").

    :math:`f = (4 - 2.1x^2 + x^4/3)x^2 + xy + (-4 + 4y^2)y^2` on :math:`[-3, 3] \times [-2, 2]`; two
    global minima :math:`\pm(0.089842, -0.712656)` of value -1.031628, and four local minima.
    """

    def fn(x: torch.Tensor) -> torch.Tensor:
        a, b = x[..., 0], x[..., 1]
        a2 = a * a
        b2 = b * b
        return (4.0 - 2.1 * a2 + a2 * a2 / 3.0) * a2 + a * b + (-4.0 + 4.0 * b2) * b2

    g = (0.08984201310031806, -0.7126564030207396, -1.0316284534898774)
    l1 = (1.703606714969981, -0.7960835686726251, -0.2154638243837184)
    l2 = (1.6071047529201974, 0.5686514548841314, 2.1042503103112575)
    minima = (
        Minimum((g[0], g[1]), g[2]),
        Minimum((-g[0], -g[1]), g[2]),
        Minimum((-l1[0], -l1[1]), l1[2], is_global=False),
        Minimum((l1[0], l1[1]), l1[2], is_global=False),
        Minimum((-l2[0], -l2[1]), l2[2], is_global=False),
        Minimum((l2[0], l2[1]), l2[2], is_global=False),
    )
    return AnalyticFunction(
        name="six_hump_camel", title="Six-hump camel", dim=2,
        latex=r"f(x, y) = \left(4 - 2.1x^2 + \tfrac{x^4}{3}\right)x^2 + xy + (-4 + 4y^2)\,y^2",
        fn=fn, bounds=Bounds(low=(-3.0, -2.0), high=(3.0, 2.0)), minima=minima, start=(-2.0, 1.5),
        description=("Two symmetric global minima and four local ones in a small box: basins of attraction "
                     "made visible."),
    )


def styblinski_tang(*, dim: int = 2) -> AnalyticFunction:
    r"""Styblinski-Tang function (Styblinski & Tang 1990; Wikipedia; SFU "stybtang").

    :math:`f(x) = \tfrac12 \sum_i (x_i^4 - 16x_i^2 + 5x_i)` on :math:`[-5, 5]^d`; global minimum
    :math:`-39.16617\,d` at :math:`x_i = -2.903534`. Each coordinate also has a local minimum at
    2.746803, giving :math:`2^d` minima: all are listed for :math:`d \le 3`, else only the all-positive one.
    """
    dim = _check_dim(dim, "styblinski_tang")

    def fn(x: torch.Tensor) -> torch.Tensor:
        x2 = x * x
        return 0.5 * (x2 * x2 - 16.0 * x2 + 5.0 * x).sum(-1)

    if dim == 2:
        latex = r"f(x, y) = \tfrac{1}{2}\left(x^4 - 16x^2 + 5x + y^4 - 16y^2 + 5y\right)"
    else:
        latex = (rf"f(\mathbf{{x}}) = \tfrac{{1}}{{2}} \sum_{{i=1}}^{{d}} "
                 rf"\left(x_i^4 - 16x_i^2 + 5x_i\right),\quad d = {dim}")
    minima = [Minimum((_ST_GLOBAL_X,) * dim, dim * _ST_GLOBAL_F)]
    if dim <= 3:
        patterns = [p for p in itertools.product((False, True), repeat=dim) if any(p)]
    else:
        patterns = [(True,) * dim]
    for pat in patterns:
        xs = tuple(_ST_LOCAL_X if pos else _ST_GLOBAL_X for pos in pat)
        n_pos = sum(pat)
        minima.append(Minimum(xs, n_pos * _ST_LOCAL_F + (dim - n_pos) * _ST_GLOBAL_F, is_global=False))
    return AnalyticFunction(
        name="styblinski_tang", title="Styblinski-Tang", dim=dim, latex=latex, fn=fn,
        bounds=_box(-5.0, 5.0, dim), minima=tuple(minima), start=_tile((4.0, 0.5), dim),
        params=(("dim", dim),),
        description=("Separable, with two wells per coordinate of unequal depth: 2^d minima of which only "
                     "one is global, and descent picks the well on its side of each hump."),
    )


def levi13() -> AnalyticFunction:
    r"""Lévi function N.13 (Wikipedia; SFU "levy13").

    :math:`f = \sin^2(3\pi x) + (x-1)^2\left(1 + \sin^2(3\pi y)\right)
    + (y-1)^2\left(1 + \sin^2(2\pi y)\right)` on :math:`[-10, 10]^2`; minimum 0 at :math:`(1, 1)`.
    """

    def fn(x: torch.Tensor) -> torch.Tensor:
        a, b = x[..., 0], x[..., 1]
        s1 = torch.sin((3.0 * _PI) * a)
        s2 = torch.sin((3.0 * _PI) * b)
        s3 = torch.sin((2.0 * _PI) * b)
        u = a - 1.0
        v = b - 1.0
        return s1 * s1 + u * u * (1.0 + s2 * s2) + v * v * (1.0 + s3 * s3)

    return AnalyticFunction(
        name="levi13", title="Lévi N.13", dim=2,
        latex=(r"f(x, y) = \sin^2(3\pi x) + (x - 1)^2\left(1 + \sin^2(3\pi y)\right)"
               r" + (y - 1)^2\left(1 + \sin^2(2\pi y)\right)"),
        fn=fn, bounds=_box(-10.0, 10.0, 2), minima=(Minimum((1.0, 1.0), 0.0),), start=(-4.0, 4.5),
        description=("A convex trend modulated by ripples whose depth grows away from the minimum: ripples "
                     "stall small steps, momentum rides over them."),
    )


def saddle() -> AnalyticFunction:
    r"""Pure saddle :math:`f = x^2 - y^2` on :math:`[-2, 2]^2`.

    Unbounded below (no minima); a non-degenerate saddle at the origin with Hessian diag(2, -2).
    """

    def fn(x: torch.Tensor) -> torch.Tensor:
        a, b = x[..., 0], x[..., 1]
        return a * a - b * b

    return AnalyticFunction(
        name="saddle", title="Saddle", dim=2, latex=r"f(x, y) = x^2 - y^2", fn=fn, bounds=_box(-2.0, 2.0, 2),
        minima=(), start=(1.5, 0.01), saddles=((0.0, 0.0),),
        description=("A saddle at the origin: started near the stable x axis, gradient descent slows down "
                     "there and escapes along y only as fast as the tiny y offset grows."),
    )


def monkey_saddle() -> AnalyticFunction:
    r"""Monkey saddle :math:`f = x^3 - 3xy^2` on :math:`[-2, 2]^2`.

    Unbounded below (no minima); a degenerate saddle at the origin (gradient and Hessian both vanish),
    with three descending valleys.
    """

    def fn(x: torch.Tensor) -> torch.Tensor:
        a, b = x[..., 0], x[..., 1]
        return a * a * a - 3.0 * a * b * b

    return AnalyticFunction(
        name="monkey_saddle", title="Monkey saddle", dim=2, latex=r"f(x, y) = x^3 - 3xy^2", fn=fn,
        bounds=_box(-2.0, 2.0, 2), minima=(), start=(1.5, 0.05), saddles=((0.0, 0.0),),
        description=("A degenerate saddle where even the Hessian vanishes: the gradient fades quadratically, "
                     "so gradient descent crawls while momentum coasts through."),
    )


# --------------------------------------------------------------------------- registry

LANDSCAPES: Mapping[str, Callable[..., AnalyticFunction]] = MappingProxyType({
    "quadratic": quadratic,
    "rosenbrock": rosenbrock,
    "beale": beale,
    "booth": booth,
    "himmelblau": himmelblau,
    "rastrigin": rastrigin,
    "ackley": ackley,
    "goldstein_price": goldstein_price,
    "six_hump_camel": six_hump_camel,
    "styblinski_tang": styblinski_tang,
    "levi13": levi13,
    "saddle": saddle,
    "monkey_saddle": monkey_saddle,
    "bilevel_toy": bilevel_toy,
    "ridge_bilevel": ridge_bilevel,
    "simplex_linear": simplex_linear,
    "simplex_quadratic": simplex_quadratic,
    "bilinear_game": bilinear_game,
    "rps_game": rps_game,
    "biased_rps_game": biased_rps_game,
})
"""Name -> factory, in display order. Factories take keyword arguments only (``dim``, ``kappa``)."""


def available_landscapes() -> list[str]:
    """The registered landscape names, in display order."""
    return list(LANDSCAPES)


def landscape_parameters(name: str) -> tuple[str, ...]:
    """The keyword arguments the factory for ``name`` accepts (``("dim", "kappa")`` for ``quadratic``)."""
    return tuple(inspect.signature(_factory(name)).parameters)


def _factory(name: str) -> Callable[..., AnalyticFunction]:
    if not isinstance(name, str) or name not in LANDSCAPES:
        raise ValueError(f"unknown landscape {name!r}; known landscapes: {', '.join(LANDSCAPES)}")
    return LANDSCAPES[name]


def get_landscape(name: str, **kwargs: object) -> AnalyticFunction:
    """Build the landscape ``name`` (``get_landscape("rosenbrock", dim=5)``).

    Raises ``ValueError`` for an unknown name (listing the known ones), for a keyword the landscape
    does not take, and for an out-of-range value (``dim < 1``, ``kappa < 1``);
    :class:`engine.limits.LimitError` (a ``ValueError``) for a value above its declared range
    (:data:`landscapes.sizes.OPTIONS`), before anything is allocated.
    """
    factory = _factory(name)
    check_options(name, kwargs)
    return factory(**kwargs)
