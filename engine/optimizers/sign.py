r"""Specs for the sign family: signSGD, Signum and Lion.

All three move every coordinate by :math:`\pm\eta` per step (plus optional decoupled weight
decay), so with a fixed learning rate they cannot settle closer to a minimum than about
:math:`\eta`: the iterate ends up hopping around it on a grid of spacing :math:`\eta`. The default
:math:`\eta = 10^{-3}` is set for the explorer's unit-scale 2-D landscapes: about 2,000 steps to
cross the plot and a final jitter of about 1e-3. Larger rates cost more than speed on curved
valleys: on Rosenbrock at 1e-2 all three stall in the valley far from the minimum (signSGD stalls
there even at 1e-3, see ``tests/engine/test_convergence.py``). 1e-3 is also in the Lion paper's
spirit (Lion's rate is Adam's or smaller; the registry's Adam default is 1e-3).

Implementations are ``pytorch_optimizer``'s (4.1), read and checked against the papers' rules:

* ``SignSGD`` (``optimizer/sgd.py``): ``momentum=0`` takes ``p -= lr * sign(grad)``;
  ``momentum=beta > 0`` keeps ``m.lerp_(g, 1 - beta)``, i.e. :math:`m_t = \beta m_{t-1} + (1-\beta)
  g_t` from :math:`m_0 = 0`, and steps ``p -= lr * sign(m)``: Signum as in Bernstein et al.
  (Algorithm 3). Weight decay with ``weight_decouple=True`` is ``p *= 1 - lr * wd`` before the
  step, the decoupled form MXNet's ``Signum`` exposes as ``wd_lh``.
* ``Lion`` (``optimizer/lion.py``): ``c = m.lerp(g, 1 - beta1).sign_()``, then
  ``m.lerp_(g, 1 - beta2)``, and ``p *= 1 - lr * wd`` (``weight_decouple=True``,
  ``fixed_decay=False``) followed by ``p -= lr * c``. Since :math:`\mathrm{sign}(c_t)` does not
  depend on :math:`\theta`, this is exactly :math:`\theta \leftarrow \theta - \eta(\mathrm{sign}(c_t)
  + \lambda\theta)` of Chen et al. (Algorithm 2).

Both classes take a per-parameter path and a ``foreach`` path; both were read and implement the
same arithmetic. Options that would change the rule (``use_gc``, ``adanorm``, ``cautious``,
``maximize``) stay at their off defaults; the decay form is pinned in each spec's ``fixed``.

No stability threshold: a sign step has length :math:`\eta` per coordinate whatever the
curvature, so there is no sharpness beyond which it diverges (it hops on a grid of spacing
:math:`\eta` instead); no diagnostics: the library classes report nothing about their steps.
"""

from __future__ import annotations

from pytorch_optimizer import Lion, SignSGD

from engine.specs import Hyperparameter, OptimizerSpec, Oracle, Paper, beta, lr, weight_decay

_SIGNSGD = Paper("signSGD: Compressed Optimisation for Non-Convex Problems",
                 "J. Bernstein, Y.-X. Wang, K. Azizzadenesheli, A. Anandkumar", 2018,
                 "https://arxiv.org/abs/1802.04434")
_LION = Paper("Symbolic Discovery of Optimization Algorithms",
              "X. Chen, C. Liang, D. Huang, E. Real, K. Wang, Y. Liu, H. Pham, X. Dong, T. Luong, "
              "C.-J. Hsieh, Y. Lu, Q. V. Le", 2023, "https://arxiv.org/abs/2302.06675")

_DECOUPLED = {"weight_decouple": True}

SPECS = [
    # pytorch_optimizer.SignSGD with momentum pinned to 0: p -= lr * sign(g) (checked in its source).
    OptimizerSpec(
        name="signsgd", label="signSGD", factory=SignSGD,
        hyperparameters=(lr(1e-3), weight_decay()),
        update_rule=r"\theta_{t+1} = \theta_t - \eta\,\big(\mathrm{sign}(g_t) + \lambda\theta_t\big)",
        paper=_SIGNSGD, oracle=Oracle.GRADIENTS, row_separable=True,
        fixed={**_DECOUPLED, "momentum": 0.0},
    ),
    # pytorch_optimizer.SignSGD with momentum = beta > 0 is Signum: sign of the EMA
    # m_t = beta m_{t-1} + (1 - beta) g_t (checked in its source). Paper default beta = 0.9.
    OptimizerSpec(
        name="signum", label="Signum", factory=SignSGD,
        hyperparameters=(lr(1e-3),
                         Hyperparameter("momentum", 0.9, 0.0, 1.0, include_low=False, include_high=False,
                                        doc="momentum EMA coefficient \\beta"),
                         weight_decay()),
        update_rule=(r"m_t = \beta m_{t-1} + (1-\beta) g_t,\;"
                     r"\theta_{t+1} = \theta_t - \eta\,\big(\mathrm{sign}(m_t) + \lambda\theta_t\big)"),
        paper=_SIGNSGD, oracle=Oracle.GRADIENTS, row_separable=True, fixed=dict(_DECOUPLED),
    ),
    # pytorch_optimizer.Lion: interpolation c_t with beta1, sign step, momentum update with beta2, and
    # lr-scaled decoupled decay (checked in its source). Paper defaults beta1 = 0.9, beta2 = 0.99.
    OptimizerSpec(
        name="lion", label="Lion", factory=Lion,
        hyperparameters=(lr(1e-3),
                         beta("beta1", 0.9, 0, doc="interpolation coefficient \\beta_1 of the update"),
                         beta("beta2", 0.99, 1, doc="momentum decay \\beta_2"),
                         weight_decay()),
        update_rule=(r"c_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\;"
                     r"\theta_{t+1} = \theta_t - \eta\,\big(\mathrm{sign}(c_t) + \lambda\theta_t\big),\;"
                     r"m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t"),
        paper=_LION, oracle=Oracle.GRADIENTS, row_separable=True,
        fixed={**_DECOUPLED, "fixed_decay": False},
    ),
]

__all__ = ["SPECS"]
