"""Every registered optimizer against its paper's update rule, driven by the one case table
(``tests/engine/optimizer_cases.py``).

For each built-in optimizer and each of its problems, a few steps are taken through
``get_spec(name).build(...)`` the way a run steps it, once with the registry defaults and once with
a non-default value for every hyperparameter (so the wiring of each, ``beta1`` is ``betas[0]``, is
exercised), and every iterate is compared with the case's independent float64 numpy transcription
of the rule. Also from the table: a live change of every hyperparameter takes effect at the next
step, float32 stays float32, the optimizer-state bytes, the stability thresholds as the boundary of
the optimizer's own recursion on a quadratic, and the diagnostics. Then the registry's behaviour:
messages for bad values, ``apply``, and ``register_optimizer`` taking a user's class in one call.
The first-order family's special cases (AdamP's projection branches, SGD-SaI's g-SNR) close it.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from engine.clipping import Clip
from engine.memory import state_bytes
from engine.registry import HyperparameterError, Oracle, available, get_spec, register_optimizer, unregister
from engine.specs import CLIPPED_FRACTION
from engine.stability import LAMBDA_MAX
from tests.engine.optimizer_cases import (
    CASES,
    PROBLEMS,
    RuleProblem,
    adamp_projection,
    analytic,
    build_on,
    clip_np,
    clipped,
    given,
    per_tensor,
    ref_adam,
    ref_adamp,
    ref_sgdp,
    ref_sgdsai,
    run_case,
    schedule,
)

BUILTIN_NAMES = tuple(CASES)


def _case_problems() -> list:
    return [pytest.param(name, problem, which, id=f"{name}-{problem}-{which}")
            for name, case in CASES.items() for problem in case.problems
            for which in ("defaults", "settings")]


# ---------------------------------------------------------------------------- the table itself

def test_every_registered_builtin_has_a_case_and_every_case_is_registered() -> None:
    from engine.optimizers import BUILTINS
    builtins = [spec.name for spec in BUILTINS]
    missing, stray = sorted(set(builtins) - set(CASES)), sorted(set(CASES) - set(builtins))
    assert not missing and not stray, f"no case for {missing}; no optimizer for {stray}"
    assert all(name in available() for name in builtins)


# ---------------------------------------------------------------------------- rules

@pytest.mark.parametrize(("name", "problem", "which"), _case_problems())
def test_update_matches_paper_rule(name: str, problem: str, which: str, device: str) -> None:
    case, rp = CASES[name], PROBLEMS[problem]
    if device != "cpu" and rp.cpu_only:
        pytest.skip(rp.cpu_only)
    spec = get_spec(name)
    defaults = spec.defaults()
    varied = {hp.name for hp in spec.hyperparameters} - set(case.not_varied)
    assert set(case.settings) == varied, f"{name}: settings must vary every hyperparameter"
    same = [k for k in case.settings if case.settings[k] == defaults[k]]
    assert not same, f"{name}: settings equal to the defaults: {same}"
    values = schedule(name, [{} if which == "defaults" else case.settings] * case.steps)
    got = run_case(name, values, rp, case.seed, device=device)
    want = case.rule(values, rp, case.seed)
    assert not np.allclose(got[-1], rp.x0), "the optimizer did not move"
    rtol, atol = case.tolerance(values[0])
    for t, (a, b) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"{name} on {problem}, step {t}")


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_a_live_change_of_every_hyperparameter_takes_effect_at_the_next_step(name: str) -> None:
    """Defaults for two steps, then every setting at once (``spec.apply`` between steps): the
    reference switches at the same step, so every hyperparameter is read at every step (or, where
    the rule says so, acted on at once: FRUGAL redraws its subsets, M-FAC empties its window, CBO
    redraws its cloud)."""
    case = CASES[name]
    rp = PROBLEMS[case.problems[0]]
    values = schedule(name, [{}] * 2 + [case.settings] * (case.steps - 2))
    got = run_case(name, values, rp, case.seed)
    want = case.rule(values, rp, case.seed)
    rtol, atol = case.tolerance(values[-1])
    for t, (a, b) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"{name}, step {t}")
    fixed = run_case(name, values[:2] + values[:1] * (case.steps - 2), rp, case.seed)
    assert not np.allclose(fixed[-1], got[-1]), "the change made no difference"


@pytest.mark.parametrize("name", [n for n, c in CASES.items()
                                  if torch.float32 in PROBLEMS[c.problems[0]].dtypes])
def test_float32_parameters_stay_float32_and_follow_the_rule(name: str) -> None:
    case = CASES[name]
    rp = PROBLEMS[case.problems[0]]
    values = schedule(name, [{}] * 3)
    states: list[torch.Tensor] = []

    def dtypes(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
        assert all(p.dtype == torch.float32 for p in params)
        states.extend(t for s in opt.state.values() for t in s.values()
                      if isinstance(t, torch.Tensor) and t.is_floating_point())

    got = run_case(name, values, rp, case.seed, dtype=torch.float32, on_step=dtypes)
    want = case.rule(values, rp, case.seed)
    np.testing.assert_allclose(got[-1], want[-1], rtol=1e-4, atol=1e-4)
    assert all(t.dtype == torch.float32 for t in states)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_optimizer_state_bytes_from_first_principles(name: str, dtype: torch.dtype) -> None:
    """``engine.memory.state_bytes`` after one and after two steps equals the case's count, from the
    optimizer's source (parameters of the case's first problem; b bytes per entry)."""
    case = CASES[name]
    rp = PROBLEMS[case.problems[0]]
    if dtype not in rp.dtypes:
        dtype = torch.float64
    counted: list[int] = []
    run_case(name, schedule(name, [{}] * 2), rp, case.seed, dtype=dtype,
             on_step=lambda opt, params: counted.append(state_bytes(opt)))
    want = case.state(rp.shapes, dtype.itemsize)
    assert counted == [want, want]


# ---------------------------------------------------------------------------- instruments

def _quadratic(a: float) -> RuleProblem:
    """f = a/2 (x^2 + y^2) from (1, -0.5): curvature a in every direction."""
    return analytic(f"quadratic_{a:g}", ((2,),), np.array([1.0, -0.5]), lambda x: 0.5 * a * (x * x).sum(-1),
                    lambda x: a * x)


THRESHOLD_CASES = [n for n in BUILTIN_NAMES if get_spec(n).stability is not None
                   and get_spec(n).stability({"lr": 1.0}).quantity == LAMBDA_MAX]


@pytest.mark.parametrize("name", THRESHOLD_CASES)
def test_the_stability_threshold_is_the_boundary_of_the_optimizers_own_recursion(name: str) -> None:
    """On f = a/2 |x|^2 the optimizer (defaults, weight decay 0) shrinks the iterate when a is 2%
    below the spec's threshold and blows it up when a is 2% above, over 3,000 steps (the contraction
    rate is 1 at the boundary: a 2% margin moves it by about 1% per step)."""
    spec = get_spec(name)
    values = spec.validate({"weight_decay": 0.0} if "weight_decay" in spec.defaults() else {})
    threshold = spec.stability(values).value
    ends = {}
    with np.errstate(over="ignore", invalid="ignore"):  # above the threshold the iterate overflows
        for side, a in (("below", 0.98 * threshold), ("above", 1.02 * threshold)):
            ends[side] = np.linalg.norm(run_case(name, [values] * 3000, _quadratic(a), 0)[-1])
    assert ends["below"] < 1e-3 and not ends["above"] < 1e3, (threshold, ends)  # nan: overflowed


def test_every_threshold_is_infinite_at_a_learning_rate_annealed_to_zero() -> None:
    """A schedule may take lr to exactly 0, where no sharpness is unstable (and nothing divides by 0)."""
    for name in BUILTIN_NAMES:
        rule = get_spec(name).stability
        if rule is not None:
            assert rule({**get_spec(name).defaults(), "lr": 0.0}).value == math.inf, name


@pytest.mark.parametrize("name", [n for n in BUILTIN_NAMES if get_spec(n).second_moment_key])
def test_the_second_moment_key_names_a_state_entry_with_a_step_count(name: str) -> None:
    """What :func:`engine.instruments.second_moment` reads: ``state[p][key]`` shaped like ``p`` and
    ``state[p]["step"]`` or, where the library counts per group (pytorch_optimizer's AdaBelief), the
    group's ``"step"`` (the bias-correction count) for every parameter."""
    case = CASES[name]
    rp = PROBLEMS[case.problems[0]]
    key = get_spec(name).second_moment_key
    seen: list[bool] = []

    def check(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
        group = {id(q): g for g in opt.param_groups for q in g["params"]}
        seen.extend(opt.state[p][key].shape == p.shape
                    and int(opt.state[p]["step"] if "step" in opt.state[p] else group[id(p)]["step"]) >= 1
                    for p in params)

    run_case(name, schedule(name, [{}] * 2), rp, case.seed, on_step=check)
    assert seen and all(seen)


CLIPPING_GRADIENT_TAKERS = [n for n in BUILTIN_NAMES if get_spec(n).clips_estimate
                            and get_spec(n).oracle in (Oracle.GRADIENTS, Oracle.HVPS)]


@pytest.mark.parametrize("kind", ["norm", "value"])
@pytest.mark.parametrize("name", CLIPPING_GRADIENT_TAKERS)
def test_a_closure_driven_lane_steps_from_the_clipped_gradient(name: str, kind: str) -> None:
    """Second-order and look-ahead lanes get the run's gradient in p.grad and the lane's clip: they
    follow their rule on the problem whose gradient is clipped by hand (every evaluation: mirror
    prox's look-ahead too), leave the run's p.grad as it was, and report the clipped fraction of
    the step's gradient. (Zeroth-order estimates: test_zeroth_order.)"""
    case = CASES[name]
    rp = PROBLEMS[case.problems[0]]
    clip = Clip("norm", 0.5) if kind == "norm" else Clip("value", 0.3)
    values = schedule(name, [case.settings] * case.steps)
    fractions, handed = [], []

    def check(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
        fractions.append(get_spec(name).read_diagnostics(opt)["clipped_fraction"])
        handed.append(rp.join([p.grad.numpy() for p in params]))

    got = run_case(name, values, rp, case.seed, clip=clip, on_step=check)
    want = case.rule(values, clipped(rp, clip), case.seed)
    rtol, atol = case.tolerance(values[0])
    np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=rtol, atol=atol)
    unclipped = case.rule(values, rp, case.seed)
    assert not np.allclose(got[-1], unclipped[-1]), "the clip made no difference"
    starts = [rp.x0, *got[:-1]]
    assert fractions == [clip_np(rp.gradient(t, th), clip)[1] for t, th in enumerate(starts)]
    for t, (g, th) in enumerate(zip(handed, starts, strict=True)):  # the run's p.grad: not clipped
        np.testing.assert_array_equal(g, rp.gradient(t, th))


DIAGNOSED = [n for n in BUILTIN_NAMES if get_spec(n).diagnostics]


@pytest.mark.parametrize("name", DIAGNOSED)
def test_declared_diagnostics_are_reported_after_a_step(name: str) -> None:
    """Nothing before the first step; after it, exactly the declared names (the clipped fraction
    only on a lane that clips), finite, through ``spec.read_diagnostics``. The values are checked
    against hand computations in each family's tests."""
    spec, case = get_spec(name), CASES[name]
    rp = PROBLEMS[case.problems[0]]
    opt, params = build_on(name, rp, seed=case.seed)
    assert spec.read_diagnostics(opt) == {}
    if spec.clips_estimate:
        opt.clip = Clip("norm", threshold=1e-3)
    g = rp.gradient(0, rp.x0)
    for p, gi in zip(params, rp.split(g), strict=True):
        p.grad = torch.tensor(gi)
    opt.step(rp.oracles(params)) if spec.closure_driven else opt.step()
    read = spec.read_diagnostics(opt)
    assert set(read) == set(spec.diagnostics) and all(math.isfinite(v) for v in read.values())
    if spec.clips_estimate:
        opt.clip = None
        assert CLIPPED_FRACTION not in spec.read_diagnostics(opt)


# ---------------------------------------------------------------------------- registry behaviour

def test_every_builtin_documents_itself() -> None:
    for name in BUILTIN_NAMES:
        spec = get_spec(name)
        assert spec.name == name and spec.label and spec.update_rule and spec.paper is not None
        assert spec.paper.title and spec.paper.year > 1900
        lr = spec.hyperparameter("lr")
        assert lr.log and lr.low is not None and lr.low > 0, name
        documented = all(hp.doc for hp in spec.hyperparameters if hp.name != "lr")
        assert documented or spec.family == "first-order", name


@pytest.mark.parametrize("name", BUILTIN_NAMES)
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


@pytest.mark.parametrize("name", [n for n in BUILTIN_NAMES
                                  if any(hp.name == "beta1" for hp in get_spec(n).hyperparameters)])
def test_apply_beta1_reaches_the_live_optimizer_and_a_bad_value_changes_nothing(name: str) -> None:
    spec = get_spec(name)
    opt, _ = build_on(name, PROBLEMS[CASES[name].problems[0]])
    beta2 = spec.defaults()["beta2"]
    assert spec.apply(opt, "beta1", 0.5) == 0.5
    assert opt.param_groups[0]["betas"] == (0.5, beta2) and spec.read(opt)["beta1"] == 0.5
    with pytest.raises(HyperparameterError, match=r"beta1=1\.5 is outside"):
        spec.apply(opt, "beta1", 1.5)
    assert opt.param_groups[0]["betas"] == (0.5, beta2)


def test_write_sets_a_value_below_the_range_that_apply_refuses() -> None:
    """What a schedule annealing lr to 0 needs: ``write`` skips the range check ``apply`` makes."""
    spec = get_spec("adam")
    opt, _ = build_on("adam", PROBLEMS["given_2"])
    with pytest.raises(HyperparameterError, match=r"lr=0\.0 is outside"):
        spec.apply(opt, "lr", 0.0)
    spec.write(opt, "lr", 0.0)
    spec.write(opt, "beta2", 0.5)
    assert spec.read(opt)["lr"] == 0.0 and opt.param_groups[0]["betas"] == (0.9, 0.5)


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
    np.testing.assert_allclose(p.detach().numpy(), th, rtol=1e-12, atol=1e-14)
    with pytest.raises(HyperparameterError, match=r"halvingmomentum: beta1=1\.0 is outside"):
        spec.validate({"beta1": 1.0})


# ---------------------------------------------------------------------------- AdamP

def with_radial_part(seed: int) -> RuleProblem:
    """Gradients of a loss that is not scale invariant: a clear component along w in every row,
    so no projection applies."""
    base = given("radial", [(3, 4)], seed)
    return RuleProblem("radial", base.shapes, base.x0, lambda t, w: base.gradient(t, w) + (t % 3 + 1) * w)


def orthogonal(seed: int, per_row: bool, shape: tuple[int, ...] = (3, 4)) -> RuleProblem:
    """Gradients of a loss invariant to each row's scale (every row of g orthogonal to the same row
    of w: AdamP's channel view projects), or to the whole tensor's scale (g orthogonal to w as a
    whole but not row by row: only the layer view projects)."""
    base = given("orthogonal", [shape], seed)

    def gradient(t: int, w: np.ndarray) -> np.ndarray:
        h, w = base.gradient(t, w).reshape(shape[0], -1), w.reshape(shape[0], -1)
        if per_row:
            return (h - w * ((h * w).sum(1) / (w * w).sum(1))[:, None]).ravel()
        return (h - w * ((h * w).sum() / (w * w).sum())).ravel()
    return RuleProblem("orthogonal", base.shapes, base.x0, gradient)


ADAMP_BRANCHES = {"none": lambda: with_radial_part(3), "channel": lambda: orthogonal(3, per_row=True),
                  "layer": lambda: orthogonal(3, per_row=False)}


@pytest.mark.parametrize("which", ["defaults", "settings"])
@pytest.mark.parametrize("branch", list(ADAMP_BRANCHES))
def test_adamp_takes_each_projection_branch_of_the_official_rule(branch: str, which: str) -> None:
    """On a (3, 4) weight: no projection for a generic gradient, the per-output-channel view for a
    row-scale-invariant loss, the whole-tensor view for a tensor-scale-invariant one; the reference
    logs which, and ``projected_fraction`` reports it (1 when projected, 0 when not)."""
    rp = ADAMP_BRANCHES[branch]()
    values = schedule("adamp", [{} if which == "defaults" else CASES["adamp"].settings] * 5)
    fractions: list[float] = []
    got = run_case("adamp", values, rp, 0,
                   on_step=lambda opt, ps: fractions.append(opt.diagnostics()["projected_fraction"]))
    log: list[str] = []
    want = per_tensor(lambda: ref_adamp(log))(values, rp, 0)
    assert log == [branch] * 5
    assert fractions == [0.0 if branch == "none" else 1.0] * 5
    np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-12, atol=1e-14)
    if branch != "none":  # the projection changed the step: plain Adam would land elsewhere
        adam = per_tensor(ref_adam)([{**v, "weight_decay": 0.0} for v in values], rp, 0)
        assert np.abs(np.stack(adam) - np.stack(want)).max() > 1e-3


def test_adamp_projected_fraction_counts_the_projected_entries() -> None:
    """A (3, 4) weight whose loss is row-scale invariant (projected) beside a (2,) bias (never
    projected): 12 of 14 entries."""
    rp = orthogonal(3, per_row=True)
    net = RuleProblem("w_and_b", ((3, 4), (2,)), np.concatenate([rp.x0, [0.5, -1.0]]),
                      lambda t, th: np.concatenate([rp.gradient(t, th[:12]), [0.3, 0.2]]))
    fractions: list[float] = []
    run_case("adamp", schedule("adamp", [{}] * 2), net, 0,
             on_step=lambda opt, ps: fractions.append(opt.diagnostics()["projected_fraction"]))
    assert fractions == [12 / 14, 12 / 14]


def test_adamp_on_1d_tensor_is_adam() -> None:
    rp = PROBLEMS["given_2"]
    hp = schedule("adamp", [{"lr": 0.05, "beta1": 0.8, "beta2": 0.95, "eps": 1e-6}] * 5)
    adam = schedule("adam", [{"lr": 0.05, "beta1": 0.8, "beta2": 0.95, "eps": 1e-6}] * 5)
    np.testing.assert_allclose(run_case("adamp", hp, rp, 0), run_case("adam", adam, rp, 0),
                               rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------- SGD-SaI

@pytest.mark.parametrize("shape", [(3, 4), (2,), (1, 2), (1,)])
def test_sgdsai_gsnr_on_any_shape(shape: tuple[int, ...]) -> None:
    # (1,) has no standard deviation: the scale falls back to ||g||. (2,) and (1, 2) are the same
    # numbers: the g-SNR depends on a tensor's entries, not its shape.
    rp = given("shape", [shape], seed=7)
    values = schedule("sgdsai", [CASES["sgdsai"].settings] * 5)
    np.testing.assert_allclose(run_case("sgdsai", values, rp, 0), per_tensor(ref_sgdsai)(values, rp, 0),
                               rtol=1e-12, atol=1e-14)


def test_sgdsai_scale_is_frozen_after_the_first_step_and_reported() -> None:
    """Two tensors: g_1 = (3, 1) gives s = ||g|| / (std(g) + eps) = sqrt(10) / (sqrt 2 + 1e-8); a
    single entry 4 has no standard deviation: s = ||g|| = 4. Later gradients change neither."""
    w = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    opt = get_spec("sgdsai").build([w, b])
    assert opt.diagnostics() == {}
    for gw, gb in (([3.0, 1.0], [4.0]), ([100.0, -50.0], [-7.0])):
        w.grad, b.grad = torch.tensor(gw, dtype=torch.float64), torch.tensor(gb, dtype=torch.float64)
        opt.step()
        s_w = math.hypot(3, 1) / (math.sqrt(2) + 1e-8)  # std of (3, 1) is 2 / sqrt 2
        assert float(opt.state[w]["gsnr"]) == pytest.approx(s_w, rel=1e-14)
        assert opt.diagnostics() == {"gsnr_min": pytest.approx(s_w, rel=1e-14), "gsnr_max": 4.0}


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


# ---------------------------------------------------------------------------- choice hyperparameters

def test_a_choice_hyperparameter_takes_one_of_its_options_and_says_which_are_allowed() -> None:
    spec = get_spec("sophia_h")
    hp = spec.hyperparameter("estimator")
    assert hp.kind == "choice" and hp.choices == ("gaussian", "rademacher", "gnb", "exact")
    assert hp.range_text() == "one of 'gaussian', 'rademacher', 'gnb', 'exact'"
    assert spec.validate({"estimator": "exact"})["estimator"] == "exact"
    for bad in ("normal", 1, None, True):
        message = ("sophia_h: estimator must be one of 'gaussian', 'rademacher', 'gnb', 'exact', "
                   f"got {re.escape(repr(bad))}")
        with pytest.raises(HyperparameterError, match=message):
            spec.validate({"estimator": bad})
    opt, _ = build_on("sophia_h", PROBLEMS["quartic_indefinite"])
    assert spec.apply(opt, "estimator", "rademacher") == "rademacher"
    assert spec.read(opt)["estimator"] == "rademacher"
    with pytest.raises(HyperparameterError, match="got 'x'"):
        spec.apply(opt, "estimator", "x")
    assert spec.read(opt)["estimator"] == "rademacher"  # a refused value changes nothing


def test_a_choice_hyperparameter_must_declare_distinct_options_and_a_default_among_them() -> None:
    from engine.specs import Hyperparameter, choice
    with pytest.raises(HyperparameterError, match=r"must be one of 'a', 'b', got 'c'"):
        choice("mode", "c", ("a", "b"))
    with pytest.raises(ValueError, match="choices are given exactly for kind='choice'"):
        Hyperparameter("mode", "a", kind="choice")
    with pytest.raises(ValueError, match="choices are given exactly for kind='choice'"):
        Hyperparameter("x", 1.0, choices=("a",))
    with pytest.raises(ValueError, match="distinct non-empty strings"):
        choice("mode", "a", ("a", "a"))


def test_a_choice_change_travels_through_an_uploaded_event_log() -> None:
    """A set_hyperparameter event with a string value passes the untrusted-log check (and a number for
    a choice is refused with the hyperparameter's message)."""
    from engine.untrusted import check_event_log

    def log(value: object) -> dict:
        return {"problem": "himmelblau", "options": {},
                "config": {"lanes": [{"optimizer": "sophia_h", "hyperparameters": {}}]},
                "events": [{"tick": 0, "kind": "set_hyperparameter", "lane": 0, "name": "estimator",
                            "value": value}], "ticks": 3}

    checked = check_event_log(log("rademacher"))
    assert checked.events[0].event.value == "rademacher"
    with pytest.raises(ValueError, match="estimator must be one of"):
        check_event_log(log(0.5))


# ---------------------------------------------------------------------------- SGDP

@pytest.mark.parametrize("which", ["defaults", "settings"])
@pytest.mark.parametrize("branch", list(ADAMP_BRANCHES))
def test_sgdp_takes_each_projection_branch_of_the_official_rule(branch: str, which: str) -> None:
    """AdamP's projection test, for SGDP (the official sgdp.py): no projection for a generic gradient,
    the per-channel view for a row-scale-invariant loss, the whole-tensor view for a tensor-scale
    invariant one; ``projected_fraction`` says so. (On these losses the gradient is already tangent, so
    the projection only removes the radial part the momentum buffer carries: a small change.)"""
    rp = ADAMP_BRANCHES[branch]()
    values = schedule("sgdp", [{} if which == "defaults" else CASES["sgdp"].settings] * 5)
    fractions: list[float] = []
    got = run_case("sgdp", values, rp, 0,
                   on_step=lambda opt, ps: fractions.append(opt.diagnostics()["projected_fraction"]))
    log: list[str] = []
    want = per_tensor(lambda: ref_sgdp(log))(values, rp, 0)
    assert log == [branch] * 5
    assert fractions == [0.0 if branch == "none" else 1.0] * 5
    np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-12, atol=1e-14)


def test_sgdp_on_1d_tensors_is_torch_nesterov_and_heavy_ball() -> None:
    """No projection on a 1-D tensor, and the zero buffer's first step is g: torch.optim.SGD's."""
    rp = PROBLEMS["given_2"]
    for nesterov, twin in ((True, "nesterov"), (False, "momentum")):
        sgdp = schedule("sgdp", [{"lr": 0.05, "momentum": 0.8, "nesterov": nesterov}] * 5)
        torch_sgd = schedule(twin, [{"lr": 0.05, "momentum": 0.8}] * 5)
        np.testing.assert_allclose(run_case("sgdp", sgdp, rp, 0), run_case(twin, torch_sgd, rp, 0),
                                   rtol=1e-12, atol=1e-14)


def test_sgdp_decays_a_projected_weight_by_wd_ratio_over_one_minus_momentum() -> None:
    """theta <- theta (1 - lr wd ratio / (1 - mu)) - lr u: the official decay, on a projected weight."""
    rp = orthogonal(3, per_row=True)
    v = {"lr": 0.1, "momentum": 0.5, "nesterov": False, "weight_decay": 0.2, "wd_ratio": 0.25}
    opt, (w,) = build_on("sgdp", rp, v)
    g = rp.gradient(0, rp.x0)
    w.grad = torch.tensor(g.reshape(3, 4))
    opt.step()
    w0, g0 = rp.x0.reshape(3, 4), g.reshape(3, 4)
    u, _, branch = adamp_projection(w0, g0, g0, get_spec("sgdp").validate(v))  # b_1 = g_1: u = g_1
    want = w0 * (1 - 0.1 * 0.2 * 0.25 / 0.5) - 0.1 * u
    assert branch == "channel"
    np.testing.assert_allclose(w.detach().numpy(), want, rtol=1e-13, atol=1e-15)
