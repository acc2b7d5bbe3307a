r"""Every problem's options, their declared ranges, and what a problem costs -- without building it.

One table, :data:`OPTIONS`, declares each factory keyword of every landscape and network: its type
and range (``dim`` of an N-D landscape at most 1,000,000, a network's ``width`` at most 8,192, ...).
:func:`check_options` enforces it; :func:`landscapes.get_landscape` and
:func:`landscapes.get_network` call it before their factory, so an out-of-range option is refused
before anything is allocated. A keyword without a range of its own (``kappa``, ``activation``) is
declared :data:`FREE`: its factory checks it.

:func:`problem_size` estimates what a problem holds and costs per parameter row (parameters,
flops and saved activations of a loss evaluation, data, setup) from its options alone, with the
formulas below; ``import landscapes`` registers every problem with :mod:`engine.limits`, whose
:func:`~engine.limits.check_run` bounds a whole run against the session budget. The per-option
ranges are a second line: they keep each option sane, the budget keeps their product sane.

Formulas (float64, 8 bytes; ``d`` coordinates, MLP layer sizes ``n_0 .. n_L``, ``B`` samples):

* N-D landscapes: ``P = d``; ``c_f d`` flop-equivalents per evaluation (``c_f`` measured per
  landscape: ~4 to 40, transcendental functions and the quadratic's per-call tensor of its
  eigenvalues included), ``c_a d`` saved floats, and the built object's Python tuples (bounds,
  start, minima, eigenvalues: 32-80 bytes per coordinate, measured);
* MLPs: ``P = sum (n_{i-1} + 1) n_i``; per sample ``2 sum n_{i-1} n_i`` flops plus ~25 per hidden
  unit (activation), ``n_0 + 2 sum hidden + 3 n_L`` saved floats; data ``(n_train + n_test)(n_0 +
  1)``; metrics: a forward of the full train and test sets;
* matrix sensing: ``P = n k``; per row ``W W^T`` (``2 n^2 k`` flops, ``2 n^2`` saved floats), per
  sample ``2 n^2``; data ``(m + 100) n^2`` floats plus the generation's transient ``2 max(m, 100) n^2``.

``tests/landscapes/test_landscape_catalog.py`` checks ``P`` exactly and the other figures against
measurements of the built problems within a stated factor.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from engine.limits import ELEMENTWISE, LimitError, ProblemSize, format_option, register_problem_size

__all__ = ["FREE", "OPTIONS", "Option", "check_options", "problem_size"]

BYTES = 8


@dataclass(frozen=True)
class Option:
    """One factory keyword: ``kind`` "int" (with ``low``/``high``; ``none_ok``: None allowed),
    "float" (finite, in ``[low, high]``), "ints" (a list of at most ``high`` integers), "str" (a
    string) or "free" (checked by the factory). ``wording`` is how a message names the integer's
    lower bound. Meaning (``kappa >= 1``, a known activation) is left to the factory."""

    kind: str = "free"
    low: float | None = None
    high: float | None = None
    none_ok: bool = False
    wording: str = "an int >= {low}"

    def validate(self, problem: str, name: str, value: Any) -> Any:
        """The value if its type (and lower end) fits; else ValueError in the factories' words."""
        if self.kind == "free" or (value is None and self.none_ok):
            return value
        if self.kind == "int":
            too_low = isinstance(value, int) and self.low is not None and value < self.low
            if isinstance(value, bool) or not isinstance(value, int) or too_low:
                low = "" if self.low is None else format_option(int(self.low))
                raise ValueError(f"{problem}: {name} must be {self.wording.format(low=low)}, got {value!r}")
            return value
        if self.kind == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or (self.low is not None and value < self.low):
                at_least = "" if self.low is None else f" >= {format_option(self.low)}"
                raise ValueError(f"{problem}: {name} must be a finite number{at_least}, got {value!r}")
            return float(value)
        if self.kind == "ints":
            if not isinstance(value, (list, tuple)) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ValueError(f"{problem}: {name} must be a list of integers, got {value!r}")
            if self.high is not None and len(value) > self.high:
                raise LimitError(f"{problem}: {name} lists {len(value)} values (limit {int(self.high)})")
            return list(value)
        if not isinstance(value, str):
            raise ValueError(f"{problem}: {name} must be a string, got {type(value).__name__}")
        return value

    def check_bound(self, problem: str, name: str, value: Any) -> None:
        if self.high is not None and isinstance(value, (int, float)) and not isinstance(value, bool) \
                and value > self.high:
            raise LimitError(f"{problem}: {name}={format_option(value)} is over its limit of "
                             f"{format_option(int(self.high) if self.kind == 'int' else self.high)}")


