"""Every registered optimizer against its paper's update rule, written out by hand in numpy.

For each spec a few steps are taken through ``get_spec(name).build([p], hp)`` on a float64
parameter with a fixed gradient sequence, and each iterate is compared with an independent numpy
transcription of the rule (no call into torch.optim or pytorch_optimizer), once with the registry
defaults and once with non-default values, so the wiring of every hyperparameter (``beta1`` is
``betas[0]``, ...) is exercised too. Also: the registry holds all 15 built-ins, defaults validate,
bad values fail with a message naming the parameter and its range, ``apply`` reaches the live
optimizer, and ``register_optimizer`` takes a user's own class in one call.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import engine.optimizers  # noqa: F401  (registers the built-ins)
from engine.registry import (
    HyperparameterError,
    Oracle,
    available,
    get_spec,
    register_optimizer,
    unregister,
)

BUILTINS = ("sgd", "momentum", "nesterov", "adam", "adamw", "amsgrad", "rmsprop", "adagrad",
            "signsgd", "signum", "lion", "diffgrad", "adabelief", "adamp", "sgdsai")
STEPS = 5
RTOL, ATOL = 1e-12, 1e-14

Array = np.ndarray
Stepper = Callable[[Array, Array], Array]
GradAt = Callable[[int, Array], Array]


# ---------------------------------------------------------------------------- reference rules
# Each factory takes the full hyperparameter dict (spec.validate(...)) and returns a stateful
# ``step(theta, g) -> new theta`` written from the paper (or, for torch.optim's variants, from the
# rule torch documents), in float64 numpy.

def ref_sgd(v: dict, momentum: float = 0.0, nesterov: bool = False) -> Stepper:
    # torch.optim.SGD: coupled L2 decay; buffer b_1 = g_1, b_t = mu b_{t-1} + g_t.
    b: list[Array] = []

    def step(th: Array, g: Array) -> Array:
        g = g + v["weight_decay"] * th
        if momentum == 0:
            return th - v["lr"] * g
        b[:] = [g.copy() if not b else momentum * b[0] + g]
        d = g + momentum * b[0] if nesterov else b[0]
        return th - v["lr"] * d
    return step


def ref_adam(v: dict, decoupled: bool = False, amsgrad: bool = False) -> Stepper:
    # Kingma & Ba, Algorithm 1 (m-hat / (sqrt(v-hat) + eps)); AdamW decays theta by (1 - lr wd)
    # first; torch's AMSGrad takes the running max of the raw v and bias-corrects it with the
    # current step (see the report: the registry's LaTeX writes max of v-hat).
    b1, b2, eps, lr, wd = v["beta1"], v["beta2"], v["eps"], v["lr"], v["weight_decay"]
    s: dict = {"t": 0, "m": 0.0, "v": 0.0, "vmax": 0.0}

    def step(th: Array, g: Array) -> Array:
        s["t"] += 1
        t = s["t"]
        if decoupled:
            th = th * (1 - lr * wd)
        else:
            g = g + wd * th
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["v"] = b2 * s["v"] + (1 - b2) * g * g
        second = s["v"]
        if amsgrad:
            s["vmax"] = np.maximum(s["vmax"], s["v"])
            second = s["vmax"]
        m_hat = s["m"] / (1 - b1 ** t)
        v_hat = second / (1 - b2 ** t)
        return th - lr * m_hat / (np.sqrt(v_hat) + eps)
    return step


def ref_rmsprop(v: dict) -> Stepper:
    # Tieleman & Hinton: v_t = alpha v + (1 - alpha) g^2; theta -= lr g / (sqrt(v) + eps); L2 decay.
    s: dict = {"v": 0.0}

    def step(th: Array, g: Array) -> Array:
        g = g + v["weight_decay"] * th
        s["v"] = v["alpha"] * s["v"] + (1 - v["alpha"]) * g * g
        return th - v["lr"] * g / (np.sqrt(s["v"]) + v["eps"])
    return step


def ref_adagrad(v: dict) -> Stepper:
    # Duchi et al.: G_t = G_{t-1} + g^2; theta -= lr g / (sqrt(G) + eps); L2 decay.
    s: dict = {"G": 0.0}

    def step(th: Array, g: Array) -> Array:
        g = g + v["weight_decay"] * th
        s["G"] = s["G"] + g * g
        return th - v["lr"] * g / (np.sqrt(s["G"]) + v["eps"])
    return step


def ref_signsgd(v: dict) -> Stepper:
    # Bernstein et al. Algorithm 1, with decoupled decay: theta -= lr (sign(g) + wd theta).
    def step(th: Array, g: Array) -> Array:
        return th - v["lr"] * (np.sign(g) + v["weight_decay"] * th)
    return step


def ref_signum(v: dict) -> Stepper:
    # Bernstein et al. Algorithm 3: m_t = beta m + (1 - beta) g (m_0 = 0); theta -= lr sign(m_t).
    s: dict = {"m": 0.0}

    def step(th: Array, g: Array) -> Array:
        s["m"] = v["momentum"] * s["m"] + (1 - v["momentum"]) * g
        return th - v["lr"] * (np.sign(s["m"]) + v["weight_decay"] * th)
    return step


def ref_lion(v: dict) -> Stepper:
    # Chen et al. Algorithm 2: c = b1 m + (1 - b1) g; theta -= lr (sign(c) + wd theta);
    # m = b2 m + (1 - b2) g.
    s: dict = {"m": 0.0}

    def step(th: Array, g: Array) -> Array:
        c = v["beta1"] * s["m"] + (1 - v["beta1"]) * g
        th = th - v["lr"] * (np.sign(c) + v["weight_decay"] * th)
        s["m"] = v["beta2"] * s["m"] + (1 - v["beta2"]) * g
        return th
    return step


def ref_diffgrad(v: dict) -> Stepper:
    # Dubey et al.: Adam moments, xi = sigmoid(|g_{t-1} - g_t|) with g_0 = 0,
    # theta -= lr xi m-hat / (sqrt(v-hat) + eps); L2 decay folded into g as in the official code.
    b1, b2, eps, lr = v["beta1"], v["beta2"], v["eps"], v["lr"]
    s: dict = {"t": 0, "m": 0.0, "v": 0.0, "prev": 0.0}

    def step(th: Array, g: Array) -> Array:
        g = g + v["weight_decay"] * th
        s["t"] += 1
        t = s["t"]
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["v"] = b2 * s["v"] + (1 - b2) * g * g
        xi = 1.0 / (1.0 + np.exp(-np.abs(s["prev"] - g)))
        s["prev"] = g
        m_hat, v_hat = s["m"] / (1 - b1 ** t), s["v"] / (1 - b2 ** t)
        return th - lr * xi * m_hat / (np.sqrt(v_hat) + eps)
    return step


def ref_adabelief(v: dict) -> Stepper:
    # Zhuang et al. Algorithm 2: s_t = b2 s + (1 - b2)(g - m_t)^2 + eps;
    # theta -= lr m-hat / (sqrt(s-hat) + eps); decoupled decay theta *= 1 - lr wd (official default).
    b1, b2, eps, lr = v["beta1"], v["beta2"], v["eps"], v["lr"]
    st: dict = {"t": 0, "m": 0.0, "s": 0.0}

    def step(th: Array, g: Array) -> Array:
        st["t"] += 1
        t = st["t"]
        th = th * (1 - lr * v["weight_decay"])
        st["m"] = b1 * st["m"] + (1 - b1) * g
        st["s"] = b2 * st["s"] + (1 - b2) * (g - st["m"]) ** 2 + eps
        m_hat, s_hat = st["m"] / (1 - b1 ** t), st["s"] / (1 - b2 ** t)
        return th - lr * m_hat / (np.sqrt(s_hat) + eps)
    return step


def ref_adamp(v: dict, log: list[str]) -> Stepper:
    # Heo et al. (official code): u = m-hat / (sqrt(v-hat) + eps); for ndim > 1, per-row view then
    # whole-tensor view: if every |cos(g, w)| < delta / sqrt(width), remove the radial part of u
    # along w / (||w|| + eps) and scale the decay by wd_ratio. ``log`` records the branch taken.
    b1, b2, eps, lr = v["beta1"], v["beta2"], v["eps"], v["lr"]
    s: dict = {"t": 0, "m": 0.0, "v": 0.0}

    def step(th: Array, g: Array) -> Array:
        s["t"] += 1
        t = s["t"]
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["v"] = b2 * s["v"] + (1 - b2) * g * g
        u = (s["m"] / (1 - b1 ** t)) / (np.sqrt(s["v"] / (1 - b2 ** t)) + eps)
        ratio, branch = 1.0, "none"
        if th.ndim > 1:
            for view, shape in (("channel", (th.shape[0], -1)), ("layer", (1, -1))):
                w, gv = th.reshape(shape), g.reshape(shape)
                cos = np.abs((w * gv).sum(1)) / (np.linalg.norm(w, axis=1) * np.linalg.norm(gv, axis=1))
                if cos.max() < v["delta"] / math.sqrt(w.shape[1]):
                    w_n = w / (np.linalg.norm(w, axis=1) + eps)[:, None]
                    uv = u.reshape(shape)
                    u = (uv - w_n * (w_n * uv).sum(1)[:, None]).reshape(th.shape)
                    ratio, branch = v["wd_ratio"], view
                    break
        log.append(branch)
        th = th * (1 - lr * v["weight_decay"] * ratio)
        return th - lr * u
    return step


def ref_sgdsai(v: dict) -> Stepper:
    # Xu et al. (official code): at step 1, s = ||g|| / (std(g) + eps) over the tensor (unbiased
    # std; s = ||g|| where std is 0 or undefined); m_1 = g_1, m_t = mu m + (1 - mu) g;
    # theta <- theta (1 - lr wd) - lr s m.
    st: dict = {}

    def step(th: Array, g: Array) -> Array:
        if "snr" not in st:
            sigma = g.std(ddof=1) if g.size > 1 else 0.0
            st["snr"] = np.linalg.norm(g) / (sigma + v["eps"]) if sigma > 0 else np.linalg.norm(g)
            st["m"] = g.copy()
        else:
            st["m"] = v["momentum"] * st["m"] + (1 - v["momentum"]) * g
        return th * (1 - v["lr"] * v["weight_decay"]) - v["lr"] * st["snr"] * st["m"]
    return step


REFERENCES: dict[str, Callable[[dict], Stepper]] = {
    "sgd": lambda v: ref_sgd(v),
    "momentum": lambda v: ref_sgd(v, momentum=v["momentum"]),
    "nesterov": lambda v: ref_sgd(v, momentum=v["momentum"], nesterov=True),
    "adam": lambda v: ref_adam(v),
    "adamw": lambda v: ref_adam(v, decoupled=True),
    "amsgrad": lambda v: ref_adam(v, amsgrad=True),
    "rmsprop": ref_rmsprop,
    "adagrad": ref_adagrad,
    "signsgd": ref_signsgd,
    "signum": ref_signum,
    "lion": ref_lion,
    "diffgrad": ref_diffgrad,
    "adabelief": ref_adabelief,
    "sgdsai": ref_sgdsai,
}

# Non-default values for every tunable hyperparameter (different betas, so a swapped index shows).
NON_DEFAULT: dict[str, dict] = {
    "sgd": {"lr": 0.1, "weight_decay": 0.05},
    "momentum": {"lr": 0.05, "momentum": 0.7, "weight_decay": 0.02},
    "nesterov": {"lr": 0.05, "momentum": 0.8, "weight_decay": 0.03},
    "adam": {"lr": 0.05, "beta1": 0.8, "beta2": 0.95, "eps": 1e-6, "weight_decay": 0.1},
    "adamw": {"lr": 0.05, "beta1": 0.85, "beta2": 0.9, "eps": 1e-6, "weight_decay": 0.2},
    "amsgrad": {"lr": 0.05, "beta1": 0.7, "beta2": 0.9, "eps": 1e-6, "weight_decay": 0.05},
    "rmsprop": {"lr": 0.02, "alpha": 0.9, "eps": 1e-6, "weight_decay": 0.01},
    "adagrad": {"lr": 0.2, "eps": 1e-6, "weight_decay": 0.01},
    "signsgd": {"lr": 0.05, "weight_decay": 0.1},
    "signum": {"lr": 0.05, "momentum": 0.6, "weight_decay": 0.1},
    "lion": {"lr": 0.05, "beta1": 0.7, "beta2": 0.95, "weight_decay": 0.3},
    "diffgrad": {"lr": 0.05, "beta1": 0.8, "beta2": 0.9, "eps": 1e-6, "weight_decay": 0.1},
    "adabelief": {"lr": 0.05, "beta1": 0.8, "beta2": 0.9, "eps": 1e-8, "weight_decay": 0.1},
    "adamp": {"lr": 0.05, "beta1": 0.8, "beta2": 0.95, "eps": 1e-6, "weight_decay": 0.1,
              "delta": 0.1, "wd_ratio": 0.3},
    "sgdsai": {"lr": 0.05, "momentum": 0.8, "weight_decay": 0.1, "eps": 1e-6},
}

# Gradient magnitudes change from step to step (so AMSGrad's max and diffGrad's xi both matter).
SCALES = (1.0, 0.3, 2.0, 0.05, 1.5)


def given_gradients(shape: tuple[int, ...], seed: int = 0) -> GradAt:
    rng = np.random.default_rng(seed)
    gs = [s * rng.standard_normal(shape) for s in SCALES]
    return lambda t, theta: gs[t]


def theta0(shape: tuple[int, ...], seed: int = 1) -> Array:
    return np.random.default_rng(seed).uniform(0.5, 1.5, shape) * np.where(
        np.arange(math.prod(shape)).reshape(shape) % 2 == 0, 1.0, -1.0)


def run_registry(name: str, hp: dict, th0: Array, grad_at: GradAt, steps: int = STEPS) -> Array:
    p = torch.tensor(th0, dtype=torch.float64, requires_grad=True)
    opt = get_spec(name).build([p], hp)
    out = []
    for t in range(steps):
        p.grad = torch.tensor(grad_at(t, p.detach().numpy().copy()), dtype=torch.float64)
        opt.step()
        assert p.dtype == torch.float64
        out.append(p.detach().numpy().copy())
    return np.array(out)


def run_reference(step: Stepper, th0: Array, grad_at: GradAt, steps: int = STEPS) -> Array:
    th, out = th0.copy(), []
    for t in range(steps):
        th = step(th, grad_at(t, th.copy()))
        out.append(th.copy())
    return np.array(out)


# ---------------------------------------------------------------------------- rule tests

def test_every_registered_first_order_optimizer_has_a_rule_test() -> None:
    builtin = {n for n in available(oracle=Oracle.GRADIENTS) if get_spec(n).family == "first-order"}
    untested = builtin - set(REFERENCES) - {"adamp"}  # AdamP has its own tests below
    assert not untested, f"add a reference rule for {sorted(untested)}"


def test_every_builtin_optimizer_family_has_its_rule_tests() -> None:
    """The other families' rule tests live in their own files (test_zeroth_order.py, ...): each
    built-in optimizer's name must appear in one of them."""
    here = Path(__file__).parent
    texts = {p.name: p.read_text() for p in here.glob("test_*.py") if p.name != Path(__file__).name}
    missing = [n for n in available() if get_spec(n).family not in ("first-order", "user")
               and not any(f'"{n}"' in t for t in texts.values())]
    assert not missing, f"no rule test names {missing}"


