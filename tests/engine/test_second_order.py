"""Second-order optimizers (Sophia-H/G, AdaHessian, Newton-CG, GRN, M-FAC) against their papers.

* First steps of each, through ``spec.build`` and an :class:`Oracles` closure the way a run steps
  them, against an independent float64 numpy transcription of the rule on a small analytic problem
  whose exact Hessian numpy knows (so the reference's ``H u`` is exact, not an HVP), with the
  registry defaults and with non-default values. Random probes are redrawn from the optimizer's seed
  (:func:`draw_seed` + :func:`seeded_direction`); Sophia-G's sampled labels from the same uniform
  draws, with the softmax, cross-entropy gradient and GNB estimate written out in numpy.
* Behaviour on the 2-D saddle: Sophia-H escapes, undamped Newton walks into the saddle point.
* Newton-CG reaches an ill-conditioned quadratic's minimizer in one step.
* No leaks: live tensors do not grow over 1,000 Sophia-H / AdaHessian steps on the 2-D
  Rosenbrock, and on a small MLP nothing outlives the dropped optimizer and parameters, a check
  that the ``backward(create_graph=True)`` pattern fails (shown in the same test).
* Oracle counts follow the refresh schedule; rows of a race equal single runs; any shapes, float32.
"""

from __future__ import annotations

import gc
import math
import warnings
import weakref
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from engine.oracles import Oracles, seeded_direction
from engine.registry import Oracle, get_spec
from engine.run import LaneConfig, Run, RunConfig, _Lane
from engine.seeds import step_seed
from landscapes.catalog import get_landscape
from landscapes.networks import binary_cross_entropy, cross_entropy, mse_one_hot, problem_from_module, seeded

Array = np.ndarray