FREE = Option()
_NET_INT = "a positive integer"

MAX_DIM = 1_000_000
"""Coordinates of an N-D landscape: building one holds ~40-80 bytes of Python objects per
coordinate (80 MB at the cap) before any run exists."""
MAX_WIDTH = 8_192
MAX_DEPTH = 16
MAX_SENSING_N = 2_000
MAX_SAMPLES = 1_000_000
SIMPLEX_GAMES = ("rps_game", "biased_rps_game")
"""Matrix games on two simplices (landscapes.simplex_games): 6 coordinates; ``tau`` up to
``simplex_games.MAX_TAU``."""
_SEED = Option("int", 0, 2**31 - 1, wording="an integer >= {low}")
_BATCH = Option("int", 1, MAX_SAMPLES, none_ok=True, wording=_NET_INT)
_CLASSES = Option("ints", high=10, none_ok=True)
_N_TRAIN = Option("int", 1, MAX_SAMPLES, none_ok=True, wording=_NET_INT)


def _dim(low: int = 1) -> Option:
    return Option("int", low, MAX_DIM)


_NETWORK_COMMON = {"batch_size": _BATCH, "seed": _SEED, "n_train": _N_TRAIN, "l2": FREE}
_MLP = {"width": Option("int", 1, MAX_WIDTH, wording=_NET_INT),
        "depth": Option("int", 1, MAX_DEPTH, wording=_NET_INT), "activation": Option("str")}
_NUMBER = Option("float")

