r"""Memory-lean first-order methods: SCALE and FRUGAL.

Both keep optimizer state for only part of the parameters, which is what the memory report
shows next to Adam's :math:`2P`.

**SCALE** (Glentis, Li, Han & Hong 2025), written after the authors' ``SCALE`` optimizer
(``mem_eff_pt/pt_scale/scale_optimizer.py``). For every matrix parameter (torch layout
``[out, in]``; higher-order tensors viewed as ``[out, -1]``) the update is the column-normalised
direction of the paper -- each output unit's row of the torch weight (a column of the paper's
``[in, out]`` matrix) is divided by its root mean square:

.. math:: u_{j,:} = \frac{m_{j,:}}{\max\big(\sqrt{\tfrac1n \textstyle\sum_k m_{j,k}^2},\ 10^{-8}\big)},\qquad
          \theta \leftarrow \theta(1 - \eta\lambda) - \eta\, u

with :math:`m = g` except on the output layer, where :math:`m_t = \beta m_{t-1} + (1-\beta) g_t`
(:math:`m_0 = 0`). The reference code divides by the RMS, i.e. :math:`\lVert m_{j,:}\rVert_2 /
\sqrt n`; summaries of the paper write the plain :math:`\ell_2` norm (steepest descent in the
:math:`\lVert\cdot\rVert_{1\to2}` norm), which differs by the constant :math:`\sqrt n` per tensor
(a rescaled learning rate). Vector parameters (biases, gains, and the
single point of an analytic landscape) are updated by AdamW as in the reference code
(:math:`\beta = (0.9, 0.999)`, :math:`\epsilon = 10^{-8}`, its step
:math:`\eta\sqrt{1-\beta_2^t}/(1-\beta_1^t)\cdot m/(\sqrt v + \epsilon)`), so on a 2-D landscape
SCALE *is* that AdamW: its ideas act on networks. The output layer is the last matrix parameter
in parameter order (the reference code is told which tensor is ``lm_head``); the spec is
``per_trajectory``, so in a race every start has its own optimizer and its own output layer.

**FRUGAL** (Zmushko, Beznosikov, Takáč & Horváth 2024), written after the authors' ``CoordAdamW``,
``BlockAdamW`` and ``GaloreAdamW`` (``frugal/proj_optimizer_templates.py``,
``coordinate_projector.py``, ``galore_projector.py``, ``adamw.py``): every ``update_gap`` steps
:math:`T` a state-full subspace :math:`P` is chosen; Adam (bias-corrected, moments and step
counter reset at every re-selection) updates the gradient's part in it, signSGD with the same
:math:`\eta` updates the rest, and weight decay is decoupled. The ``projection`` hyperparameter picks
the subspace, each with the reference code's rounding:

* ``"random"`` (``CoordAdamW``, ``coord_choice="columns"``): a random subset of
  :math:`\lfloor\rho\, n\rfloor` columns of each matrix (coordinates of each vector);
* ``"blockwise"`` (``BlockAdamW``, ``block_order="random"``): :math:`\mathrm{round}(\rho L)` of the
  :math:`L` parameter tensors, drawn at random, get Adam on all their entries; the others signSGD;
* ``"svd"`` (``GaloreAdamW``, ``proj_type="svd"``, ``proj_side="std"``): each matrix ``[m, n]``
  (higher-order tensors as ``[out, -1]``) is projected onto the top :math:`\mathrm{round}(\rho n)`
  right singular vectors of its gradient at the re-selection (:math:`m \ge n`; else the top
  :math:`\mathrm{round}(\rho m)` left ones), GaLore's low-rank projection; vectors use random
  coordinates as under ``"random"``.

At the same :math:`\rho` the three hold Adam moments of the same size on tensors of equal shape
(``m x floor(rho n)`` entries per matrix, or whole tensors for ``round(rho L)`` of L equal tensors);
besides the moments, random columns keep their indices, the SVD projection its basis
(``round(rho n) x n`` entries: GaLore's projector), blockwise nothing. For the random subspace:

.. math:: \theta \leftarrow \theta(1-\eta\lambda)
          - \eta\, P^\top\frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}
          - \eta\,\mathrm{sign}\big(g_t - P^\top P g_t\big).

State: :math:`2\rho P` entries (plus the chosen indices). The reference code applies the split only
to the attention/MLP weight matrices and gives every other parameter full AdamW; here every
parameter is split (vectors by coordinate), so that the ``rho`` slider runs over the whole problem,
including a 2-D landscape. Its ends: :math:`\rho = 0` is signSGD (no state); :math:`\rho = 1` is
*not* Adam but Adam restarted every :math:`T` steps -- the re-selection at steps
:math:`0, T, 2T, \dots` draws all columns again and resets :math:`m`, :math:`v` and the
bias-correction count to zero, so the first steps after each restart are bias-corrected Adam steps
from empty moments (about :math:`\eta\,\mathrm{sign}(g)` in size). It equals AdamW only while the
run is shorter than :math:`T` (``update_gap`` up to 100,000). Subsets are ``randperm`` draws from a
``torch.Generator`` seeded with the optimizer's ``seed``, one per tensor at each re-selection, as in
the reference projector; the spec is ``per_trajectory``, so each start of a race draws its own. A
change of ``rho`` takes effect at once (a re-selection, with fresh moments, at the next step).
:meth:`FRUGAL.diagnostics` reports the state density: the share of the parameters (entries) with
Adam state, :math:`\sum_l r_l \lfloor\rho\, n_l\rfloor / P` (:math:`r_l` entries per column; for the
other projections the entries of their moments over :math:`P`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from engine.optimizers.base import Params, closure_loss, gradients
from engine.specs import (
    ADAM_BETAS,
    MOMENTUM,
    Hyperparameter,
    OptimizerSpec,
    Oracle,
    Paper,
    choice,
    eps,
    lr,
    weight_decay,
)


def column_normalize(m: torch.Tensor, floor: float = 1e-8) -> torch.Tensor:
    """SCALE's normalisation of a ``[out, ...]`` tensor: every ``[j, :]`` slice divided by its RMS
    (floored at ``floor``), as in the reference code."""
    flat = m.reshape(m.shape[0], -1)
    rms = flat.square().mean(dim=1, keepdim=True).sqrt().clamp_min(floor)
    return (flat / rms).reshape(m.shape)


class SCALE(torch.optim.Optimizer):
    """SCALE: column-normalised SGD with momentum on the output layer only (see the module
    docstring). ``lr`` is shared by the matrix and the AdamW (vector) updates, as in the
    reference code with its default ``adam_lr = lr``."""

    ADAM_BETAS = (0.9, 0.999)
    ADAM_EPS = 1e-8

    def __init__(self, params: Params, lr: float = 1e-3, momentum: float = 0.9,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        matrices = [p for g in self.param_groups for p in g["params"] if p.dim() >= 2]
        self.output_layer: torch.Tensor | None = matrices[-1] if matrices else None
        """The last matrix parameter: the output layer, the only one with momentum."""

    def is_output(self, p: torch.Tensor) -> bool:
        return p is self.output_layer

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = closure_loss(closure)
        beta1, beta2 = self.ADAM_BETAS
        for group, p, g, state in gradients(self, "SCALE"):
            eta, decay = group["lr"], group["weight_decay"]
            if p.dim() >= 2:
                m = g
                if self.is_output(p):
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(g)
                    m = state["momentum_buffer"].lerp_(g, 1 - group["momentum"])
                p.mul_(1 - eta * decay)
                p.add_(column_normalize(m), alpha=-eta)
                continue
            if not state:  # a vector: the reference code's AdamW
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t = state["step"]
            state["exp_avg"].lerp_(g, 1 - beta1)
            state["exp_avg_sq"].lerp_(g.square(), 1 - beta2)
            direction = state["exp_avg"] / (state["exp_avg_sq"].sqrt() + self.ADAM_EPS)
            p.mul_(1 - eta * decay)
            p.add_(direction, alpha=-eta * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t))
        return loss


FRUGAL_PROJECTIONS = ("random", "blockwise", "svd")
"""FRUGAL's choice of the state-full subspace: random columns, whole tensors (blocks), or the
GaLore-style top singular subspace of the gradient."""


class FRUGAL(torch.optim.Optimizer):
    """FRUGAL: Adam on a subspace (random columns, blocks or a low-rank SVD projection), signSGD on the
    rest, the Adam part restarted at every re-selection (see the module docstring)."""

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, rho: float = 0.25, update_gap: int = 200,
                 projection: str = "random", seed: int = 0) -> None:
        if projection not in FRUGAL_PROJECTIONS:
            raise ValueError(f"FRUGAL: projection must be one of {', '.join(FRUGAL_PROJECTIONS)}, "
                             f"got {projection!r}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rho=rho,
                                      update_gap=update_gap, projection=projection))
        self.generator = torch.Generator().manual_seed(int(seed))
        self.t = 0  # steps taken
        self._drawn: tuple[float, str] | None = None  # the (rho, projection) of the current subspace

    @staticmethod
    def n_columns(p: torch.Tensor) -> int:
        """Columns of a matrix (torch dim 1), coordinates of a vector."""
        return p.shape[1] if p.dim() >= 2 else p.numel()

    @staticmethod
    def _columns(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return t[:, idx] if t.dim() >= 2 else t.reshape(-1)[idx]

    def _subset(self, n: int, rho: float) -> torch.Tensor:
        """floor(rho n) of n columns, as the reference projector draws them (a random permutation's
        first entries); drawn on the CPU so a run replays identically on any device."""
        return torch.randperm(n, generator=self.generator)[:int(n * rho)]

    @staticmethod
    def svd_projector(g: torch.Tensor, rho: float) -> tuple[str, torch.Tensor]:
        """GaLore's projector of a gradient matrix ``g [m, n]`` (the reference ``GaLoreProjector``,
        ``proj_side="std"``): for m >= n the top ``round(rho n)`` right singular vectors
        (``("right", Vh[:r])``, ``[r, n]``), else the top ``round(rho m)`` left ones
        (``("left", U[:, :r])``, ``[m, r]``)."""
        m, n = g.shape
        u, _, vh = torch.linalg.svd(g, full_matrices=False)
        if m >= n:
            return "right", vh[:round(n * rho)].clone()
        return "left", u[:, :round(m * rho)].clone()

    def _refresh(self, rho: float, projection: str) -> None:
        params = [p for group in self.param_groups for p in group["params"]]
        for p in params:
            self.state[p].clear()
        if projection == "blockwise":  # the reference BlockOptimizer, block_order="random"
            active = set(torch.randperm(len(params), generator=self.generator)[:round(len(params) * rho)]
                         .tolist())
            for i, p in enumerate(params):
                self.state[p]["step"] = 0
                if i in active:
                    self.state[p].update(exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        else:
            for p in params:
                state = self.state[p]
                if projection == "svd" and p.dim() >= 2:
                    if p.grad is None:
                        raise RuntimeError("FRUGAL's SVD projection is drawn from the gradient: "
                                           "step with p.grad set")
                    side, basis = self.svd_projector(p.grad.detach().reshape(p.shape[0], -1), rho)
                    low = self._down(p.grad.detach().reshape(p.shape[0], -1), side, basis)
                    state.update(side=side, projector=basis, exp_avg=torch.zeros_like(low),
                                 exp_avg_sq=torch.zeros_like(low))
                else:
                    idx = self._subset(self.n_columns(p), rho).to(p.device)
                    shape = self._columns(p, idx).shape
                    state.update(indices=idx, exp_avg=p.new_zeros(shape), exp_avg_sq=p.new_zeros(shape))
                state["step"] = 0
        self._drawn = (rho, projection)

    @staticmethod
    def _down(g: torch.Tensor, side: str, basis: torch.Tensor) -> torch.Tensor:
        return g @ basis.T if side == "right" else basis.T @ g

    @staticmethod
    def _up(low: torch.Tensor, side: str, basis: torch.Tensor) -> torch.Tensor:
        return low @ basis if side == "right" else basis @ low

    @staticmethod
    def _adam(state: dict[str, Any], gs: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        """One bias-corrected Adam direction from ``gs`` with the state's moments and count."""
        beta1, beta2 = group["betas"]
        t = state["step"]
        state["exp_avg"].lerp_(gs, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(gs, gs, value=1 - beta2)
        denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2 ** t)).add_(group["eps"])
        return state["exp_avg"] / denom / (1 - beta1 ** t)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = closure_loss(closure)
        first = self.param_groups[0]
        if self.t % int(first["update_gap"]) == 0 or self._drawn != (first["rho"], first["projection"]):
            self._refresh(first["rho"], first["projection"])
        for group, p, g, state in gradients(self, "FRUGAL"):
            eta = group["lr"]
            state["step"] += 1
            p.mul_(1 - eta * group["weight_decay"])
            if "projector" in state:  # low-rank: Adam on P g, signSGD on g - P^T P g
                g2 = g.reshape(g.shape[0], -1)
                low = self._down(g2, state["side"], state["projector"])
                adam = self._up(self._adam(state, low, group), state["side"], state["projector"])
                update = adam + torch.sign(g2 - self._up(low, state["side"], state["projector"]))
                p.add_(update.reshape(p.shape), alpha=-eta)
                continue
            if "indices" not in state:  # blockwise: Adam on an active block, signSGD on the others
                p.add_(self._adam(state, g, group) if "exp_avg" in state else torch.sign(g), alpha=-eta)
                continue
            idx = state["indices"]
            # state-free part: signSGD on every column outside the subset
            update = torch.sign(g)
            adam = self._adam(state, self._columns(g, idx), group)  # state-full part: the subset's columns
            if g.dim() >= 2:
                update[:, idx] = adam
            else:
                update.view(-1)[idx] = adam
            p.add_(update, alpha=-eta)
        self.t += 1
        return loss

    def diagnostics(self) -> Mapping[str, float]:
        """The state density: entries of the Adam moment over all entries (empty before a step)."""
        params = [p for g in self.param_groups for p in g["params"] if "step" in self.state[p]]
        if not params:
            return {}
        held = sum(self.state[p]["exp_avg"].numel() for p in params if "exp_avg" in self.state[p])
        return {"state_density": held / sum(p.numel() for p in params)}