@pytest.fixture(autouse=True)
def one_thread():
    """Every tensor here is tiny: intra-op threads only add synchronisation, which on a loaded
    machine made a 1,000-step test ~10x slower. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


NAMES = ("sophia_h", "sophia_g", "adahessian", "newton", "grn", "mfac")
HVP_FREE = ("sophia_h", "adahessian", "newton", "grn", "mfac")  # run on any problem
SHAPES = ((3,), (2, 4), (2, 1, 2, 2))  # a bias, a matrix, a conv kernel: P = 19
P = sum(math.prod(s) for s in SHAPES)


# ------------------------------------------------------------------ an analytic test problem
# f(θ) = ½ θᵀAθ + bᵀθ + (c/4) Σ θ⁴ over the flat θ; ∇f = Aθ + b + cθ³; ∇²f = A + 3c diag(θ²).

class Quartic:
    def __init__(self, seed: int, low: float, high: float, c: float = 0.3) -> None:
        rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(rng.standard_normal((P, P)))
        self.A = (q * np.linspace(low, high, P)) @ q.T
        self.b = rng.standard_normal(P)
        self.c = c
        self.x0 = rng.standard_normal(P)

    def torch_loss(self, x: torch.Tensor) -> torch.Tensor:
        A = torch.as_tensor(self.A, dtype=x.dtype)
        b = torch.as_tensor(self.b, dtype=x.dtype)
        return 0.5 * ((x @ A) * x).sum(-1) + x @ b + 0.25 * self.c * (x**4).sum(-1)

    def grad(self, th: Array) -> Array:
        return self.A @ th + self.b + self.c * th**3

    def hess(self, th: Array) -> Array:
        return self.A + np.diag(3 * self.c * th**2)


def split(flat: Array | torch.Tensor, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    out, i = [], 0
    for s in SHAPES:
        n = math.prod(s)
        t = torch.as_tensor(np.asarray(flat[i:i + n]), dtype=dtype).reshape(s).clone()
        out.append(t.requires_grad_(True))  # leaves, as a run holds them
        i += n
    return out


def flat(tensors: list[torch.Tensor]) -> Array:
    return np.concatenate([t.detach().double().reshape(-1).numpy() for t in tensors])


def drive(opt: torch.optim.Optimizer, params: list[torch.Tensor], loss: Callable, steps: int,
          **oracle_kw) -> tuple[list[Array], list[Oracles]]:
    """Step ``opt`` as a run does: the gradient in ``p.grad`` (from a fresh graph), then
    ``step(Oracles)``. Returns the iterates after each step and the closures used."""
    iterates, closures = [], []
    for _ in range(steps):
        x = torch.cat([p.detach().reshape(-1) for p in params]).requires_grad_(True)
        (g,) = torch.autograd.grad(loss(x[None])[0], x)
        for p, gi in zip(params, g.split([p.numel() for p in params]), strict=True):
            p.grad = gi.reshape(p.shape).detach()
        oracles = Oracles(loss, params, **oracle_kw)
        opt.step(oracles)
        iterates.append(flat(params))
        closures.append(oracles)
    return iterates, closures


def build(name: str, params: list[torch.Tensor], values: dict, seed: int = 5) -> torch.optim.Optimizer:
    return get_spec(name).build(params, values, seed=seed)


def probe(seed: int, t: int) -> Array:
    """The Gaussian probe u an optimizer with ``seed`` draws at step t, redrawn from its seed."""
    return flat(seeded_direction(step_seed(seed, t), split(np.zeros(P))))


# ---------------------------------------------------------------------- reference: Sophia

def ref_sophia(v: dict, problem: Quartic, estimate: Callable[[Array, int], Array], steps: int
               ) -> tuple[list[Array], list[float], Array]:
    # Liu et al. 2023, Algorithm 3: m EMA; h EMA refreshed at (t-1) mod k = 0; decoupled decay;
    # theta -= lr clip(m / max(gamma h, eps), 1). No bias correction, m_0 = h_0 = 0.
    th, m, h = problem.x0.copy(), np.zeros(P), np.zeros(P)
    out, fractions = [], []
    for t in range(1, steps + 1):
        g = problem.grad(th)
        m = v["beta1"] * m + (1 - v["beta1"]) * g
        if (t - 1) % v["k"] == 0:
            h = v["beta2"] * h + (1 - v["beta2"]) * estimate(th, t)
        th = th * (1 - v["lr"] * v["weight_decay"])
        ratio = m / np.maximum(v["gamma"] * h, v["eps"])
        fractions.append(float(np.mean(np.abs(ratio) > 1)))
        th = th - v["lr"] * np.clip(ratio, -1, 1)
        out.append(th.copy())
    return out, fractions, h


SOPHIA_CASES = {"defaults": {}, "custom": dict(lr=0.05, beta1=0.9, beta2=0.8, gamma=5.0, eps=1e-3,
                                               weight_decay=0.1, k=3)}


@pytest.mark.parametrize("which", SOPHIA_CASES)
def test_sophia_h_matches_algorithm_3(which: str) -> None:
    problem = Quartic(0, -1.0, 4.0)  # indefinite: some h < 0 take the eps branch
    spec = get_spec("sophia_h")
    v = spec.validate(SOPHIA_CASES[which])
    seed, steps = 11, 12
    params = split(problem.x0)
    opt = build("sophia_h", params, SOPHIA_CASES[which], seed)
    got, _ = drive(opt, params, problem.torch_loss, 1)
    fractions = [opt.diagnostics()["clipped_coordinates"]]
    more, _ = drive(opt, params, problem.torch_loss, steps - 1)
    got += more

    def hutchinson(th: Array, t: int) -> Array:
        u = probe(seed, t)
        return u * (problem.hess(th) @ u)

    want, want_fractions, h = ref_sophia(v, problem, hutchinson, steps)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)
    last = opt.diagnostics()["clipped_coordinates"]
    assert fractions[0] == want_fractions[0] and last == want_fractions[-1]
    if which == "custom":  # clipped and unclipped coordinates, and negative curvature estimates
        assert 0.0 < want_fractions[-1] < 1.0 and (h < 0).any()


def linear_softmax_problem(n: int = 12, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    module = seeded(lambda: nn.Linear(3, classes), seed)
    return problem_from_module(module, cross_entropy, X, y), X.numpy(), y.numpy()


def softmax_grad(W: Array, b: Array, X: Array, labels: Array) -> tuple[Array, Array, Array]:
    """Mean cross-entropy gradient of a linear softmax model, written out: ((p - e_y)ᵀ X, p - e_y) / n."""
    z = X @ W.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    e = np.eye(W.shape[0])[labels]
    return (p - e).T @ X / len(X), (p - e).mean(0), p


@pytest.mark.parametrize("which", SOPHIA_CASES)
def test_sophia_g_matches_algorithm_3_with_gnb(which: str) -> None:
    problem, X, y = linear_softmax_problem()
    spec = get_spec("sophia_g")
    v = spec.validate(SOPHIA_CASES[which])
    seed, steps, n = 3, 8, len(X)
    x0 = problem.x0()
    params = [x0[:12].reshape(4, 3).clone().requires_grad_(True), x0[12:].clone().requires_grad_(True)]
    opt = build("sophia_g", params, SOPHIA_CASES[which], seed)
    got, closures = drive(opt, params, lambda x: problem.loss(x, None), steps,
                          sampled_losses=lambda th, gen: problem.sampled_losses(th, None, gen))

    th, m, h = problem.x0().numpy().copy(), np.zeros(16), np.zeros(16)
    for t in range(1, steps + 1):
        W, b = th[:12].reshape(4, 3), th[12:]
        gW, gb, p = softmax_grad(W, b, X, y)
        m = v["beta1"] * m + (1 - v["beta1"]) * np.concatenate([gW.ravel(), gb])
        if (t - 1) % v["k"] == 0:
            u = torch.rand(n, generator=torch.Generator().manual_seed(step_seed(seed, t)),
                           dtype=torch.float64).numpy()
            sampled = np.minimum((np.cumsum(p, 1) < u[:, None]).sum(1), 3)  # inverse CDF
            sW, sb, _ = softmax_grad(W, b, X, sampled)
            ghat = np.concatenate([sW.ravel(), sb])
            h = v["beta2"] * h + (1 - v["beta2"]) * n * ghat * ghat
        th = th * (1 - v["lr"] * v["weight_decay"])
        th = th - v["lr"] * np.clip(m / np.maximum(v["gamma"] * h, v["eps"]), -1, 1)
        np.testing.assert_allclose(got[t - 1], th, rtol=1e-11, atol=1e-13)
    refreshes = sum((t - 1) % v["k"] == 0 for t in range(1, steps + 1))
    assert sum(c.counts.gradients for c in closures) == refreshes  # one sampled gradient each
    assert sum(c.counts.hvps for c in closures) == 0


def test_sampled_losses_draw_from_the_models_likelihood() -> None:
    """Bernoulli and Gaussian draws, per-sample losses written out in numpy from the same numbers."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(10, 3, generator=g, dtype=torch.float64)
    theta = torch.randn(4 * 3 + 4, generator=g, dtype=torch.float64)
    mse = problem_from_module(seeded(lambda: nn.Linear(3, 4), 0), mse_one_hot, X,
                              torch.zeros(10, dtype=torch.long))
    xi = torch.randn(10, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64).numpy()
    got = mse.sampled_losses(theta, None, torch.Generator().manual_seed(9))
    np.testing.assert_allclose(got.detach().numpy(), 0.5 * (xi**2).sum(1), rtol=1e-13)

    bce = problem_from_module(seeded(lambda: nn.Linear(3, 1), 0), binary_cross_entropy, X, torch.zeros(10))
    th1 = theta[:4]
    z = X.numpy() @ th1[:3].numpy() + th1[3].numpy()
    u = torch.rand(10, generator=torch.Generator().manual_seed(4), dtype=torch.float64).numpy()
    yb = (u < 1 / (1 + np.exp(-z))).astype(float)
    want = np.logaddexp(0, z) - yb * z  # -log p(y | z) of a Bernoulli with logit z
    got = bce.sampled_losses(th1, None, torch.Generator().manual_seed(4))
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-12)

    with pytest.raises(ValueError, match="likelihood"):
        problem_from_module(seeded(lambda: nn.Linear(3, 1), 0), lambda o, t: (o - t).abs().mean(), X,
                            torch.zeros(10)).sampled_losses(th1, None, g)


