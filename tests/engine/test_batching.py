"""Batch size as a lane's controlled quantity: closed-form schedules, the norm test against a hand
computation from per-sample gradients, equal sizes see equal minibatches, records carry the size,
landscapes refuse it, and runs with batch sizes replay exactly."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from engine.batching import BatchSize, norm_test_size
from engine.events import LoggedEvent, SetBatchSize, SwitchOptimizer
from engine.run import LaneConfig, Run, RunConfig
from engine.seeds import minibatch_seed
from landscapes import get_landscape, get_network


def small_net(**kw):
    return get_network("logistic_regression", **kw)  # 31 parameters, 427 training samples


def run_of(problem, *lanes: LaneConfig, **kw) -> Run:
    return Run(problem, RunConfig(lanes=lanes, device="cpu", **kw))


def test_constant_and_scheduled_sizes_are_their_closed_forms() -> None:
    sched = BatchSize("schedule", size=10, growth=2.0, every=5, max_size=70)
    assert [sched.scheduled(t, 427) for t in range(0, 25, 5)] == [10, 20, 40, 70, 70]
    assert [sched.scheduled(t, 30) for t in (0, 5, 10)] == [10, 20, 30]  # capped by the training set
    assert BatchSize("schedule", size=10, growth=1.5, every=1).scheduled(3, 427) == math.floor(10 * 1.5**3)
    assert BatchSize(size=500).initial(427) == 427 and BatchSize.from_dict(32) == BatchSize("constant", 32)


def test_norm_test_size_by_hand() -> None:
    """sum_i |g_i - mean|^2 / ((b - 1) theta^2 |mean|^2), rounded up, from numbers written out."""
    g = torch.tensor([[1.0, 0.0], [3.0, 2.0], [2.0, 4.0]], dtype=torch.float64)
    mean = np.array([2.0, 2.0])
    spread = sum(((row - mean) ** 2).sum() for row in g.numpy())  # 1+4 + 1+0 + 0+4 = 10
    assert spread == 10.0
    assert norm_test_size(g, 0.5) == math.ceil(10.0 / (2 * 0.25 * 8.0))  # = 3: the test passes at b = 3
    assert norm_test_size(g, 0.1) == math.ceil(10.0 / (2 * 0.01 * 8.0))  # = 63
    assert norm_test_size(torch.zeros(4, 2), 0.5) == 4  # no signal: no change


def test_round_trip_and_bad_sizes() -> None:
    for b in (BatchSize("norm_test", size=8, theta=0.3, max_size=200), BatchSize("schedule", 4, 3.0, 10)):
        assert BatchSize.from_dict(json.loads(json.dumps(b.to_dict()))) == b
    for bad, match in [(dict(kind="dynamic"), "kind"), (dict(size=0), "size"), (dict(growth=0.5), "growth"),
                       (dict(kind="norm_test", size=1), "size"), (dict(theta=0.0), "theta"),
                       (dict(size=10, max_size=5), "max_size")]:
        with pytest.raises(ValueError, match=match):
            BatchSize(**bad)


def test_lanes_with_the_same_size_see_the_same_minibatches() -> None:
    """Two identical SGD lanes at batch 16 produce identical records; the problem's own size (64
    here) still comes from the run's generator as before; a lane at 16 differs from one at 64."""
    problem = small_net(batch_size=64)
    lanes = (LaneConfig("sgd", {"lr": 0.1}, batch_size=BatchSize(size=16)),
             LaneConfig("momentum", {"lr": 0.1}),
             LaneConfig("sgd", {"lr": 0.1}, batch_size=16),
             LaneConfig("sgd", {"lr": 0.1}))
    records = run_of(problem, *lanes, seed=2).run(6)
    by_lane = {k: [r for r in records if r.lane == k] for k in range(4)}
    for a, b in zip(by_lane[0], by_lane[2], strict=True):
        np.testing.assert_array_equal(a.loss, b.loss)
        np.testing.assert_array_equal(a.update_norm, b.update_norm)
    assert [r.batch_size for r in by_lane[0]] == [16] * 6 and [r.batch_size for r in by_lane[3]] == [64] * 6
    assert not np.array_equal(by_lane[0][3].loss, by_lane[3][3].loss)
    # the default lanes see exactly what a run without any batch-size lane sees
    plain = run_of(problem, LaneConfig("momentum", {"lr": 0.1}), LaneConfig("sgd", {"lr": 0.1}), seed=2)
    plain = plain.run(6)
    for a, b in zip([r for r in plain if r.lane == 1], by_lane[3], strict=True):
        np.testing.assert_array_equal(a.loss, b.loss)