@pytest.mark.parametrize("which", ["defaults", "non-default"])
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_update_matches_paper_rule(name: str, which: str) -> None:
    spec = get_spec(name)
    hp = {} if which == "defaults" else NON_DEFAULT[name]
    assert set(NON_DEFAULT[name]) == {h.name for h in spec.hyperparameters}, "cover every hyperparameter"
    shape = (2,) if spec.row_separable else (3, 4)
    th0, grad_at = theta0(shape), given_gradients(shape)
    got = run_registry(name, hp, th0, grad_at)
    want = run_reference(REFERENCES[name](spec.validate(hp)), th0, grad_at)
    assert not np.allclose(got[-1], th0), "the optimizer did not move"
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_row_separable_rules_act_elementwise_on_a_matrix() -> None:
    # The same rules on a [3, 4] tensor (the engine's [M, d] race layout) for the separable specs.
    for name in sorted(REFERENCES):
        spec = get_spec(name)
        if not spec.row_separable:
            continue
        th0, grad_at = theta0((3, 4)), given_gradients((3, 4), seed=5)
        got = run_registry(name, NON_DEFAULT[name], th0, grad_at)
        want = run_reference(REFERENCES[name](spec.validate(NON_DEFAULT[name])), th0, grad_at)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=name)


def with_radial_part(seed: int, shape: tuple[int, ...]) -> GradAt:
    """Gradients of a loss that is not scale invariant: a clear component along w in every row,
    so no projection applies."""
    given = given_gradients(shape, seed)
    return lambda t, w: given(t, w) + SCALES[t] * w


