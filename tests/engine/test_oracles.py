"""The closure handed to closure-driven optimizers: each oracle against an exact answer, and the
run's handling of such optimizers (counts, per-row seeds, a person's ranking, replay)."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch

from engine.events import LoggedEvent, SetHyperparameter, SubmitRanking
from engine.oracles import HUMAN, Oracles, require_oracles, seeded_direction
from engine.registry import Hyperparameter, OptimizerSpec, Oracle, register, unregister
from engine.run import Run, RunConfig
from landscapes.catalog import get_landscape


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (1 - x[:, 0]) ** 2 + 100 * (x[:, 1] - x[:, 0] ** 2) ** 2


def rosenbrock_hessian(x: float, y: float) -> np.ndarray:
    return np.array([[2 - 400 * (y - x**2) + 800 * x**2, -400 * x], [-400 * x, 200.0]])


def make(point=(-1.2, 1.0)) -> tuple[Oracles, list[torch.Tensor]]:
    params = [torch.tensor(point, dtype=torch.float64, requires_grad=True)]
    return Oracles(rosenbrock, params), params


def test_hvp_is_the_exact_hessian_times_v_and_counts() -> None:
    oracles, _ = make()
    v = torch.tensor([0.3, -2.0], dtype=torch.float64)
    f, g, hv = oracles.hvp([v], with_gradient=True)
    assert np.allclose(hv[0].numpy(), rosenbrock_hessian(-1.2, 1.0) @ v.numpy(), rtol=1e-13)
    x, y = -1.2, 1.0
    assert np.allclose(g[0].numpy(), [-2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)], rtol=1e-13)
    assert float(f) == pytest.approx(24.2)
    assert oracles.counts.as_dict() == dict(function_values=1, gradients=1, hvps=1, jvps=0, rankings=0,
                                              surrogate_gradients=0)


def test_jvp_is_the_directional_derivative() -> None:
    oracles, _ = make()
    v = torch.tensor([1.5, 0.25], dtype=torch.float64)
    f, d = oracles.jvp([v])
    _, g = make()[0].gradient()
    assert float(d) == pytest.approx(float(g[0] @ v), rel=1e-13) and float(f) == pytest.approx(24.2)
    assert oracles.counts.jvps == 1 and oracles.counts.gradients == 0


def test_perturbed_value_never_writes_the_parameters_and_regenerates_z_from_its_seed() -> None:
    oracles, params = make()
    before = params[0].detach().clone()
    z = seeded_direction(7, params)[0]
    assert torch.equal(z, seeded_direction(7, params)[0])  # regenerated, identical
    assert not torch.equal(z, seeded_direction(8, params)[0])
    f = oracles.perturbed_value(7, 1e-3)
    assert float(f) == float(rosenbrock((before + 1e-3 * z)[None])[0])
    assert torch.equal(params[0].detach(), before)  # bit for bit: nothing was written
    # a magnitude mask keeps only |theta| <= tau: here the second coordinate (|1.0| <= 1.1)
    f_masked = oracles.perturbed_value(7, 1e-3, thresholds=[1.1])
    assert float(f_masked) == float(rosenbrock((before + 1e-3 * z * torch.tensor([0.0, 1.0]))[None])[0])
    assert oracles.counts.function_values == 2


def test_rank_returns_only_an_order_and_a_plain_closure_is_refused() -> None:
    oracles, _ = make()
    candidates = torch.tensor([[1.0, 1.0], [0.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    assert oracles.rank(candidates) == [0, 1, 2]  # f = 0, 1, 4
    assert oracles.counts.rankings == 1 and oracles.counts.function_values == 0
    with pytest.raises(TypeError, match="Oracles closure"):
        require_oracles(lambda: 0.0, "mezo")


# -- closure-driven optimizers in a run --------------------------------------------------------
class TwoPointSPSA(torch.optim.Optimizer):
    """Minimal SPSA written for these tests (the registry's ZO optimizers are tested elsewhere)."""

    def __init__(self, params, lr: float = 1e-3, seed: int = 0) -> None:
        super().__init__(params, dict(lr=lr))
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def step(self, closure=None):
        oracles = require_oracles(closure, "spsa")
        s = int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator))
        eps = 1e-3
        g = (oracles.perturbed_value(s, eps) - oracles.perturbed_value(s, -eps)) / (2 * eps)
        for p, z in zip(oracles.params, seeded_direction(s, oracles.params), strict=True):
            p.add_(z, alpha=-self.param_groups[0]["lr"] * float(g))


class PairRank(torch.optim.Optimizer):
    """m = 2 pairwise-comparison step: theta -= lr (xi_worse - xi_better)... of ZO-RankSGD."""

    def __init__(self, params, lr: float = 0.05, human: bool = False, seed: int = 0) -> None:
        super().__init__(params, dict(lr=lr, human=human))
        self.seed, self.t = seed, 0

    @torch.no_grad()
    def step(self, closure=None):
        oracles = require_oracles(closure, "pair")
        g = torch.Generator().manual_seed(self.seed + self.t)
        xi = torch.randn(2, 2, generator=g, dtype=torch.float64)
        x = oracles.flat()
        order = oracles.rank(x + 0.1 * xi)  # may raise AwaitingRanking: nothing mutated yet
        self.t += 1
        oracles.params[0].add_(xi[order[1]] - xi[order[0]], alpha=-self.param_groups[0]["lr"])


