"""Built-in optimizers. Importing this package registers every one of them.

One module per family: ``torch_builtin`` (what ``torch.optim`` carries: SGD, momentum, Nesterov,
Adam, AdamW, AMSGrad, RMSprop, Adagrad), ``sign`` (signSGD, Signum, Lion, from
``pytorch_optimizer``), ``adaptive`` (diffGrad, AdamP and SGD-SaI written here, AdaBelief from
``pytorch_optimizer``). Each spec says which implementation it uses and why.
"""

from engine.optimizers import adaptive, sign, torch_builtin  # noqa: F401  (registers on import)