def orthogonal_per_row(seed: int) -> GradAt:
    """Gradients of a loss invariant to each row's scale: every row of g is orthogonal to the same
    row of w (|cos| = 0 per output channel), so AdamP's channel-view projection applies."""
    rng = np.random.default_rng(seed)
    hs = [s * rng.standard_normal((3, 4)) for s in SCALES]

    def grad_at(t: int, w: Array) -> Array:
        h = hs[t]
        return h - w * ((h * w).sum(1) / (w * w).sum(1))[:, None]
    return grad_at


def orthogonal_to_tensor(seed: int) -> GradAt:
    """Gradients of a loss invariant to the whole tensor's scale: g is orthogonal to w as a whole
    but not row by row, so only the layer-view projection applies."""
    rng = np.random.default_rng(seed)
    hs = [s * rng.standard_normal((3, 4)) for s in SCALES]

    def grad_at(t: int, w: Array) -> Array:
        h = hs[t]
        return h - w * ((h * w).sum() / (w * w).sum())
    return grad_at


@pytest.mark.parametrize("which", ["defaults", "non-default"])
@pytest.mark.parametrize(("case", "shape", "branch"), [
    ("generic gradient", (3, 4), "none"),
    ("row-scale-invariant weight", (3, 4), "channel"),
    ("tensor-scale-invariant weight", (3, 4), "layer"),
    ("1-D tensor (a 2-D point)", (2,), "none"),
])
def test_adamp_matches_official_rule(case: str, shape: tuple[int, ...], branch: str, which: str) -> None:
    hp = {} if which == "defaults" else NON_DEFAULT["adamp"]
    grad_at = {"none": with_radial_part(3, shape), "channel": orthogonal_per_row(3),
               "layer": orthogonal_to_tensor(3)}[branch]
    th0 = theta0(shape, seed=2)
    got = run_registry("adamp", hp, th0, grad_at)
    log: list[str] = []
    want = run_reference(ref_adamp(get_spec("adamp").validate(hp), log), th0, grad_at)
    assert log == [branch] * STEPS, f"{case}: the projection branch taken was {log}"
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    if branch != "none":  # the projection changed the step: plain Adam would land elsewhere
        adam = run_reference(ref_adam({**get_spec("adamp").validate(hp), "weight_decay": 0.0}), th0, grad_at)
        assert np.abs(adam - want).max() > 1e-3


