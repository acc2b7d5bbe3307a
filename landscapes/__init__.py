"""Analytic optimization landscapes: the classic catalog and user-typed 2-D expressions.

Depends on torch and :mod:`engine` core types only (no UI libraries).
"""

from landscapes.analytic import AnalyticFunction
from landscapes.catalog import LANDSCAPES, available_landscapes, get_landscape, landscape_parameters
from landscapes.expression import ExpressionError, parse_expression

__all__ = [
    "LANDSCAPES",
    "AnalyticFunction",
    "ExpressionError",
    "available_landscapes",
    "get_landscape",
    "landscape_parameters",
    "parse_expression",
]
