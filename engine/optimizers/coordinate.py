r"""Block coordinate descent (BCD): one block of coordinates moves per step.

The parameters, flattened and concatenated in order into :math:`x \in \mathbb{R}^P`, are cut into
contiguous blocks of ``block_size`` entries (the last block may be shorter; a block may span two
tensors). At step :math:`t` one block :math:`b_t` takes a gradient step and every other entry
stays where it is:

.. math:: x_{b_t} \leftarrow x_{b_t} - \eta\, \nabla_{b_t} f(x)

with the block chosen by one of three rules (Nesterov 2012; Nutini, Schmidt, Laradji, Friedlander
& Koepke 2015):

* cyclic -- :math:`b_t = t \bmod B`;
* random -- :math:`b_t` uniform on :math:`\{0, \dots, B-1\}` (Nesterov's uniform sampling), drawn
  from a ``torch.Generator`` seeded with the optimizer's ``seed``;
* Gauss-Southwell -- :math:`b_t = \arg\max_b \lVert\nabla_b f(x)\rVert_2` (the first on ties).

The specs are ``per_trajectory``: in a race each start gets its own optimizer, so a block is a
block of one trajectory's parameter vector. The step is the ``lr`` slider rather than
:math:`1/L_b`: the catalog's problems do not publish block Lipschitz constants.

Oracle count: one full gradient per step, because that is what the run computes and what the
Gauss-Southwell rule needs. The cyclic and random rules read only the chosen block's partial
derivatives, which a problem with cheap partial derivatives could supply at about 1/B of the
cost; that saving is not modelled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from engine.optimizers.base import Params, closure_loss
from engine.oracles import flatten
from engine.specs import Hyperparameter, OptimizerSpec, Oracle, Paper, lr

RULES = ("cyclic", "random", "gauss_southwell")


def block_norms(g: torch.Tensor, block_size: int) -> torch.Tensor:
    """:math:`\\lVert\\nabla_b f\\rVert_2` of every block of a flattened gradient ``g``."""
    flat = g.reshape(-1)
    n_blocks = math.ceil(flat.numel() / block_size)
    padded = torch.zeros(n_blocks * block_size, dtype=flat.dtype, device=flat.device)
    padded[:flat.numel()] = flat
    return padded.reshape(n_blocks, block_size).norm(dim=1)


class BlockCoordinateDescent(torch.optim.Optimizer):
    """Block coordinate descent with the ``rule`` chosen at construction; see the module docstring.

    ``last_block`` holds, after each step, the index of the block that moved (for a view to
    highlight; :meth:`diagnostics` reports it as ``"block"``); block ``b`` is entries
    ``[b * block_size, (b + 1) * block_size)`` of the flattened parameters.
    """

    def __init__(self, params: Params, lr: float = 1e-3, block_size: int = 1, rule: str = "cyclic",
                 seed: int = 0) -> None:
        if rule not in RULES:
            raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
        super().__init__(params, dict(lr=lr, block_size=block_size))
        self.rule = rule
        self.generator = torch.Generator().manual_seed(int(seed))
        self.t = 0
        self.last_block: int | None = None

    def _choose(self, g: torch.Tensor, n_blocks: int, block_size: int) -> int:
        if self.rule == "cyclic":
            return self.t % n_blocks
        if self.rule == "random":
            return int(torch.randint(n_blocks, (1,), generator=self.generator))
        return int(torch.argmax(block_norms(g, block_size)))  # argmax returns the first maximum

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = closure_loss(closure)
        group = self.param_groups[0]  # lr and block_size: one value for the whole vector
        params = [p for g in self.param_groups for p in g["params"]]
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        flat = flatten(grads)
        size = int(group["block_size"])
        b = self._choose(flat, math.ceil(flat.numel() / size), size)
        lo, hi = b * size, min((b + 1) * size, flat.numel())
        offset = 0
        for p, g in zip(params, grads, strict=True):  # the block's part of each tensor it overlaps
            a, z = max(lo - offset, 0), min(hi - offset, p.numel())
            if a < z:
                p.view(-1)[a:z].add_(g.reshape(-1)[a:z], alpha=-group["lr"])
            offset += p.numel()
        self.last_block = b
        self.t += 1
        return loss

    def diagnostics(self) -> Mapping[str, float]:
        return {} if self.last_block is None else {"block": float(self.last_block)}


_NESTEROV = Paper("Efficiency of coordinate descent methods on huge-scale optimization problems",
                  "Y. Nesterov", 2012, "https://doi.org/10.1137/100802001")
_NUTINI = Paper("Coordinate Descent Converges Faster with the Gauss-Southwell Rule Than Random Selection",
                "J. Nutini, M. Schmidt, I. H. Laradji, M. Friedlander, H. Koepke", 2015,
                "https://arxiv.org/abs/1506.00552")

_BLOCK_SIZE = Hyperparameter("block_size", 1, 1, 4096, kind="int",
                             doc="coordinates per block (the last block may be shorter)")
_STEP = r"x_{b_t} \leftarrow x_{b_t} - \eta\,\nabla_{b_t} f(x)"
_BLOCK = {"block": "index b_t of the block that moved at the last step (entries [b_t B, (b_t + 1) B))"}

SPECS = [
    # Hand-written. lr 1e-3 like gradient descent's default: a block step is a gradient step
    # restricted to the block, and Rosenbrock's curvature of ~2,000 caps it the same way. Steps to
    # converge with the defaults (bowl to 1e-3, Rosenbrock to 1e-2, from (-1.5, 2)): cyclic
    # 14,643 / 20,344, random 14,558 / 23,824, Gauss-Southwell 8,325 / 18,099 (gradient descent:
    # about 7,000 / 12,000; measured with the protocol of test_convergence.py). No stability
    # threshold on lambda_max: a block step is stable for lr < 2 / lambda_max(H_bb) of its own block,
    # which the full Hessian's lambda_max only bounds from above.
    OptimizerSpec(
        name="bcd_cyclic", label="Block coordinate descent (cyclic)", factory=BlockCoordinateDescent,
        hyperparameters=(lr(1e-3), _BLOCK_SIZE),
        update_rule=r"b_t = t \bmod B,\; " + _STEP,
        paper=_NESTEROV, oracle=Oracle.GRADIENTS, family="coordinate", row_separable=False,
        fixed={"rule": "cyclic"}, per_trajectory=True, diagnostics=_BLOCK,
    ),
    OptimizerSpec(
        name="bcd_random", label="Block coordinate descent (random)", factory=BlockCoordinateDescent,
        hyperparameters=(lr(1e-3), _BLOCK_SIZE),
        update_rule=r"b_t \sim \mathrm{Uniform}\{0, \dots, B-1\},\; " + _STEP,
        paper=_NESTEROV, oracle=Oracle.GRADIENTS, family="coordinate", row_separable=False,
        fixed={"rule": "random"}, seeded=True, per_trajectory=True, diagnostics=_BLOCK,
    ),
    OptimizerSpec(
        name="bcd_gauss_southwell", label="Block coordinate descent (Gauss-Southwell)",
        factory=BlockCoordinateDescent, hyperparameters=(lr(1e-3), _BLOCK_SIZE),
        update_rule=r"b_t = \arg\max_b \lVert\nabla_b f(x)\rVert_2,\; " + _STEP,
        paper=_NUTINI, oracle=Oracle.GRADIENTS, family="coordinate", row_separable=False,
        fixed={"rule": "gauss_southwell"}, per_trajectory=True, diagnostics=_BLOCK,
    ),
]

__all__ = ["RULES", "SPECS", "BlockCoordinateDescent", "block_norms"]
