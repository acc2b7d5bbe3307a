r"""Matrix sensing's factorizations (Xiong, Ding & Du, ICLR 2024, "How Over-Parameterization Slows
Down Gradient Descent in Matrix Sensing: The Curses of Symmetry and Initialization").

The paper's claims, at small scale (n = 10, rank 2, 200 measurements, gradient descent at lr 0.2):
over-parameterized (factor rank 5 > 2) gradient descent on the symmetric :math:`WW^\top` is
sublinear (its lower bound :math:`\Omega(1/T^2)`); on the asymmetric :math:`FG^\top` it is linear,
:math:`\exp(-\Omega(\alpha^2 T))`, faster for a larger initialization scale :math:`\alpha`; exactly
parameterized (rank 2) symmetric gradient descent is linear too. Measured (recovery error after
500 / 1,000 / 2,000 steps): symmetric, rank 5, alpha 0.3: 5.1e-3 / 2.6e-3 / 1.4e-3 (halving per
doubling of T); asymmetric, rank 5, alpha 0.3: 1.8e-4 / 3.1e-7 / 9.6e-13; alpha 0.1: 6.6e-3 / 3.2e-3
/ 1.1e-3 (its linear phase starts later: 4.2e-6 at 8,000); symmetric rank 2: 2e-16 by 250 steps.
"""

from __future__ import annotations

import pytest
import torch

from landscapes.data import matrix_sensing as sensing_data
from landscapes.networks import get_network
from landscapes.sizes import problem_size


def recovery_errors(marks: tuple[int, ...], **options: object) -> list[float]:
    """Full-batch gradient descent (lr 0.2) from the problem's own start; the recovery error at each
    step count in ``marks``."""
    problem = get_network("matrix_sensing", **options)
    x = problem.x0().clone().requires_grad_(True)
    opt = torch.optim.SGD([x], lr=0.2)
    out = []
    for t in range(1, max(marks) + 1):
        opt.zero_grad()
        problem.loss(x).backward()
        opt.step()
        if t in marks:
            out.append(float(problem.metrics(x.detach()[None])["recovery_error"][0]))
    return out


def test_asymmetric_over_parameterization_converges_linearly_where_symmetric_is_sublinear() -> None:
    sym = recovery_errors((1000, 2000), factorization="symmetric", factor_rank=5, init_scale=0.3)
    asym = recovery_errors((1000, 2000), factorization="asymmetric", factor_rank=5, init_scale=0.3)
    assert sym[1] / sym[0] > 0.4 and sym[1] > 1e-4  # polynomial: doubling T about halves the error
    assert asym[1] / asym[0] < 1e-3 and asym[1] < 1e-9  # geometric
    exact = recovery_errors((500,), factorization="symmetric", factor_rank=2, init_scale=0.3)
    assert exact[0] < 1e-12  # exactly parameterized: linear too


def test_the_asymmetric_rate_grows_with_the_initialization_scale() -> None:
    """exp(-Omega(alpha^2 T)): at alpha = 0.1 the error after 2,000 steps is still 1e-3, at 0.3 1e-12."""
    small, large = (recovery_errors((2000,), factorization="asymmetric", factor_rank=5, init_scale=a)[0]
                    for a in (0.1, 0.3))
    assert small > 1e6 * large


def test_factorizations_have_their_parameters_and_measurements() -> None:
    sym = get_network("matrix_sensing", n=6, factor_rank=3, m=30)
    asym = get_network("matrix_sensing", n=6, factor_rank=3, m=30, factorization="asymmetric")
    assert sym.param_names == ("W",) and asym.param_names == ("F", "G")
    assert sym.dim == 18 and asym.dim == 36
    assert torch.equal(sym.X_train, sym.X_train.transpose(1, 2))  # symmetric A_i
    assert not torch.equal(asym.X_train, asym.X_train.transpose(1, 2))  # i.i.d. Gaussian A_i
    a_sym, a_gen = sensing_data(n=6, m=30), sensing_data(n=6, m=30, symmetric=False)
    same_draws = (a_gen.A_train + a_gen.A_train.transpose(1, 2)) / 2
    torch.testing.assert_close(a_sym.A_train, same_draws)
    torch.testing.assert_close(a_gen.y_train, torch.einsum("kij,ij->k", a_gen.A_train, a_gen.X_star))
    f, g = asym.module.F.detach(), asym.module.G.detach()
    x = asym.x0()
    want = torch.einsum("kij,ij->k", asym.X_train, f @ g.T)
    torch.testing.assert_close(asym.forward(x, asym.X_train), want)
    assert abs(float(f.std()) - 1e-2) < 5e-3  # entries N(0, init_scale^2), init_scale 1e-2 by default
    size = problem_size("matrix_sensing", {"n": 6, "factor_rank": 3, "factorization": "asymmetric"})
    assert size.params == 36


def test_an_unknown_factorization_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"factorization must be one of symmetric, asymmetric, got 'skew'"):
        get_network("matrix_sensing", factorization="skew")
    with pytest.raises(ValueError, match=r"factorization must be a string"):
        get_network("matrix_sensing", factorization=2)
