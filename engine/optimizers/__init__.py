"""Built-in optimizers: one module per family, each declaring its ``SPECS``; :data:`BUILTINS` below is
the one list the registry (:mod:`engine.registry`) is built from. Importing a family registers
nothing.

Families: ``torch_builtin`` (what ``torch.optim`` carries: SGD, momentum, Nesterov, Adam, AdamW,
AMSGrad, RMSprop, Adagrad), ``sign`` (signSGD, Signum, Lion, from ``pytorch_optimizer``),
``adaptive`` (diffGrad, AdamP, SGDP and SGD-SaI written here, AdaBelief from ``pytorch_optimizer``),
``tract`` (TrAct's first-layer transform in front of SGD with momentum or Adam),
``zeroth_order`` (MeZO / ZO-SGD and its variants, forward gradient, ZO-RankSGD), ``second_order``
(Sophia, AdaHessian, Newton, GRN, GRN-GNS, M-FAC), ``memory_lean`` (SCALE, FRUGAL), ``mirror``
(mirror descent, optimistic mirror descent, mirror prox), ``population`` (consensus-based optimization),
``coordinate`` (block coordinate descent), ``bilevel`` (implicit hypergradient, value-function
penalty, BO-REP, LV-HBA), ``surrogate`` (SSO: target-space surrogates). Each spec says which
implementation it uses and why; the plumbing they share is :mod:`engine.optimizers.base`.

Adding a built-in optimizer: its spec in its family's ``SPECS`` (a new family: one line below) and
its entry in the test table ``tests/engine/optimizer_cases.py``.
"""

from engine.optimizers import (
    adaptive,
    bilevel,
    coordinate,
    memory_lean,
    mirror,
    population,
    second_order,
    sign,
    surrogate,
    torch_builtin,
    tract,
    zeroth_order,
)
from engine.specs import OptimizerSpec

BUILTINS: tuple[OptimizerSpec, ...] = (
    *torch_builtin.SPECS,
    *sign.SPECS,
    *adaptive.SPECS,
    *tract.SPECS,
    *zeroth_order.SPECS,
    *second_order.SPECS,
    *memory_lean.SPECS,
    *mirror.SPECS,
    *population.SPECS,
    *coordinate.SPECS,
    *bilevel.SPECS,
    *surrogate.SPECS,
)
"""Every built-in spec, in the order the registry (and the app's menus) list them."""

__all__ = ["BUILTINS"]
