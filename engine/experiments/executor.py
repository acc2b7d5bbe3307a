"""Run an experiment on ``dask.distributed``: a local cluster by default, any cluster by address.

No scheduler, queue or pool of our own: each :class:`engine.experiments.batching.Task` is one Dask
task. Its problem travels with it as a reference (built once per worker process from its name and
options; a live Python object goes by value), so no problem object ever moves between workers and
a rerun task rebuilds what it needs. Results stream back with ``distributed.as_completed``; a worker
that dies has its tasks rerun by Dask (its ``allowed_failures``); rows are collected by task key,
so a rerun task can never add a row twice, and the result says whether every trial is there
(``metadata["complete"]``).

* ``scheduler=None``: a ``LocalCluster`` of ``n_workers`` processes with one thread each
  (torch set to one intra-op thread in every worker by a WorkerPlugin, so workers do not fight
  over cores), started and closed here.
* ``scheduler="tcp://host:8786"``: connect to an existing cluster (within ``connect_timeout``
  seconds, else a clear error before any work); its workers need this project importable.
* ``client=``: use an open ``distributed.Client`` (a notebook's, a test's).

Progress goes to ``progress(Progress)`` after every finished task; ``cancel`` (a
``threading.Event``) cancels the futures still pending and returns what finished. Nothing that
finished is lost: ``resume=`` takes an earlier (partial) result of the same spec and runs only
the tasks whose trials it lacks.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engine.experiments.batching import Task, TaskResult, expected_keys, plan, run_task
from engine.experiments.problems import ProblemRef, merged, resolve
from engine.experiments.results import KEY_COLUMNS, ExperimentResult, frame_from_rows, timestamp
from engine.experiments.spec import ExperimentSpec, SpecError


class SchedulerError(RuntimeError):
    """The Dask scheduler could not be reached (or a cluster could not be started)."""


@dataclass(frozen=True)
class Progress:
    """Where an experiment stands after a task finished."""

    tasks_done: int
    tasks_total: int
    trials_done: int
    trials_total: int
    elapsed: float
    last: str  # the key of the task that just finished ("" at the start)

    @property
    def fraction(self) -> float:
        return self.trials_done / self.trials_total if self.trials_total else 1.0


def _one_thread_plugin() -> Any:
    from distributed import WorkerPlugin

    class OneTorchThread(WorkerPlugin):
        """torch.set_num_threads(1) in each worker process (one Dask thread per process)."""

        name = "optiscope-one-torch-thread"

        def setup(self, worker: Any) -> None:
            torch.set_num_threads(1)

    return OneTorchThread()


_BUILT: dict[str, Any] = {}
"""Problems built on this worker process, by name, options and catalogs (a task never ships them)."""


def _work(task: Task, ref: ProblemRef, catalogs: Sequence[str] | None) -> TaskResult:
    """One task on a worker: its problem (a live object travels with the task; a named one is built
    here once per process), then the batched program."""
    if ref.problem is not None:
        return run_task(task, ref.problem)
    key = json.dumps([ref.name, dict(ref.options), list(catalogs or [])], sort_keys=True, default=str)
    if key not in _BUILT:
        _BUILT[key] = resolve(ref, merged(catalogs))
    return run_task(task, _BUILT[key])


def connect(scheduler: str | None, *, n_workers: int = 2, connect_timeout: float = 5.0) -> tuple[Any, Any]:
    """``(client, cluster)``: a new LocalCluster (cluster is not None: close it) or a client of the
    scheduler at ``scheduler``. Raises :class:`SchedulerError` with a clear message."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler is None:
        if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
            raise SpecError(f"n_workers must be an integer >= 1, got {n_workers!r}")
        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
        )
        client = Client(cluster)
        client.register_plugin(_one_thread_plugin())
        return client, cluster
    if "://" not in scheduler:
        raise SchedulerError(f"a scheduler address looks like tcp://host:8786, got {scheduler!r}")
    try:
        with dask.config.set({"distributed.comm.timeouts.connect": f"{connect_timeout}s"}):
            client = Client(scheduler, timeout=connect_timeout)
    except (OSError, TimeoutError) as exc:
        raise SchedulerError(
            f"no Dask scheduler answered at {scheduler} within {connect_timeout:g} s "
            f"({type(exc).__name__}); start one with `dask scheduler` or drop --scheduler "
            f"to run on a local cluster"
        ) from None
    return client, None


def run_experiment(
    spec: ExperimentSpec,
    *,
    scheduler: str | None = None,
    client: Any = None,
    n_workers: int = 2,
    catalogs: Sequence[str] | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    resume: ExperimentResult | None = None,
    on_result: Callable[[TaskResult], None] | None = None,
    connect_timeout: float = 5.0,
    min_tasks: int | None = None,
) -> ExperimentResult:
    """Validate ``spec``, run it on Dask and return the table (see the module docstring).

    ``min_tasks`` (default: twice the workers) splits configurations into more chunks when there
    are fewer tasks than that, so every worker has work. A resumed run splits as the run it resumes
    did (its ``metadata["min_tasks"]``), so a cluster that shrank or grew in between still runs only
    the tasks that did not finish. ``on_result`` sees each task's rows as
    they arrive (a view drawing as the table fills)."""
    problems = spec.validate(catalogs)  # every bad input raises here, before any work
    catalogs = list(catalogs) if catalogs else None
    own = client is None
    cluster = None
    if own:
        client, cluster = connect(scheduler, n_workers=n_workers, connect_timeout=connect_timeout)
    try:
        if min_tasks is None and resume is not None:
            min_tasks = resume.metadata.get("min_tasks")
        if min_tasks is None:
            min_tasks = 2 * max(1, len(client.scheduler_info().get("workers", {})))
        tasks = plan(spec, problems, min_tasks=min_tasks)
        result = _execute(spec, tasks, client, catalogs, progress, cancel, resume, on_result)
        result.metadata["min_tasks"] = min_tasks
        return result
    finally:
        if own:
            client.close()
            if cluster is not None:
                cluster.close()


