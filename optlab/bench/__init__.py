"""The comparison harness behind ``optlab compare``.

* :mod:`~optlab.bench.config`: :class:`CompareConfig`, ``--hp`` parsing and every input check
  (the CLI, the harness and the registry all use it);
* :mod:`~optlab.bench.registry`: optimizers by name (sgd, momentum, adam, adamw, lion, sam,
  shampoo, muon, or any ``module:factory``), built into a :class:`BuiltOptimizer`, and their
  per-task default hyperparameters;
* :mod:`~optlab.bench.tasks`: workloads (data + model + loss + accuracy + budget + target, and
  whether time to target is measured in seconds or steps);
* :mod:`~optlab.bench.runner`: the jitted Flax NNX training loop, timing and curves;
* :mod:`~optlab.bench.harness`: the command itself (:func:`compare`);
* :mod:`~optlab.bench.sweep`: ``optlab compare --sweep`` (:func:`sweep`, :func:`choose`);
* :mod:`~optlab.bench.report`: tables, the ``--list`` text, JSON;
* :mod:`~optlab.bench.profiles`: AlgoPerf performance profiles and scores;
* :mod:`~optlab.bench.plots`: PNG plots;
* :mod:`~optlab.bench.references`: the works cited, in full.

Example::

    from optlab.bench import CompareConfig, compare
    compare(CompareConfig(tasks=("logistic",), optimizers=("sgd", "adam"), epochs=5))
"""

from optlab.bench.config import BenchError, CompareConfig, parse_hparams
from optlab.bench.harness import compare
from optlab.bench.profiles import Profiles, performance_profiles, performance_ratios
from optlab.bench.references import REFERENCES, Reference
from optlab.bench.registry import (
    OPTIMIZERS,
    TASK_DEFAULTS,
    BuiltOptimizer,
    OptimizerSpec,
    build_optimizer,
    default_hparams,
    resolve_optimizer,
)
from optlab.bench.runner import RunResult, RunSettings, run_task, train_one
from optlab.bench.sweep import Choice, choose, sweep
from optlab.bench.tasks import DEFAULT_TASK, TASKS, Task, get_task

__all__ = [
    "DEFAULT_TASK",
    "OPTIMIZERS",
    "REFERENCES",
    "TASKS",
    "TASK_DEFAULTS",
    "BenchError",
    "BuiltOptimizer",
    "Choice",
    "CompareConfig",
    "OptimizerSpec",
    "Profiles",
    "Reference",
    "RunResult",
    "RunSettings",
    "Task",
    "build_optimizer",
    "choose",
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
