r"""A budget in oracle units, so zeroth-, first- and second-order methods get the same compute.

A run counts, per trajectory, the oracle calls each optimizer made (:class:`engine.records.OracleCounts`):
``function_values`` (forward passes), ``gradients`` (backward passes; every gradient's forward is
already counted in ``function_values``), ``hvps``, ``jvps`` and ``rankings``. One **oracle unit**
is one function value (one forward pass); the other calls are charged as stated multiples of it:

================  =====  ===========================================================================
call              units  why
================  =====  ===========================================================================
function value    1      one forward pass: the unit
gradient          2      one backward pass = 2 forwards (reverse mode costs ~2x the forward's
                         multiply-adds: Kaplan et al. 2020, "Scaling Laws for Neural Language
                         Models", Sec. 2.1, C = 2N forward + 4N backward per token). With its
                         forward, a gradient is 3 units, inside Griewank & Walther's bound of
                         <= 4 (2008, "Evaluating Derivatives", 2nd ed., Sec. 4.6).
hvp               4      reverse-over-reverse on the gradient's graph: one more forward + backward
                         through a graph twice as long (Pearlmutter 1994, "Fast Exact
                         Multiplication by the Hessian": a small constant times a gradient). The
                         gradient it is built on is counted separately when the method uses it.
jvp               2      a forward pass carrying a tangent (forward mode costs <= 2.5 forwards:
                         Griewank & Walther 2008, Sec. 3.2); the function value comes with it.
ranking           1      one answer to "order these candidates" (no value is revealed); charge the
                         number of candidates instead if comparisons are made from function values.
surrogate grad.   2      a backward pass through the model on a target-space surrogate (SSO's inner
                         steps, engine.targets): a gradient's backward without the loss.
================  =====  ===========================================================================

So a plain gradient step costs 3 units, MeZO's two-point step 2, a Sophia-H step with its
Hutchinson HVP every k steps 3 + 4/k on average. Change the weights with ``OracleCosts``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.records import OracleCounts


@dataclass(frozen=True)
class OracleCosts:
    """Units charged per oracle call (one function value = 1 unit); see the module docstring."""

    function_value: float = 1.0
    gradient: float = 2.0
    hvp: float = 4.0
    jvp: float = 2.0
    ranking: float = 1.0
    surrogate_gradient: float = 2.0  # a backward pass through the model, like a gradient (engine.targets)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0:
                raise ValueError(f"costs.{f.name} must be a number >= 0 (units per call), got {v!r}")
            object.__setattr__(self, f.name, float(v))

    def units(self, counts: OracleCounts | Mapping[str, int]) -> float:
        """Oracle units spent by ``counts`` (an :class:`OracleCounts` or its ``as_dict()``)."""
        if isinstance(counts, OracleCounts):  # the hot path: once per lane and step
            return (
                self.function_value * counts.function_values
                + self.gradient * counts.gradients
                + self.hvp * counts.hvps
                + self.jvp * counts.jvps
                + self.ranking * counts.rankings
                + self.surrogate_gradient * counts.surrogate_gradients
            )
        c = counts
        return (
            self.function_value * c.get("function_values", 0)
            + self.gradient * c.get("gradients", 0)
            + self.hvp * c.get("hvps", 0)
            + self.jvp * c.get("jvps", 0)
            + self.ranking * c.get("rankings", 0)
            + self.surrogate_gradient * c.get("surrogate_gradients", 0)
        )

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: Mapping[str, Any] | None) -> OracleCosts:
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(OracleCosts)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown oracle cost(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return OracleCosts(**d)
