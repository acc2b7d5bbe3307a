r"""Mirror descent and its relatives for constraints and games: exponentiated gradient on the
probability simplex, optimistic mirror descent and mirror prox (extragradient), each in the
Euclidean geometry and, for games on simplices, in the entropic one.

* ``exp_gradient`` -- entropic mirror descent (Nemirovski & Yudin 1983; Beck & Teboulle 2003):
  with the mirror map :math:`\psi(p) = \sum_i p_i \log p_i` on the simplex
  :math:`\Delta = \{p \ge 0, \sum_i p_i = 1\}`, the step
  :math:`p_{t+1} = \arg\min_{p\in\Delta} \eta\langle g_t, p\rangle + D_\psi(p, p_t)` is the
  multiplicative update :math:`p_{t+1} \propto p_t \odot e^{-\eta g_t}`. It needs no projection:
  the iterate stays strictly inside the simplex by construction. On a game it is multiplicative
  weights (Freund & Schapire 1999), both players at once.
* ``optimistic_mw`` -- optimistic online mirror descent with the entropic mirror map and the last
  gradient as the hint (Rakhlin & Sridharan 2013; Chen, Zhang, Tu, Zhao & Zhang 2023):
  :math:`p_{t+1} \propto p_t \odot e^{-\eta(2g_t - g_{t-1})}`, optimistic multiplicative weights.
* ``mirror_prox_entropic`` -- mirror prox with the entropic prox (Nemirovski 2004), the scheme of
  Nash Mirror Prox (Tiapkin et al. 2025): two multiplicative steps from :math:`p_t`, the second
  with the field at the first's end point.

The entropic methods step **each parameter tensor as one simplex**; a problem with several
simplices (a two-player game: one per player) declares them as separate parameters
(``param_shapes``), and the run hands each optimizer one tensor per simplex.
* ``optimistic_md`` -- optimistic mirror descent with the last gradient as the hint (Rakhlin &
  Sridharan 2013), Euclidean case: :math:`\theta_{t+1} = \theta_t - 2\eta g_t + \eta g_{t-1}`,
  the optimistic gradient descent-ascent of Daskalakis et al. (2018) when run on a game.
* ``mirror_prox`` -- Nemirovski's (2004) mirror prox, Euclidean case, which is Korpelevich's (1976)
  extragradient: :math:`z_{t+1/2} = z_t - \eta F(z_t)`, :math:`z_{t+1} = z_t - \eta F(z_{t+1/2})`.

On a min-max game (a problem with an ``ascent`` mask) the run hands every optimizer the descent
field :math:`F = (\nabla_x f, -\nabla_y f)` in place of the gradient, and ``Oracles.gradient_at``
returns the same field, so the rules above are written once, for a field :math:`F`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from engine.optimizers.base import GradientEstimator, Params, closure_loss, gradients
from engine.specs import CLIPPED_FRACTION, OptimizerSpec, Oracle, Paper, lr
from engine.stability import extragradient, optimistic_gradient

SIMPLEX_MIX = 1e-2
"""How far a start with a non-positive entry is pulled towards the uniform point after its
Euclidean projection onto the simplex: a zero coordinate would stay zero forever under the
multiplicative update."""


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    r"""Euclidean projection of a flat vector onto the probability simplex (Duchi, Shalev-Shwartz,
    Singer & Chandra 2008, Fig. 1): :math:`w = \max(v - \tau, 0)` with the threshold
    :math:`\tau` that makes :math:`\sum_i w_i = 1`."""
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, 0) - 1.0
    j = torch.arange(1, v.numel() + 1, dtype=v.dtype, device=v.device)
    rho = int(torch.nonzero(u - css / j > 0).max())
    tau = css[rho] / (rho + 1)
    return torch.clamp(v - tau, min=0.0)


def to_simplex(p: torch.Tensor) -> torch.Tensor:
    r"""A point of the simplex's relative interior for any start: a positive vector divided by its
    sum (its Bregman/KL projection); otherwise the Euclidean projection mixed with weight
    :data:`SIMPLEX_MIX` towards the uniform point (so that every entry is positive)."""
    flat = p.reshape(-1)
    if bool((flat > 0).all()):
        return (flat / flat.sum()).reshape(p.shape)
    w = (1.0 - SIMPLEX_MIX) * project_simplex(flat) + SIMPLEX_MIX / flat.numel()
    return w.reshape(p.shape)


def multiplicative_step(p: torch.Tensor, g: torch.Tensor, eta: float) -> torch.Tensor:
    r"""The entropic mirror step on the simplex of ``p``'s entries:
    :math:`p \odot e^{-\eta g} / \sum_i (p \odot e^{-\eta g})_i`, computed with :math:`g - \min g`
    in the exponent (the same point, and it cannot overflow)."""
    w = p * torch.exp(-eta * (g - g.min()))
    return w / w.sum()


def _onto_simplices(optimizer: torch.optim.Optimizer) -> None:
    """Move every parameter of ``optimizer`` onto its simplex (:func:`to_simplex`), in place."""
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.copy_(to_simplex(p.detach()))


class ExponentiatedGradient(torch.optim.Optimizer):
    r"""Entropic mirror descent on the probability simplex (Beck & Teboulle 2003, eq. (5.1))::

        p_{t+1} = p_t ⊙ exp(−η g_t) / Σ_i (p_t ⊙ exp(−η g_t))_i

    Each parameter tensor is one point of a simplex over all of its entries (a game declares one
    parameter per player: then this is multiplicative weights descent-ascent). The method assumes
    the parameter lies on the simplex: at construction every parameter is moved there (divided by
    its sum if positive, else projected, see :func:`to_simplex`), so a run's first gradient is
    already taken on the simplex. The update is computed as ``p * exp(-η (g - min g))`` before
    normalising, which is the same point and cannot overflow.
    """

    domain = "simplex"
    """What the parameter must be: the app can read it to warn about an unconstrained problem."""

    def __init__(self, params: Params, lr: float = 0.1) -> None:
        super().__init__(params, dict(lr=lr))
        _onto_simplices(self)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = closure_loss(closure)
        for group, p, g, _ in gradients(self, "ExponentiatedGradient"):
            p.copy_(multiplicative_step(p, g, group["lr"]))
        return loss


class OptimisticMultiplicativeWeights(torch.optim.Optimizer):
    r"""Optimistic online mirror descent with the entropic mirror map on the simplex and the hint
    :math:`M_t = g_{t-1}` (Rakhlin & Sridharan 2013, Sec. 2; Chen et al. 2023, optimistic OMD with
    :math:`\psi` the negative entropy)::

        p_{t+1} = p_t ⊙ exp(−η (2 g_t − g_{t−1})) / Σ_i (…)_i,   g_0 = 0

    The paper's two sequences, :math:`\hat p_{t+1} \propto \hat p_t e^{-\eta g_t}` and the played
    :math:`p_{t+1} \propto \hat p_{t+1} e^{-\eta M_{t+1}}`, collapse to this one in log space
    (:math:`\log p_{t+1} - \log p_t = -\eta g_t - \eta M_{t+1} + \eta M_t` up to normalization);
    :math:`M_1 = 0` makes the first step :math:`e^{-2\eta g_1}`. The state keeps the last hint as
    played, :math:`\eta_{t-1} g_{t-1}`, so a live change of :math:`\eta` takes back exactly what was
    added (the two sequences with the step size of each step). On a game this is optimistic
    multiplicative weights (OMWU, Daskalakis & Panageas 2019), whose last iterate converges to an
    interior equilibrium where plain multiplicative weights cycles outwards. Each parameter tensor is
    one simplex; parameters are moved onto it at construction, as for :class:`ExponentiatedGradient`.
    """

    domain = "simplex"

    def __init__(self, params: Params, lr: float = 0.1) -> None:
        super().__init__(params, dict(lr=lr))
        _onto_simplices(self)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = closure_loss(closure)
        for group, p, g, state in gradients(self, "OptimisticMultiplicativeWeights"):
            hint = group["lr"] * g  # eta_t M_{t+1}: played now, taken back at the next step
            previous = state.get("previous_hint")
            direction = 2.0 * hint if previous is None else 2.0 * hint - previous
            p.copy_(multiplicative_step(p, direction, 1.0))
            state["previous_hint"] = hint
        return loss


class OptimisticGradient(torch.optim.Optimizer):
    r"""Optimistic mirror descent, Euclidean mirror map, hint :math:`M_t = g_{t-1}` (Rakhlin &
    Sridharan 2013, Sec. 2; Daskalakis et al. 2018, eq. (OMD))::

        θ_{t+1} = θ_t − 2η g_t + η g_{t−1},   g_0 = 0

    :math:`g_0 = 0` is Rakhlin & Sridharan's start without a hint (:math:`M_1 = 0`), so the
    first step is :math:`-2\eta g_1`. Elementwise, hence row-separable.
    """

    def __init__(self, params: Params, lr: float = 5e-4) -> None:
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = closure_loss(closure)
        for group, p, g, state in gradients(self, "OptimisticGradient"):
            previous = state.get("previous_grad")
            step = 2.0 * g if previous is None else 2.0 * g - previous
            p.add_(step, alpha=-group["lr"])
            state["previous_grad"] = g.clone()
        return loss


class MirrorProx(GradientEstimator):
    r"""Mirror prox with the Euclidean prox (Nemirovski 2004, Sec. 2), i.e. extragradient
    (Korpelevich 1976)::

        z_{t+1/2} = z_t − η F(z_t)
        z_{t+1}   = z_t − η F(z_{t+1/2})

    Two field evaluations per step, both gradients: its spec asks for gradients with look-ahead
    (``oracle=GRADIENTS, lookahead=True``), so the run puts :math:`F(z_t)` in ``p.grad`` (as for
    any first-order lane) and steps it with an :class:`engine.oracles.Oracles` closure, whose
    ``gradient_at`` gives :math:`F(z_{t+1/2})` at the look-ahead point. No Hessian-vector product is
    taken. Stepped alone (``p.grad`` unset) it asks the closure for :math:`F(z_t)` too. A lane's clip
    (:class:`engine.optimizers.base.GradientEstimator`) applies to both field evaluations; the
    clipped fraction reported is that of :math:`F(z_t)`.
    """

    label = "mirror_prox"

    def __init__(self, params: Params, lr: float = 1e-3) -> None:
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        oracles = self._oracles(closure)
        eta = self.param_groups[0]["lr"]
        with torch.enable_grad():  # the oracles differentiate a fresh graph; step() runs under no_grad
            field = oracles.flat(self._gradient(oracles))
            fraction = self._clipped
            z = oracles.flat()
            field_half = oracles.gradient_at((z - eta * field)[None])[0].detach()
            self._clip([field_half])
            self._clipped = fraction
        for p, new in zip(self._params(), oracles.unflat(z - eta * field_half), strict=True):
            p.copy_(new)


class EntropicMirrorProx(MirrorProx):
    r"""Mirror prox with the entropic prox on each parameter's simplex (Nemirovski 2004, Sec. 2 with
    :math:`\omega(p) = \sum_i p_i \log p_i`; the scheme of Nash Mirror Prox, Tiapkin et al. 2025)::

        p_{t+1/2} = p_t ⊙ exp(−η F(z_t))     / Σ(…)
        p_{t+1}   = p_t ⊙ exp(−η F(z_{t+1/2})) / Σ(…)

    per parameter tensor (one simplex each; :math:`z` is all of them, :math:`F` the descent field of
    a game). Both prox steps start from :math:`p_t`; the field of the second is taken at the first's
    end point. Nash-MP writes its β-KL regularizer inside each prox step and solves it in closed form;
    here a regularizer is part of the loss, so its gradient enters :math:`F` (the two coincide when
    the game has none). Parameters are moved onto their simplex at construction. Oracles, counts
    (two gradients per step, no HVP) and the lane's clip are :class:`MirrorProx`'s.
    """

    label = "mirror_prox_entropic"
    domain = "simplex"

    def __init__(self, params: Params, lr: float = 0.1) -> None:
        super().__init__(params, lr=lr)
        _onto_simplices(self)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        oracles = self._oracles(closure)
        eta = self.param_groups[0]["lr"]
        params = self._params()
        with torch.enable_grad():
            field = self._gradient(oracles)
            fraction = self._clipped
            half = [multiplicative_step(p.detach(), g, eta) for p, g in zip(params, field, strict=True)]
            field_half = oracles.gradient_at(oracles.flat(half)[None])[0].detach()
            self._clip([field_half])
            self._clipped = fraction
        for p, g in zip(params, oracles.unflat(field_half), strict=True):
            p.copy_(multiplicative_step(p, g, eta))


_CLIPPED = {CLIPPED_FRACTION: "share of F(z_t) clipped at the last step (norm clipping: 1 where it was "
                              "rescaled); reported when the lane clips"}

_BECK_TEBOULLE = Paper("Mirror descent and nonlinear projected subgradient methods for convex optimization",
                       "A. Beck, M. Teboulle", 2003, "https://doi.org/10.1016/S0167-6377(02)00231-6")
_RAKHLIN = Paper("Optimization, Learning, and Games with Predictable Sequences",
                 "A. Rakhlin, K. Sridharan", 2013, "https://arxiv.org/abs/1311.1869")
_NEMIROVSKI = Paper("Prox-method with rate of convergence O(1/t) for variational inequalities with "
                    "Lipschitz continuous monotone operators and smooth convex-concave saddle point problems",
                    "A. Nemirovski", 2004, "https://doi.org/10.1137/S1052623403425629")

_CHEN = Paper("Optimistic Online Mirror Descent for Bridging Stochastic and Adversarial Online Convex "
              "Optimization", "S. Chen, Y.-J. Zhang, W.-W. Tu, P. Zhao, L. Zhang", 2023,
              "https://arxiv.org/abs/2302.04552")
_NASH_MP = Paper("Accelerating Nash Learning from Human Feedback via Mirror Prox",
                 "D. Tiapkin, D. Calandriello, D. Belomestny, E. Moulines, A. Naumov, K. Rasul, M. Valko, "
                 "P. Menard", 2025, "https://arxiv.org/abs/2505.19731")

SPECS = [
    # Hand-written (no library carries it). No stability threshold: the step is multiplicative on the
    # simplex, where the classical bound is in the local (entropic) norm, not on lambda_max of H.
    # lr 0.1: gradients on the catalog's simplex problems are
    # O(1), so each step moves a few percent of the mass; from (0.6, 0.3, 0.1) the linear problem's
    # vertex is reached to 1e-6 in 523 steps (mass off the vertex decays like exp(-lr t gap), gap
    # 0.25) and the quadratic's interior minimizer in 199 (measured).
    OptimizerSpec(
        name="exp_gradient", label="Exponentiated gradient (multiplicative weights)",
        factory=ExponentiatedGradient,
        hyperparameters=(lr(0.1),),
        update_rule=(r"p_{t+1} = \frac{p_t \odot e^{-\eta g_t}}"
                     r"{\sum_i \left(p_t \odot e^{-\eta g_t}\right)_i},\quad p \in \Delta"),
        paper=_BECK_TEBOULLE, oracle=Oracle.GRADIENTS, family="mirror & games", row_separable=False,
    ),
    # Hand-written. Row-separable: the rule is elementwise. lr 5e-4: on a minimization problem the
    # recursion is stable for lr * curvature < 2/3 (root -1 of z^2 - (1 - 2a) z - a), a third of
    # gradient descent's 2; Rosenbrock's curvature of ~2,000 at the usual start then allows about
    # 6e-4 (measured: 6e-4 converges, 7e-4 does not). With 5e-4, steps to converge from (-1.5, 2)
    # with the protocol of test_convergence.py: bowl 14,654 (to 1e-3), Rosenbrock 23,156 (to 1e-2).
    # On the unit bilinear game OGDA wants lr ~ 0.3.
    OptimizerSpec(
        name="optimistic_md", label="Optimistic mirror descent (OGDA)", factory=OptimisticGradient,
        hyperparameters=(lr(5e-4),),
        update_rule=r"\theta_{t+1} = \theta_t - 2\eta\, g_t + \eta\, g_{t-1}",
        paper=_RAKHLIN, oracle=Oracle.GRADIENTS, family="mirror & games", row_separable=True,
        stability=optimistic_gradient,
    ),
    # A lookahead method: it gets p.grad = F(z_t) from the run (counted as one gradient) and the
    # closure for F(z_{t+1/2}); each step's counts are 2 function values and 2 gradients. lr 1e-3 like
    # gradient descent: on a quadratic the step multiplies by 1 - a + a^2 (a = lr * curvature),
    # stable for a < 1; measured from (-1.5, 2): bowl 7,341 steps (to 1e-3), Rosenbrock 11,003 (to
    # 1e-2), i.e. gradient descent's step counts at twice the gradients. On the unit bilinear game
    # extragradient wants lr ~ 0.3.
    OptimizerSpec(
        name="mirror_prox", label="Mirror prox (extragradient)", factory=MirrorProx,
        hyperparameters=(lr(1e-3),),
        update_rule=(r"z_{t+\frac12} = z_t - \eta\, F(z_t),\quad z_{t+1} = z_t - \eta\, F(z_{t+\frac12})"),
        paper=_NEMIROVSKI, oracle=Oracle.GRADIENTS, lookahead=True, family="mirror & games",
        row_separable=False, stability=extragradient,
        diagnostics=_CLIPPED,
    ),
    # Hand-written. Not row-separable: each tensor is one simplex. lr 0.1 as exp_gradient: on
    # rock-paper-scissors (payoffs in [-1, 1]) its last iterate reaches KL 2e-4 to the equilibrium in
    # 2,000 steps from (0.5, 0.3, 0.2) / (0.2, 0.3, 0.5), where multiplicative weights' KL grows
    # from 0.14 to 5 (measured; tests/engine/test_simplex_game_dynamics.py).
    OptimizerSpec(
        name="optimistic_mw", label="Optimistic multiplicative weights",
        factory=OptimisticMultiplicativeWeights,
        hyperparameters=(lr(0.1),),
        update_rule=(r"p_{t+1} = \frac{p_t \odot e^{-\eta (2 g_t - g_{t-1})}}"
                     r"{\sum_i \left(p_t \odot e^{-\eta (2 g_t - g_{t-1})}\right)_i},\quad p \in \Delta"),
        paper=_CHEN, oracle=Oracle.GRADIENTS, family="mirror & games", row_separable=False,
    ),
    # Hand-written, a look-ahead method like mirror_prox (2 gradients per step). lr 0.1: on
    # rock-paper-scissors the same last-iterate convergence as optimistic_mw at twice the gradients.
    OptimizerSpec(
        name="mirror_prox_entropic", label="Mirror prox (entropic)", factory=EntropicMirrorProx,
        hyperparameters=(lr(0.1),),
        update_rule=(r"p_{t+\frac12} \propto p_t \odot e^{-\eta F(z_t)},\quad "
                     r"p_{t+1} \propto p_t \odot e^{-\eta F(z_{t+\frac12})},\quad p \in \Delta"),
        paper=_NASH_MP, oracle=Oracle.GRADIENTS, lookahead=True, family="mirror & games",
        row_separable=False, diagnostics=_CLIPPED,
    ),
]

__all__ = ["SPECS", "EntropicMirrorProx", "ExponentiatedGradient", "MirrorProx", "OptimisticGradient",
           "OptimisticMultiplicativeWeights", "multiplicative_step", "project_simplex", "to_simplex"]
