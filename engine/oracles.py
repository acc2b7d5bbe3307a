r"""What an optimizer may ask of the problem inside ``step(closure)``: the closure it is given.

torch's convention is ``optimizer.step(closure)`` with ``closure()`` re-evaluating the loss. An
optimizer whose spec asks for more than plain gradients (zeroth-order, ranking, second-order)
is stepped with an :class:`Oracles` object instead of a plain function:

* ``closure()`` -- :math:`f(\theta)` at the parameters' current values, forward only;
* ``closure.perturbed_value(seed, scale, thresholds)`` --
  :math:`f(\theta + s\, z(\text{seed}) \odot m)` *without touching* :math:`\theta`, where
  :math:`z(\text{seed})` is regenerated from its seed (:func:`seeded_normal`) and never stored,
  and :math:`m = 1[|\theta| \le \tau_l]` is an optional per-tensor magnitude mask;
* ``closure.values(points)`` -- :math:`f` at several parameter sets (one batched call);
* ``closure.gradient()`` -- :math:`(f, \nabla f)` on a fresh graph;
* ``closure.hvp(vectors)`` -- :math:`H v` by double differentiation of a fresh graph
  (``torch.autograd.grad``; never ``backward(create_graph=True)``, which keeps the graph alive
  through ``.grad`` and leaks);
* ``closure.jvp(vectors)`` -- :math:`(f, \nabla f^\top v)` by forward-mode AD (one pass);
* ``closure.rank(candidates)`` -- candidate indices best first, and nothing else;
* ``closure.box()`` -- the problem's view box (CBO's uniform cloud), and ``closure.model`` -- the
  network behind the loss at this minibatch (:class:`ModelView`: Gauss-Newton and Fisher products,
  TrAct's first-layer inputs), each None where the problem has none.

Every call is counted per trajectory (:class:`engine.records.OracleCounts`), which is what lets a
zeroth-order and a first-order method race on the same x-axis.

Perturbing through the oracle rather than in place is what makes MeZO's "restore" exact: the
paper's in-place :math:`\theta \pm \epsilon z` round trip changes :math:`\theta` by rounding
(about one ulp per step); here :math:`\theta` is never written during evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import jvp as forward_jvp

from engine.records import OracleCounts
from engine.seeds import derive_seed

CHUNK = 1 << 16
"""Elements of a regenerated direction held at once: the extra memory of a seeded perturbation."""

Tensors = Sequence[torch.Tensor]


def seeded_normal(seed: int, index: int, like: torch.Tensor, chunk: int | None = None
                  ) -> Iterator[tuple[slice, torch.Tensor]]:
    r"""The direction :math:`z \sim N(0, I)` for tensor number ``index`` of a perturbation drawn
    with ``seed``, as ``(flat slice, values)`` chunks of at most ``chunk`` elements.

    The stream depends only on ``(seed, index)`` and the chunking, never on the device: it is
    drawn on the CPU and moved, so a run replays identically on CPU and CUDA. ``chunk`` defaults to
    :data:`CHUNK` as it is when called.
    """
    chunk = CHUNK if chunk is None else chunk
    g = torch.Generator().manual_seed(derive_seed(seed, index, modulus=2**63))
    n = like.numel()
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        z = torch.randn(stop - start, generator=g, dtype=torch.float64)
        yield slice(start, stop), z.to(device=like.device, dtype=like.dtype)


def seeded_direction(seed: int, tensors: Tensors) -> list[torch.Tensor]:
    """All of :func:`seeded_normal`'s chunks gathered into tensors shaped like ``tensors``
    (for small problems and for tests; the memory-lean paths iterate the chunks)."""
    out = []
    for i, t in enumerate(tensors):
        z = torch.empty(t.numel(), dtype=t.dtype, device=t.device)
        for sl, chunk in seeded_normal(seed, i, t):
            z[sl] = chunk
        out.append(z.reshape(t.shape))
    return out


def flatten(tensors: Tensors) -> torch.Tensor:
    """``tensors`` detached and concatenated into one vector ``[P]`` (a copy), in order.

    ``torch.nn.utils.parameters_to_vector`` does the same with ``view(-1)``, which refuses a
    non-contiguous tensor (a transposed weight of a user's module), so ``reshape`` is used here."""
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def unflatten(v: torch.Tensor, like: Tensors) -> list[torch.Tensor]:
    """Inverse of :func:`flatten`: views of ``v [P]`` shaped like ``like``, in order. (Unlike
    ``torch.nn.utils.vector_to_parameters``, nothing is assigned: callers copy where they write.)"""
    sizes = [t.numel() for t in like]
    return [c.reshape(t.shape) for c, t in zip(v.split(sizes), like, strict=True)]


def magnitude_mask(t: torch.Tensor, threshold: float | None) -> torch.Tensor | None:
    r"""Sparse MeZO's mask :math:`1[|\theta| \le \tau]` (``None``: no mask)."""
    return None if threshold is None else (t.abs() <= threshold).to(t.dtype)


class AwaitingRanking(Exception):
    """A ranking oracle with no answer yet (a person is ranking): the lane waits a tick."""

    def __init__(self, candidates: torch.Tensor) -> None:
        super().__init__("waiting for a ranking of the candidates")
        self.candidates = candidates


HUMAN = "human"
"""The boolean hyperparameter of a ranking optimizer that hands its first trajectory's rankings
to a person (a run then waits for a :class:`engine.events.SubmitRanking` event)."""

Ranker = Callable[[torch.Tensor, torch.Tensor], Sequence[int]]
"""``ranker(candidates [m, P], values [m]) -> indices best first``; may raise AwaitingRanking.
``values`` are there for a programmatic ranker; a person sees only the candidates."""

SampledLosses = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""``sampled_losses(theta [P], generator) -> [B]``: per-sample losses at one flat parameter vector,
with targets drawn (with ``generator``, without gradient) from the model's own predictive
distribution at ``theta`` (see :meth:`landscapes.networks.NetworkProblem.sampled_losses`)."""


@dataclass(frozen=True)
class ModelView:
    r"""A network problem seen through its model at one minibatch: what curvature approximations and
    first-layer methods need beyond the loss, with

    .. math:: L(\theta) = \ell\big(o(\theta)\big) + \tfrac{\lambda}{2}\lVert\theta\rVert^2,

    :math:`o` the model's outputs on the minibatch and :math:`\ell` the criterion with its targets.
    Built by :func:`model_view`; a run hands it to the optimizers whose spec ``uses_model``."""

    outputs: Callable[[torch.Tensor], torch.Tensor]
    r""":math:`o(\theta)`: flat parameters ``[P]`` -> outputs ``[b, ...]``."""
    output_loss: Callable[[torch.Tensor], torch.Tensor]
    r""":math:`\ell(o)`: outputs -> the minibatch's mean data loss (no penalty)."""
    per_sample_gradients: Callable[[torch.Tensor], torch.Tensor]
    r"""Flat parameters ``[P]`` -> ``[b, P]``, the gradient of each sample's loss (penalty included,
    so their mean is :math:`\nabla L`)."""
    inputs: torch.Tensor
    r"""``[b, n]``: the minibatch's inputs as the first layer sees them."""
    first_layer: int | None
    r"""Index (in the flat parameter order) of the weight ``[out, n]`` of a linear first layer, or None."""
    l2: float = 0.0
    r""":math:`\lambda` of the penalty."""

    def gauss_newton_vp(self, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        r""":math:`G v = J^\top \nabla^2_o \ell\, J v + \lambda v` at flat ``theta`` (``v`` flat):
        the generalized Gauss-Newton product (Schraudolph 2002), one JVP, one output-space HVP and
        one VJP, on fresh graphs."""
        theta = theta.detach()
        with torch.enable_grad():
            o, jv = forward_jvp(self.outputs, (theta,), (v.to(theta.dtype),))
            _, hjv = forward_jvp(torch.func.grad(self.output_loss), (o.detach(),), (jv.detach(),))
            _, pull = torch.func.vjp(self.outputs, theta)
            (gv,) = pull(hjv.detach())
        return gv.detach() + self.l2 * v


def first_layer_weight(problem: Any) -> str | None:
    """The parameter name of a network's linear first layer's weight: what the problem declares
    (``first_layer``), else the weight of a bare ``nn.Linear`` or of an ``nn.Sequential`` whose first
    module is one (the layers that see the raw inputs); None otherwise."""
    declared = getattr(problem, "first_layer", None)
    if declared is not None:
        return str(declared)
    module = getattr(problem, "module", None)
    if isinstance(module, torch.nn.Linear):
        return "weight"
    if isinstance(module, torch.nn.Sequential) and len(module) and isinstance(module[0], torch.nn.Linear):
        return "0.weight"
    return None


def model_view(problem: Any, batch: Any = None) -> ModelView | None:
    """The :class:`ModelView` of a network problem (its ``module``, ``forward``, ``criterion``,
    ``X_train``/``y_train``, ``per_sample_grads`` and ``param_names``: a
    :class:`landscapes.networks.NetworkProblem`) at ``batch`` (indices; None: the full set), or None
    for a problem that is not a network. The model runs in the problem's ``mode``."""
    needed = ("module", "forward", "criterion", "X_train", "y_train", "per_sample_grads", "param_names")
    if not all(hasattr(problem, a) for a in needed):
        return None
    X, y = (problem.X_train, problem.y_train) if batch is None else (problem.X_train[batch],
                                                                       problem.y_train[batch])
    train = getattr(problem, "mode", "train") == "train"

    def outputs(theta: torch.Tensor) -> torch.Tensor:
        was = problem.module.training
        problem.module.train(train)
        try:
            return problem.forward(theta, X)
        finally:
            problem.module.train(was)

    name = first_layer_weight(problem)
    names = list(problem.param_names)
    return ModelView(outputs=outputs, output_loss=lambda o: problem.criterion(o, y),
                     per_sample_gradients=lambda theta: problem.per_sample_grads(theta, batch),
                     inputs=X, first_layer=names.index(name) if name in names else None,
                     l2=float(getattr(problem, "l2", 0.0)))


def rank_by_value(candidates: torch.Tensor, values: torch.Tensor) -> list[int]:
    """The programmatic ranking oracle: lowest loss first (stable for ties)."""
    return torch.argsort(values, stable=True).tolist()


class OracleBase:
    """What every oracle closure shares (:class:`Oracles` here, :class:`engine.module_oracles.
    ModuleOracles` for a module): its parameters in order and their flat layout, the counts of
    every call, and the check that a ranking orders every candidate once."""

    params: list[torch.Tensor]
    ranker: Ranker
    counts: OracleCounts

    def flat(self, tensors: Tensors | None = None) -> torch.Tensor:
        """``tensors`` (default: the parameters) concatenated into one vector ``[P]`` (a copy)."""
        return flatten(self.params if tensors is None else tensors)

    def unflat(self, v: torch.Tensor) -> list[torch.Tensor]:
        """Inverse of :meth:`flat`: ``[P]`` -> views shaped like the parameters."""
        return unflatten(v, self.params)

    def _count(self, **kinds: int) -> None:
        self.counts = self.counts + OracleCounts(**kinds)

    def _ranked(self, candidates: torch.Tensor, values: torch.Tensor) -> list[int]:
        """The ranker's order of ``candidates [m, P]``, checked and counted as one ranking."""
        order = [int(i) for i in self.ranker(candidates, values)]
        if sorted(order) != list(range(candidates.shape[0])):
            raise ValueError(f"a ranking must order all {candidates.shape[0]} candidates once, got {order}")
        self._count(rankings=1)
        return order


class Oracles(OracleBase):
    """The closure a run hands to one trajectory's optimizer: every oracle at the trajectory's
    parameters ``params`` (the optimizer's own leaves), counted.

    ``loss`` maps points ``[B, P]`` to losses ``[B]`` (the problem with this step's minibatch
    bound); the parameters are flattened in order into ``P``.
    """

    def __init__(self, loss: Callable[[torch.Tensor], torch.Tensor], params: Tensors,
                 ranker: Ranker = rank_by_value, ascent: torch.Tensor | None = None,
                 sampled_losses: SampledLosses | None = None, bounds: Any = None,
                 model: ModelView | None = None, problem: Any = None, batch: Any = None) -> None:
        self._loss = loss
        self._sampled_losses = sampled_losses
        self._bounds = bounds
        self.model = model
        """The network behind the loss at this step's minibatch (:class:`ModelView`), or None."""
        self.problem = problem
        """The problem itself (None for a bare loss), for a method that uses more of its structure than
        the loss: a bilevel problem's lower level, a network's target space (the spec's ``requires``
        names what). Such a method counts what it calls through it (:meth:`OracleBase._count`)."""
        self.batch = batch
        """This step's minibatch, the one ``loss`` is bound to, for calls through :attr:`problem`."""
        self.params = list(params)
        self.ranker = ranker
        self.ascent = ascent
        """Boolean ``[P]`` mask of the coordinates that *maximize* (a min-max game's second
        player): gradients are returned as the descent field, with those coordinates negated."""
        self.counts = OracleCounts()

    # -- zeroth order --------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self) -> torch.Tensor:
        """:math:`f(\\theta)`, forward only."""
        self._count(function_values=1)
        return self._loss(self.flat()[None])[0]

    @torch.no_grad()
    def values(self, points: torch.Tensor) -> torch.Tensor:
        """:math:`f` at each row of ``points [m, P]`` (one batched call; m function values)."""
        self._count(function_values=points.shape[0])
        return self._loss(points)

    @torch.no_grad()
    def perturbed_value(self, seed: int, scale: float,
                        thresholds: Sequence[float | None] | None = None) -> torch.Tensor:
        r""":math:`f(\theta + s\, z(\text{seed}) \odot m)`; :math:`\theta` is not written."""
        x = self.flat()
        offset = 0
        for i, p in enumerate(self.params):
            mask = magnitude_mask(p.detach().reshape(-1), thresholds[i] if thresholds else None)
            for sl, z in seeded_normal(seed, i, p):
                step = z if mask is None else z * mask[sl]
                x[offset + sl.start:offset + sl.stop] += scale * step
            offset += p.numel()
        self._count(function_values=1)
        return self._loss(x[None])[0]

    # -- derivatives (each on a fresh graph) ----------------------------------------------------
    def _point(self) -> torch.Tensor:
        return self.flat().requires_grad_(True)

    def _field(self, g: torch.Tensor) -> torch.Tensor:
        return g if self.ascent is None else torch.where(self.ascent, -g, g)

    def gradient(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """:math:`(f(\\theta), \\nabla f(\\theta))`, the gradient shaped like the parameters."""
        x = self._point()
        with torch.enable_grad():  # optimizers step under no_grad
            f = self._loss(x[None])[0]
            (g,) = torch.autograd.grad(f, x)
        self._count(function_values=1, gradients=1)
        return f.detach(), self.unflat(self._field(g))

    def gradient_at(self, points: torch.Tensor) -> torch.Tensor:
        """Gradients ``[m, P]`` at other points ``[m, P]`` (extragradient, lookahead): m gradients."""
        x = points.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self._loss(x).sum(), x)
        self._count(function_values=points.shape[0], gradients=points.shape[0])
        return self._field(g)

    def hvp(self, vectors: Tensors, *, with_gradient: bool = False
            ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        r""":math:`H v` (shaped like the parameters); with ``with_gradient``, also
        :math:`f` and :math:`\nabla f` from the same graph: ``(f, g, Hv)``."""
        x = self._point()
        with torch.enable_grad():
            f = self._loss(x[None])[0]
            (g,) = torch.autograd.grad(f, x, create_graph=True)
            v = self.flat(vectors).to(g.dtype)
            (hv,) = torch.autograd.grad(g, x, grad_outputs=v)
        self._count(hvps=1, **({"function_values": 1, "gradients": 1} if with_gradient else {}))
        if with_gradient:
            return f.detach(), self.unflat(g.detach()), self.unflat(hv)
        return self.unflat(hv)

    def jvp(self, vectors: Tensors) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`(f(\theta), \nabla f(\theta)^\top v)` in one forward-mode pass."""
        x, v = self.flat(), self.flat(vectors).to(self.params[0].dtype)
        f, d = forward_jvp(lambda t: self._loss(t[None])[0], (x,), (v,))
        self._count(jvps=1)
        return f.detach(), d.detach()

    def box(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The problem's view box (its ``bounds``) as flat ``(low [P], high [P])`` on the parameters'
        device and dtype, or None for a problem without one (a network)."""
        if self._bounds is None:
            return None
        like = self.params[0]
        low = torch.as_tensor(self._bounds.low, dtype=like.dtype, device=like.device).reshape(-1)
        high = torch.as_tensor(self._bounds.high, dtype=like.dtype, device=like.device).reshape(-1)
        return low, high

    # -- ranking -------------------------------------------------------------------------------
    @torch.no_grad()
    def rank(self, candidates: torch.Tensor) -> list[int]:
        """Indices of ``candidates [m, P]`` best first. Only the order reaches the optimizer; a
        programmatic ranker reads the values, which are not counted as function values."""
        return self._ranked(candidates, self._loss(candidates))

    # -- sampled-label gradient (Sophia-G's Gauss-Newton-Bartlett estimator) --------------------
    def gnb_gradient(self, generator: torch.Generator) -> tuple[int, list[torch.Tensor]]:
        r"""``(B, \nabla \hat L)`` at the parameters, on a fresh graph, where
        :math:`\hat L(\theta) = \tfrac1B \sum_b \ell(f(\theta, x_b), \hat y_b)` and the labels
        :math:`\hat y_b \sim p_\theta(\cdot \mid x_b)` are drawn from the model itself (Liu et al.
        2023, Algorithm 2; :math:`B\,\nabla\hat L \odot \nabla\hat L` estimates the Gauss-Newton
        diagonal). One gradient. Needs the ``sampled_losses`` hook, which only problems with a
        likelihood (networks) provide."""
        if self._sampled_losses is None:
            raise NotImplementedError(
                "this problem cannot sample labels from its model (no sampled_losses hook): Sophia-G's "
                "Gauss-Newton-Bartlett estimator needs a network with a likelihood (cross-entropy, "
                "binary cross-entropy or squared error); use sophia_h on analytic landscapes")
        x = self._point()
        losses = self._sampled_losses(x, generator)
        (g,) = torch.autograd.grad(losses.mean(), x)
        self._count(function_values=1, gradients=1)
        return int(losses.shape[0]), self.unflat(g)


def require_oracles(closure: Any, optimizer: str, params: Sequence[torch.Tensor] | None = None) -> Oracles:
    """The closure, checked to be an :class:`Oracles` (a clear message for a plain function) and,
    given ``params``, to be built over exactly those parameters in that order."""
    if closure is None or not hasattr(closure, "perturbed_value"):
        raise TypeError(f"{optimizer} needs an engine.oracles.Oracles closure: call "
                        f"step(Oracles(loss, params)), not step() or step(plain_function)")
    if params is not None and (len(params) != len(closure.params)
                               or any(a is not b for a, b in zip(params, closure.params, strict=False))):
        raise ValueError(f"{optimizer}: the Oracles must be built over this optimizer's parameters, "
                         f"in the same order")
    return closure