_SCALE = Paper("A Minimalist Optimizer Design for LLM Pretraining",
               "A. Glentis, J. Li, A. Han, M. Hong", 2025, "https://arxiv.org/abs/2506.16659")
_FRUGAL = Paper("FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for Scalable Training",
                "P. Zmushko, A. Beznosikov, M. Takáč, S. Horváth", 2024, "https://arxiv.org/abs/2411.07837")

SPECS = [
    # Hand-written after the reference code. lr 1e-3, the reference scripts' (350m_scale.sh) and this
    # registry's Adam default: every normalised row moves by about lr per entry, and on a 2-D
    # landscape SCALE is the reference AdamW (measured from (-1.5, 2): bowl 4,841 steps to 1e-3,
    # Rosenbrock 9,722 to 1e-2). momentum 0.9 is the paper's. No stability threshold (a normalised
    # row moves by lr per entry whatever the curvature) and no diagnostics (the paper defines no
    # quantity about its own step beyond the update).
    OptimizerSpec(
        name="scale", label="SCALE", factory=SCALE,
        hyperparameters=(lr(1e-3), MOMENTUM, weight_decay()),
        update_rule=(r"m_t = \begin{cases}\beta m_{t-1} + (1-\beta) g_t & \text{output layer}\\"
                     r" g_t & \text{other matrices}\end{cases},\;"
                     r"\theta_{t+1} = \theta_t(1-\eta\lambda)"
                     r" - \eta\,\frac{m_{t,j,:}}{\mathrm{RMS}(m_{t,j,:})}"
                     r"\ \text{(vectors: AdamW)}"),
        paper=_SCALE, oracle=Oracle.GRADIENTS, family="memory-lean", row_separable=False,
        per_trajectory=True,
    ),
    # Hand-written after the reference CoordAdamW (coord_choice="columns", inactive rule sign_sgd,
    # inactive and projected lr scales 1, reset_statistics=True). Defaults rho = 0.25 and
    # update_gap T = 200 are the reference code's; lr 1e-3 (the reference's; also the registry's
    # Adam and signSGD default); weight decay 0 (reference 0.01) so that minima stay where they
    # are. On a 2-D landscape floor(0.25 * 2) = 0 coordinates have state, so with the defaults
    # FRUGAL *is* signSGD there (measured: identical steps; it stalls on Rosenbrock's floor at
    # distance 0.62 like signSGD); rho >= 0.5 gives one coordinate Adam.
    # Not row-separable: which coordinates get Adam is a per-tensor choice; per trajectory so that
    # each start draws its own subsets from its own seeded generator.
    OptimizerSpec(
        name="frugal", label="FRUGAL", factory=FRUGAL,
        hyperparameters=(lr(1e-3), *ADAM_BETAS, eps(1e-8), weight_decay(),
                         Hyperparameter("rho", 0.25, 0.0, 1.0,
                                        doc="fraction \\rho of columns with Adam state (0: signSGD; "
                                            "1: Adam restarted every T steps)"),
                         Hyperparameter("update_gap", 200, 1, 100_000, kind="int",
                                        doc="steps T between re-selections of the subspace"),
                         choice("projection", "random", FRUGAL_PROJECTIONS,
                                doc="the state-full subspace: random columns, whole tensors (blockwise), or "
                                    "the gradient's top singular vectors (GaLore's SVD projection)")),
        update_rule=(r"\theta_{t+1} = \theta_t(1-\eta\lambda) - \eta\,P^\top\frac{\hat m_t}{\sqrt{\hat v_t}"
                     r" + \epsilon} - \eta\,\mathrm{sign}\big(g_t - P^\top P g_t\big),\;"
                     r"P:\ \lfloor\rho n\rfloor \text{ random columns}\ |\ \mathrm{round}(\rho L)"
                     r"\text{ tensors}\ |\ \text{top-}\mathrm{round}(\rho n)\text{ singular vectors of } g,"
                     r"\ \text{redrawn every } T \text{ steps}"),
        paper=_FRUGAL, oracle=Oracle.GRADIENTS, family="memory-lean", row_separable=False, seeded=True,
        per_trajectory=True,
        diagnostics={"state_density": "entries of the Adam moment over the parameters' entries at the last "
                                      "step (random columns: sum of rows x floor(rho n) over P)"},
    ),
]

__all__ = ["FRUGAL", "FRUGAL_PROJECTIONS", "SCALE", "SPECS", "column_normalize"]