def test_sophia_g_on_a_landscape_says_it_needs_a_likelihood() -> None:
    params = [torch.tensor([1.0, 2.0], dtype=torch.float64)]
    opt = build("sophia_g", params, {})
    with pytest.raises(NotImplementedError, match="sophia_h"):
        drive(opt, params, get_landscape("rosenbrock").loss, 1)


# ------------------------------------------------------------------ reference: AdaHessian

def ref_spatial_average(d: Array, shape: tuple[int, ...], block: int) -> Array:
    # Official code: no averaging for 1-D; blocks of `block` consecutive entries of a matrix
    # (a shorter last block here); the mean over the kernel dims of a conv weight.
    d = d.reshape(shape)
    if len(shape) == 1:
        return d.ravel()
    if len(shape) == 2:
        out, flat_d = np.empty(d.size), d.ravel()
        for s in range(0, d.size, block):
            out[s:s + block] = flat_d[s:s + block].mean()
        return out
    return np.broadcast_to(d.mean(axis=(2, 3), keepdims=True), shape).ravel()


ADAHESSIAN_CASES = {"defaults": {}, "custom": dict(lr=0.05, beta1=0.8, beta2=0.9, eps=1e-3, weight_decay=0.1,
                                                   hessian_power=0.5, block_size=3)}


