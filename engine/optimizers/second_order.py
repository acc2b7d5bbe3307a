r"""Second-order optimizers: Sophia-H / Sophia-G (with a choice of Hessian-diagonal estimator),
AdaHessian, damped Newton-CG, gradient-regularized Newton (GRN; and its adaptive version with
approximate Hessians, GRN-GNS) and M-FAC.

All of them are written here (no library carries these rules over an HVP oracle; every library
port of Sophia or AdaHessian found uses ``loss.backward(create_graph=True)``, which keeps the
graph alive through ``.grad``, and ``pytorch_optimizer``'s ``SophiaH`` is not the paper's rule).

How they are stepped. The HVP-driven specs (``oracle=Oracle.HVPS``) are closure-driven: the run
builds one optimizer per trajectory, puts the gradient it computed anyway into ``p.grad`` and calls
``step(oracles)`` with an :class:`engine.oracles.Oracles` over exactly the optimizer's parameters,
in order. Curvature is asked of that closure only: ``oracles.hvp(v)`` differentiates a *fresh*
graph with ``torch.autograd.grad`` and returns plain tensors, so nothing an optimizer keeps holds a
graph (``tests/engine/test_second_order.py`` checks this against the ``create_graph=True``
pattern). When ``p.grad`` is missing (a caller with only an ``Oracles``) the gradient is taken from
the closure instead. M-FAC needs no HVP; it is registered closure-driven too, because its
empirical Fisher spans all parameters of one trajectory (see its spec's comment).

Randomness (Sophia-H's Gaussian and AdaHessian's Rademacher probes, Sophia-G's sampled labels) is
a documented function of ``(seed, t)``, :math:`s_t =` :func:`engine.seeds.step_seed` ``(seed, t)``
with :math:`t` the 1-based step (the papers' :math:`t`): Sophia-H's probe is
``seeded_direction(s_t, params)`` (:math:`u \sim N(0, I)`), its Rademacher probe and AdaHessian's
are its sign, and Sophia-G's labels are drawn from ``torch.Generator().manual_seed(s_t)``. Never a
stateful generator, so a test regenerates every probe with :func:`engine.oracles.seeded_direction`
and a run replays exactly, on CPU or CUDA.

Hyperparameters are read from ``param_groups`` at every step. Those that shape the one joint
curvature query (Sophia's ``k`` and estimator, the CG tolerance and iteration cap, GRN's ``H``,
GRN-GNS's curvature, M-FAC's window) are read from the first group; per-coordinate ones (``lr``,
betas, ``gamma``, ``eps``, weight decay, AdaHessian's power and block size, damping) per group.

Min-max games (an ``ascent`` mask on the closure): ``p.grad`` holds the descent field
:math:`S\nabla f` (:math:`S = \mathrm{diag}(\pm 1)`), whose Jacobian is :math:`SH`. Newton and GRN
therefore solve with :math:`S g` (so :math:`(SH)^{-1} S\nabla f = H^{-1}\nabla f`, Newton on the
field), and Sophia negates its curvature estimate on the maximizing coordinates (their own
objective is :math:`-f`). AdaHessian uses :math:`|Hz|` and needs nothing. GRN-GNS accepts steps
by the decrease of :math:`f` and refuses a game.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from engine.optimizers.base import GradientEstimator, Params
from engine.oracles import Oracles, flatten, seeded_direction
from engine.specs import (
    CLIPPED_FRACTION,
    Hyperparameter,
    OptimizerSpec,
    Oracle,
    Paper,
    beta,
    choice,
    eps,
    lr,
    weight_decay,
)
from engine.stability import adam_preconditioned


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, tol: float,
                       max_iter: int) -> tuple[torch.Tensor, int]:
    r"""Solve :math:`A x = b` by conjugate gradients from :math:`x_0 = 0`; ``(x, iterations)``.

    Stops when :math:`\lVert r\rVert \le \mathrm{tol}\,\lVert b\rVert`, after ``max_iter``
    products, or at a breakdown (:math:`p^\top A p = 0` or not finite). Plain CG, used as a linear
    solver: on an indefinite :math:`A` it still returns the Krylov solution when no breakdown
    occurs (which is how undamped Newton walks into a saddle); no negative-curvature truncation.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = torch.dot(r, r)
    stop = tol * math.sqrt(float(rs))
    if float(rs) == 0.0:
        return x, 0
    for i in range(max_iter):
        ap = matvec(p)
        pap = torch.dot(p, ap)
        if not math.isfinite(float(pap)) or float(pap) == 0.0:
            return x, i + 1
        alpha = rs / pap
        x.add_(alpha * p)
        r.sub_(alpha * ap)
        rs_new = torch.dot(r, r)
        if math.sqrt(float(rs_new)) <= stop:
            return x, i + 1
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x, max_iter


