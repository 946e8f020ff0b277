"""``optlab compare``: train tasks with several optimizers, tabulate, plot, score.

:func:`compare` is the whole command as a function (the CLI only parses arguments into a
:class:`~optlab.bench.config.CompareConfig`, which checks them). Every task's data is loaded and
every optimizer built before any training starts, so bad input raises
:class:`~optlab.bench.config.BenchError` early (the CLI prints its one-line message and exits
with status 2). ``optlab compare --sweep`` is :func:`optlab.bench.sweep.sweep`.

Outputs, in ``config.out`` (default ``runs/compare``):

* ``results.json``: the configuration, the environment, and for every task and optimizer the
  hyperparameters and where they came from, every step's training loss, every evaluation
  (step, epoch, test accuracy and loss, mean training loss, training clock and wall clock),
  the summary metrics, and with several tasks the performance profiles and scores
  (:mod:`optlab.bench.profiles`, each task measured by its ``profile_by``: seconds or steps to
  target), plus the full reference of every work the text cites;
* ``<task>_test_acc_vs_epoch.png``, ``<task>_test_acc_vs_time.png``, ``<task>_train_loss.png``;
* ``performance_profiles.png`` with several tasks.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from optlab.bench import config as cfg
from optlab.bench import references, registry, report, runner
from optlab.bench.config import BenchError, CompareConfig, parse_hparams
from optlab.bench.profiles import performance_profiles
from optlab.bench.registry import BuiltOptimizer
from optlab.bench.tasks import Task, get_task, task_summary

__all__ = ["BenchError", "CompareConfig", "PreparedTask", "compare", "parse_hparams", "prepare"]


@dataclasses.dataclass(frozen=True)
class PreparedTask:
    """One task ready to run: its data, budget and built optimizers."""

    task: Task
    ds: Any
    settings: runner.RunSettings
    optimizers: tuple[BuiltOptimizer, ...]


def prepare(config: CompareConfig) -> tuple[list[PreparedTask], Path]:
    """Load every task's data and build every optimizer; check the output directory.

    Raises:
        BenchError: missing data, a batch larger than a data set, a value a factory rejects,
            an unwritable output directory.
    """
    out = cfg.check_out_dir(config.out)
    prepared = []
    for name in config.tasks:
        task = get_task(name)
        ds = cfg.load_data(task, config)
        settings = cfg.run_settings(task, ds, config)
        built = tuple(
            cfg.build(task, ds, settings, opt, config.hparams.get(opt, {}))
            for opt in config.optimizers
        )
        prepared.append(PreparedTask(task, ds, settings, built))
    return prepared, out


def compare(config: CompareConfig, stream: TextIO | None = None) -> dict[str, Any]:
    """Run ``optlab compare``; print tables to ``stream`` and write results to ``config.out``.

    Returns:
        The ``results.json`` payload (with ``inf`` where JSON has ``null``).

    Raises:
        BenchError: bad input (raised before any training).
    """
    stream = sys.stdout if stream is None else stream
    prepared, out = prepare(config)
    t_start = time.perf_counter()
    payload: dict[str, Any] = {
        "config": {
            "tasks": [p.task.name for p in prepared],
            "optimizers": list(config.optimizers),
            "epochs": config.epochs,
            "steps": config.steps,
            "batch_size": config.batch_size,
            "seed": config.seed,
            "target": config.target,
            "hparams_overrides": {k: dict(v) for k, v in config.hparams.items()},
            "schedule": config.schedule,
            "data_dir": None if config.data_dir is None else str(config.data_dir),
        },
        "environment": report.environment(),
        "tasks": {},
        "profiles": None,
        "plots": [],
        "references": {},
    }
    all_results: dict[str, list[runner.RunResult]] = {}
    for p in prepared:
        results = runner.run_task(p.task, p.ds, p.optimizers, p.settings, quiet=config.quiet)
        all_results[p.task.name] = results
        print("\n" + report.settings_line(p.task, p.ds, p.settings), file=stream)
        print(report.format_table(results, p.task.profile_by), file=stream)
        payload["tasks"][p.task.name] = {
            "task": task_summary(p.task),
            "settings": dataclasses.asdict(p.settings),
            "steps_per_epoch": runner.steps_per_epoch(p.ds, p.settings.batch_size),
            "hparam_sources": {
                r.optimizer: registry.hparam_source(r.optimizer, p.task.name) for r in results
            },
            "runs": [r.to_dict() for r in results],
        }
        if config.plots:
            payload["plots"] += report.plot_task(out, p.task, results)
        _cite(payload)
        report.write_json(out / "results.json", payload)  # after every task: partial results

    if len(prepared) > 1:
        measures = {p.task.name: p.task.profile_by for p in prepared}
        times = {
            name: {
                t: next(r for r in rs if r.optimizer == name).time_to_target(measures[t])
                for t, rs in all_results.items()
            }
            for name in config.optimizers
        }
        profiles = performance_profiles(times, [p.task.name for p in prepared])
        payload["profiles"] = {**profiles.to_dict(), "measures": measures}
        print("\n" + report.format_scores(profiles, measures), file=stream)
        if config.plots:
            from optlab.bench import plots

            plots.plot_profiles(profiles, out / "performance_profiles.png")
            payload["plots"].append("performance_profiles.png")
    payload["total_wall_s"] = time.perf_counter() - t_start
    report.write_json(out / "results.json", payload)
    print(
        f"\nresults: {out / 'results.json'}; plots: {', '.join(payload['plots']) or 'none'}",
        file=stream,
    )
    return payload


def _cite(payload: dict[str, Any]) -> None:
    """Set ``payload["references"]``: the full reference of every work its text cites."""
    texts = []
    for entry in payload["tasks"].values():
        texts.append(entry["task"]["description"])
        texts.extend(entry["hparam_sources"].values())
    payload["references"] = references.cited_in(texts)
