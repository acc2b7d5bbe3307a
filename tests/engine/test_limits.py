"""Every size from outside is bounded before any work starts (engine/limits.py, engine/untrusted.py).

Each refusal is checked WITHOUT allocating the huge amount: the message (limit and figure) is
asserted, the problem factories and datasets are replaced by ones that fail if called, and the
process's peak RSS may not grow by more than a few tens of MB. The estimates are checked against
the built problems (parameters exactly; flops against torch's flop counter; saved activations;
data) and against the measured peak memory of small real runs, within stated factors.
"""

from __future__ import annotations

import functools
import json
import resource
from typing import Any

import pytest
import torch

import landscapes
from engine.events import AddLane, LoggedEvent, RemoveLane, SetHyperparameter, SetProbes
from engine.instruments import NETWORK_PROBES, ProbeConfig
from engine.limits import (
    DEFAULT_LIMITS,
    LimitError,
    Limits,
    ProblemSize,
    check_probes,
    check_run,
    estimate_run,
    measure_problem_size,
    optimizer_cost,
)
from engine.memory import SavedActivations, measure_peak_subprocess, tensor_bytes
from engine.run import LaneConfig, Run, RunConfig
from engine.untrusted import check_event_log, decode_upload, parse_logged_event, parse_run_config
from landscapes import data as datasets
from landscapes import get_landscape, get_network, sizes

torch.set_num_threads(1)
MB = 1e6


def config(*lanes: str | tuple[str, dict[str, Any]], **kw: Any) -> RunConfig:
    made = [LaneConfig(*ln) if isinstance(ln, tuple) else LaneConfig(ln, {}) for ln in lanes]
    return RunConfig(lanes=tuple(made), device="cpu", **kw)


def peak_rss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