def test_adamp_on_1d_tensor_is_adam() -> None:
    th0, grad_at = theta0((2,)), given_gradients((2,))
    hp = {"lr": 0.05, "beta1": 0.8, "beta2": 0.95, "eps": 1e-6}
    adamp, adam = run_registry("adamp", hp, th0, grad_at), run_registry("adam", hp, th0, grad_at)
    np.testing.assert_allclose(adamp, adam, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shape", [(3, 4), (2,), (1, 2), (1,)])
def test_sgdsai_gsnr_on_any_shape(shape: tuple[int, ...]) -> None:
    # (1,) has no standard deviation: the scale falls back to ||g||. (2,) and (1, 2) are the same
    # numbers: the g-SNR depends on a tensor's entries, not its shape.
    th0, grad_at = theta0(shape), given_gradients(shape, seed=7)
    got = run_registry("sgdsai", NON_DEFAULT["sgdsai"], th0, grad_at)
    want = run_reference(ref_sgdsai(get_spec("sgdsai").validate(NON_DEFAULT["sgdsai"])), th0, grad_at)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_sgdsai_scale_is_frozen_after_the_first_step() -> None:
    p = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = get_spec("sgdsai").build([p])
    for g in ([3.0, 1.0], [100.0, -50.0]):
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        expected = math.hypot(3, 1) / (math.sqrt(2) + 1e-8)  # ||g_1|| / (std(g_1) + eps), std = 2/sqrt 2
        assert float(opt.state[p]["gsnr"]) == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("name", ["diffgrad", "adamp", "sgdsai"])
def test_hand_written_optimizers_take_a_closure_and_keep_the_dtype(name: str) -> None:
    p = torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=torch.float32, requires_grad=True)
    opt = get_spec(name).build([p])

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (p ** 2).sum()
        loss.backward()
        return loss

    before = p.detach().clone()
    loss = opt.step(closure)
    assert loss is not None and float(loss.detach()) == pytest.approx(float((before ** 2).sum()))
    assert p.dtype == torch.float32 and torch.isfinite(p).all() and not torch.equal(p.detach(), before)
    assert all(v.dtype == torch.float32 for v in opt.state[p].values() if isinstance(v, torch.Tensor))


