"""Built-in optimizers. Importing this package registers every one of them.

One module per family: ``torch_builtin`` (what ``torch.optim`` carries: SGD, momentum, Nesterov,
Adam, AdamW, AMSGrad, RMSprop, Adagrad), ``sign`` (signSGD, Signum, Lion, from
``pytorch_optimizer``), ``adaptive`` (diffGrad, AdamP and SGD-SaI written here, AdaBelief from
``pytorch_optimizer``), ``zeroth_order`` (MeZO / ZO-SGD and its variants, forward gradient,
ZO-RankSGD), ``second_order`` (Sophia, AdaHessian, Newton, M-FAC), ``memory_lean`` (SCALE,
FRUGAL), ``mirror`` (mirror descent, optimistic mirror descent, mirror prox), ``population``
(consensus-based optimization), ``coordinate`` (block coordinate descent). Each spec says which
implementation it uses and why.
"""

from engine.optimizers import (  # noqa: F401  (registers on import)
    adaptive,
    coordinate,
    memory_lean,
    mirror,
    population,
    second_order,
    sign,
    torch_builtin,
    zeroth_order,
)
