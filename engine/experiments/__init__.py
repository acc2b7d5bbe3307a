"""Experiments: tuned, seeded, fair optimizer comparisons and basin maps, as batched runs on Dask.

One module per idea: :mod:`~engine.experiments.spec` (what to run), :mod:`~.search` (search
spaces), :mod:`~.budget` (oracle units), :mod:`~.problems` (named problems), :mod:`~.batching`
(configurations -> batched Runs), :mod:`~.executor` (Dask), :mod:`~.results` (the table and
``row_to_race``), :mod:`~.analysis` (sensitivity, tuned vs default, performance profiles),
:mod:`~.basins` (basin maps) and :mod:`~.cli`. Dask is imported only when an experiment runs.
"""

from engine.experiments.analysis import (
    performance_profile,
    profile_ratios,
    profile_score,
    sensitivity,
    times_to_target,
    tuned_vs_default,
)
from engine.experiments.basins import DIVERGED, NOT_CONVERGED, BasinChunk, BasinMap, basin_chunks, basin_map
from engine.experiments.batching import Task, plan, race_config, run_task
from engine.experiments.budget import OracleCosts
from engine.experiments.executor import ExperimentHandle, Progress, SchedulerError, run_experiment
from engine.experiments.problems import ProblemRef
from engine.experiments.results import ExperimentResult, row_to_race
from engine.experiments.search import Dimension
from engine.experiments.spec import Configuration, ExperimentSpec, OptimizerEntry, SpecError

__all__ = [
    "DIVERGED",
    "NOT_CONVERGED",
    "BasinChunk",
    "BasinMap",
    "Configuration",
    "Dimension",
    "ExperimentHandle",
    "ExperimentResult",
    "ExperimentSpec",
    "OptimizerEntry",
    "OracleCosts",
    "ProblemRef",
    "Progress",
    "SchedulerError",
    "SpecError",
    "Task",
    "basin_chunks",
    "basin_map",
    "performance_profile",
    "plan",
    "profile_ratios",
    "profile_score",
    "race_config",
    "row_to_race",
    "run_experiment",
    "run_task",
    "sensitivity",
    "times_to_target",
    "tuned_vs_default",
]