def _execute(
    spec: ExperimentSpec,
    tasks: list[Task],
    client: Any,
    catalogs: list[str] | None,
    progress: Callable[[Progress], None] | None,
    cancel: threading.Event | None,
    resume: ExperimentResult | None,
    on_result: Callable[[TaskResult], None] | None,
) -> ExperimentResult:
    from distributed import as_completed

    t0 = time.perf_counter()
    wanted = expected_keys(tasks)
    rows_by_task: dict[str, list[dict[str, Any]]] = {}
    if resume is not None:
        if resume.spec.to_dict() != spec.to_dict():
            raise SpecError("the results to resume are of a different experiment spec")
        have = {tuple(r) for r in resume.frame[list(KEY_COLUMNS)].itertuples(index=False, name=None)}
        kept = resume.frame.to_dict("records")
        for task in tasks:
            if expected_keys([task]) <= have:
                rows_by_task[task.key] = [
                    r
                    for r in kept
                    if (r["problem"], r["entry"]) == (task.problem, task.entry)
                    and r["seed"] in task.seeds
                    and any(r["config"] == c.index for c in task.configs)
                ]
    todo = [t for t in tasks if t.key not in rows_by_task]
    trials_total = len(wanted)
    done_trials = sum(len(v) for v in rows_by_task.values())

    def report(last: str) -> None:
        if progress is not None:
            progress(
                Progress(
                    len(rows_by_task), len(tasks), done_trials, trials_total, time.perf_counter() - t0, last
                )
            )

    report("")
    run_id = uuid.uuid4().hex[:8]
    refs = {ref.name: ref for ref in spec.problems}
    futures = {
        client.submit(_work, t, refs[t.problem], catalogs, pure=False, key=f"task-{t.key}-{run_id}"): t
        for t in todo
    }
    errors: dict[str, str] = {}
    devices: set[str] = set()
    cancelled = False
    watcher = None
    if cancel is not None:

        def watch() -> None:
            while not cancel.wait(0.05):
                if all(f.done() for f in futures):
                    return
            client.cancel(list(futures))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
    try:
        arriving = as_completed(list(futures))
        for fut in arriving:
            task = futures[fut]
            if fut.status == "cancelled" or (cancel is not None and cancel.is_set()):
                cancelled = True
                if fut.status != "finished":
                    continue
            if fut.status == "error":
                exc = fut.exception()
                errors[task.key] = f"{type(exc).__name__}: {exc}"
                continue
            if fut.status != "finished":
                # Finished, then its worker died before we fetched the rows: the scheduler reruns it
                # ("lost" or "pending" now). Wait for it again; skipping it lost 48 of 160 rows.
                arriving.add(fut)
                continue
            res: TaskResult = fut.result()
            if res.key in rows_by_task:  # never add a task's rows twice
                continue
            rows_by_task[res.key] = res.rows
            devices.add(res.device)
            done_trials += len(res.rows)
            if on_result is not None:
                on_result(res)
            report(res.key)
    except KeyboardInterrupt:
        client.cancel(list(futures))
        cancelled = True
    finally:
        client.cancel([f for f in futures if not f.done()])
    frame = frame_from_rows([r for rows in rows_by_task.values() for r in rows])
    got = (
        [tuple(r) for r in frame[list(KEY_COLUMNS)].itertuples(index=False, name=None)] if len(frame) else []
    )
    duplicated = len(got) - len(set(got))
    missing = len(wanted - set(got))
    if errors:
        warnings.warn(
            f"{len(errors)} task(s) failed; their trials are missing: "
            + "; ".join(f"{k}: {v}" for k, v in list(errors.items())[:3]),
            stacklevel=2,
        )
    meta = {
        "complete": missing == 0 and duplicated == 0,
        "missing": missing,
        "duplicated": duplicated,
        "cancelled": cancelled,
        "errors": errors,
        "tasks": len(tasks),
        "trials": trials_total,
        "devices": sorted(devices),
        "versions": _versions(),
        "finished": timestamp(),
        "seconds": time.perf_counter() - t0,
    }
    if len(frame):
        frame["versions"] = _json(meta["versions"])
    return ExperimentResult(spec, frame, meta)


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    from engine.export import package_versions

    out = package_versions()
    for dist in ("dask", "distributed"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


class ExperimentHandle:
    """An experiment running on a background thread (for a UI): ``progress`` is the latest
    :class:`Progress`, ``cancel()`` stops it, ``result()`` waits for the table."""

    def __init__(self, spec: ExperimentSpec, **kwargs: Any) -> None:
        self.spec = spec
        self.progress: Progress | None = None
        self._cancel = threading.Event()
        self._result: ExperimentResult | None = None
        self._error: BaseException | None = None
        user_progress = kwargs.pop("progress", None)

        def on_progress(p: Progress) -> None:
            self.progress = p
            if user_progress is not None:
                user_progress(p)

        def target() -> None:
            try:
                self._result = run_experiment(spec, progress=on_progress, cancel=self._cancel, **kwargs)
            except BaseException as exc:  # handed to result()
                self._error = exc

        spec.validate(kwargs.get("catalogs"))  # bad input raises here, in the caller's thread
        self._thread = threading.Thread(target=target, name="optiscope-experiment", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        self._cancel.set()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float | None = None) -> ExperimentResult:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the experiment is still running after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result