def _moments(state: dict[str, Any], p: torch.Tensor, curvature: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient EMA ``exp_avg`` and the curvature EMA ``state[curvature]`` of ``p``, from zero."""
    if "exp_avg" not in state:
        state["exp_avg"] = torch.zeros_like(p)
        state[curvature] = torch.zeros_like(p)
    return state["exp_avg"], state[curvature]


# -------------------------------------------------------------------------------------- Sophia

SOPHIA_ESTIMATORS = ("gaussian", "rademacher", "gnb", "exact")
r"""Sophia's estimators of the Hessian diagonal :math:`\hat h_t`: Hutchinson with Gaussian or
Rademacher probes, Gauss-Newton-Bartlett (Sophia-G), and the exact diagonal (small problems)."""

EXACT_DIAGONAL_MAX = 2_048
"""Most parameters whose exact Hessian diagonal an optimizer computes: one HVP per parameter."""


def hessian_diagonal(oracles: Oracles, params: list[torch.Tensor], who: str) -> list[torch.Tensor]:
    r"""The exact diagonal :math:`H_{ii} = e_i^\top H e_i`, one HVP per coordinate (``P`` HVPs), shaped
    like ``params``; refused above :data:`EXACT_DIAGONAL_MAX` parameters with a message naming
    ``who``."""
    flat = oracles.flat()
    n = flat.numel()
    if n > EXACT_DIAGONAL_MAX:
        raise ValueError(f"{who}: the exact Hessian diagonal costs one HVP per parameter, and {n:,} "
                         f"parameters are more than {EXACT_DIAGONAL_MAX:,}; use a Hutchinson estimate")
    diag = torch.empty_like(flat)
    for i in range(n):
        e = torch.zeros_like(flat)
        e[i] = 1.0
        with torch.enable_grad():
            diag[i] = flatten(oracles.hvp(oracles.unflat(e)))[i]
    return [d.clone() for d in oracles.unflat(diag)]


class Sophia(GradientEstimator):
    r"""Sophia (Liu et al. 2023), the paper's Algorithm 3 (arXiv 2305.14342, latest version)::

        m_t = β1 m_{t-1} + (1-β1) g_t
        if (t-1) mod k = 0:  h_t = β2 h_{t-k} + (1-β2) ĥ_t     else  h_t = h_{t-1}
        θ_t ← θ_t (1 - η λ)                                     (decoupled weight decay)
        θ_{t+1} = θ_t - η · clip(m_t / max(γ h_t, ε), 1),       clip(z, 1) = max(min(z, 1), -1)

    from :math:`m_0 = h_0 = 0` and without bias correction (as Algorithm 3 and the official
    ``SophiaG``). The estimator :math:`\hat h` is a hyperparameter (:data:`SOPHIA_ESTIMATORS`), read
    at every refresh:

    * ``"gaussian"`` (Sophia-H, the paper's Hutchinson): :math:`\hat h = u \odot (H u)`,
      :math:`u \sim N(0, I)`, one HVP;
    * ``"rademacher"``: the same with :math:`u = \mathrm{sign}(z)`, :math:`z \sim N(0, I)` (the
      same draw), so :math:`u_i^2 = 1` and the estimate is exact on a diagonal Hessian; one HVP;
    * ``"gnb"`` (Sophia-G, Gauss-Newton-Bartlett): labels :math:`\hat y_b` drawn from the model's
      own predictive distribution at :math:`\theta_t`, :math:`\hat L = \tfrac1B\sum_b \ell(f(\theta,
      x_b), \hat y_b)`, :math:`\hat h = B\, \nabla\hat L \odot \nabla\hat L` (one gradient, through
      :meth:`engine.oracles.Oracles.gnb_gradient`; only problems with a likelihood provide it);
    * ``"exact"``: :math:`\hat h_i = H_{ii}`, one HVP per parameter (:func:`hessian_diagonal`; at
      most :data:`EXACT_DIAGONAL_MAX` parameters).

    The refresh happens at :math:`t = 1, k+1, 2k+1, \dots` before the step, as in Algorithm 3
    (the official training script refreshes after the step of iterations :math:`k, 2k, \dots`).
    :meth:`diagnostics` reports ``"clipped_coordinates"``, the share of coordinates whose ratio
    was clipped at the last step, :math:`|m_t| > \max(\gamma h_t, \epsilon)` (the paper tracks it;
    the official script logs its complement, the "win rate" :math:`|m| < \gamma h`).
    """

    label = "sophia"

    def __init__(self, params: Params, lr: float = 1e-2, betas: tuple[float, float] = (0.965, 0.99),
                 gamma: float = 0.01, eps: float = 1e-12, weight_decay: float = 0.0, k: int = 10,
                 estimator: str = "gaussian", seed: int = 0) -> None:
        if estimator not in SOPHIA_ESTIMATORS:
            raise ValueError(f"Sophia: estimator must be one of {', '.join(SOPHIA_ESTIMATORS)}, "
                             f"got {estimator!r}")
        super().__init__(params, dict(lr=lr, betas=betas, gamma=gamma, eps=eps, weight_decay=weight_decay,
                                      k=k, estimator=estimator), seed)
        self._clipped_coordinates: float | None = None

    def _estimate(self, oracles: Oracles, t: int) -> list[torch.Tensor]:
        r""":math:`\hat h_t`, shaped like the parameters."""
        params = self._params()
        estimator = self.param_groups[0]["estimator"]
        if estimator in ("gaussian", "rademacher"):
            u = seeded_direction(self._seed(t), params)
            if estimator == "rademacher":
                u = [ui.sign() for ui in u]
            hu = oracles.hvp(u)
            est = [ui * hui for ui, hui in zip(u, hu, strict=True)]
        elif estimator == "exact":
            est = hessian_diagonal(oracles, params, "Sophia")
        else:
            gnb = getattr(oracles, "gnb_gradient", None)
            if gnb is None:
                raise TypeError("Sophia's gnb estimator needs an Oracles closure with gnb_gradient")
            batch, grads = gnb(torch.Generator().manual_seed(self._seed(t)))
            est = [batch * g * g for g in grads]
        signs = self._signs(oracles, est)
        return est if signs is None else [e * s for e, s in zip(est, signs, strict=True)]

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        oracles = self._oracles(closure)
        t = self.steps + 1
        k = int(self.param_groups[0]["k"])
        with torch.enable_grad():
            grads = self._gradient(oracles)
            estimate = self._estimate(oracles, t) if (t - 1) % k == 0 else None
        clipped, total = 0, 0
        for i, (group, p, g) in enumerate(zip(self._groups(), self._params(), grads, strict=True)):
            beta1, beta2 = group["betas"]
            m, h = _moments(self.state[p], p, "hessian")
            m.mul_(beta1).add_(g.to(p.dtype), alpha=1 - beta1)
            if estimate is not None:
                h.mul_(beta2).add_(estimate[i].to(p.dtype), alpha=1 - beta2)
            if group["weight_decay"] != 0:
                p.mul_(1 - group["lr"] * group["weight_decay"])
            ratio = m / (group["gamma"] * h).clamp(min=group["eps"])
            clipped += int((ratio.abs() > 1).sum())
            total += ratio.numel()
            p.add_(ratio.clamp_(-1.0, 1.0), alpha=-group["lr"])
        self._advance()
        self._clipped_coordinates = clipped / total if total else 0.0

    def diagnostics(self) -> Mapping[str, float]:
        if self._clipped_coordinates is None:
            return {}
        return {**super().diagnostics(), "clipped_coordinates": self._clipped_coordinates}


# ---------------------------------------------------------------------------------- AdaHessian

def spatial_average(d: torch.Tensor, block: int) -> torch.Tensor:
    r"""AdaHessian's spatial averaging of a per-coordinate estimate ``d`` (shaped like its parameter),
    after the official code:

    * 0-D and 1-D tensors (biases, norms, a landscape's point): no averaging;
    * 2-D (a matrix): means over consecutive blocks of ``block`` entries of the row-major flattening
      (``--block-length`` of the official transformer code; a last, shorter block averages what it
      has where ``block`` does not divide the size);
    * 3-D and up (convolution kernels ``[out, in, *kernel]``): the mean over the kernel's dimensions
      ``2, 3, ...`` (official image-classification code), i.e. a block per (out, in) pair.
    """
    if d.dim() <= 1:
        return d
    if d.dim() >= 3:
        return d.mean(dim=tuple(range(2, d.dim())), keepdim=True).expand_as(d)
    if block <= 1:
        return d
    flat = d.reshape(-1)
    n = flat.numel()
    ids = torch.arange(n, device=d.device) // block
    sums = torch.zeros((n + block - 1) // block, dtype=d.dtype, device=d.device).index_add_(0, ids, flat)
    counts = torch.bincount(ids).to(d.dtype)
    return (sums / counts)[ids].reshape(d.shape)


class AdaHessian(GradientEstimator):
    r"""AdaHessian (Yao et al. 2021), after the official code (amirgholami/adahessian,
    ``image_classification/optim_adahessian.py``, ``instruction/adahessian.py`` and the
    transformer code)::

        z ~ Rademacher,  D_t = |z ⊙ (H_t z)| = |H_t z|,  D_t^(s) = spatial_average(D_t)
        m_t = β1 m_{t-1} + (1-β1) g_t,      v_t = β2 v_{t-1} + (1-β2) D_t^(s) ⊙ D_t^(s)
        θ_{t+1} = θ_t - η ( m_t/(1-β1^t) / ((sqrt(v_t)/sqrt(1-β2^t))^k + ε) + λ θ_t )

    One HVP per step. The paper's Eq. 10 averages the signed :math:`z \odot Hz` over a block;
    the official code averages its magnitude; the two agree wherever a block has one entry (every
    1-D tensor, every analytic landscape), and the code's form is used for larger blocks.
    """

    label = "adahessian"

    def __init__(self, params: Params, lr: float = 0.15, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-4, weight_decay: float = 0.0, hessian_power: float = 1.0,
                 block_size: int = 32, seed: int = 0) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      hessian_power=hessian_power, block_size=block_size), seed)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        oracles = self._oracles(closure)
        t = self.steps + 1
        params = self._params()
        z = [u.sign() for u in seeded_direction(self._seed(t), params)]
        with torch.enable_grad():
            if all(p.grad is not None for p in params):
                grads = [p.grad.detach() for p in params]
                hz = oracles.hvp(z)
            else:
                _, grads, hz = oracles.hvp(z, with_gradient=True)
        grads = self._clipped_copy(grads)
        for group, p, g, hzi in zip(self._groups(), params, grads, hz, strict=True):
            beta1, beta2 = group["betas"]
            m, v = _moments(self.state[p], p, "exp_hessian_diag_sq")
            d = spatial_average(hzi.to(p.dtype).abs(), int(group["block_size"]))
            m.mul_(beta1).add_(g.to(p.dtype), alpha=1 - beta1)
            v.mul_(beta2).addcmul_(d, d, value=1 - beta2)
            bc1, bc2 = 1 - beta1 ** t, 1 - beta2 ** t
            denom = (v.sqrt() / math.sqrt(bc2)).pow_(group["hessian_power"]).add_(group["eps"])
            update = m / bc1 / denom
            if group["weight_decay"] != 0:
                update.add_(p, alpha=group["weight_decay"])
            p.add_(update, alpha=-group["lr"])
        self._advance()


# ------------------------------------------------------------------------- Newton-CG and GRN

class NewtonCG(GradientEstimator):
    r"""Damped Newton with conjugate gradients on HVPs::

        d_t ≈ (H_t + λ_t I)^{-1} g_t   (CG from 0, ‖(H_t + λ_t I) d - g_t‖ ≤ tol ‖g_t‖, ≤ cg_max_iter HVPs)
        θ_{t+1} = θ_t - η d_t

    with a fixed damping :math:`\lambda_t = \lambda` (``regularization="fixed"``: Levenberg-style
    damped Newton) or the gradient regularization :math:`\lambda_t = \sqrt{H \lVert g_t\rVert}`
    (``regularization="gradient"``: Mishchenko 2023, whose method is :math:`\eta = 1`).
    :meth:`diagnostics` reports the last step's ``"cg_iterations"`` (its HVPs) and ``"damping"``
    (:math:`\lambda_t`: GRN's gradient regularization, the paper's quantity).
    """

    def __init__(self, params: Params, lr: float = 1.0, damping: float = 0.0, lipschitz: float = 1.0,
                 cg_tol: float = 1e-10, cg_max_iter: int = 50, regularization: str = "fixed") -> None:
        if regularization not in ("fixed", "gradient"):
            raise ValueError(f"NewtonCG: regularization must be 'fixed' or 'gradient', "
                             f"got {regularization!r}")
        super().__init__(params, dict(lr=lr, damping=damping, lipschitz=lipschitz, cg_tol=cg_tol,
                                      cg_max_iter=cg_max_iter))
        self.regularization = regularization
        self.label = "newton" if regularization == "fixed" else "grn"
        self.cg_iterations = 0
        self.damping_used = 0.0
        self._stepped = False

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        oracles = self._oracles(closure)
        params, groups = self._params(), self._groups()
        first = self.param_groups[0]
        with torch.enable_grad():
            grads = self._gradient(oracles)
        signs = self._signs(oracles, grads)
        if signs is not None:  # Newton on the field S grad f: (S H)^{-1} S grad f = H^{-1} grad f
            grads = [g * s for g, s in zip(grads, signs, strict=True)]
        b = flatten(grads)
        if self.regularization == "gradient":
            lam = math.sqrt(float(first["lipschitz"]) * float(b.norm()))
            damping = torch.full_like(b, lam)
        else:
            damping = flatten([torch.full_like(p, float(grp["damping"]))
                             for grp, p in zip(groups, params, strict=True)])
            lam = float(first["damping"])

        def matvec(v: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                hv = oracles.hvp(oracles.unflat(v))
            return flatten(hv).to(v.dtype) + damping * v

        d, self.cg_iterations = conjugate_gradient(matvec, b, float(first["cg_tol"]),
                                                   int(first["cg_max_iter"]))
        self.damping_used = lam
        self._stepped = True
        for group, p, di in zip(groups, params, oracles.unflat(d), strict=True):
            p.add_(di.to(p.dtype), alpha=-group["lr"])

    def diagnostics(self) -> Mapping[str, float]:
        if not self._stepped:
            return {}
        return {**super().diagnostics(), "cg_iterations": float(self.cg_iterations),
                "damping": self.damping_used}


# -------------------------------------------- gradient-regularized Newton, gradient-normalized smoothness

GNS_HESSIANS = ("exact", "gauss_newton", "fisher", "diagonal")
"""The curvature :math:`H_k` of :class:`GradientNormalizedNewton`."""

GNS_EPS = 1e-8
"""The reference code's constant in :math:`\\lambda_k = \\lVert g_k\\rVert / (\\gamma_k + \\epsilon)`."""
GNS_GAMMA_MIN = 1e-9
"""The reference code's floor on :math:`\\gamma_k` after a doubling."""


class GradientNormalizedNewton(GradientEstimator):
    r"""Gradient-regularized Newton with the adaptive search of Semenov, Jaggi & Doikov (2025),
    "Gradient-Normalized Smoothness for Optimization with Approximate Hessians", Algorithm 1, after
    the authors' ``grad_norm_smooth`` (epfml/grad-norm-smooth, ``src/methods.py``)::

        λ = ‖g_k‖ / (γ + ε),   Δ = -(H_k + λ I)^{-1} g_k
        accept if f(x_k) - f(x_k + Δ) ≥ ‖∇f(x_k + Δ)‖² / (8 λ):  γ ← max(2γ, γ_min), stop
        otherwise γ ← γ / 2 and try again (at most ``max_search`` tries; the last Δ is taken)
        x_{k+1} = x_k + η Δ                                    (η = lr; the paper's method is η = 1)

    with :math:`\gamma_0` = ``gamma0`` (the reference's 1), :math:`\epsilon = 10^{-8}`,
    :math:`\gamma_{\min} = 10^{-9}`, and :math:`\gamma` carried from step to step: the
    regularization :math:`\lambda_k` is the gradient norm over the radius :math:`\gamma_k` in which
    the curvature model is trusted, found adaptively (the gradient-normalized smoothness of the
    paper). Each try costs a solve, one function value and one gradient at :math:`x_k + \Delta`;
    each step one function value at :math:`x_k`.

    The curvature :math:`H_k` is a hyperparameter (:data:`GNS_HESSIANS`):

    * ``"exact"``: the Hessian, through HVPs (a CG solve per try, as :class:`NewtonCG`; the reference
      factors a dense matrix);
    * ``"gauss_newton"``: the generalized Gauss-Newton matrix :math:`J^\top \nabla^2_o\ell\, J +
      \lambda_{\mathrm{l2}} I` of a network (:meth:`engine.oracles.ModelView.gauss_newton_vp`);
    * ``"fisher"``: the empirical Fisher :math:`\tfrac1b \sum_i \nabla\ell_i \nabla\ell_i^\top` of the
      minibatch's per-sample gradients (the gradient outer products of the paper's "Fisher term");
    * ``"diagonal"``: the exact Hessian diagonal (:func:`hessian_diagonal`, small problems), solved
      coordinate-wise.

    Gauss-Newton and Fisher need a network (the run's :class:`engine.oracles.ModelView`). The
    acceptance test compares values of :math:`f`: there is no min-max-game version, and a game is
    refused. :meth:`diagnostics` reports ``"gamma"`` (:math:`\gamma` after the step), ``"damping"``
    (the :math:`\lambda` of the step taken), ``"search_tries"`` and ``"cg_iterations"`` (all tries).
    """

    label = "grn_gns"

    def __init__(self, params: Params, lr: float = 1.0, gamma0: float = 1.0, hessian: str = "exact",
                 max_search: int = 40, cg_tol: float = 1e-10, cg_max_iter: int = 50) -> None:
        if hessian not in GNS_HESSIANS:
            raise ValueError(f"grn_gns: hessian must be one of {', '.join(GNS_HESSIANS)}, got {hessian!r}")
        super().__init__(params, dict(lr=lr, gamma0=gamma0, hessian=hessian, max_search=max_search,
                                      cg_tol=cg_tol, cg_max_iter=cg_max_iter))
        self.gamma: float | None = None
        self._gamma0 = float(gamma0)
        self._report: dict[str, float] = {}

    def _curvature(self, oracles: Oracles, x: torch.Tensor, hessian: str
                   ) -> Callable[[torch.Tensor], torch.Tensor] | torch.Tensor:
        """The matrix-vector product of :math:`H_k` (flat), or its diagonal for ``"diagonal"``."""
        if hessian == "diagonal":
            return flatten(hessian_diagonal(oracles, self._params(), "grn_gns"))
        if hessian == "exact":
            def hvp(v: torch.Tensor) -> torch.Tensor:
                with torch.enable_grad():
                    return flatten(oracles.hvp(oracles.unflat(v))).to(v.dtype)
            return hvp
        model = getattr(oracles, "model", None)
        if model is None:
            raise ValueError(f"grn_gns: the {hessian.replace('_', '-')} curvature needs a network (a model "
                             f"behind the loss); use hessian='exact' or 'diagonal' on this problem")
        if hessian == "gauss_newton":
            return lambda v: model.gauss_newton_vp(x, v).to(v.dtype)
        jac = model.per_sample_gradients(x.detach()).to(x.dtype)  # [b, P]
        return lambda v: jac.T @ (jac @ v) / jac.shape[0]

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        oracles = self._oracles(closure)
        if getattr(oracles, "ascent", None) is not None:
            raise ValueError("grn_gns accepts a step by the decrease of f: it has no min-max game version")
        first = self.param_groups[0]
        if self.gamma is None or float(first["gamma0"]) != self._gamma0:
            self.gamma = self._gamma0 = float(first["gamma0"])  # a new gamma0 restarts the search
        with torch.enable_grad():
            g = flatten(self._gradient(oracles))
        norm = float(g.norm())
        x = oracles.flat()
        tries = cg_total = 0
        lam = 0.0
        if norm > 0:
            f0 = float(oracles())
            curvature = self._curvature(oracles, x, str(first["hessian"]))
            delta = torch.zeros_like(g)
            for _ in range(int(first["max_search"])):
                tries += 1
                lam = norm / (self.gamma + GNS_EPS)
                if isinstance(curvature, torch.Tensor):
                    delta = -g / (curvature + lam)
                else:
                    sol, iters = conjugate_gradient(lambda v, lam=lam: curvature(v) + lam * v, g,
                                                    float(first["cg_tol"]), int(first["cg_max_iter"]))
                    delta, cg_total = -sol, cg_total + iters
                point = (x + delta)[None]
                f_new = float(oracles.values(point)[0])
                g_new = float(oracles.gradient_at(point)[0].norm()) ** 2
                if f0 - f_new >= g_new / (8 * lam):
                    self.gamma = max(2 * self.gamma, GNS_GAMMA_MIN)
                    break
                self.gamma *= 0.5
            if not bool(torch.isfinite(delta).all()):  # every try failed on a singular system: no step
                delta = torch.zeros_like(g)
            for group, p, d in zip(self._groups(), self._params(), oracles.unflat(delta), strict=True):
                p.add_(d.to(p.dtype), alpha=group["lr"])
        self._report = {"gamma": float(self.gamma), "damping": lam, "search_tries": float(tries),
                        "cg_iterations": float(cg_total)}

    def diagnostics(self) -> Mapping[str, float]:
        if not self._report:
            return {}
        return {**super().diagnostics(), **self._report}


# ---------------------------------------------------------------------------------------- M-FAC

class MFAC(GradientEstimator):
    r"""M-FAC (Frantar, Kurtic, Alistarh 2021), the optimizer of the official ``optim.py``::

        g_t ← g_t + λ_wd θ_t                    (coupled weight decay, as the official code)
        G ← the last m gradients (a ring buffer of m rows that starts as zeros)
        F̂_t = λ I + (1/m) Gᵀ G                  (damped empirical Fisher; the current g_t included)
        v_t = μ v_{t-1} + (1-μ) F̂_t^{-1} g_t,   θ_{t+1} = θ_t - η v_t      (μ = 0: v_t = F̂_t^{-1} g_t)

    :math:`\hat F^{-1} x` by Woodbury with an m×m Cholesky solve (in float64):
    :math:`\hat F^{-1}x = \lambda^{-1}\big(x - G^\top (m\lambda I + G G^\top)^{-1} G x\big)`, equal in
    exact arithmetic to the paper's dynamic algorithm (the official ``HInvFastUpMulti``; both give
    the Sherman-Morrison recursion of the official ``HInvSlow``). The Gram matrix :math:`GG^\top` is
    kept and updated one row per step (O(md)); the solve is O(m³), the same order as the dynamic
    algorithm's update. Reads ``p.grad`` only (no HVP). Changing the window size resets the window.
    No velocity is kept while :math:`\mu = 0` (no memory spent on it): when :math:`\mu` becomes
    positive mid-run, :math:`v` starts from 0.
    """

    label = "mfac"

    def __init__(self, params: Params, lr: float = 1e-3, damping: float = 1e-5, window: int = 32,
                 momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, damping=damping, window=window, momentum=momentum,
                                      weight_decay=weight_decay))
        self.grads: torch.Tensor | None = None  # [m, P] float64 ring buffer
        self.dots: torch.Tensor | None = None  # [m, m] Gram matrix G G^T
        self.last = 0
        self.velocity: torch.Tensor | None = None

    def inverse_fisher_times(self, x: torch.Tensor, damping: float) -> torch.Tensor:
        r""":math:`\hat F^{-1} x` for the current window (x flat, float64)."""
        assert self.grads is not None and self.dots is not None
        m = self.grads.shape[0]
        gram = self.dots + m * damping * torch.eye(m, dtype=self.dots.dtype, device=self.dots.device)
        rhs = (self.grads @ x)[:, None]
        # cholesky_ex: no error-checking sync (linalg.cholesky costs ~1000x more on a small matrix
        # here); where rounding makes the SPD matrix look indefinite, fall back to an LU solve
        factor, info = torch.linalg.cholesky_ex(gram)
        if int(info) == 0:
            coef = torch.cholesky_solve(rhs, factor)[:, 0]
        else:
            coef = torch.linalg.solve(gram, rhs)[:, 0]
        return (x - self.grads.T @ coef) / damping

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        params, groups = self._params(), self._groups()
        if any(p.grad is None for p in params):
            with torch.enable_grad():
                grads = self._gradient(self._oracles(closure))
        else:
            grads = [p.grad.detach() for p in params]
        first = self.param_groups[0]
        g = flatten([(gi + grp["weight_decay"] * p if grp["weight_decay"] != 0 else gi).to(torch.float64)
                   for grp, p, gi in zip(groups, params, grads, strict=True)])
        m = int(first["window"])
        if self.grads is None or self.grads.shape != (m, g.numel()):
            self.grads = torch.zeros(m, g.numel(), dtype=torch.float64, device=g.device)
            self.dots = torch.zeros(m, m, dtype=torch.float64, device=g.device)
            self.last = 0
        assert self.dots is not None
        self.grads[self.last] = g
        row = self.grads @ g
        self.dots[self.last, :] = row
        self.dots[:, self.last] = row
        self.last = (self.last + 1) % m
        direction = self.inverse_fisher_times(g, float(first["damping"]))
        mu = float(first["momentum"])
        if mu > 0:
            if self.velocity is None or self.velocity.shape != direction.shape:
                self.velocity = torch.zeros_like(direction)
            self.velocity.mul_(mu).add_(direction, alpha=1 - mu)
            direction = self.velocity
        offset = 0
        for group, p in zip(groups, params, strict=True):
            n = p.numel()
            p.add_(direction[offset:offset + n].reshape(p.shape).to(p.dtype), alpha=-group["lr"])
            offset += n


# ------------------------------------------------------------------------------------- registry

_SOPHIA = Paper("Sophia: A Scalable Stochastic Second-order Optimizer for Language Model Pre-training",
                "H. Liu, Z. Li, D. Hall, P. Liang, T. Ma", 2023, "https://arxiv.org/abs/2305.14342")
_ADAHESSIAN = Paper("ADAHESSIAN: An Adaptive Second Order Optimizer for Machine Learning",
                    "Z. Yao, A. Gholami, S. Shen, M. Mustafa, K. Keutzer, M. W. Mahoney", 2021,
                    "https://arxiv.org/abs/2006.00719")
_NEWTON = Paper("Deep learning via Hessian-free optimization", "J. Martens", 2010,
                "https://www.cs.toronto.edu/~jmartens/docs/Deep_HessianFree.pdf")
_GRN = Paper("Regularized Newton Method with Global O(1/k^2) Convergence", "K. Mishchenko", 2023,
             "https://arxiv.org/abs/2112.02089")
_GNS = Paper("Gradient-Normalized Smoothness for Optimization with Approximate Hessians",
             "A. Semenov, M. Jaggi, N. Doikov", 2025, "https://arxiv.org/abs/2506.13710")
_MFAC = Paper("M-FAC: Efficient Matrix-Free Approximations of Second-Order Information",
              "E. Frantar, E. Kurtic, D. Alistarh", 2021, "https://arxiv.org/abs/2107.03356")

_SOPHIA_RULE = (r"m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\;"
                r"h_t = \begin{cases}\beta_2 h_{t-k} + (1-\beta_2)\hat h_t & (t-1) \bmod k = 0\\"
                r" h_{t-1} & \text{else}\end{cases},\;"
                r"\theta_t \leftarrow \theta_t(1-\eta\lambda),\;"
                r"\theta_{t+1} = \theta_t - \eta\,\mathrm{clip}\!\left("
                r"\frac{m_t}{\max(\gamma h_t, \epsilon)}, 1\right)")
_SOPHIA_ESTIMATE = (r",\; \hat h_t = \begin{cases}u \odot (H_t u),\ u \sim N(0, I) & \text{gaussian}\\"
                    r" u \odot (H_t u),\ u \sim \mathrm{Rademacher} & \text{rademacher}\\"
                    r" B\,\nabla\hat L(\theta_t) \odot \nabla\hat L(\theta_t),\ "
                    r"\hat L = \tfrac1B \sum_b \ell(f(\theta_t, x_b), \hat y_b),\ "
                    r"\hat y_b \sim p_{\theta_t}(\cdot \mid x_b) & \text{gnb}\\"
                    r" \mathrm{diag}(H_t) & \text{exact}\end{cases}")
_CG = (Hyperparameter("cg_tol", 1e-10, 1e-14, 1.0, log=True,
                      doc="CG stops at relative residual \\|r\\| \\le tol\\,\\|g\\|"),
       Hyperparameter("cg_max_iter", 50, 1, 10_000, kind="int", doc="at most this many HVPs per step"))


_CLIPS = {CLIPPED_FRACTION: "share of the gradient clipped at the last step (norm clipping: 1 where it was "
                             "rescaled); reported when the lane clips"}
_SOPHIA_DIAGNOSTICS = {"clipped_coordinates": "share of coordinates whose step was clipped at the last step, "
                                              "|m_t| > max(gamma h_t, eps)", **_CLIPS}
_NEWTON_DIAGNOSTICS = {"cg_iterations": "conjugate-gradient iterations (HVPs) of the last step's solve",
                       "damping": "the damping lambda_t of the last step (GRN: sqrt(H ||g_t||))", **_CLIPS}


def _sophia_hps(lr_default: float, estimator: str) -> tuple[Hyperparameter, ...]:
    return (lr(lr_default),
            beta("beta1", 0.965, 0, doc="gradient EMA \\beta_1"),
            beta("beta2", 0.99, 1, doc="Hessian-estimate EMA \\beta_2 (per refresh)"),
            Hyperparameter("gamma", 0.01, 1e-6, 10.0, log=True,
                           doc="\\gamma: the step is clipped where |m| > \\gamma h (the code's \\rho)"),
            eps(1e-12), weight_decay(),
            Hyperparameter("k", 10, 1, 1000, kind="int", doc="refresh the Hessian estimate every k steps"),
            choice("estimator", estimator, SOPHIA_ESTIMATORS,
                   doc="Hessian-diagonal estimate: Hutchinson with Gaussian or Rademacher probes, "
                       "Gauss-Newton-Bartlett (a network with a likelihood), or exact (an HVP per "
                       "parameter)"))


SPECS = [
    # Sophia, Algorithm 3 of the paper (no bias correction, refresh at t = 1, k+1, ...; clip at 1).
    # beta1 = 0.965, beta2 = 0.99, k = 10: the official SophiaG / README; eps = 1e-12 (paper; the
    # official code adds 1e-15 to rho*bs*h instead of taking a max, the same for h >= 0);
    # gamma = 0.01: the README's SophiaG(rho=0.01) (the official code's h has no factor B and is
    # multiplied by rho*bs, so its rho is the paper's gamma); its GPT-2 small config uses 0.03, the
    # README suggests [0.01, 0.1]. Weight decay 0 (official 0.1-0.2 for GPT-2) so that the
    # landscapes' minima stay put. lr 1e-2 for the unit-scale landscapes: it is the largest step a
    # coordinate can take (the paper: 2e-4 to 6e-4 on GPT-2 with a schedule). The estimator is a
    # choice: Hutchinson u ~ N(0, I) by default, as in the paper; Rademacher probes (exact on a
    # diagonal Hessian), Gauss-Newton-Bartlett (networks) and the exact diagonal (<= 2,048 parameters)
    # beside it. On the paper's toy (test_second_order) Rademacher equals the exact diagonal step for
    # step and Gaussian probes reach 2e-2 later. No stability threshold: the clip bounds every
    # coordinate's step by lr whatever the curvature.
    OptimizerSpec(
        name="sophia_h", label="Sophia-H", factory=Sophia,
        hyperparameters=_sophia_hps(1e-2, "gaussian"),
        update_rule=_SOPHIA_RULE + _SOPHIA_ESTIMATE,
        paper=_SOPHIA, oracle=Oracle.HVPS, family="second-order", row_separable=False,
        seeded=True, diagnostics=_SOPHIA_DIAGNOSTICS,
    ),
    # Sophia-G needs labels to sample: it runs on problems whose closure offers gnb_gradient (a
    # network with a cross-entropy, binary cross-entropy or squared-error likelihood) and raises a
    # clear error elsewhere. lr 1e-3 for networks (the max per-coordinate step, as Adam's 1e-3).
    OptimizerSpec(
        name="sophia_g", label="Sophia-G", factory=Sophia,
        hyperparameters=_sophia_hps(1e-3, "gnb"),
        update_rule=_SOPHIA_RULE + _SOPHIA_ESTIMATE,
        paper=_SOPHIA, oracle=Oracle.HVPS, family="second-order", row_separable=False,
        seeded=True, diagnostics=_SOPHIA_DIAGNOSTICS,
        requires={"sampled_losses": "a network with a likelihood to sample labels from (Gauss-Newton-"
                                    "Bartlett); use sophia_h on analytic landscapes"},
    ),
    # Official defaults: lr 0.15, betas (0.9, 0.999), eps 1e-4, weight decay 0, Hessian power 1
    # (image_classification/optim_adahessian.py). block_size 32 for matrices: the official
    # transformer run (transformer/config/adahessian.sh, --block-length 32); conv kernels average
    # over their spatial dims (image-classification code); 1-D tensors are not averaged.
    OptimizerSpec(
        name="adahessian", label="AdaHessian", factory=AdaHessian,
        hyperparameters=(lr(0.15),
                         beta("beta1", 0.9, 0, doc="gradient EMA \\beta_1"),
                         beta("beta2", 0.999, 1, doc="EMA of the squared Hessian diagonal \\beta_2"),
                         eps(1e-4), weight_decay(),
                         Hyperparameter("hessian_power", 1.0, 0.0, 1.0, include_low=False,
                                        doc="Hessian power k: denominator (\\sqrt{\\hat v})^k"),
                         Hyperparameter("block_size", 32, 1, 4096, kind="int",
                                        doc="spatial-averaging block of a matrix parameter")),
        update_rule=(r"D_t = \mathrm{avg}_{\text{block}}|z \odot H_t z|,\ z \sim \mathrm{Rademacher},\;"
                     r"m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\;"
                     r"v_t = \beta_2 v_{t-1} + (1-\beta_2) D_t^2,\;"
                     r"\theta_{t+1} = \theta_t - \eta\left(\frac{m_t/(1-\beta_1^t)}"
                     r"{(\sqrt{v_t/(1-\beta_2^t)})^k + \epsilon} + \lambda\theta_t\right)"),
        paper=_ADAHESSIAN, oracle=Oracle.HVPS, family="second-order", row_separable=False, seeded=True,
        # Adam's form with v_t the EMA of D_t^2: the instrument's P_t = (1 - beta1^t)(sqrt(v_hat) + eps)
        # is AdaHessian's own at hessian_power k = 1 (the default); at k < 1 its denominator is
        # (sqrt(v_hat))^k + eps and the preconditioned sharpness shown is that of k = 1.
        stability=adam_preconditioned, second_moment_key="exp_hessian_diag_sq", diagnostics=_CLIPS,
    ),
    # Damped Newton-CG. lr 1 and damping 0: the pure Newton step (one step to a quadratic's minimum;
    # attracted by saddles and maxima alike). CG tolerance and cap are the truncation of the solve.
    OptimizerSpec(
        name="newton", label="Newton-CG", factory=NewtonCG,
        hyperparameters=(lr(1.0), Hyperparameter("damping", 0.0, 0.0, 1e3, doc="damping \\lambda"), *_CG),
        update_rule=r"\theta_{t+1} = \theta_t - \eta\,(H_t + \lambda I)^{-1} g_t\quad\text{(CG on HVPs)}",
        paper=_NEWTON, oracle=Oracle.HVPS, family="second-order", row_separable=False,
        fixed={"regularization": "fixed"}, diagnostics=_NEWTON_DIAGNOSTICS,
    ),
    # Mishchenko's regularized Newton: lambda_k = sqrt(H ||grad f(x_k)||) and a unit step (the
    # paper's rule, checked against its abstract and arXiv 2112.02089 Algorithm 1); H is a
    # constant that the theory wants at least of the order of the Hessian's Lipschitz constant.
    # The paper's line search for H (AdaN) is not implemented.
    OptimizerSpec(
        name="grn", label="Gradient-regularized Newton", factory=NewtonCG,
        hyperparameters=(lr(1.0), Hyperparameter("lipschitz", 1.0, 1e-8, 1e8, log=True,
                                                 doc="H in \\lambda_t = \\sqrt{H \\|g_t\\|}"), *_CG),
        update_rule=(r"\lambda_t = \sqrt{H\,\lVert g_t\rVert},\;"
                     r"\theta_{t+1} = \theta_t - \eta\,(H_t + \lambda_t I)^{-1} g_t\quad\text{(CG on HVPs)}"),
        paper=_GRN, oracle=Oracle.HVPS, family="second-order", row_separable=False,
        fixed={"regularization": "gradient"}, diagnostics=_NEWTON_DIAGNOSTICS,
    ),
    # Semenov, Jaggi & Doikov's Algorithm 1 with the reference code's constants (gamma_0 = 1,
    # eps = 1e-8, gamma_min = 1e-9, at most 40 tries; the condition f_k - f_new >= ||g_new||^2 / (8
    # lambda)). lr 1: the paper's unit step. Exact curvature by default (any problem); Gauss-Newton
    # and Fisher need a network. Closure-driven with the model view (uses_model) for the latter two.
    OptimizerSpec(
        name="grn_gns", label="Adaptive gradient-regularized Newton (GNS)", factory=GradientNormalizedNewton,
        hyperparameters=(lr(1.0),
                         Hyperparameter("gamma0", 1.0, 1e-8, 1e8, log=True,
                                        doc=r"initial radius \gamma_0 of \lambda = \|g\| / \gamma"),
                         choice("hessian", "exact", GNS_HESSIANS,
                                doc="curvature H_k: exact (HVPs), Gauss-Newton or empirical Fisher "
                                    "(networks), or the exact diagonal (small problems)"),
                         Hyperparameter("max_search", 40, 1, 100, kind="int",
                                        doc="most tries of the adaptive search per step"),
                         *_CG),
        update_rule=(r"\lambda = \frac{\lVert g_k\rVert}{\gamma + \epsilon},\;"
                     r"\Delta = -(H_k + \lambda I)^{-1} g_k,\;"
                     r"\gamma \leftarrow \begin{cases}2\gamma & f(x_k) - f(x_k + \Delta) \ge "
                     r"\frac{\lVert\nabla f(x_k + \Delta)\rVert^2}{8\lambda}\\"
                     r"\gamma/2,\ \text{retry} & \text{else}\end{cases},\;"
                     r"x_{k+1} = x_k + \eta\,\Delta"),
        paper=_GNS, oracle=Oracle.HVPS, family="second-order", row_separable=False, uses_model=True,
        diagnostics={"gamma": "the radius gamma after the last step's search",
                     "damping": "lambda = ||g|| / (gamma + eps) of the step taken",
                     "search_tries": "tries of the adaptive search in the last step",
                     "cg_iterations": "conjugate-gradient iterations of the last step, all tries", **_CLIPS},
    ),
    # M-FAC reads only gradients, but its Fisher couples every parameter of one trajectory, so a race
    # gives each start its own optimizer (per_trajectory). lr 1e-3 and damping 1e-5 are the official
    # main_optim.py's; window 32 (official 1024, README example 512) fits the explorer's sizes;
    # momentum and weight decay 0 are the official defaults. No diagnostics: the paper defines none
    # about its own step (the window's fill is min(t, m) / m, known without asking).
    OptimizerSpec(
        name="mfac", label="M-FAC", factory=MFAC,
        hyperparameters=(lr(1e-3), Hyperparameter("damping", 1e-5, 1e-10, 1e3, log=True,
                                                  doc="damping \\lambda of \\lambda I + \\tfrac1m G^\\top G"),
                         Hyperparameter("window", 32, 1, 1024, kind="int", doc="gradients kept, m"),
                         Hyperparameter("momentum", 0.0, 0.0, 1.0, include_high=False, doc="momentum \\mu"),
                         weight_decay()),
        update_rule=(r"\hat F_t = \lambda I + \tfrac1m \sum_{i=t-m+1}^{t} g_i g_i^\top,\;"
                     r"v_t = \mu v_{t-1} + (1-\mu)\hat F_t^{-1} g_t,\;\theta_{t+1} = \theta_t - \eta\, v_t"),
        paper=_MFAC, oracle=Oracle.GRADIENTS, family="second-order", row_separable=False,
        per_trajectory=True,
    ),
]

__all__ = ["EXACT_DIAGONAL_MAX", "GNS_HESSIANS", "MFAC", "SOPHIA_ESTIMATORS", "SPECS", "AdaHessian",
           "GradientNormalizedNewton", "NewtonCG", "Sophia", "conjugate_gradient", "hessian_diagonal",
           "spatial_average"]
