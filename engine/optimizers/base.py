r"""Plumbing the optimizer families share, written once.

* :data:`Params`, :func:`closure_loss` and :func:`gradients`: what a ``torch.optim``-style
  optimizer (stepped from ``p.grad``) needs around its rule;
* :class:`ClosureOptimizer`: the base of every optimizer stepped as ``step(oracles)`` with an
  :class:`engine.oracles.Oracles` closure (zeroth order, second order, look-ahead, population): the
  flat parameter order the oracles use, a step counter kept in the state, the seed, a min-max
  game's descent field; :class:`GradientEstimator` adds the gradient the run handed over and the
  clipping of the gradient (estimate) it steps from (all of them but the population method);
* :func:`writable_flat`: a flat view of a parameter to update chunk by chunk.

Seeds come from :mod:`engine.seeds` and the flat layout from :func:`engine.oracles.flatten` /
:func:`engine.oracles.unflatten` (both below the oracles, which cannot import this package).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from engine.clipping import Clip, clip_
from engine.oracles import Oracles, require_oracles, unflatten
from engine.seeds import step_seed
from engine.specs import CLIPPED_FRACTION

Params = Iterable[torch.Tensor] | Iterable[dict[str, Any]]
"""What a ``torch.optim.Optimizer`` constructor takes: tensors, or param-group dicts."""

Tensors = Sequence[torch.Tensor]


def closure_loss(closure: Callable[[], Any] | None) -> Any:
    """``closure()`` with gradients enabled (``step`` runs under ``no_grad``), or None."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def gradients(optimizer: torch.optim.Optimizer, name: str
              ) -> Iterator[tuple[dict[str, Any], torch.Tensor, torch.Tensor, dict[str, Any]]]:
    """``(group, p, p.grad, state)`` for every parameter that has a gradient, in order; a sparse
    gradient is refused with a message naming the optimizer."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{name} does not support sparse gradients")
            yield group, p, p.grad, optimizer.state[p]


@contextmanager
def writable_flat(p: torch.Tensor) -> Iterator[torch.Tensor]:
    """A flat view of ``p`` to update in place (a copy written back for a non-contiguous ``p``)."""
    if p.is_contiguous():
        yield p.detach().view(-1)
    else:
        flat = p.detach().reshape(-1).clone()
        yield flat
        p.detach().copy_(flat.reshape(p.shape))


class ClosureOptimizer(torch.optim.Optimizer):
    """Base of the optimizers stepped as ``step(oracles)`` (see :mod:`engine.oracles`).

    * the parameters in flat order (:meth:`_params`, :meth:`_groups`, :meth:`_indexed`): the order
      the oracles perturb and differentiate in, checked against the closure (:meth:`_oracles`);
    * :attr:`steps`, a step counter kept as ``state[p]["step"]`` (so it travels with
      ``state_dict``), and :attr:`seed`: random draws are :func:`engine.seeds.step_seed` of both;
    * a min-max game (the closure's ``ascent`` mask): :meth:`_signs` and :meth:`_field`.

    An optimizer that uses a gradient, or an estimate of one, derives from :class:`GradientEstimator`
    instead, which takes the run's clip.
    """

    label = "optimizer"

    def __init__(self, params: Params, defaults: dict[str, Any], seed: int = 0) -> None:
        super().__init__(params, defaults)
        self.seed = int(seed)

    # -- layout ------------------------------------------------------------------------------
    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _groups(self) -> list[dict[str, Any]]:
        """The param group of each parameter, in flat order."""
        return [group for group in self.param_groups for _ in group["params"]]

    def _indexed(self) -> Iterator[tuple[int, dict[str, Any], torch.Tensor]]:
        """``(index in the flat order, its group, parameter)``: the index picks a seeded stream."""
        for j, (group, p) in enumerate(zip(self._groups(), self._params(), strict=True)):
            yield j, group, p

    def _oracles(self, closure: Any) -> Oracles:
        return require_oracles(closure, self.label, self._params())

    # -- steps and seeds -----------------------------------------------------------------------
    @property
    def steps(self) -> int:
        """Steps completed so far."""
        return int(self.state[self._params()[0]].get("step", 0))

    def _advance(self) -> None:
        for p in self._params():
            state = self.state[p]
            state["step"] = int(state.get("step", 0)) + 1

    def _seed(self, step: int, query: int = 0) -> int:
        return step_seed(self.seed, step, query)

    # -- min-max games -------------------------------------------------------------------------
    @staticmethod
    def _signs(oracles: Oracles, like: Tensors) -> list[torch.Tensor] | None:
        """:math:`S = \\mathrm{diag}(\\pm 1)` of a min-max game shaped like ``like`` (None: no game)."""
        ascent = getattr(oracles, "ascent", None)
        if ascent is None:
            return None
        s = torch.where(ascent, -1.0, 1.0)
        return [t.to(x.dtype) for t, x in zip(unflatten(s, like), like, strict=True)]

    @staticmethod
    def _field(estimate: torch.Tensor, oracles: Oracles, start: int = 0) -> torch.Tensor:
        r"""A min-max game's descent field from an estimate of :math:`\nabla f` whose flat
        coordinates start at ``start``: negated on the maximizing player's coordinates (the run's
        ``ascent`` mask), as the run does for first-order lanes."""
        ascent = getattr(oracles, "ascent", None)  # absent on a closure that knows no games
        if ascent is None:
            return estimate
        mask = ascent[start:start + estimate.numel()].reshape(estimate.shape)
        return torch.where(mask, -estimate, estimate)


class GradientEstimator(ClosureOptimizer):
    """A closure-driven optimizer that steps from a gradient or an estimate of one (zeroth order,
    second order, look-ahead), and clips it with the run's :attr:`clip`.

    The run clips ``p.grad`` itself for the lanes it steps with ``optimizer.step()``; a closure-driven
    lane gets the clip handed over instead (``optimizer.clip``), because only the optimizer sees what
    it steps from: its estimate, the gradient at a look-ahead point, or the run's ``p.grad`` (copied
    before clipping: the run records the true gradient's norm). :meth:`_gradient` and
    :meth:`_clipped_copy` apply it; an estimate that is never materialised is clipped by its optimizer
    (:class:`engine.optimizers.zeroth_order._SPSA`). :meth:`diagnostics` then reports
    ``"clipped_fraction"`` (:func:`engine.clipping.clip_`'s meaning) of the last step.
    """

    clip: Clip | None = None
    """How to clip the gradient (estimate) before the update; None: not clipped."""
    keep_estimate = False
    """Set by the run before a step whose estimate an instrument reads (:mod:`engine.noise`): that
    step keeps a flat copy of the (clipped) gradient estimate it stepped from, until
    :meth:`take_estimate` (P floats, only then; an estimate never materialised, MeZO's, is rebuilt
    from its seeds by one more pass over its directions)."""

    def __init__(self, params: Params, defaults: dict[str, Any], seed: int = 0) -> None:
        super().__init__(params, defaults, seed)
        self._clipped = 0.0
        self._kept: tuple[torch.Tensor, float] | None = None

    def _keep(self, estimate: Tensors | Callable[[], Tensors]) -> None:
        """Keep the step's estimate (tensors, or a function building them) if :attr:`keep_estimate`."""
        if self.keep_estimate:
            t0 = time.perf_counter()
            parts = estimate() if callable(estimate) else estimate
            self._kept = torch.cat([t.detach().reshape(-1) for t in parts]), time.perf_counter() - t0

    def take_estimate(self) -> tuple[torch.Tensor | None, float]:
        """The flat estimate the last armed step kept (then dropped), and the seconds keeping it took."""
        kept, self._kept = self._kept, None
        return kept if kept is not None else (None, 0.0)

    def _clip(self, tensors: Tensors) -> None:
        """Clip a materialised gradient (estimate) in place with :attr:`clip`, if set, and keep the
        clipped fraction for :meth:`diagnostics`."""
        if self.clip is not None:
            self._clipped = float(clip_(tensors, self.clip))
        self._keep(tensors)

    def _clipped_copy(self, grads: Tensors) -> list[torch.Tensor]:
        """``grads`` clipped with :attr:`clip` (copies: the originals are the run's), or as they are."""
        if self.clip is None:
            self._keep(grads)
            return list(grads)
        out = [g.clone() for g in grads]
        self._clip(out)
        return out

    def _gradient(self, oracles: Oracles) -> list[torch.Tensor]:
        """:math:`g_t`, clipped: the run's ``p.grad`` when every parameter has one, else one closure
        gradient."""
        params = self._params()
        if all(p.grad is not None for p in params):
            return self._clipped_copy([p.grad.detach() for p in params])
        _, grads = oracles.gradient()
        return self._clipped_copy(grads)

    def diagnostics(self) -> Mapping[str, float]:
        """``{"clipped_fraction": ...}`` of the last step when the lane clips."""
        return {CLIPPED_FRACTION: self._clipped} if self.clip is not None else {}
