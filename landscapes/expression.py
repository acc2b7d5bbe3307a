r"""User-typed 2-D landscapes: ``"sin(x)*y**2 + 0.1*x**2"`` -> :class:`AnalyticFunction`.

The text is parsed with :func:`ast.parse` (``mode="eval"``, which builds a syntax tree and runs
nothing) and the tree is walked against an explicit whitelist: numbers, the variables ``x`` and
``y``, the constants ``pi`` and ``e``, ``+ - * / **``, unary ``-``/``+``, parentheses and calls
of the functions in :data:`FUNCTIONS`. Anything else (names, attributes, subscripts, strings,
keywords, lambdas, comprehensions, ...) is rejected with an :class:`ExpressionError` that names
the offending token and its 1-based column. The accepted tree is compiled into a tree of
closures over torch ops, so the result is batched, differentiable, dtype- and device-agnostic.
Nothing is ever handed to the Python interpreter to run.

Limits (from :data:`engine.limits.DEFAULT_LIMITS`, the one home of every size limit): at most
:data:`MAX_LENGTH` characters, expression depth :data:`MAX_DEPTH`, :data:`MAX_NODES`
sub-expressions and :data:`MAX_POWER_TOWER` chained ``**``.

Numbers must stay finite: a constant part that overflows (``9**9**9``, ``10**1000``) or divides
by zero (``x/0``) is refused where it is written, and the function is evaluated at its start point
and on a 9 x 9 grid over its box before it is accepted. Not finite at the start, or nowhere finite
on the grid: refused, saying so; not finite on part of the grid (``log(x)`` on a box reaching
x < 0), or an infinite gradient at the start: accepted, and the description says where.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch

from engine.device import DEFAULT_DTYPE
from engine.limits import DEFAULT_LIMITS
from engine.problem import Bounds
from landscapes.analytic import AnalyticFunction

__all__ = [
    "CONSTANTS",
    "FUNCTIONS",
    "MAX_DEPTH",
    "MAX_LENGTH",
    "MAX_NODES",
    "MAX_POWER_TOWER",
    "VARIABLES",
    "ExpressionError",
    "parse_expression",
]

MAX_LENGTH = DEFAULT_LIMITS.expression_length
MAX_DEPTH = DEFAULT_LIMITS.expression_depth
MAX_NODES = DEFAULT_LIMITS.expression_nodes
MAX_POWER_TOWER = DEFAULT_LIMITS.expression_power_tower
GRID = 9
"""Points per axis of the grid on which a typed function must be finite somewhere."""

VARIABLES: tuple[str, ...] = ("x", "y")
CONSTANTS: dict[str, tuple[float, str]] = {"pi": (math.pi, r"\pi"), "e": (math.e, "e")}

Tensor = torch.Tensor
_Node = Callable[[Tensor, Tensor], Tensor]  # compiled sub-expression: (x, y) -> tensor


class ExpressionError(ValueError):
    """The expression is not valid; ``column`` (1-based) and ``token`` locate the problem when known."""

    def __init__(self, message: str, *, column: int | None = None, token: str | None = None) -> None:
        super().__init__(message)
        self.column = column
        self.token = token


# --------------------------------------------------------------------------- whitelisted functions


def _paren(s: str) -> str:
    r"""``(s)``, with ``\left( \right)`` when ``s`` holds tall material."""
    return rf"\left({s}\right)" if ("\\frac" in s or "\\left" in s or "\\sqrt" in s) else f"({s})"


@dataclass(frozen=True)
class _Function:
    arity: int
    op: Callable[..., Tensor]
    latex: Callable[..., str]


def _named(cmd: str) -> Callable[[str], str]:
    return lambda a: cmd + _paren(a)


def _named2(cmd: str) -> Callable[[str, str], str]:
    return lambda a, b: cmd + _paren(f"{a}, {b}")


FUNCTIONS: Mapping[str, _Function] = MappingProxyType({
    "sin": _Function(1, torch.sin, _named(r"\sin")),
    "cos": _Function(1, torch.cos, _named(r"\cos")),
    "tan": _Function(1, torch.tan, _named(r"\tan")),
    "exp": _Function(1, torch.exp, _named(r"\exp")),
    "log": _Function(1, torch.log, _named(r"\log")),
    "sqrt": _Function(1, torch.sqrt, lambda a: rf"\sqrt{{{a}}}"),
    "abs": _Function(1, torch.abs, lambda a: rf"\left|{a}\right|"),
    "tanh": _Function(1, torch.tanh, _named(r"\tanh")),
    "sinh": _Function(1, torch.sinh, _named(r"\sinh")),
    "cosh": _Function(1, torch.cosh, _named(r"\cosh")),
    "arctan": _Function(1, torch.atan, _named(r"\arctan")),
    "atan": _Function(1, torch.atan, _named(r"\arctan")),
    "arcsin": _Function(1, torch.asin, _named(r"\arcsin")),
    "asin": _Function(1, torch.asin, _named(r"\arcsin")),
    "arccos": _Function(1, torch.acos, _named(r"\arccos")),
    "acos": _Function(1, torch.acos, _named(r"\arccos")),
    "log1p": _Function(1, torch.log1p, lambda a: r"\log" + _paren(f"1 + {a}")),
    "expm1": _Function(1, torch.expm1, lambda a: rf"\left(e^{{{a}}} - 1\right)"),
    "sigmoid": _Function(1, torch.sigmoid, _named(r"\sigma")),
    "min": _Function(2, torch.minimum, _named2(r"\min")),
    "max": _Function(2, torch.maximum, _named2(r"\max")),
    "hypot": _Function(2, torch.hypot, lambda a, b: rf"\sqrt{{{_sq(a)} + {_sq(b)}}}"),
    "atan2": _Function(2, torch.atan2, _named2(r"\operatorname{atan2}")),
    "arctan2": _Function(2, torch.atan2, _named2(r"\operatorname{atan2}")),
})
"""Whitelisted functions: name -> (number of arguments, torch op, LaTeX renderer)."""


def _sq(a: str) -> str:
    simple = a.replace("\\", "").isalnum() or a.replace(".", "").isdigit()
    return f"{a}^{{2}}" if simple else rf"\left({a}\right)^{{2}}"


# LaTeX precedence levels (higher binds tighter).
_ADD, _MUL, _UNARY, _POW, _ATOM = 1, 2, 3, 4, 5

_BINOPS: dict[type[ast.operator], tuple[str, Callable[[Tensor, Tensor], Tensor] | None]] = {
    ast.Add: ("+", torch.add),
    ast.Sub: ("-", torch.sub),
    ast.Mult: ("*", torch.mul),
    ast.Div: ("/", torch.div),
    ast.Pow: ("**", torch.pow),
    ast.FloorDiv: ("//", None),
    ast.Mod: ("%", None),
    ast.MatMult: ("@", None),
    ast.BitXor: ("^", None),
    ast.BitAnd: ("&", None),
    ast.BitOr: ("|", None),
    ast.LShift: ("<<", None),
    ast.RShift: (">>", None),
}

_DISALLOWED: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts (indexing)",
    ast.Slice: "slices",
    ast.Lambda: "lambda expressions",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "generator expressions",
    ast.List: "lists",
    ast.Tuple: "tuples",
    ast.Set: "sets",
    ast.Dict: "dicts",
    ast.Compare: "comparisons",
    ast.BoolOp: "boolean operators ('and', 'or')",
    ast.IfExp: "conditional expressions ('a if c else b')",
    ast.NamedExpr: "assignment expressions (':=')",
    ast.JoinedStr: "f-strings",
    ast.FormattedValue: "f-strings",
    ast.Starred: "unpacking ('*')",
    ast.Await: "'await' expressions",
    ast.Yield: "'yield' expressions",
    ast.YieldFrom: "'yield' expressions",
}


def _allowed_summary() -> str:
    return (f"allowed variables: {', '.join(VARIABLES)}; constants: {', '.join(CONSTANTS)}; "
            f"functions: {', '.join(FUNCTIONS)}; operators: + - * / **")


def _format_number(v: float) -> str:
    """A float for LaTeX: ``2``, ``0.1``, ``2.5 \\cdot 10^{-5}``."""
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    text = repr(v)
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    power = f"10^{{{int(exponent)}}}"
    return power if mantissa in ("1", "1.0") else rf"{mantissa} \cdot {power}"


# --------------------------------------------------------------------------- compiler


class _Compiler:
    """Validates an AST against the whitelist and compiles it to (closure, LaTeX, precedence).

    ``text`` is the parsed (left-stripped, single-line) source; ``indent`` is how many characters
    were stripped, so reported columns point into what the user typed.
    """

    def __init__(self, text: str, indent: int = 0) -> None:
        self.raw = text.encode("utf-8")
        self.indent = indent

    # -- locations ---------------------------------------------------------------------------
    def column(self, byte_offset: int | None) -> int | None:
        """1-based character column of a UTF-8 byte offset from the AST."""
        if byte_offset is None:
            return None
        return self.indent + len(self.raw[:byte_offset].decode("utf-8", errors="ignore")) + 1

    def segment(self, node: ast.AST, limit: int = 40) -> str:
        start = getattr(node, "col_offset", None)
        end = getattr(node, "end_col_offset", None)
        if start is None or end is None:
            return ""
        text = self.raw[start:end].decode("utf-8", errors="replace")
        return text if len(text) <= limit else text[: limit - 3] + "..."

    def error(self, template: str, node: ast.AST | None = None, *, token: str | None = None,
              column: int | None = None) -> ExpressionError:
        """An :class:`ExpressionError`; ``{tok}`` in ``template`` becomes the quoted token and ``{at}``
        becomes `` at column N``."""
        if column is None and node is not None:
            column = self.column(getattr(node, "col_offset", None))
        if token is None and node is not None:
            token = self.segment(node)
        at = f" at column {column}" if column else ""
        message = template.replace("{tok}", repr(token) if token else "").replace("{at}", at)
        return ExpressionError(message, column=column, token=token)

    def not_allowed(self, what: str, node: ast.AST, *, token: str | None = None, column: int | None = None,
                    hint: str | None = None) -> ExpressionError:
        return self.error(f"{what} not allowed: {{tok}}{{at}}; {hint or _allowed_summary()}", node,
                          token=token, column=column)

    # -- compilation ---------------------------------------------------------------------------
    def build(self, node: ast.AST) -> tuple[_Node, str, int]:
        if isinstance(node, ast.Constant):
            return self._constant(node)
        if isinstance(node, ast.Name):
            return self._name(node)
        if isinstance(node, ast.BinOp):
            return self._binop(node)
        if isinstance(node, ast.UnaryOp):
            return self._unaryop(node)
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Attribute):
            col = self.column(node.end_col_offset - len(node.attr.encode("utf-8")) - 1)  # type: ignore[operator]
            raise self.not_allowed("attribute access is", node, token="." + node.attr, column=col)
        what = _DISALLOWED.get(type(node), f"'{type(node).__name__}' expressions")
        raise self.not_allowed(f"{what} are", node)

    def _constant(self, node: ast.Constant) -> tuple[_Node, str, int]:
        v = node.value
        if isinstance(v, (str, bytes)):
            raise self.not_allowed("strings are", node)
        if isinstance(v, complex):
            raise self.not_allowed("complex numbers are", node)
        if isinstance(v, bool):
            raise self.not_allowed("booleans are", node, token=repr(v))
        if not isinstance(v, (int, float)):
            raise self.not_allowed(f"the constant {v!r} is", node, token=repr(v))
        try:
            value = float(v)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise self.error("number is too large: {tok}{at}", node, token=self.segment(node, 20))
        latex = _format_number(value)
        return _const_node(value), latex, (_MUL if "cdot" in latex else _ATOM)

    def _name(self, node: ast.Name) -> tuple[_Node, str, int]:
        name = node.id
        if name == "x":
            return _var_x, "x", _ATOM
        if name == "y":
            return _var_y, "y", _ATOM
        if name in CONSTANTS:
            value, latex = CONSTANTS[name]
            return _const_node(value), latex, _ATOM
        if name in FUNCTIONS:
            raise self.error(f"{{tok}}{{at}} is a function; call it, e.g. {name}(x)", node, token=name)
        close = difflib.get_close_matches(name, [*VARIABLES, *CONSTANTS, *FUNCTIONS], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise self.error(f"unknown name {{tok}}{{at}}{hint}; {_allowed_summary()}", node, token=name)

    def _op_column(self, node: ast.BinOp, symbol: str) -> int | None:
        """Column of the operator token between the two operands."""
        start, end = node.left.end_col_offset, node.right.col_offset
        if start is None or end is None:
            return self.column(node.col_offset)
        idx = self.raw[start:end].find(symbol.encode())
        return self.column(start + max(idx, 0))

    def _binop(self, node: ast.BinOp) -> tuple[_Node, str, int]:
        symbol, op = _BINOPS.get(type(node.op), ("?", None))
        if op is None:
            hint = "use ** for powers" if symbol == "^" else None
            raise self.not_allowed(f"the operator '{symbol}' is", node, token=symbol,
                                   column=self._op_column(node, symbol), hint=hint)
        lf, ll, lp = self.build(node.left)
        rf_, rl, rp = self.build(node.right)
        if isinstance(node.op, ast.Pow):
            base = ll if lp >= _ATOM else rf"\left({ll}\right)"
            exponent = _constant_exponent(node.right)
            if exponent is not None:
                return _pow_const(lf, exponent), f"{base}^{{{rl}}}", _POW
            return _binary(torch.pow, lf, rf_), f"{base}^{{{rl}}}", _POW
        fn = _binary(op, lf, rf_)
        if isinstance(node.op, ast.Div):
            return fn, rf"\frac{{{ll}}}{{{rl}}}", _MUL
        if isinstance(node.op, ast.Add):
            return fn, f"{ll} + {_wrap_neg(rl)}", _ADD
        if isinstance(node.op, ast.Sub):
            right = rf"\left({rl}\right)" if rp <= _ADD else _wrap_neg(rl)
            return fn, f"{ll} - {right}", _ADD
        # multiplication: juxtapose, with \cdot where two numbers would run together
        left = rf"\left({ll}\right)" if lp < _MUL else ll
        right = rf"\left({rl}\right)" if rp < _MUL else _wrap_neg(rl)
        sep = r" \cdot " if (right[:1].isdigit() or right[:1] == ".") else " "
        return fn, f"{left}{sep}{right}", _MUL

    def _unaryop(self, node: ast.UnaryOp) -> tuple[_Node, str, int]:
        if isinstance(node.op, (ast.Not, ast.Invert)):
            symbol = "not" if isinstance(node.op, ast.Not) else "~"
            raise self.not_allowed(f"the operator '{symbol}' is", node, token=symbol)
        f, latex, prec = self.build(node.operand)
        if isinstance(node.op, ast.UAdd):
            return f, latex, prec
        inner = rf"\left({latex}\right)" if (prec <= _ADD or latex.startswith("-")) else latex
        return _unary(torch.neg, f), f"-{inner}", _UNARY

    def _call(self, node: ast.Call) -> tuple[_Node, str, int]:
        func = node.func
        if not isinstance(func, ast.Name):
            if isinstance(func, (ast.Constant, ast.BinOp, ast.UnaryOp, ast.Call)):
                raise self.error("{tok}{at} is not a function, so it cannot be called; "
                                 "write 2*x or (x + 1)*y for products", func)
            self.build(func)  # raises the specific error (attribute, lambda, subscript, ...)
            raise self.error("{tok}{at} cannot be called", func)  # pragma: no cover
        name = func.id
        spec = FUNCTIONS.get(name)
        if spec is None:
            if name in VARIABLES or name in CONSTANTS:
                raise self.error(f"{{tok}}{{at}} is not a function; write {name}*(...) to multiply",
                                 func, token=name)
            close = difflib.get_close_matches(name, list(FUNCTIONS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            allowed = ", ".join(FUNCTIONS)
            raise self.error(f"unknown function {{tok}}{{at}}{hint}; allowed functions: {allowed}",
                             func, token=name)
        if node.keywords:
            kw = node.keywords[0]
            token = f"{kw.arg}=" if kw.arg is not None else "**"
            raise self.not_allowed("keyword arguments are", kw, token=token,
                                   hint=f"call {name}() with positional arguments only")
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self.not_allowed("unpacking ('*') is", arg, token="*")
        if len(node.args) != spec.arity:
            plural = "s" if spec.arity != 1 else ""
            got = len(node.args)
            raise self.error(f"{name}() takes {spec.arity} argument{plural}, got {got}: {{tok}}{{at}}", node)
        compiled = [self.build(a) for a in node.args]
        latex = spec.latex(*(c[1] for c in compiled))
        if spec.arity == 1:
            return _unary(spec.op, compiled[0][0]), latex, _ATOM
        return _binary(spec.op, compiled[0][0], compiled[1][0]), latex, _ATOM


def _var_x(x: Tensor, y: Tensor) -> Tensor:
    return x


def _var_y(x: Tensor, y: Tensor) -> Tensor:
    return y


def _unary(op: Callable[[Tensor], Tensor], a: _Node) -> _Node:
    def node(x: Tensor, y: Tensor) -> Tensor:
        return op(a(x, y))

    return node


def _binary(op: Callable[[Tensor, Tensor], Tensor], a: _Node, b: _Node) -> _Node:
    def node(x: Tensor, y: Tensor) -> Tensor:
        return op(a(x, y), b(x, y))

    return node


def _pow_const(a: _Node, exponent: float) -> _Node:
    def node(x: Tensor, y: Tensor) -> Tensor:
        return torch.pow(a(x, y), exponent)

    return node


def _const_node(value: float) -> _Node:
    def node(x: Tensor, y: Tensor) -> Tensor:
        return torch.full((), value, dtype=x.dtype, device=x.device)

    return node


def _constant_exponent(node: ast.AST) -> float | None:
    """The exponent as a float when it is a plain (possibly negated) number, else ``None``."""
    sign = 1.0
    while isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        if isinstance(node.op, ast.USub):
            sign = -sign
        node = node.operand
    value = getattr(node, "value", None)
    if isinstance(node, ast.Constant) and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            value = sign * float(node.value)
        except OverflowError:
            return None
        return value if math.isfinite(value) else None
    return None


def _wrap_neg(latex: str) -> str:
    return rf"\left({latex}\right)" if latex.startswith("-") else latex


# --------------------------------------------------------------------------- structural limits


def _check_depth(compiler: _Compiler, node: ast.AST, depth: int = 1) -> None:
    if depth > MAX_DEPTH:
        raise compiler.error(f"expression is nested too deeply (more than {MAX_DEPTH} levels){{at}}", node,
                             token="")
    for child in ast.iter_child_nodes(node):
        _check_depth(compiler, child, depth + 1 if isinstance(child, ast.expr) else depth)


def _tower(node: ast.AST) -> int:
    """How many ``**`` are chained in the exponent tower rooted at ``node`` (through signs)."""
    while isinstance(node, ast.UnaryOp):
        node = node.operand
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        return 1 + _tower(node.right)
    return 0


def _check_towers(compiler: _Compiler, root: ast.AST) -> None:
    for node in ast.walk(root):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow) and _tower(node) > MAX_POWER_TOWER:
            raise compiler.error(f"exponent tower {{tok}}{{at}} is too tall (more than {MAX_POWER_TOWER} "
                                 f"'**' chained)", node)


_FOLD_BINOPS: dict[type[ast.operator], Callable[[Tensor, Tensor], Tensor]] = {
    ast.Add: torch.add, ast.Sub: torch.sub, ast.Mult: torch.mul, ast.Div: torch.div, ast.Pow: torch.pow}


def _fold(compiler: _Compiler, node: ast.AST) -> Tensor | None:
    """The value of a constant sub-expression (a 0-d float64 tensor, computed as the function will
    compute it), ``None`` if it depends on x or y. Refuses the first constant part that is not
    finite, and any division by a constant zero, naming it."""
    if isinstance(node, ast.Constant):
        return torch.tensor(float(node.value), dtype=torch.float64)
    if isinstance(node, ast.Name):
        return torch.tensor(CONSTANTS[node.id][0], dtype=torch.float64) if node.id in CONSTANTS else None
    if isinstance(node, ast.UnaryOp):
        value = _fold(compiler, node.operand)
        return None if value is None else (-value if isinstance(node.op, ast.USub) else value)
    if isinstance(node, ast.BinOp):
        left, right = _fold(compiler, node.left), _fold(compiler, node.right)
        if isinstance(node.op, ast.Div) and right is not None and float(right) == 0.0:
            raise compiler.error("division by zero: {tok}{at}", node)
        if left is None or right is None:
            return None
        value = _FOLD_BINOPS[type(node.op)](left, right)
    elif isinstance(node, ast.Call):
        args = [_fold(compiler, a) for a in node.args]
        if any(a is None for a in args):
            return None
        value = FUNCTIONS[node.func.id].op(*args)  # type: ignore[attr-defined]
    else:
        return None
    if not bool(torch.isfinite(value)):
        raise compiler.error(f"{{tok}}{{at}} evaluates to {float(value)}; numbers must stay finite",
                             node)
    return value


def count_nodes(src: str) -> int:
    """Sub-expressions of ``src`` (its evaluation cost: one elementwise op each), after the length
    check; raises :class:`ExpressionError` for what cannot be parsed."""
    tree, _, _ = _parse(src)
    return sum(isinstance(n, ast.expr) for n in ast.walk(tree))


def _parse(src: str) -> tuple[ast.Expression, _Compiler, str]:
    """Length check and :func:`ast.parse`; returns the tree, a compiler for it and the one-line text."""
    if not isinstance(src, str):
        raise ExpressionError(f"expression must be a string, got {type(src).__name__}")
    if len(src) > MAX_LENGTH:
        raise ExpressionError(f"expression is too long ({len(src)} > {MAX_LENGTH} characters)")
    line = src.replace("\r", " ").replace("\n", " ").replace("\t", " ")
    if not line.strip():
        raise ExpressionError("expression is empty; type a function of x and y, e.g. sin(x) * y**2")
    text = line.lstrip()
    indent = len(line) - len(text)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. the SyntaxWarning for "2(x)"
            tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        reason = exc.msg or "invalid syntax"
        if "decimal literal" in reason:
            reason += " (write 2*x, not 2x)"
        if exc.offset is None or exc.lineno not in (None, 1):
            raise ExpressionError(f"syntax error: {reason}") from None
        col = indent + max(1, min(exc.offset, len(text) + 1))
        caret = f"\n  {line}\n  {' ' * (col - 1)}^"
        token = line[col - 1] if col <= len(line) else ""
        raise ExpressionError(f"syntax error at column {col}: {reason}{caret}", column=col,
                              token=token) from None
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, pathological nesting
        raise ExpressionError(f"expression could not be parsed: {exc}") from None
    return tree, _Compiler(text, indent), line.strip()


def parse_expression(src: str, *, name: str | None = None,
                     bounds: tuple[tuple[float, float], tuple[float, float]] = ((-5.0, 5.0), (-5.0, 5.0)),
                     start: tuple[float, float] | None = None, log_scale: bool = False) -> AnalyticFunction:
    r"""Compile a typed function of ``x`` and ``y`` into a 2-D :class:`AnalyticFunction`.

    ``bounds`` is ``((x_lo, x_hi), (y_lo, y_hi))``; ``start`` defaults to 80 % / 70 % of the way
    across the box (the centre is often a stationary point). Minima are unknown (empty). Raises
    :class:`ExpressionError` for an invalid expression, ``ValueError`` for bad bounds or start.
    """
    tree, compiler, text = _parse(src)
    _check_depth(compiler, tree.body)
    n_nodes = sum(isinstance(n, ast.expr) for n in ast.walk(tree))
    if n_nodes > MAX_NODES:
        raise ExpressionError(f"expression is too large ({n_nodes} > {MAX_NODES} sub-expressions)")
    body, latex, _ = compiler.build(tree.body)
    _check_towers(compiler, tree.body)
    _fold(compiler, tree.body)

    try:
        (xlo, xhi), (ylo, yhi) = bounds
        box = Bounds(low=(float(xlo), float(ylo)), high=(float(xhi), float(yhi)))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bounds must be ((x_lo, x_hi), (y_lo, y_hi)) with lo < hi, "
                         f"got {bounds!r} ({exc})") from None
    if not all(math.isfinite(v) for v in (*box.low, *box.high)):
        raise ValueError(f"bounds must be finite, got {bounds!r}")
    if start is None:
        (xlo, ylo), (xhi, yhi) = box.low, box.high
        start = (xlo + 0.8 * (xhi - xlo), ylo + 0.7 * (yhi - ylo))

    def fn(points: Tensor) -> Tensor:
        if not points.is_floating_point():
            points = points.to(DEFAULT_DTYPE)
        x = points[..., 0]
        y = points[..., 1]
        out = body(x, y)
        if out.shape != x.shape:  # constant expression: broadcast to [B], keeping x in the graph
            out = torch.where(torch.ones_like(x, dtype=torch.bool), out.expand(x.shape), x)
        return out

    function = AnalyticFunction(
        name=name if name else "expression", title=f"f(x, y) = {text}", dim=2,
        latex=f"f(x, y) = {latex}", fn=fn, bounds=box, minima=(), start=tuple(start),
        log_scale=log_scale, params=(("expression", text),),
        description=f"A user-defined landscape, f(x, y) = {text}.",
    )
    note = _check_finite(function)
    return dataclasses.replace(function, description=f"{function.description} {note}") if note else function


def _point(p: Tensor) -> str:
    return f"({float(p[0]):g}, {float(p[1]):g})"


def _check_finite(f: AnalyticFunction) -> str:
    """Refuse a function whose value is not finite at its start point or anywhere on a grid over
    its box; return a note where its gradient at the start, or its value on part of the grid, is
    not finite."""
    start = torch.tensor(f.start, dtype=DEFAULT_DTYPE, requires_grad=True)
    with torch.enable_grad():
        value = f.fn(start[None])[0]
        (grad,) = torch.autograd.grad(value, start)
    value = value.detach()
    at = f"at the start point {_point(start.detach())}"
    if not bool(torch.isfinite(value)):
        raise ExpressionError(f"f(x, y) is not finite {at}: it evaluates to {float(value)}")
    notes = []
    if not bool(torch.isfinite(grad).all()):  # e.g. arccos(x/3) at x = 3: a run there diverges at once
        g = ", ".join(f"{float(v):g}" for v in grad)
        notes.append(f"Its gradient is not finite {at} ({g}).")
    axes = [torch.linspace(lo, hi, GRID, dtype=DEFAULT_DTYPE) for lo, hi in zip(f.bounds.low, f.bounds.high,
                                                                               strict=True)]
    grid = torch.cartesian_prod(*axes)
    with torch.no_grad():
        bad = ~torch.isfinite(f.fn(grid))
    if bool(bad.all()):
        raise ExpressionError("f(x, y) is not finite anywhere on a grid over its box")
    if bool(bad.any()):
        first = grid[bad.nonzero()[0, 0]]
        notes.append(f"It is not finite at {int(bad.sum())} of {bad.numel()} grid points of the box "
                     f"(e.g. at {_point(first)}).")
    return " ".join(notes)