@pytest.mark.parametrize("which", ADAHESSIAN_CASES)
def test_adahessian_matches_official_rule(which: str) -> None:
    problem = Quartic(1, -2.0, 3.0)
    v = get_spec("adahessian").validate(ADAHESSIAN_CASES[which])
    seed, steps = 7, 6
    params = split(problem.x0)
    got, closures = drive(build("adahessian", params, ADAHESSIAN_CASES[which], seed), params,
                          problem.torch_loss, steps)
    th, m, s = problem.x0.copy(), np.zeros(P), np.zeros(P)
    for t in range(1, steps + 1):
        g = problem.grad(th)
        z = np.sign(probe(seed, t))  # Rademacher
        hz = np.abs(z * (problem.hess(th) @ z))
        d, i = np.empty(P), 0
        for shape in SHAPES:
            n = math.prod(shape)
            d[i:i + n] = ref_spatial_average(hz[i:i + n], shape, v["block_size"])
            i += n
        m = v["beta1"] * m + (1 - v["beta1"]) * g
        s = v["beta2"] * s + (1 - v["beta2"]) * d * d
        denom = (np.sqrt(s) / math.sqrt(1 - v["beta2"] ** t)) ** v["hessian_power"] + v["eps"]
        th = th - v["lr"] * (m / (1 - v["beta1"] ** t) / denom + v["weight_decay"] * th)
        np.testing.assert_allclose(got[t - 1], th, rtol=1e-11, atol=1e-13)
    assert all(c.counts.hvps == 1 and c.counts.gradients == 0 for c in closures)


# ------------------------------------------------------------------ reference: Newton and GRN

NEWTON_CASES = {
    "newton-defaults": ("newton", {}),
    "newton-custom": ("newton", dict(lr=0.7, damping=0.3, cg_tol=1e-13, cg_max_iter=200)),
    "grn-defaults": ("grn", {}),
    "grn-custom": ("grn", dict(lr=0.9, lipschitz=5.0, cg_tol=1e-13, cg_max_iter=200)),
}


@pytest.mark.parametrize("case", NEWTON_CASES)
def test_newton_and_grn_match_a_dense_solve(case: str) -> None:
    name, values = NEWTON_CASES[case]
    problem = Quartic(2, 0.5, 20.0)  # convex: the Hessian is positive definite everywhere
    v = get_spec(name).validate(values)
    params = split(problem.x0)
    got, closures = drive(build(name, params, values), params, problem.torch_loss, 4)
    th = problem.x0.copy()
    for t in range(4):
        g = problem.grad(th)
        # Mishchenko (2023): lambda_k = sqrt(H ||grad f(x_k)||); Newton: a fixed damping
        lam = math.sqrt(v["lipschitz"] * np.linalg.norm(g)) if name == "grn" else v["damping"]
        th = th - v["lr"] * np.linalg.solve(problem.hess(th) + lam * np.eye(P), g)
        # CG stops at a relative residual of cg_tol: compare at a multiple of it
        tol = 1e3 * max(v["cg_tol"], 1e-13) * (1 + np.abs(th).max())
        np.testing.assert_allclose(got[t], th, rtol=0, atol=tol)
    assert all(0 < c.counts.hvps <= v["cg_max_iter"] for c in closures[:1])