# ---------------------------------------------------------------------------- registry behaviour

def test_registry_holds_all_fifteen_builtins() -> None:
    names = available()
    assert set(BUILTINS) <= set(names)
    assert len(set(BUILTINS)) == 15
    for name in BUILTINS:
        spec = get_spec(name)
        assert spec.name == name and spec.oracle is Oracle.GRADIENTS
        assert spec.label and spec.update_rule and spec.paper is not None and spec.paper.title
        lr = spec.hyperparameter("lr")
        assert lr.log and lr.low is not None and lr.low > 0


@pytest.mark.parametrize("name", BUILTINS)
def test_defaults_validate_and_build(name: str) -> None:
    spec = get_spec(name)
    assert spec.validate() == spec.defaults()
    for hp in spec.hyperparameters:
        assert hp.check(hp.default) == hp.default
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = spec.build([p])
    assert spec.read(opt) == spec.defaults()
    p.grad = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    opt.step()
    assert torch.isfinite(p).all() and p.abs().sum() > 0


@pytest.mark.parametrize("name", BUILTINS)
def test_invalid_values_name_the_parameter_and_its_range(name: str) -> None:
    spec = get_spec(name)
    lr_range = re.escape(spec.hyperparameter("lr").range_text())
    negative = rf"{name}: lr=-0\.1 is outside its allowed range {lr_range}"
    with pytest.raises(HyperparameterError, match=negative):
        spec.validate({"lr": -0.1})
    unknown = rf"{name} has no hyperparameter 'learning_rate' \(known: lr"
    with pytest.raises(HyperparameterError, match=unknown):
        spec.build([torch.zeros(2, requires_grad=True)], {"learning_rate": 0.1})
    if any(hp.name == "beta1" for hp in spec.hyperparameters):
        beta1_range = re.escape("beta1=1.0 is outside its allowed range [0, 1)")
        with pytest.raises(HyperparameterError, match=beta1_range):
            spec.validate({"beta1": 1.0})