@pytest.fixture
def closure_specs():
    specs = [
        OptimizerSpec("t_spsa", TwoPointSPSA, (Hyperparameter("lr", 1e-3, 1e-6, 1.0, log=True),),
                      oracle=Oracle.VALUES, seeded=True),
        OptimizerSpec("t_pair", PairRank, (Hyperparameter("lr", 0.05, 1e-6, 1.0, log=True),
                                           Hyperparameter(HUMAN, False, kind="bool")),
                      oracle=Oracle.RANKINGS, seeded=True),
    ]
    for s in specs:
        register(s, replace=True)
    yield
    for s in specs:
        unregister(s.name)


def test_a_zeroth_order_lane_counts_function_values_and_gets_a_seed_per_row(closure_specs) -> None:
    problem = get_landscape("rosenbrock")
    run = Run(problem, RunConfig(lanes=({"optimizer": "t_spsa", "hyperparameters": {"lr": 1e-4}},
                                        {"optimizer": "sgd"}), n_starts=3, seed=4))
    records = run.run(5)
    zo = [r for r in records if r.optimizer == "t_spsa"]
    assert [r.counts.function_values for r in zo] == [2, 4, 6, 8, 10]
    assert zo[-1].counts.gradients == 0
    sgd = [r for r in records if r.optimizer == "sgd"][-1]
    assert sgd.counts.gradients == 5
    # three rows from the same start point, three seeds: three different paths
    pos = run.positions(0)
    assert len({tuple(np.round(p, 12)) for p in pos[1:]}) == 2 and not np.allclose(pos[0], pos[1])
    # the same config replays the same records
    _, again = Run.replay(problem, run.config, run.log, run.tick)
    assert all(a.same_values(b) for a, b in zip(records, again, strict=True))


def test_a_waiting_lane_never_looks_answered_to_another_thread(closure_specs) -> None:
    """The app polls ``run.awaiting`` from the UI thread while the worker steps. A lane that waits
    must be in every snapshot: seen missing for an instant, the app took the wait as over and
    dropped the person's clicks so far (the browser test saw a ranked candidate lose its rank)."""
    run = Run(get_landscape("rosenbrock"),
              RunConfig(lanes=({"optimizer": "t_pair", "hyperparameters": {HUMAN: True}},), seed=1))
    run.step()
    assert set(run.awaiting) == {0}
    seen: list[bool] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            seen.append(0 in dict(run.awaiting))
            time.sleep(1e-5)  # a spinning reader would starve the stepping thread of the GIL

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for _ in range(300):  # each step re-raises the wait with the same candidates
            run.step()
    finally:
        done.set()
        reader.join()
    assert len(seen) > 100 and all(seen), f"{seen.count(False)} of {len(seen)} snapshots lost the wait"


def test_a_person_ranks_the_run_waits_and_the_log_replays(closure_specs) -> None:
    problem = get_landscape("rosenbrock")
    config = RunConfig(lanes=({"optimizer": "t_pair", "hyperparameters": {HUMAN: True}},
                              {"optimizer": "t_pair"}), seed=1)
    run = Run(problem, config)
    records = run.step()
    assert [r.lane for r in records] == [1]  # the machine-ranked lane went on, the human one waits
    assert set(run.awaiting) == {0} and run.awaiting[0].shape == (2, 2)
    records += run.step()  # still waiting: the same candidates
    candidates = run.awaiting[0].clone()
    with pytest.raises(ValueError, match="each of the 2 candidates once"):
        run.apply(SubmitRanking(0, (0, 0)))
    with pytest.raises(ValueError, match="not waiting"):
        run.apply(SubmitRanking(1, (0, 1)))
    f = rosenbrock(candidates)
    human_order = tuple(int(i) for i in torch.argsort(f, descending=True))  # a contrarian person
    run.apply(SubmitRanking(0, human_order))
    records += run.step()
    lane0 = [r for r in records if r.lane == 0]
    assert len(lane0) == 1 and lane0[0].counts.rankings == 1 and lane0[0].counts.function_values == 0
    assert not run.awaiting
    records += run.step()
    assert 0 in run.awaiting  # the next step waits again
    run.apply(SetHyperparameter(0, HUMAN, False))  # hand the rest to the loss oracle
    records += run.run(3)
    assert 0 not in run.awaiting and [r.step for r in records if r.lane == 0] == [0, 1, 2, 3]
    log = json.loads(json.dumps(run.event_log()))
    _, again = Run.replay(problem, RunConfig.from_dict(log["config"]),
                          [LoggedEvent.from_dict(e) for e in log["events"]], log["ticks"])
    assert len(again) == len(records) and all(a.same_values(b) for a, b in zip(records, again, strict=True))