def test_newton_takes_one_step_to_an_ill_conditioned_quadratics_minimum() -> None:
    problem = get_landscape("quadratic", dim=10, kappa=1e4)
    hps = {"lr": 1.0, "damping": 0.0, "cg_tol": 1e-12}  # the default 1e-10 leaves ~2e-10 in x
    run = Run(problem, RunConfig(lanes=(LaneConfig("newton", hps),), device="cpu"))
    (record,) = run.run(1)
    assert np.abs(run.positions(0)[0]).max() < 1e-10 < np.abs(problem.x0().numpy()).max()
    # CG on 10 distinct eigenvalues needs 10 products in exact arithmetic; rounding (kappa 1e4)
    # costs a few more (15 here)
    assert record.counts.hvps <= 20


# ---------------------------------------------------------------------- reference: M-FAC

def test_mfac_matches_the_sherman_morrison_recursion() -> None:
    problem = Quartic(3, 0.5, 3.0)
    values = dict(lr=0.02, damping=1e-2, window=3, momentum=0.5, weight_decay=0.05)
    params = split(problem.x0)
    opt = build("mfac", params, values)
    got, closures = drive(opt, params, problem.torch_loss, 7)
    th, window, vel = problem.x0.copy(), [], np.zeros(P)
    for t in range(7):
        g = problem.grad(th) + values["weight_decay"] * th
        window = [*window, g][-values["window"]:]
        # F^-1 = (lambda I + (1/m) sum g g^T)^-1 by Sherman-Morrison, one gradient at a time
        # (the official HInvSlow; the zero rows of a part-filled window add nothing)
        Finv = np.eye(P) / values["damping"]
        for gi in window:
            Fg = Finv @ gi
            Finv -= np.outer(Fg, Fg) / (values["window"] + gi @ Fg)
        vel = values["momentum"] * vel + (1 - values["momentum"]) * Finv @ g
        th = th - values["lr"] * vel
        np.testing.assert_allclose(got[t], th, rtol=1e-9, atol=1e-12)
    assert all(c.counts.as_dict() == dict(function_values=0, gradients=0, hvps=0, jvps=0, rankings=0)
               for c in closures)


def test_mfac_default_step_is_the_woodbury_inverse_of_the_damped_fisher() -> None:
    """With the registry defaults (damping 1e-5, window 32), steps 1 to 40 (the window fills and
    slides), each against a dense solve with the last 32 gradients at the optimizer's own iterates
    (at damping 1e-5 the Fisher is ill-conditioned: rounding differences would grow along a
    40-step trajectory)."""
    problem = Quartic(4, 0.5, 3.0)
    v = get_spec("mfac").validate()
    params = split(problem.x0)
    got, _ = drive(build("mfac", params, {}), params, problem.torch_loss, 40)
    previous, grads = [problem.x0, *got[:-1]], []
    for th, after in zip(previous, got, strict=True):
        grads.append(problem.grad(th))
        G = np.array(grads[-v["window"]:])
        F = v["damping"] * np.eye(P) + G.T @ G / v["window"]
        step = -v["lr"] * np.linalg.solve(F, grads[-1])
        np.testing.assert_allclose(after - th, step, rtol=1e-8, atol=1e-8 * np.abs(step).max())


# ------------------------------------------------------------------------- the 2-D saddle

def saddle_run(name: str, values: dict, steps: int, seed: int = 0):
    problem = get_landscape("saddle")  # f = x^2 - y^2, saddle at 0 (value 0), start (1.5, 0.01)
    run = Run(problem, RunConfig(lanes=(LaneConfig(name, values),), device="cpu", seed=seed))
    return run.run(steps), run.positions(0)[0]


def test_sophia_h_escapes_the_saddle_and_undamped_newton_converges_to_it() -> None:
    # Sophia-H, defaults, seed 0, 500 steps: h_y = EMA of -2 u_y^2 < 0, so the y ratio takes the eps
    # branch and is clipped: y grows by lr = 0.01 per step; x is driven to 0
    records, x = saddle_run("sophia_h", {}, 500)
    assert records[-1].loss[0] < -4.0 and abs(x[1]) > 2.0 and abs(x[0]) < 0.05
    # Newton, lr 1 and damping 0: the quadratic model's stationary point is the saddle
    records, x = saddle_run("newton", {"lr": 1.0, "damping": 0.0}, 5)
    assert np.abs(x).max() < 1e-12 and abs(records[-1].loss[0]) < 1e-24
    assert np.abs(records[0].position[0] - [1.5, 0.01]).max() == 0.0
    # GRN is drawn to it as well (lambda_k -> 0 with the gradient), more slowly
    records, x = saddle_run("grn", {}, 60)
    assert np.abs(x).max() < 1e-8


