"""Problems: analytic landscapes (the classic catalog, user-typed 2-D expressions) and small networks.

Depends on torch and :mod:`engine` core types only (no UI libraries).
"""

from landscapes.analytic import AnalyticFunction
from landscapes.catalog import LANDSCAPES, available_landscapes, get_landscape, landscape_parameters
from landscapes.expression import ExpressionError, parse_expression
from landscapes.networks import NetworkProblem, available_networks, get_network, problem_from_module
from landscapes.sizes import problem_size  # also declares every problem's size to engine.limits

__all__ = [
    "LANDSCAPES",
    "AnalyticFunction",
    "ExpressionError",
    "NetworkProblem",
    "available_landscapes",
    "available_networks",
    "get_landscape",
    "get_network",
    "landscape_parameters",
    "parse_expression",
    "problem_from_module",
    "problem_size",
]
