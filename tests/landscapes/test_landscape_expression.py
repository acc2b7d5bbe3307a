"""The safe expression parser: values, gradients, LaTeX, and rejection of everything else."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import landscapes
from engine.problem import Problem
from landscapes import ExpressionError, parse_expression
from landscapes.expression import FUNCTIONS, MAX_DEPTH, MAX_LENGTH, MAX_NODES


def _points(n: int = 257, seed: int = 0, lo: float = -3.0, hi: float = 3.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(n, 2, generator=gen, dtype=torch.float64)


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-t))


NUMPY_CASES: list[tuple[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]] = [
    ("sin(x)*y**2 + 0.1*x**2", lambda x, y: np.sin(x) * y**2 + 0.1 * x**2),
    ("(1 - x)**2 + 100*(y - x**2)**2", lambda x, y: (1 - x) ** 2 + 100 * (y - x**2) ** 2),
    ("x**2 - y**2", lambda x, y: x**2 - y**2),
    ("-x**2 + (-y)**2", lambda x, y: -(x**2) + (-y) ** 2),
    ("exp(-(x**2 + y**2)/2) * cos(3*x)", lambda x, y: np.exp(-(x**2 + y**2) / 2) * np.cos(3 * x)),
    ("log(1 + x**2) + sqrt(abs(y)) - tan(x/4)",
     lambda x, y: np.log(1 + x**2) + np.sqrt(np.abs(y)) - np.tan(x / 4)),
    ("tanh(x) + sinh(y/2) - cosh(x/3)", lambda x, y: np.tanh(x) + np.sinh(y / 2) - np.cosh(x / 3)),
    ("arctan(x) + atan(y) + arcsin(x/4) + asin(y/5) + arccos(x/3) + acos(y/4)",
     lambda x, y: np.arctan(x) + np.arctan(y) + np.arcsin(x / 4) + np.arcsin(y / 5) + np.arccos(x / 3)
     + np.arccos(y / 4)),
    ("log1p(x**2) + expm1(y/3) + sigmoid(x*y)",
     lambda x, y: np.log1p(x**2) + np.expm1(y / 3) + _sigmoid(x * y)),
    ("min(x, y) + 2*max(x**2, y) + hypot(x, y) + atan2(y, x) + arctan2(x, 1)",
     lambda x, y: np.minimum(x, y) + 2 * np.maximum(x**2, y) + np.hypot(x, y) + np.arctan2(y, x)
     + np.arctan2(x, 1)),
    ("pi*x + e**y - 2**-x + 1e-3/(1 + x**2)", lambda x, y: np.pi * x + np.e**y - 2.0**-x + 1e-3 / (1 + x**2)),
    ("x**2**0.5 + +y - - -x + 3/2/x", lambda x, y: x ** (2**0.5) + y - x + 3 / 2 / x),
    ("2**x**2", lambda x, y: 2.0 ** (x**2)),
    ("  (x\n + y)\t* 1_000  ", lambda x, y: (x + y) * 1000),
]


@pytest.mark.parametrize(("src", "ref"), NUMPY_CASES, ids=[c[0] for c in NUMPY_CASES])
def test_values_match_numpy(src: str, ref: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
    f = parse_expression(src)
    pts = _points()
    if "x**2**0.5" in src:
        pts = pts.abs() + 0.1  # real powers need a positive base
    out = f.loss(pts)
    assert out.shape == (pts.shape[0],) and out.dtype == torch.float64
    expected = ref(pts[:, 0].numpy(), pts[:, 1].numpy())
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("src", [c[0] for c in NUMPY_CASES[:11]])
def test_gradients_flow_and_match_finite_differences(src: str) -> None:
    f = parse_expression(src)
    x = _points(n=16, seed=1, lo=-2.0, hi=2.0).requires_grad_(True)
    (g,) = torch.autograd.grad(f.loss(x).sum(), x)
    assert bool(torch.isfinite(g).all())
    h = 1e-5
    with torch.no_grad():
        fd = torch.stack([(f.loss(x + h * e) - f.loss(x - h * e)) / (2 * h)
                          for e in torch.eye(2, dtype=torch.float64)], dim=-1)
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-6 * max(1.0, g.abs().max().item()))


def test_result_is_a_problem() -> None:
    f = parse_expression("sin(x)*y**2 + 0.1*x**2", name="wavy", bounds=((-2, 2), (-1, 3)))
    assert isinstance(f, Problem)
    assert f.name == "wavy" and f.dim == 2 and f.minima == () and f.min_value is None
    assert f.bounds.low == (-2.0, -1.0) and f.bounds.high == (2.0, 3.0)
    assert f.start == pytest.approx((1.2, 1.8))  # 80 % / 70 % across the box
    assert f.x0().dtype == torch.float64
    assert dict(f.params) == {"expression": "sin(x)*y**2 + 0.1*x**2"}
    assert parse_expression("x").name == "expression"
    assert parse_expression("x", start=(1, 2)).start == (1.0, 2.0)


@pytest.mark.parametrize("src", ["3", "pi", "2*pi + e", "-1.5", "sin(1)**2 + cos(1)**2"])
def test_constant_expressions_return_batch_shape(src: str) -> None:
    f = parse_expression(src)
    x = _points(n=7).requires_grad_(True)
    out = f.loss(x)
    assert out.shape == (7,)
    expected = {"3": 3.0, "pi": np.pi, "2*pi + e": 2 * np.pi + np.e, "-1.5": -1.5}.get(src, 1.0)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-15)
    out.sum().backward()  # a constant is still differentiable, with a zero gradient
    assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))
    assert f.loss(x[0]).shape == ()


def test_single_variable_expression() -> None:
    f = parse_expression("x**2")
    x = _points(n=5).requires_grad_(True)
    f.loss(x).sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad[:, 0], 2 * x.detach()[:, 0])
    assert torch.equal(x.grad[:, 1], torch.zeros(5, dtype=torch.float64))


def test_float32_and_meta_device() -> None:
    f = parse_expression("sin(x)*y**2 + 0.1*x**2 + pi")
    out = f.loss(_points(n=9).float())
    assert out.dtype == torch.float32 and out.shape == (9,)
    meta = f.loss(torch.empty(4, 2, device="meta"))
    assert meta.device.type == "meta" and meta.shape == (4,)
    assert parse_expression("2").loss(torch.empty(4, 2, device="meta")).shape == (4,)


@pytest.mark.timeout(60)  # a hang guard: 9**9**9 in Python integers takes minutes (370M digits)
def test_overflow_tricks_are_harmless() -> None:
    """Overflowing constants are refused where they are written, functions that overflow at their
    start point say so, and nothing is evaluated with Python integers."""
    cases = [("9**9**9**9", r"'9\*\*9\*\*9' at column 4 evaluates to inf; numbers must stay finite"),
             ("9**9**9", r"'9\*\*9\*\*9' at column 1 evaluates to inf"),
             ("10**1000", r"'10\*\*1000' at column 1 evaluates to inf"),
             ("exp(exp(exp(x)))",
              r"f\(x, y\) is not finite at the start point \(3, 2\): it evaluates to inf"),
             ("(x*1e308)*1e308", r"not finite at the start point \(3, 2\): it evaluates to inf")]
    for src, message in cases:
        with pytest.raises(ExpressionError, match=message):
            parse_expression(src)


@pytest.mark.parametrize(("src", "message"), [
    ("x/0", r"division by zero: 'x/0' at column 1"),
    ("y + x/(1 - 1)", r"division by zero: 'x/\(1 - 1\)' at column 5"),
    ("log(0) + x", r"'log\(0\)' at column 1 evaluates to -inf"),
    ("sqrt(-1)*x", r"'sqrt\(-1\)' at column 1 evaluates to nan"),
    ("1/(x - x)", r"not finite at the start point \(3, 2\): it evaluates to inf"),
    ("sqrt(x - 4) + y", r"not finite at the start point \(3, 2\): it evaluates to nan"),
    ("x**2**2**2**2", r"exponent tower 'x\*\*2\*\*2\*\*2\*\*2' at column 1 is too tall \(more than 3"),
])
def test_non_finite_functions_are_refused_saying_so(src: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message):
        parse_expression(src)


def test_a_function_finite_nowhere_on_its_box_is_refused() -> None:
    with pytest.raises(ExpressionError, match="not finite anywhere on a grid over its box"):
        # real only for |x - 0.05| < 0.032: at the start, never on the grid (spacing 0.25)
        parse_expression("sqrt(1e-3 - (x - 0.05)**2) + y", start=(0.05, 0.0), bounds=((-1, 1), (-1, 1)))


def test_partly_non_finite_functions_are_accepted_with_a_note() -> None:
    f = parse_expression("log(x)")  # the box reaches x < 0; the start (3, 2) is fine
    assert "not finite at 45 of 81 grid points of the box (e.g. at (-5, -5))" in f.description
    g = parse_expression("arccos(x/3)")  # the default start sits on the domain's edge
    assert "Its gradient is not finite at the start point (3, 2) (-inf, 0)" in g.description
    gauss = parse_expression("e**(-x**2 - y**2)")
    assert gauss.description == "A user-defined landscape, f(x, y) = e**(-x**2 - y**2)."
    assert parse_expression("x**2**2**2").loss(torch.tensor([[1.5, 0.0]])).item() == pytest.approx(1.5**16)


@pytest.mark.parametrize(
    ("src", "latex"),
    [
        ("sin(x)*y**2 + 0.1*x**2", r"\sin(x) y^{2} + 0.1 x^{2}"),
        ("x - (y - 1)", r"x - \left(y - 1\right)"),
        ("-(x + y)**2", r"-\left(x + y\right)^{2}"),
        ("(x/y)**2", r"\left(\frac{x}{y}\right)^{2}"),
        ("sqrt(x**2 + y**2)", r"\sqrt{x^{2} + y^{2}}"),
        ("2*3*x", r"2 \cdot 3 x"),
        ("abs(x) + pi*e**-y", r"\left|x\right| + \pi e^{-y}"),
        ("1e-5*x", r"10^{-5} x"),
        ("x + -y", r"x + \left(-y\right)"),
        ("exp(x/2)", r"\exp\left(\frac{x}{2}\right)"),
        ("min(x, y)", r"\min(x, y)"),
    ],
)
def test_latex(src: str, latex: str) -> None:
    assert parse_expression(src).latex == "f(x, y) = " + latex


# --------------------------------------------------------------------------- rejection

BAD: list[tuple[str, str, int | None]] = [
    # (source, regex the message must match, expected column or None)
    ("__import__('os')", r"unknown function '__import__' at column 1", 1),
    ("__import__('os').system('ls')", r"attribute access is not allowed: '\.system' at column 17", 17),
    ("x.__class__", r"attribute access is not allowed: '\.__class__' at column 2", 2),
    ("x + y.__class__.__mro__", r"attribute access .*'\.__mro__' at column 16", 16),
    ("().__class__.__bases__[0]", r"subscripts \(indexing\) are not allowed", 1),
    ("x[0]", r"subscripts \(indexing\) are not allowed: 'x\[0\]' at column 1", 1),
    ("lambda: 1", r"lambda expressions are not allowed", 1),
    ("(lambda: x)()", r"lambda expressions are not allowed: 'lambda: x' at column 2", 2),
    ("[x for x in (1, 2)]", r"comprehensions are not allowed", 1),
    ("sum(i for i in x)", r"unknown function 'sum' at column 1", 1),
    ("x + {k: 1 for k in y}", r"comprehensions are not allowed: .* at column 5", 5),
    ("'abc'", r"strings are not allowed: .*'abc'.* at column 1", 1),
    ("x + b'a'", r"strings are not allowed.* at column 5", 5),
    ("sin(x=1)", r"keyword arguments are not allowed: 'x=' at column 5", 5),
    ("max(x, y, **z)", r"keyword arguments are not allowed: '\*\*' at column 11", 11),
    ("sin(*x)", r"unpacking \('\*'\) is not allowed", 5),
    ("open('/etc/passwd')", r"unknown function 'open' at column 1", 1),
    ("eval('1')", r"unknown function 'eval'", 1),
    ("exec('1')", r"unknown function 'exec'", 1),
    ("getattr(x, 'y')", r"unknown function 'getattr'", 1),
    ("z + 1", r"unknown name 'z' at column 1; allowed variables: x, y; constants: pi, e; functions: sin", 1),
    ("x + 2*z", r"unknown name 'z' at column 7", 7),
    ("sinn(x)", r"unknown function 'sinn' at column 1 \(did you mean 'sin'\?\)", 1),
    ("sin", r"'sin' at column 1 is a function; call it", 1),
    ("x(2)", r"'x' at column 1 is not a function", 1),
    ("2(x)", r"'2' at column 1 is not a function.*write 2\*x", 1),
    ("x ^ 2", r"the operator '\^' is not allowed: '\^' at column 3; use \*\* for powers", 3),
    ("x % 2", r"the operator '%' is not allowed.* at column 3", 3),
    ("x // y", r"the operator '//' is not allowed.* at column 3", 3),
    ("x @ y", r"the operator '@' is not allowed", 3),
    ("not x", r"the operator 'not' is not allowed", 1),
    ("~x", r"the operator '~' is not allowed", 1),
    ("x < y", r"comparisons are not allowed", 1),
    ("x and y", r"boolean operators", 1),
    ("x if y else 1", r"conditional expressions", 1),
    ("(y := 2)", r"assignment expressions", 2),
    ("(x, y)", r"tuples are not allowed", 1),
    ("[x]", r"lists are not allowed", 1),
    ("{x: y}", r"dicts are not allowed", 1),
    ("f'{x}'", r"f-strings are not allowed", 1),
    ("True + x", r"booleans are not allowed: 'True' at column 1", 1),
    ("None", r"the constant None is not allowed", 1),
    ("...", r"the constant Ellipsis is not allowed", 1),
    ("1j * x", r"complex numbers are not allowed", 1),
    ("1e999 * x", r"number is too large: '1e999' at column 1", 1),
    ("sin(x, y)", r"sin\(\) takes 1 argument, got 2", 1),
    ("hypot(x)", r"hypot\(\) takes 2 arguments, got 1", 1),
    ("x + * y", r"syntax error at column 5: invalid syntax\n  x \+ \* y\n      \^", 5),
    ("sin(x", r"syntax error at column 4: '\(' was never closed", 4),
    ("2x", r"syntax error at column 1: invalid decimal literal \(write 2\*x, not 2x\)", 1),
    ("x = 1", r"syntax error at column", None),
    ("import os", r"syntax error at column 1", 1),
    ("x; y", r"syntax error", None),
    ("yield x", r"syntax error|'yield' expressions are not allowed", None),
    ("await x", r"'await' expressions are not allowed|syntax error", None),
    ("x\x00", r"could not be parsed|syntax error", None),
    ("", r"expression is empty", None),
    ("   \n\t ", r"expression is empty", None),
    ("x + é", r"unknown name 'é' at column 5", 5),
    ("x + 'é'.y", r"attribute access is not allowed: '\.y' at column 8", 8),
    ("  z", r"unknown name 'z' at column 3", 3),
    ("x +\n  * y", r"syntax error at column 7", 7),
]


@pytest.mark.parametrize(("src", "pattern", "column"), BAD, ids=[repr(b[0]) for b in BAD])
def test_invalid_input_raises_expression_error(src: str, pattern: str, column: int | None) -> None:
    with pytest.raises(ExpressionError, match=pattern) as info:
        parse_expression(src)
    assert isinstance(info.value, ValueError)
    if column is not None:
        assert info.value.column == column


def test_too_long() -> None:
    src = "x + " * 152 + "y"
    message = rf"expression is too long \({len(src)} > {MAX_LENGTH} characters\)"
    with pytest.raises(ExpressionError, match=message):
        parse_expression(src)
    assert parse_expression("x" + " " * (MAX_LENGTH - 1)).loss(_points(n=2)).shape == (2,)


def test_too_deep() -> None:
    ok = "sin(" * (MAX_DEPTH - 1) + "x" + ")" * (MAX_DEPTH - 1)
    parse_expression(ok)
    deep = "sin(" * MAX_DEPTH + "x" + ")" * MAX_DEPTH
    message = rf"nested too deeply \(more than {MAX_DEPTH} levels\) at column"
    with pytest.raises(ExpressionError, match=message):
        parse_expression(deep)
    with pytest.raises(ExpressionError, match="nested too deeply"):
        parse_expression("-" * 300 + "x")
    with pytest.raises(ExpressionError):  # Python's own parser limit on parentheses (a syntax error)
        parse_expression("(" * 240 + "x" + ")" * 240)


def _balanced(leaves: int) -> str:
    if leaves == 1:
        return "x"
    half = leaves // 2
    return f"({_balanced(half)}+{_balanced(leaves - half)})"


def test_too_many_nodes() -> None:
    src = _balanced(110)  # shallow (depth 8) but 219 sub-expressions
    assert len(src) <= MAX_LENGTH
    with pytest.raises(ExpressionError, match=rf"too large \(219 > {MAX_NODES} sub-expressions\)"):
        parse_expression(src)
    assert parse_expression(_balanced(100)).loss(_points(n=3)).shape == (3,)


def test_non_string_input() -> None:
    with pytest.raises(ExpressionError, match="must be a string"):
        parse_expression(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("bounds", [((1, 0), (0, 1)), ((0, 1),), ((0, float("inf")), (0, 1)), "abc"])
def test_bad_bounds(bounds: object) -> None:
    with pytest.raises(ValueError, match="bounds"):
        parse_expression("x", bounds=bounds)  # type: ignore[arg-type]


def test_function_table_is_the_documented_whitelist() -> None:
    assert set(FUNCTIONS) == {
        "sin", "cos", "tan", "exp", "log", "sqrt", "abs", "tanh", "sinh", "cosh", "arctan", "atan", "arcsin",
        "asin", "arccos", "acos", "log1p", "expm1", "sigmoid", "min", "max", "hypot", "atan2", "arctan2",
    }
    assert all(getattr(spec.op, "__module__", "").startswith("torch") or spec.op.__name__ in dir(torch)
               for spec in FUNCTIONS.values())


def test_landscapes_source_never_evaluates_code() -> None:
    """No eval / exec / compile / __import__ anywhere in the package, by text and by syntax tree."""
    files = sorted(Path(landscapes.__file__).parent.glob("*.py"))
    assert {p.name for p in files} >= {"__init__.py", "analytic.py", "catalog.py", "expression.py"}
    for path in files:
        text = path.read_text()
        assert not re.search(r"\b(eval|exec|compile)\s*\(", text), path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                forbidden = {"eval", "exec", "compile", "__import__", "literal_eval", "setattr"}
                assert called not in forbidden, path
                if called == "getattr":  # only fixed attribute names, never user-controlled ones
                    attr = node.args[1]
                    assert isinstance(attr, ast.Constant) and isinstance(attr.value, str), path