# ---------------------------------------------------------------------------- no leaks

class TinyMLP:
    """A 4-8-3 tanh MLP with cross-entropy on 16 fixed samples, as a loss of flat parameters."""

    shapes = ((8, 4), (8,), (3, 8), (3,))

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.X = torch.randn(16, 4, generator=g, dtype=torch.float64)
        self.y = torch.randint(0, 3, (16,), generator=g)
        self.x0 = 0.5 * torch.randn(sum(math.prod(s) for s in self.shapes), generator=g, dtype=torch.float64)

    def unflat(self, theta: torch.Tensor) -> list[torch.Tensor]:
        return [t.reshape(s) for t, s in zip(theta.split([math.prod(s) for s in self.shapes]), self.shapes,
                                                 strict=True)]

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for theta in x:
            W1, b1, W2, b2 = self.unflat(theta)
            logits = torch.tanh(self.X @ W1.T + b1) @ W2.T + b2
            out.append(torch.nn.functional.cross_entropy(logits, self.y))
        return torch.stack(out)

    def params(self) -> list[torch.Tensor]:
        return [t.clone().requires_grad_(True) for t in self.unflat(self.x0)]


def live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


def leaky_adahessian_step(params: list[torch.Tensor], loss: Callable) -> None:
    """The pattern the library ports use: backward(create_graph=True), then an HVP through p.grad.
    p.grad keeps the graph, whose AccumulateGrad nodes keep p: a cycle no gc can see."""
    for p in params:
        p.grad = None  # zero_grad(set_to_none=True), as a training loop does
    loss(torch.cat([p.reshape(-1) for p in params])[None])[0].backward(create_graph=True)
    z = [torch.ones_like(p) for p in params]
    torch.autograd.grad([p.grad for p in params], params, grad_outputs=z)
    with torch.no_grad():
        for p in params:
            p.sub_(1e-3 * p.grad)


