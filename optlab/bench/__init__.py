"""The comparison harness behind ``optlab compare``.

* :mod:`~optlab.bench.registry`: optimizers by name (sgd, momentum, adam, adamw, lion, sam,
  shampoo, muon, or any ``module:factory``) and their per-task default hyperparameters;
* :mod:`~optlab.bench.tasks`: workloads (data + model + loss + accuracy + budget + target);
* :mod:`~optlab.bench.runner`: the jitted Flax NNX training loop, timing and curves;
* :mod:`~optlab.bench.profiles`: AlgoPerf performance profiles and scores;
* :mod:`~optlab.bench.plots`: PNG plots;
* :mod:`~optlab.bench.harness`: the command itself (:func:`compare`, :func:`sweep`).

Example::

    from optlab.bench import CompareConfig, compare
    compare(CompareConfig(tasks=("logistic",), optimizers=("sgd", "adam"), epochs=5))
"""

from optlab.bench.harness import BenchError, CompareConfig, compare, parse_hparams, sweep
from optlab.bench.profiles import Profiles, performance_profiles, performance_ratios
from optlab.bench.registry import (
    OPTIMIZERS,
    TASK_DEFAULTS,
    OptimizerSpec,
    build_optimizer,
    default_hparams,
    resolve_optimizer,
)
from optlab.bench.runner import RunResult, RunSettings, run_task, train_one
from optlab.bench.tasks import DEFAULT_TASK, TASKS, Task, get_task

__all__ = [
    "DEFAULT_TASK",
    "OPTIMIZERS",
    "TASKS",
    "TASK_DEFAULTS",
    "BenchError",
    "CompareConfig",
    "OptimizerSpec",
    "Profiles",
    "RunResult",
    "RunSettings",
    "Task",
    "build_optimizer",
    "compare",
    "default_hparams",
    "get_task",
    "parse_hparams",
    "performance_profiles",
    "performance_ratios",
    "resolve_optimizer",
    "run_task",
    "sweep",
    "train_one",
]