def test_unknown_optimizer_name_lists_the_registered_ones() -> None:
    with pytest.raises(HyperparameterError, match=r"unknown optimizer 'adamm'; registered: .*adam, adamp"):
        get_spec("adamm")


@pytest.mark.parametrize("name", [n for n in BUILTINS
                                  if any(hp.name == "beta1" for hp in get_spec(n).hyperparameters)])
def test_apply_beta1_reaches_the_live_optimizer(name: str) -> None:
    spec = get_spec(name)
    p = torch.tensor([1.0, -1.0], dtype=torch.float64, requires_grad=True)
    opt = spec.build([p])
    beta2 = spec.defaults()["beta2"]
    assert spec.apply(opt, "beta1", 0.5) == 0.5
    assert opt.param_groups[0]["betas"] == (0.5, beta2)
    assert spec.read(opt)["beta1"] == 0.5
    with pytest.raises(HyperparameterError, match=r"beta1=1\.5 is outside"):
        spec.apply(opt, "beta1", 1.5)
    assert opt.param_groups[0]["betas"] == (0.5, beta2)


def test_apply_mid_run_changes_the_next_step() -> None:
    # Lion: beta1 set to 0.3 after two steps; the reference switches at the same point.
    spec, hp = get_spec("lion"), dict(NON_DEFAULT["lion"])
    th0, grad_at = theta0((2,)), given_gradients((2,), seed=9)
    p = torch.tensor(th0, dtype=torch.float64, requires_grad=True)
    opt = spec.build([p], hp)
    values = spec.validate(hp)
    ref, th = ref_lion(values), th0.copy()
    for t in range(STEPS):
        if t == 2:
            spec.apply(opt, "beta1", 0.3)
            values["beta1"] = 0.3
        p.grad = torch.tensor(grad_at(t, th0), dtype=torch.float64)
        opt.step()
        th = ref(th, grad_at(t, th0))
    np.testing.assert_allclose(p.detach().numpy(), th, rtol=RTOL, atol=ATOL)