@pytest.fixture
def nothing_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every problem factory and dataset fails if called (signatures kept: option checks read them)."""
    real = sizes._factories()

    def failing(fn: Any) -> Any:
        @functools.wraps(fn)
        def build(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"{fn.__name__} was called: the refusal built the problem")
        return build

    monkeypatch.setattr(sizes, "_factories", lambda: {k: failing(f) for k, f in real.items()})
    for name in ("digits", "breast_cancer", "moons", "matrix_sensing"):
        monkeypatch.setattr(datasets, name, failing(getattr(datasets, name)))
    for name in ("sgd", "adam", "newton"):
        optimizer_cost(name)  # calibrated up front (a few tiny steps), so the RSS check sees only the refusal
    yield


HOSTILE = [  # problem, options, config, events, message (regex)
    ("quadratic", {"dim": 10**9}, config("sgd"), (),
     r"^this race needs ~[\d,.]+ (GB|TB) of memory \(limit 1 GB per session\): quadratic dim=1e9, 1 lane x 1 "
     r"start; most of it: trajectory snapshots"),
    ("digits_mlp", {"width": 20000, "depth": 3}, config("sgd"), (),
     r"needs ~[\d,.]+ TB of memory \(limit 1 GB per session\): digits_mlp width=20000 depth=3"),
    ("rosenbrock", {"dim": 10**8}, config("sgd", n_starts=64), (),
     r"needs ~[\d,.]+ GB of memory .*: rosenbrock dim=1e8, 1 lane x 64 starts; most of it: parameters, "
     r"gradients and working copies"),
    ("matrix_sensing", {"n": 3000}, config("sgd"), (),
     r"needs ~[56]\d GB of memory .*: matrix_sensing n=3000, 1 lane x 1 start; "
     r"most of it: problem data and setup"),
    ("digits_mlp", {}, config("sgd", probes=ProbeConfig(trace=True, trace_probes=10**9)), (),
     r"^probes: trace_probes=1,000,000,000 is over the limit of 1,000$"),
    ("digits_mlp", {}, config("sgd", probes=NETWORK_PROBES),
     (LoggedEvent(40, SetProbes({"trace": True, "trace_probes": 10**6})),),
     r"^event 0 \(set_probes at tick 40\): probes: trace_probes=1,000,000 is over the limit of 1,000$"),
    ("rosenbrock", {}, config("sgd", "momentum", "adam"),
     tuple(LoggedEvent(0, AddLane("sgd")) for _ in range(2003)),
     r"^event 5 \(add_lane at tick 0\): it makes 9 lanes; a race holds at most 8$"),
    ("rosenbrock", {}, config(*["sgd"] * 9), (), r"^a race holds at most 8 optimizers, got 9$"),
    ("rosenbrock", {}, config("sgd", n_starts=65), (), r"^a race has at most 64 starts, got 65$"),
    ("digits_mlp", {"batch_size": None}, config(("newton", {"cg_max_iter": 10_000})), (),
     r"^one step of this race needs ~[\d.]+e1[12] operations, ~\d+ s on this server \(limit ~500 ms\): "
     r"digits_mlp "
     r"batch_size=None, 1 lane x 1 start; most of it: optimizers' own evaluations"),
    ("digits_mlp_mse", {},
     config("sgd", probes=ProbeConfig(density=True, density_probes=20, density_steps=200)),
     (), r"^one curvature probe of this race needs ~[\d.]+e1[12] operations, ~\d+ (s|min) on this server "
     r"\(limit ~10 s\): digits_mlp_mse, 1 lane x 1 start$"),
    ("rosenbrock", {}, config("sgd"), tuple(LoggedEvent(i, SetHyperparameter(0, "lr", 1e-3))
                                            for i in range(DEFAULT_LIMITS.max_events + 1)),
     r"^the log has 20,001 events \(limit 20,000\)$"),
    ("rosenbrock", {}, config("sgd"), (LoggedEvent(10**12, SetHyperparameter(0, "lr", 1e-3)),),
     r"^the log has an event at tick 1,000,000,000,000 \(limit 10,000,000\)$"),
    ("expression", {"expression": "x + " * 200 + "y"}, config("sgd"), (),
     r"expression is too long \(801 > 500"),
]


@pytest.mark.parametrize(("problem", "options", "cfg", "events", "message"), HOSTILE,
                         ids=[f"{h[0]}-{i}" for i, h in enumerate(HOSTILE)])
def test_hostile_runs_are_refused_before_anything_is_built(nothing_built: None, problem: str,
                                                           options: dict, cfg: RunConfig, events: tuple,
                                                           message: str) -> None:
    before = peak_rss()
    with pytest.raises(ValueError, match=message):
        check_run(problem, options, cfg, events)
    assert peak_rss() - before < 50 * MB


def test_limit_errors_are_value_errors_naming_the_limit(nothing_built: None) -> None:
    with pytest.raises(LimitError) as info:
        check_run("quadratic", {"dim": 10**9}, config("sgd"))
    assert isinstance(info.value, ValueError) and "limit 1 GB per session" in str(info.value)


def test_replays_and_setups_have_budgets_of_their_own(nothing_built: None) -> None:
    with pytest.raises(LimitError, match=r"^replaying this race needs ~\d\.\de1\d operations, ~\d+ h on this "
                                         r"server \(limit ~5 min\): digits_mlp, 3 lanes x 1 start; "
                                         r"most of it: "
                                         r"10,000,000 steps$"):
        check_run("digits_mlp", {}, config("sgd", "momentum", "adam"), ticks=10_000_000)
    tight = Limits(setup_ops=1e6)
    with pytest.raises(LimitError, match=r"^building the problem of this race needs ~\de\d operations"):
        check_run("matrix_sensing", {}, config("sgd"), limits=tight)


def test_option_ranges_are_checked_after_the_budget(nothing_built: None) -> None:
    roomy = Limits(memory_bytes=10**15, step_ops=1e20, probe_ops=1e20, setup_ops=1e20)
    with pytest.raises(LimitError, match=r"^quadratic: dim=2e6 is over its limit of 1e6$"):
        check_run("quadratic", {"dim": 2 * 10**6}, config("sgd"), limits=roomy)
    with pytest.raises(ValueError, match=r"^quadratic: dim must be an int >= 1, got 2.5$"):
        check_run("quadratic", {"dim": 2.5}, config("sgd"))
    with pytest.raises(ValueError, match=r"landscape 'rosenbrock' does not take 'kappa'; it takes: dim"):
        check_run("rosenbrock", {"kappa": 3}, config("sgd"))
    with pytest.raises(ValueError, match=r"^unknown problem 'resnet'; known: quadratic, rosenbrock"):
        check_run("resnet", {}, config("sgd"))


def test_the_default_races_and_presets_fit() -> None:
    from engine.instruments import LANDSCAPE_PROBES

    assert check_run("rosenbrock", {}, config("sgd", "momentum", "adam", probes=LANDSCAPE_PROBES))
    eight = [*["sgd", "momentum", "adam", "adamw", "rmsprop", "lion", "signum", "nesterov"]]
    for problem in ("digits_mlp", "digits_mlp_mse", "digits_cnn", "moons_mlp", "logistic_regression",
                    "matrix_sensing"):
        check_run(problem, {}, config(*eight, probes=NETWORK_PROBES))
    # the app's widest settings on the network of the edge-of-stability preset
    widest = ProbeConfig(every=50, top_k=10, trace=True, density=True, tol=1e-4)
    check_run("digits_mlp_mse", {}, config("sgd", "momentum", "adam", probes=widest))
    check_run("quadratic", {"dim": 20, "kappa": 100.0}, config("sgd", "newton", "cbo", n_starts=64))
    check_run("digits_mlp", {"width": 1024}, config("sgd", "momentum", "adam"))  # the memory view's test


def test_removed_lanes_free_their_cap_but_keep_their_snapshots() -> None:
    events = [LoggedEvent(t, e) for t, e in [(1, AddLane("adam")), (2, RemoveLane(1)), (3, AddLane("sgd")),
                                            (4, RemoveLane(2)), (5, AddLane("lion"))]]
    est = estimate_run("quadratic", {"dim": 100}, config("sgd"), events)
    assert est.lanes == 2  # never more than two at once
    assert dict(est.memory)["trajectory snapshots"] == 4 * 401 * 100 * 8  # lanes 0-3 ever existed
    with pytest.raises(ValueError, match=r"^event 1 \(remove_lane at tick 2\): there is no lane 5 "
                                         r"\(the race then has lanes 0, 1\)$"):
        estimate_run("rosenbrock", {}, config("sgd"), [events[0], LoggedEvent(2, RemoveLane(5))])


def test_probe_settings_are_capped_field_by_field() -> None:
    assert check_probes({"top_k": 20, "trace": True}) == ProbeConfig(top_k=20, trace=True)
    for settings, message in [({"top_k": 21}, r"top_k=21 is over the limit of 20"),
                              ({"density_steps": 10**6}, r"density_steps=1,000,000 is over the limit of 200"),
                              ({"every": 10**9}, r"every=1,000,000,000 is over the limit of 1,000,000"),
                              ({"top_k": "3"}, r"top_k must be an integer, got '3'"),
                              ({"trace": 1}, r"trace must be true or false, got 1"),
                              ({"tol": float("nan")}, r"tol must be a finite number, got nan"),
                              ({"racing": 1}, r"unknown setting 'racing'; settings: schedule, every"),
                              ({"top_k": 0}, r"top_k must be an integer >= 1, got 0")]:
        with pytest.raises(ValueError, match=message):
            check_probes(settings)


# ------------------------------------------------------------------------------- optimizer costs


@pytest.mark.parametrize(("name", "hp", "state", "evaluations"), [
    ("sgd", {}, 0.0, 0.0),
    ("momentum", {}, 1000.0, 0.0),
    ("adam", {}, 2000.5, 0.0),  # m and v, and a step counter (4 bytes) per parameter tensor
    ("mfac", {"window": 32}, 32 * 1000 + 32 * 32, 0.0),  # a window of 32 gradients grows to its size
    ("cbo", {"n_particles": 100}, 100 * 1000, 100.0),  # a cloud of particles, each evaluated per step
    ("zo_sgd", {"q": 3}, 0.0, 6.0),  # 2q function values
    ("zo_cge", {"density": 1.0}, 0.0, 1001.0),  # every coordinate plus the base point
    ("newton", {"cg_max_iter": 50}, 0.0, 400.0),  # up to 50 HVPs (8 forwards each), capped at P = 1000
])
def test_optimizer_costs_are_measured_and_extrapolated(name: str, hp: dict, state: float,
                                                       evaluations: float) -> None:
    cost = optimizer_cost(name, hp)
    assert cost.state_floats(1000) == pytest.approx(state, rel=0.02, abs=1.0)
    assert cost.forward_evaluations(1000) == pytest.approx(evaluations, rel=0.05, abs=0.5)


# ------------------------------------------------------------------------- against measurements


def _built(name: str, options: dict) -> Any:
    return get_network(name, **options) if name in landscapes.available_networks() else \
        get_landscape(name, **options)


NETWORK_CASES = [("digits_mlp", {}), ("digits_mlp", {"width": 32, "depth": 3, "batch_size": None}),
                 ("digits_mlp_mse", {"classes": [1, 7]}), ("digits_cnn", {}), ("moons_mlp", {"width": 8}),
                 ("logistic_regression", {"batch_size": 16}), ("matrix_sensing", {"n": 12, "factor_rank": 3})]


@pytest.mark.parametrize(("name", "options"), NETWORK_CASES, ids=[f"{n}-{o}" for n, o in NETWORK_CASES])
def test_network_sizes_match_the_built_problems(name: str, options: dict) -> None:
    """Parameters exactly; flops of one loss evaluation between torch's matrix flops and 4x them
    (the rest counts elementwise work); saved activations and held data within a factor of 3."""
    from torch.utils.flop_counter import FlopCounterMode

    size = sizes.problem_size(name, options)
    problem = _built(name, options)
    assert size.params == problem.dim
    batch = problem.sample_batch(torch.Generator().manual_seed(0))
    n_batch = len(batch) if batch is not None else len(problem.X_train)
    assert size.batch == pytest.approx(n_batch, rel=0.05 if "classes" in options else 0)  # a subset: ~k/10
    x = problem.x0()[None].requires_grad_(True)
    counter = FlopCounterMode(display=False)
    with counter, SavedActivations(exclude=[x, problem.X_train]) as saved:  # the data itself is not extra
        problem.loss(x, batch).sum()
    flops = counter.get_total_flops()
    assert flops <= size.forward_flops() <= 4 * flops + 1e6
    assert saved.bytes / 3 <= size.activation_bytes() <= 3 * saved.bytes + 64_000
    held = tensor_bytes([problem.X_train, problem.y_train, problem.X_test, problem.y_test])
    assert held <= size.fixed_bytes <= 3 * held + 1 * MB


def run_peak(problem: str, options: dict, lanes: list[str], n_starts: int, steps: int) -> Any:
    """Subprocess target (engine.memory.measure_peak_subprocess): everything a run holds over
    ``steps`` steps (problem, run, snapshots), after warming up the kernels on a tiny run."""
    import landscapes as ls

    def build_and_run(name: str, opts: dict, n_steps: int) -> None:
        make = ls.get_network if name in ls.available_networks() else ls.get_landscape
        p = make(name, **opts)
        run = Run(p, config(*lanes, n_starts=n_starts, snapshot_every=1))
        run.run(n_steps, record_every=10**9)

    build_and_run("rosenbrock", {"dim": 4}, 3)  # warm up: kernels, optimizers, and scikit-learn's
    build_and_run("digits_mlp", {"width": 2}, 11)  # import (once per server, not per session)
    return lambda: build_and_run(problem, options, steps)


PEAK_CASES = [("digits_mlp", {"width": 256}, ["sgd", "momentum", "adam"], 1, 410),
              ("quadratic", {"dim": 20_000}, ["adam"], 4, 410),
              ("matrix_sensing", {"n": 60, "m": 300}, ["sgd"], 2, 5)]


@pytest.mark.parametrize(("problem", "options", "lanes", "n_starts", "steps"), PEAK_CASES,
                         ids=[c[0] for c in PEAK_CASES])
def test_memory_estimates_are_within_2x_of_measured_peaks(problem: str, options: dict, lanes: list[str],
                                                          n_starts: int, steps: int) -> None:
    """Peak RSS of a fresh subprocess building the problem and running it until its snapshots are
    full (401 per lane) against the estimate, within a factor of 2 either way (measured: 0.86-1.0)."""
    est = estimate_run(problem, options, config(*lanes, n_starts=n_starts))
    peak = measure_peak_subprocess("tests.engine.test_limits:run_peak", timeout=300, params={
        "problem": problem, "options": options, "lanes": lanes, "n_starts": n_starts, "steps": steps})
    assert est.memory_bytes / 2 <= peak.increase <= 2 * est.memory_bytes, (est.memory, peak.increase)


def test_a_built_problem_can_be_sized_directly() -> None:
    problem = get_network("moons_mlp")
    size = measure_problem_size(problem)
    assert isinstance(size, ProblemSize) and size.params == problem.dim == 354
    est = check_run(size, None, config("adam", n_starts=4))
    assert est.params == 354 and est.label == "moons_mlp, 1 lane x 4 starts"


# ------------------------------------------------------------------------ untrusted event logs


def _log() -> dict[str, Any]:
    run = Run(get_landscape("rosenbrock"), config(("sgd", {"lr": 1e-3}), "adam"))
    run.step()
    run.apply(SetHyperparameter(0, "lr", 2e-3))
    run.apply(AddLane("momentum"))
    run.step()
    run.apply(SetProbes({"every": 3}))
    return json.loads(json.dumps(run.event_log()))


def test_a_real_log_passes_and_round_trips() -> None:
    log = _log()
    checked = check_event_log(log)
    assert checked.problem == "rosenbrock" and checked.ticks == 2 and len(checked.events) == 3
    assert checked.config.to_dict() == log["config"]
    assert [e.to_dict() for e in checked.events] == log["events"]
    assert checked.estimate.lanes == 3


def _with(log: dict, **changes: Any) -> dict:
    return {**log, **changes}


BAD_LOGS = [  # how a log was spoiled, message (regex)
    (lambda g: _with(g, events=[{"tick": 0, "kind": "pause", "x": 1}]),
     r"^event 0 \(pause\): unknown field 'x'; it takes no fields$"),
    (lambda g: _with(g, events=[{"tick": 0, "kind": "set_hyperparameter", "lane": 99, "name": "lr",
                                 "value": .1}]),
     r"^event 0 \(set_hyperparameter at tick 0\): there is no lane 99 \(the race then has lanes 0, 1\)$"),
    (lambda g: _with(g, events=[{"tick": 0, "kind": "set_hyperparameter", "lane": 0, "name": "lr"}]),
     r"^event 0 \(set_hyperparameter\): 'value' is missing$"),
    (lambda g: _with(g, events=[{"tick": 0, "kind": "set_hyperparameter", "lane": [0], "name": "lr",
                                 "value": 1}]),
     r"^event 0 \(set_hyperparameter\): lane must be an integer, got \[0\]$"),
    (lambda g: _with(g, events=[{"tick": 0, "kind": "set_hyperparameter", "lane": 0, "name": "lr",
                                 "value": float("nan")}]),
     r"^event 0 \(set_hyperparameter at tick 0\): sgd: lr must be finite, got nan$"),
    (lambda g: _with(g, events=[{"tick": 0, "kind": "switch_optimizer", "lane": 1, "optimizer": "sophia_x"}]),
     r"^event 0 \(switch_optimizer at tick 0\): unknown optimizer 'sophia_x'"),
    (lambda g: _with(g, events=[{"tick": -1, "kind": "pause"}]),
     r"^event 0 \(pause\): tick must be >= 0, got -1$"),
    (lambda g: _with(g, events=[{"tick": 0, "kind": "race"}]), r"^event 0: unknown kind 'race'; kinds: "),
    (lambda g: _with(g, events=[3]), r"^event 0 must be an object with a tick and a kind, got 3$"),
    (lambda g: _with(g, events={"0": 1}), r"^the log's events must be a list"),
    (lambda g: _with(g, events=[{"tick": 0, "kind": "submit_ranking", "lane": 0,
                                 "order": list(range(5000))}]),
     r"^event 0 \(submit_ranking\): order has 5,000 entries \(limit 1,024\)$"),
    (lambda g: _with(g, config={**g["config"], "lanes": 3}),
     r"^the log's config: lanes must be a non-empty list of optimizers, got 3$"),
    (lambda g: _with(g, config={**g["config"],
                                "lanes": [{"optimizer": "adam", "hyperparameters": {"lr": "big"}}]}),
     r"^lane 0: adam: lr must be a number, got 'big'$"),
    (lambda g: _with(g, config={**g["config"], "lanes": [{"optimiser": "adam"}]}),
     r"^the log's config, lane 0: unknown field 'optimiser'; it takes optimizer, hyperparameters, "
     r"schedules, clip, batch_size$"),
    (lambda g: _with(g, config={**g["config"], "lanes": [{"optimizer": "sgd"}] * 2003}),
     r"^the log's config: a race holds at most 8 optimizers, got 2,003$"),
    (lambda g: _with(g, config={**g["config"], "n_starts": 10**6}),
     r"^the log's config: n_starts=1,000,000 is over the limit of 64$"),
    (lambda g: _with(g, config={**g["config"], "race": 1}),
     r"^the log's config: unknown field 'race'; it takes "),
    (lambda g: _with(g, config={**g["config"], "device": "cuda:7"}),
     r"^the log's config: device must be one of"),
    (lambda g: _with(g, config={**g["config"], "start": ["a", 1]}),
     r"^the log's config: start must be a list of finite numbers"),
    (lambda g: _with(g, config={**g["config"], "probes": {"trace_probes": 10**9}}),
     r"^the log's config: probes: trace_probes=1,000,000,000 is over the limit of 1,000$"),
    (lambda g: _with(g, config={**g["config"], "metrics_every": "often"}),
     r"^the log's config: metrics_every must be an integer, got 'often'$"),
    (lambda g: _with(g, problem="quadratic", options={"dim": 10**9}),
     r"^this log's race needs ~[\d,.]+ TB of memory \(limit 1 GB per session\): quadratic dim=1e9"),
    (lambda g: _with(g, ticks="many"), r"^the log: ticks must be an integer, got 'many'$"),
    (lambda g: {k: v for k, v in g.items() if k != "config"}, r"^not an event log: 'config' is missing$"),
]


@pytest.mark.parametrize(("spoil", "message"), BAD_LOGS, ids=[str(i) for i in range(len(BAD_LOGS))])
def test_spoiled_logs_are_refused_in_the_users_terms(spoil: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        check_event_log(spoil(_log()))
    text = str(info.value)
    for python in ("__init__", "object is not", "unexpected keyword", "Traceback", "NoneType", "link"):
        assert python not in text


def test_uploads_are_bounded_and_decoded_with_clear_messages() -> None:
    cases = [(b"{" + b" " * DEFAULT_LIMITS.upload_bytes + b"}", LimitError,
              r"^the file is 5\.0 MB; an event log may be at most 5 MB$"),
             (b"\xff\xfe", ValueError, r"^not an event log: the file is not UTF-8 text$"),
             (b'{"a": ', ValueError,
              r"^not an event log: invalid JSON at line 1, column 7 \(Expecting value\)$"),
             (b"[" * 100_000 + b"]" * 100_000, ValueError,
              r"^not an event log: the JSON is nested too deeply$"),
             (b"[]", ValueError, r"^not an event log: expected a JSON object, got a list$")]
    for data, kind, message in cases:
        with pytest.raises(kind, match=message):
            decode_upload(data)
    assert decode_upload(json.dumps(_log()).encode())["problem"] == "rosenbrock"


def test_parsers_build_what_from_dict_builds_for_valid_input() -> None:
    log = _log()
    assert parse_run_config(log["config"]) == RunConfig.from_dict(log["config"])
    for i, e in enumerate(log["events"]):
        assert parse_logged_event(e, i) == LoggedEvent.from_dict(e)


def test_a_logged_probe_config_with_its_optional_settings_unset_is_accepted() -> None:
    from engine.instruments import ProbeConfig

    config = ProbeConfig.economy().to_dict() | {"dtype": None}
    assert check_probes(config) == ProbeConfig(**config)
    with pytest.raises(ValueError, match="dtype must be a string"):
        check_probes(config | {"dtype": 3})