OPTIONS: Mapping[str, Mapping[str, Option]] = MappingProxyType({
    "quadratic": {"dim": _dim(), "kappa": FREE},  # kappa: the factory's message names its range
    "rosenbrock": {"dim": _dim(2)},
    "rastrigin": {"dim": _dim()},
    "ackley": {"dim": _dim()},
    "styblinski_tang": {"dim": _dim()},
    "bilinear_game": {"n": Option("int", 1, MAX_DIM // 2), "coupling": _NUMBER, "alpha": _NUMBER},
    **{name: {} for name in ("beale", "booth", "himmelblau", "goldstein_price", "six_hump_camel", "levi13",
                             "saddle", "monkey_saddle", "simplex_linear", "simplex_quadratic")},
    **{name: {"tau": Option("float", 0.0, 10.0)} for name in SIMPLEX_GAMES},
    "bilevel_toy": {"mu": Option("float", 0.0, 1e3), "rho": Option("float", 0.0, 1e3)},  # mu > 0: the factory
    "ridge_bilevel": {"seed": _SEED},
    "expression": {"expression": Option("str")},
    "digits_mlp": {**_MLP, "loss": Option("str"), "classes": _CLASSES, **_NETWORK_COMMON},
    "digits_mlp_mse": {**_MLP, "loss": Option("str"), "classes": _CLASSES, **_NETWORK_COMMON},
    "logistic_regression": dict(_NETWORK_COMMON),
    "digits_cnn": dict(_NETWORK_COMMON),
    "diabetes_regression": {**_MLP, "depth": Option("int", 0, MAX_DEPTH, wording="an integer >= {low}"),
                            **_NETWORK_COMMON},
    "moons_mlp": {**_MLP, "noise": Option("float", 0.0, 10.0), **_NETWORK_COMMON},
    "matrix_sensing": {"n": Option("int", 1, MAX_SENSING_N, wording=_NET_INT),
                       "rank": Option("int", 1, MAX_SENSING_N, wording=_NET_INT),
                       "factor_rank": Option("int", 1, MAX_SENSING_N, wording=_NET_INT),
                       "m": Option("int", 1, MAX_SAMPLES, wording=_NET_INT),
                       "init_scale": Option("float", 0.0, 1e3),
                       "factorization": Option("str"),  # "symmetric" | "asymmetric": the factory checks
                       **_NETWORK_COMMON},
})
"""Problem -> keyword -> declared type and range. Options a factory does not take (yet) are
ignored; every keyword a factory takes must be declared here (a test checks)."""


# --------------------------------------------------------------------------------- the factories

def _factories() -> dict[str, Callable[..., Any]]:
    """Name -> factory (imported lazily: the catalog and the networks import this module)."""
    catalog = importlib.import_module("landscapes.catalog")
    networks = importlib.import_module("landscapes.networks")
    return {**catalog.LANDSCAPES, **networks.NETWORKS}


_DEFAULTS_FROM = {"digits_mlp_mse": ("digits_mlp", {"loss": "mse", "batch_size": None})}
"""Factories that wrap another (``digits_mlp_mse(**kwargs)``): whose signature and which defaults."""


def accepted(name: str) -> dict[str, Any]:
    """The keywords the factory for ``name`` takes, with their defaults."""
    if name == "expression":
        return {"expression": "x**2 + y**2"}
    base, overrides = _DEFAULTS_FROM.get(name, (name, {}))
    factories = _factories()
    if base not in factories:
        raise ValueError(f"unknown problem {name!r}; known: {', '.join(factories)}")
    params = inspect.signature(factories[base]).parameters
    return {**{k: p.default for k, p in params.items()
               if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}, **overrides}


def _kind(name: str) -> str:
    networks = importlib.import_module("landscapes.networks").NETWORKS
    return "network problem" if name in networks else "landscape"


def validate_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Known keywords of usable types, merged over the factory's defaults (ranges not checked)."""
    if not isinstance(options, Mapping):
        raise ValueError(f"{name}: options must be a mapping of keywords, got {type(options).__name__}")
    takes = accepted(name)
    declared = OPTIONS.get(name, {})
    unknown = [k for k in options if k not in takes]
    if unknown:
        listed = ", ".join(takes) if takes else "no parameters"
        raise ValueError(f"{_kind(name)} {name!r} does not take {', '.join(map(repr, unknown))}; "
                         f"it takes: {listed}")
    values = dict(takes)
    for key, value in options.items():
        values[key] = declared.get(key, FREE).validate(name, key, value)
    return values


def check_bounds(name: str, options: Mapping[str, Any]) -> None:
    declared = OPTIONS.get(name, {})
    for key, value in options.items():
        declared.get(key, FREE).check_bound(name, key, value)


def check_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``options`` for the factory ``name`` against :data:`OPTIONS` (types, ranges) and
    return them merged over its defaults. Raises ValueError (LimitError above a range)."""
    values = validate_options(name, options)
    check_bounds(name, values)
    return values


# ------------------------------------------------------------------------------------------ sizes

_ANALYTIC = {  # per coordinate of one evaluation: operations, saved floats; bytes of the built object
    "quadratic": (200.0, 3.0, 80.0),  # its eigenvalues become a tensor from a Python tuple each call
    "rosenbrock": (80.0, 5.0, 40.0),
    "rastrigin": (100.0, 4.0, 40.0),
    "ackley": (120.0, 4.0, 40.0),
    "styblinski_tang": (80.0, 4.0, 40.0),
    "bilinear_game": (60.0, 4.0, 48.0),
}
"""Operations count ``ELEMENTWISE`` (10) per element of each elementwise kernel
(:mod:`engine.limits`); the built bytes were measured (peak RSS of building dim = 1e6)."""
NETWORK_CALL_OPS = 3e5
"""The fixed cost of one row's loss through ``functional_call`` under ``vmap`` (~30 us)."""
_DIGITS = (1348, 449, 64, 10)  # train rows, test rows, features, classes (scikit-learn's 8x8 digits)
_BREAST_CANCER = (427, 142, 30, 2)
_MOONS = (300, 100, 2, 2)
_DIABETES = (332, 110, 10, 1)  # scikit-learn's diabetes: 442 patients, 10 features
_SMALL_2D = ProblemSize(label="", params=2, forward_flops_per_row=300.0, activation_bytes_per_row=400.0,
                        fixed_bytes=20_000.0)


def _label(name: str, options: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    changed = [f"{k}={format_option(v)}" for k, v in options.items() if k in defaults and v != defaults[k]
               and k != "expression"]
    return " ".join([name, *changed])


def problem_size(name: str, options: Mapping[str, Any] | None = None) -> ProblemSize:
    """The estimate for problem ``name`` with ``options`` (validated; nothing is built)."""
    values = validate_options(name, dict(options or {}))
    return _size(name, values, _label(name, dict(options or {}), accepted(name)))


def _size(name: str, o: Mapping[str, Any], label: str) -> ProblemSize:
    if name in _ANALYTIC:
        d = 2 * o["n"] if name == "bilinear_game" else o["dim"]
        flops, saved, built = _ANALYTIC[name]
        setup = 100 * 5 * d * 50.0 if name == "rosenbrock" and 4 <= d <= 1000 else 0.0  # local-min search
        return ProblemSize(label=label, params=d, forward_flops_per_row=flops * d + 100,
                           activation_bytes_per_row=saved * d * BYTES + 64, fixed_bytes=built * d + 20_000,
                           setup_flops=setup + 50.0 * d)
    if name == "expression":
        from landscapes.expression import count_nodes

        nodes = count_nodes(o["expression"])
        return ProblemSize(label=label, params=2, forward_flops_per_row=ELEMENTWISE * 3 * nodes + 100,
                           activation_bytes_per_row=2.0 * nodes * BYTES + 64, fixed_bytes=20_000.0)
    if name in ("digits_mlp", "digits_mlp_mse", "moons_mlp", "logistic_regression", "diabetes_regression"):
        n_train, n_test, n_in, n_out = {"moons_mlp": _MOONS, "logistic_regression": _BREAST_CANCER,
                                        "diabetes_regression": _DIABETES}.get(name, _DIGITS)
        if name.startswith("digits") and o.get("classes") is not None:
            k = len(o["classes"]) if isinstance(o["classes"], (list, tuple)) else 10
            n_train, n_test, n_out = max(1, n_train * k // 10), max(1, n_test * k // 10), k
        if name == "logistic_regression":
            sizes, n_out = [n_in, 1], 1
        else:
            sizes = [n_in, *([o["width"]] * o["depth"]), n_out]
        return _mlp(label, sizes, n_train, n_test, o)
    if name == "digits_cnn":
        n_train, n_test, _, _ = _DIGITS
        # small convolutions run far below matrix-product speed: counted at 2.5x their flops
        per_sample = 2.5 * (9216 + 36864 + 1280) + ELEMENTWISE * (8 * 64 * 3 + 16 * 16 * 3 + 64 + 50)
        return _network(label, params=1898, n_train=n_train, n_test=n_test, options=o,
                        flops_per_sample=float(per_sample), saved_per_sample=2200.0, widest=512,
                        features=64)
    if name == "matrix_sensing":
        return _matrix_sensing(label, o)
    if name in SIMPLEX_GAMES:  # 9 products and two x log x sums per row: a small 2-D landscape's order
        return ProblemSize(label=label, params=6, forward_flops_per_row=_SMALL_2D.forward_flops_per_row,
                           activation_bytes_per_row=_SMALL_2D.activation_bytes_per_row,
                           fixed_bytes=_SMALL_2D.fixed_bytes)
    if name == "ridge_bilevel":
        n_train, n_test, n_in, _ = _DIABETES
        # one row: the validation residual V y - c (2 m d flops); the built problem holds both splits and
        # the closed forms' eigendecomposition, and its setup scans log(lambda) on a grid of 721 points
        return ProblemSize(label=label, params=1 + n_in, forward_flops_per_row=2.0 * n_test * n_in + 100,
                           activation_bytes_per_row=2.0 * n_test * BYTES + 64,
                           fixed_bytes=(n_train + n_test) * (n_in + 1) * BYTES + 200_000.0,
                           setup_flops=721 * 6.0 * (n_test + n_in) * n_in,
                           metrics_flops_per_row=4.0 * (n_train + n_test) * n_in)
    return ProblemSize(label=label, params=3 if name.startswith("simplex") else 2,
                       forward_flops_per_row=_SMALL_2D.forward_flops_per_row,
                       activation_bytes_per_row=_SMALL_2D.activation_bytes_per_row,
                       fixed_bytes=_SMALL_2D.fixed_bytes)


def _rows(o: Mapping[str, Any], n_train: int) -> int:
    n = o.get("n_train")
    return min(n, n_train) if isinstance(n, int) else n_train


def _network(label: str, *, params: int, n_train: int, n_test: int, options: Mapping[str, Any],
             flops_per_sample: float, saved_per_sample: float, widest: int, features: int,
             flops_per_row: float = 0.0, saved_per_row: float = 0.0, data_bytes: float | None = None,
             setup_flops: float = 0.0) -> ProblemSize:
    n_train = _rows(options, n_train)
    bs = options.get("batch_size")
    batch = n_train if bs is None or bs >= n_train else bs
    if batch < n_train:  # a minibatch is a copy of its inputs, saved for backward by the first layer
        saved_per_sample += features
    n_all = n_train + n_test
    data = (n_all * (features + 1)) * BYTES if data_bytes is None else data_bytes
    return ProblemSize(
        label=label, params=params, batch=batch, n_train=n_train,
        forward_flops_per_sample=flops_per_sample,
        forward_flops_per_row=flops_per_row + ELEMENTWISE * params + NETWORK_CALL_OPS,
        activation_bytes_per_sample=saved_per_sample * BYTES, activation_bytes_per_row=saved_per_row * BYTES,
        fixed_bytes=data + 3 * params * BYTES + 200_000, setup_flops=setup_flops + 30.0 * params,
        metrics_flops_per_row=n_all * flops_per_sample + flops_per_row,
        metrics_bytes_per_row=3.0 * n_all * widest * BYTES, start_flops_per_row=30.0 * params + 1e5)


def _mlp(label: str, sizes: list[int], n_train: int, n_test: int, o: Mapping[str, Any]) -> ProblemSize:
    pairs = list(itertools.pairwise(sizes))
    params = sum((a + 1) * b for a, b in pairs)
    hidden = sum(sizes[1:-1])
    flops = sum(2.0 * a * b for a, b in pairs) + ELEMENTWISE * (3.0 * hidden + 5.0 * sizes[-1] + sizes[0])
    saved = 2.0 * hidden + 3.0 * sizes[-1]
    return _network(label, params=params, n_train=n_train, n_test=n_test, options=o, flops_per_sample=flops,
                    saved_per_sample=saved, widest=max(sizes), features=sizes[0])


def _matrix_sensing(label: str, o: Mapping[str, Any]) -> ProblemSize:
    n, k, m = o["n"], o["factor_rank"], o["m"]
    n2 = float(n * n)
    m_test = 100
    data = (m + m_test) * n2 * BYTES + n2 * BYTES
    transient = 2.0 * max(m, m_test) * n2 * BYTES
    factors = 2 if o.get("factorization") == "asymmetric" else 1  # F and G, or W
    size = _network(label, params=factors * n * k, n_train=m, n_test=m_test, options=o,
                    flops_per_sample=ELEMENTWISE * n2,  # <A_i, WW^T>: reads n^2 floats per sample
                    saved_per_sample=1.0, widest=1, features=int(n2), flops_per_row=2.0 * n2 * k + 4 * n2,
                    saved_per_row=2.0 * n2, data_bytes=data + transient,
                    setup_flops=30.0 * (m + m_test) * n2)
    return size


class _Declared:
    """The :class:`engine.limits.SizedProblem` of one problem family (what this module registers)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def validate(self, options: Mapping[str, Any]) -> dict[str, Any]:
        return validate_options(self.name, options)

    def size(self, options: Mapping[str, Any]) -> ProblemSize:
        defaults = accepted(self.name)
        return _size(self.name, options, _label(self.name, options, defaults))

    def check_bounds(self, options: Mapping[str, Any]) -> None:
        check_bounds(self.name, options)


for _name in OPTIONS:
    register_problem_size(_name, _Declared(_name))