def weak_refs(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> list[weakref.ref]:
    """Weak references to every parameter and every state tensor of ``opt``."""
    return [weakref.ref(t) for t in params] + [weakref.ref(t) for s in opt.state.values() for t in s.values()
                                               if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("name", ["sophia_h", "adahessian"])
def test_a_thousand_steps_leak_nothing(name: str) -> None:
    """Over 1,000 steps on the 2-D Rosenbrock (k = 1 for Sophia-H: one HVP every step) the number
    of live Python tensors does not grow. On a small MLP, once the optimizer and its parameters are
    dropped, nothing keeps them alive: a weak reference to every parameter and state tensor dies.
    That check fails for the ``backward(create_graph=True)`` pattern (its graph, kept by ``p.grad``,
    keeps ``p``): shown on the same MLP at the end."""
    values = {"k": 1} if name == "sophia_h" else {}
    rosenbrock = get_landscape("rosenbrock")
    params = [rosenbrock.x0().requires_grad_(True)]
    opt = build(name, params, values, seed=1)
    drive(opt, params, rosenbrock.loss, 10)
    before = live_tensors()
    _, closures = drive(opt, params, rosenbrock.loss, 990)
    assert sum(c.counts.hvps for c in closures) == 990
    del closures
    assert live_tensors() == before
    assert float(rosenbrock.loss(params[0].detach()[None])[0]) < 24.2  # it did optimize

    mlp = TinyMLP()
    params = mlp.params()
    opt = build(name, params, values, seed=1)
    drive(opt, params, mlp.loss, 20)
    refs = weak_refs(opt, params)
    del opt, params
    gc.collect()
    assert all(r() is None for r in refs)  # nothing kept them alive

    # the control: the create_graph pattern keeps its parameters alive after they are dropped
    leaky = mlp.params()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns about exactly this cycle
        for _ in range(3):
            leaky_adahessian_step(leaky, mlp.loss)
    refs = [weakref.ref(t) for t in leaky]
    del leaky
    gc.collect()
    assert all(r() is not None for r in refs)


# ------------------------------------------------------------------------ oracle counts

def test_sophia_h_asks_one_hvp_per_refresh_and_reads_k_each_step() -> None:
    problem = get_landscape("rosenbrock")
    run = Run(problem, RunConfig(lanes=(LaneConfig("sophia_h", {"k": 3}),), device="cpu"))
    records = run.run(10)
    # refreshes at t = 1, 4, 7, 10: (t - 1) mod 3 = 0
    assert [r.counts.hvps for r in records] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4]
    assert [r.counts.gradients for r in records] == list(range(1, 11))
    assert [r.counts.function_values for r in records] == list(range(1, 11))
    get_spec("sophia_h").apply(run.lanes[0].optimizer, "k", 1)  # now every step
    assert [r.counts.hvps for r in run.run(3)] == [5, 6, 7]


def test_counts_of_adahessian_newton_grn_and_mfac() -> None:
    problem = get_landscape("quadratic")  # 2-D, eigenvalues 1 and 10
    steps = {}
    for name in ("adahessian", "newton", "mfac"):
        run = Run(problem, RunConfig(lanes=(LaneConfig(name, {}),), device="cpu"))
        steps[name] = run.run(4)
    assert [r.counts.hvps for r in steps["adahessian"]] == [1, 2, 3, 4]
    assert steps["newton"][0].counts.hvps == 2  # CG needs 2 products for 2 eigenvalues
    assert [r.counts.hvps for r in steps["mfac"]] == [0, 0, 0, 0]
    assert [r.counts.gradients for r in steps["mfac"]] == [1, 2, 3, 4]


# -------------------------------------------------------------------- run integration

@pytest.mark.parametrize("name", HVP_FREE)
def test_race_rows_equal_independent_runs(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows of one lane equal single-start runs (same seed in every row, as test_run does)."""
    monkeypatch.setattr(_Lane, "_row_seed", lambda self, row: 123)
    problem = get_landscape("rosenbrock")
    race = Run(problem, RunConfig(lanes=(LaneConfig(name, {}),), n_starts=3, seed=2, device="cpu"))
    batched = race.run(5)
    for i, start in enumerate(race.starts.tolist()):
        alone = RunConfig(lanes=(LaneConfig(name, {}),), start=tuple(start), device="cpu")
        single = Run(problem, alone).run(5)
        for rb, rs in zip(batched, single, strict=True):
            np.testing.assert_allclose(rb.position[i], rs.position[0], rtol=1e-12, atol=1e-14)


def test_specs_are_registered_as_documented() -> None:
    for name in NAMES:
        spec = get_spec(name)
        assert spec.family == "second-order" and not spec.row_separable
        # M-FAC reads only gradients; its window couples a trajectory's tensors: one optimizer per start
        assert spec.oracle is (Oracle.GRADIENTS if name == "mfac" else Oracle.HVPS)
        assert spec.per_trajectory == (name == "mfac")
        assert spec.update_rule and spec.paper is not None and spec.hyperparameter("lr").log
        assert spec.validate() == spec.defaults()
        assert spec.seeded == (name in ("sophia_h", "sophia_g", "adahessian"))


@pytest.mark.parametrize("name", HVP_FREE)
def test_float32_any_shapes_and_live_learning_rate(name: str) -> None:
    """float32 parameters of three shapes stay float32 and finite; an lr applied between steps
    scales the next step exactly (weight decay 0), so hyperparameters are read every step."""
    problem = Quartic(5, 0.5, 3.0)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return problem.torch_loss(x)

    runs = []
    for scale in (1.0, 0.25):
        params = split(problem.x0, torch.float32)
        opt = build(name, params, {}, seed=2)
        drive(opt, params, loss, 2)
        before = flat(params)
        get_spec(name).apply(opt, "lr", get_spec(name).defaults()["lr"] * scale)
        drive(opt, params, loss, 1)
        assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in params)
        states = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        assert all(t.dtype == torch.float32 for t in states)
        runs.append(flat(params) - before)
    np.testing.assert_allclose(runs[1], 0.25 * runs[0], rtol=1e-5, atol=1e-7)
    assert np.abs(runs[0]).max() > 0