class HalvingMomentum(torch.optim.Optimizer):
    """A user's own optimizer: b = beta1 b + g; theta -= lr * b / (1 + shrink * t)."""

    def __init__(self, params, lr: float = 0.05, betas: tuple[float, float] = (0.5, 0.9),
                 shrink: float = 0.5, verbose: bool = False, warmup: int = 0) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, shrink=shrink, verbose=verbose, warmup=warmup))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["t"] = state.get("t", 0) + 1
                b = state.setdefault("b", torch.zeros_like(p))
                b.mul_(group["betas"][0]).add_(p.grad)
                p.add_(b, alpha=-group["lr"] / (1 + group["shrink"] * state["t"]))


@pytest.fixture
def own_optimizer():
    spec = register_optimizer(HalvingMomentum)
    yield spec
    unregister(spec.name)
    assert spec.name not in available()


def test_register_own_optimizer_in_one_call(own_optimizer) -> None:
    spec = own_optimizer
    assert spec.name == "halvingmomentum" and spec.name in available()
    assert get_spec("halvingmomentum") is spec and spec.family == "user" and not spec.row_separable
    hps = {hp.name: hp for hp in spec.hyperparameters}
    assert list(hps) == ["lr", "beta1", "beta2", "shrink", "verbose", "warmup"]
    assert hps["lr"].log and hps["lr"].default == 0.05
    assert (hps["beta1"].target, hps["beta1"].index, hps["beta2"].index) == ("betas", 0, 1)
    assert hps["beta1"].range_text() == "[0, 1)"
    assert hps["verbose"].kind == "bool" and hps["warmup"].kind == "int"

    p = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = spec.build([p], {"lr": 0.1, "beta1": 0.25, "shrink": 1.0})
    assert opt.param_groups[0]["betas"] == (0.25, 0.9)
    th, b = np.array([1.0, -2.0]), np.zeros(2)
    for t in range(1, 4):
        g = 2 * th  # loss = ||theta||^2
        p.grad = torch.tensor(g)
        opt.step()
        b = 0.25 * b + g
        th = th - 0.1 * b / (1 + t)
    np.testing.assert_allclose(p.detach().numpy(), th, rtol=RTOL, atol=ATOL)
    with pytest.raises(HyperparameterError, match=r"halvingmomentum: beta1=1\.0 is outside"):
        spec.validate({"beta1": 1.0})