def test_a_minibatch_of_size_b_is_the_mean_over_those_samples() -> None:
    """The lane's gradient at step 0 is the mean per-sample gradient over its 20 drawn indices."""
    problem = small_net()
    run = run_of(problem, LaneConfig("sgd", {"lr": 0.5}, batch_size=20), seed=1)
    x0 = run.starts[0]
    (rec,) = run.step()
    step = (x0 - torch.as_tensor(run.positions(0)[0])) / 0.5  # x1 = x0 - lr * mean per-sample gradient
    used = problem.sample_batch(torch.Generator().manual_seed(minibatch_seed(1, 0, 20)), batch_size=20)
    assert len(used) == 20 and len(set(used.tolist())) == 20
    torch.testing.assert_close(step, problem.per_sample_grads(x0, used).mean(0), rtol=1e-10, atol=1e-12)
    assert rec.batch_size == 20 and rec.loss[0] == pytest.approx(float(problem.loss(x0, used)), rel=1e-12)


def test_scheduled_batch_sizes_reach_the_records() -> None:
    sizes = BatchSize("schedule", size=8, growth=2.0, every=3, max_size=50)
    run = run_of(small_net(), LaneConfig("adam", {"lr": 0.01}, batch_size=sizes))
    assert [r.batch_size for r in run.run(12)] == [8, 8, 8, 16, 16, 16, 32, 32, 32, 50, 50, 50]


def test_norm_test_grows_the_batch_as_computed_from_per_sample_gradients() -> None:
    """Step 0 at size 8: the next size is what the test asks for at x_0 on the step's minibatch,
    computed here from the problem's per-sample gradients (the largest over the lane's rows)."""
    problem = small_net()
    bs = BatchSize("norm_test", size=8, theta=0.2)
    run = run_of(problem, LaneConfig("sgd", {"lr": 0.05}, batch_size=bs), n_starts=2, seed=5)
    starts = run.starts.clone()
    batch0 = problem.sample_batch(torch.Generator().manual_seed(minibatch_seed(5, 0, 8)), batch_size=8)
    want = max(norm_test_size(problem.per_sample_grads(x, batch0), 0.2) for x in starts)
    records = run.run(30)
    assert records[0].batch_size == 8 and records[1].batch_size == min(max(8, want), problem.n_train)
    sizes = [r.batch_size for r in records]
    assert sizes == sorted(sizes) and sizes[-1] > 8  # it only grows


def test_batch_size_needs_a_training_set_and_events_change_it() -> None:
    with pytest.raises(ValueError, match="rosenbrock has no training set"):
        run_of(get_landscape("rosenbrock"), LaneConfig("sgd", batch_size=16))
    run = run_of(small_net(batch_size=32), LaneConfig("sgd", {"lr": 0.1}))
    assert run.step()[0].batch_size == 32
    run.apply(SetBatchSize(0, {"kind": "constant", "size": 100}))
    assert run.step()[0].batch_size == 100
    run.apply(SwitchOptimizer(0, "adam"))  # the lane's batch size stays with the lane
    assert run.step()[0].batch_size == 100
    run.apply(SetBatchSize(0, None))
    assert run.step()[0].batch_size == 32
    run.apply(SetBatchSize(0, 10_000))  # beyond the training set: the full batch
    assert run.step()[0].batch_size == run.n_train == 427
    with pytest.raises(ValueError, match="batch size size must be an integer >= 1"):
        run.apply(SetBatchSize(0, {"size": 0}))


def test_runs_with_batch_sizes_replay_exactly() -> None:
    problem = get_network("digits_mlp", width=8, batch_size=32)
    norm_test = BatchSize("norm_test", size=4, theta=0.5)
    config = RunConfig(lanes=(LaneConfig("adam", {"lr": 0.01}, batch_size=norm_test),
                              LaneConfig("sgd", {"lr": 0.1}, batch_size=BatchSize("schedule", 8, 2.0, 2)),
                              LaneConfig("lion", {"lr": 1e-3})),
                       n_starts=2, seed=7, device="cpu", metrics_every=4)
    run = Run(problem, config)
    records = run.run(5)
    run.apply(SetBatchSize(2, 8))
    records += run.run(5)
    log = json.loads(json.dumps(run.event_log()))
    assert RunConfig.from_dict(log["config"]) == config
    _, again = Run.replay(problem, RunConfig.from_dict(log["config"]),
                          [LoggedEvent.from_dict(e) for e in log["events"]], log["ticks"])
    assert all(a.same_values(b) for a, b in zip(records, again, strict=True)) and len(again) == len(records)
    assert len({r.batch_size for r in records if r.lane == 0}) > 1
