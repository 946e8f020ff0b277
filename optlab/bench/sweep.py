"""``optlab compare --sweep``: the quick hyperparameter sweep behind the registry's defaults.

For every task and optimizer, :func:`sweep` trains once per grid point
(:data:`optlab.bench.registry.SWEEP_GRIDS`, or the lists given as ``--hp opt.key=v1,v2``;
scalar ``--hp`` values stay fixed) with the task's budget and one seed, and :func:`choose`
picks a point:

1. unstable runs (diverged, or ending more than :data:`SWEEP_UNSTABLE` below their own best
   test accuracy) are set aside unless every run is unstable: a default should not collapse
   at the end of the budget;
2. among the rest, the highest :func:`sweep_criterion` (mean test accuracy over the run's
   evaluations: the area under accuracy-vs-epoch, which rewards a high accuracy early and
   kept) wins; points within :data:`SWEEP_TIE` of it are tied (a 359-image test set resolves
   about 0.3%);
3. ties go to the lowest :func:`final_train_loss`, so that where accuracy cannot separate the
   points (the convex logistic task, whose accuracy depends only on the direction of w) the
   better optimizer of the objective is chosen.

The :class:`Choice` also flags what makes a choice provisional: a value at the edge of its
grid (the best may lie outside: widen the grid) and a grid in which no value reaches the
target. Both are printed and written to ``sweep.json`` in ``config.out``.
"""

from __future__ import annotations

import itertools
import math
import numbers
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, TextIO

import numpy as np

from optlab.bench import config as cfg
from optlab.bench import registry, report, runner
from optlab.bench.config import CompareConfig
from optlab.bench.tasks import get_task

SWEEP_TIE = 0.005
"""Grid points whose criterion is within this of the best count as tied (test-set noise)."""

SWEEP_UNSTABLE = 0.02
"""A run that ends more than this below its own best test accuracy is unstable."""

EDGE_NOTE = "chosen at the edge of its grid"
NO_TARGET_NOTE = "no value reaches the target"


def sweep_criterion(result: runner.RunResult) -> float:
    """Mean test accuracy over a run's evaluations; ``-inf`` for a diverged run."""
    accs = [e["test_acc"] for e in result.evals]
    return float(np.mean(accs)) if accs and not result.diverged else -math.inf


def final_train_loss(result: runner.RunResult) -> float:
    """Mean training loss over the run's last epoch of steps; ``inf`` for a diverged run."""
    if result.diverged or not result.evals or not result.step_loss:
        return math.inf
    last = result.evals[-1]
    per_epoch = max(1, round(last["step"] / last["epoch"]))
    return float(np.mean(result.step_loss[-per_epoch:]))


class Choice(NamedTuple):
    """The sweep's pick among the runs of one grid (see the module docstring).

    Attributes:
        index: the chosen grid point.
        tied: the points within :data:`SWEEP_TIE` of the best criterion (``index`` among
            them); the tie went to the lowest final training loss.
        unstable: the points set aside as unstable (empty if every run was unstable).
        at_edge: the grid keys whose chosen value is the smallest or the largest of the grid
            (numeric keys with at least two values): the best value may lie beyond.
        reached_target: whether any grid point reached the test-accuracy target.
    """

    index: int
    tied: tuple[int, ...]
    unstable: tuple[int, ...]
    at_edge: tuple[str, ...]
    reached_target: bool

    @property
    def notes(self) -> list[str]:
        """The flags in words (empty when the choice is not provisional)."""
        notes = []
        if self.at_edge:
            notes.append(f"{EDGE_NOTE} ({', '.join(self.at_edge)})")
        if not self.reached_target:
            notes.append(NO_TARGET_NOTE)
        return notes


def grid_edges(points: Sequence[Mapping[str, Any]], index: int) -> tuple[str, ...]:
    """The keys whose value at ``points[index]`` is the smallest or largest of the grid.

    Only numeric keys (``bool`` excluded) with at least two distinct values count: a string
    or a single value has no edge to widen.
    """
    if not points:
        return ()
    edges = []
    for key, chosen in points[index].items():
        values = [p[key] for p in points if key in p]
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
            continue
        if len(set(values)) >= 2 and chosen in (min(values), max(values)):
            edges.append(key)
    return tuple(edges)


def choose(
    results: Sequence[runner.RunResult], points: Sequence[Mapping[str, Any]] | None = None
) -> Choice:
    """The sweep's choice among ``results``, one per grid point of ``points``.

    Args:
        results: the runs, in grid order.
        points: the grid points (``{key: value}``), for the edge-of-grid flag; ``None``: no
            edge detection.

    Raises:
        ValueError: no results, or ``points`` of another length.
    """
    if not results:
        raise ValueError("choose needs at least one run")
    if points is not None and len(points) != len(results):
        raise ValueError(f"{len(points)} grid points for {len(results)} runs")
    unstable = tuple(
        i
        for i, r in enumerate(results)
        if r.diverged or not r.final_acc >= r.best_acc - SWEEP_UNSTABLE
    )
    pool = [i for i in range(len(results)) if i not in unstable] or list(range(len(results)))
    crit = {i: sweep_criterion(results[i]) for i in pool}
    best = max(crit.values())
    tied = tuple(i for i in pool if crit[i] >= best - SWEEP_TIE)
    index = min(tied, key=lambda i: (final_train_loss(results[i]), -crit[i]))
    return Choice(
        index=index,
        tied=tied,
        unstable=unstable if len(unstable) < len(results) else (),
        at_edge=grid_edges(points, index) if points is not None else (),
        reached_target=any(r.steps_to_target is not None for r in results),
    )


def grid(name: str, overrides: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fixed overrides and the grid points for optimizer ``name``.

    List values of ``overrides`` are the grid (their product); without any, the registry's
    :data:`~optlab.bench.registry.SWEEP_GRIDS` entry; without that, one point (the defaults).
    """
    fixed = {k: v for k, v in overrides.items() if not isinstance(v, list)}
    lists = {k: v for k, v in overrides.items() if isinstance(v, list)}
    if not lists:
        lists = {k: list(v) for k, v in registry.SWEEP_GRIDS.get(name, {}).items()}
    if not lists:
        return fixed, [{}]
    keys = list(lists)
    return fixed, [dict(zip(keys, combo)) for combo in itertools.product(*lists.values())]


def _label(point: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in point.items()) or "defaults"


def _train(task, ds, built, settings, label: str, quiet: bool) -> runner.RunResult:
    bar = None
    if not quiet:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=runner.total_steps(ds, settings),
            desc=f"{built.name} {label}",
            unit="step",
            leave=False,
            dynamic_ncols=True,
        )
    try:
        return runner.train_one(task, ds, built, settings, progress=bar)
    finally:
        if bar is not None:
            bar.close()


def format_sweep(name: str, points: Sequence[Mapping[str, Any]], results, choice: Choice) -> str:
    """One optimizer's grid: a line per point, ``*`` on the choice, then the flags."""
    lines = [f"\n{name}:"]
    for i, (point, r) in enumerate(zip(points, results)):
        mark = "*" if i == choice.index else " "
        lines.append(
            f" {mark} {_label(point):28s} mean acc {report.fmt(sweep_criterion(r), '.4f')}  "
            f"final {report.fmt(r.final_acc, '.4f')}  best {report.fmt(r.best_acc, '.4f')}  "
            f"last train loss {report.fmt(final_train_loss(r), '.4f')}  "
            f"steps to target {r.steps_to_target or '-'}"
        )
    lines.extend(f"   note: {note}" for note in choice.notes)
    return "\n".join(lines)


def sweep(config: CompareConfig, stream: TextIO | None = None) -> dict[str, Any]:
    """``optlab compare --sweep``: a quick grid over each optimizer's hyperparameters.

    Prints a table per task and optimizer and writes ``sweep.json`` to ``config.out``; see the
    module docstring for the grids and the rule.

    Returns:
        The ``sweep.json`` payload.

    Raises:
        BenchError: bad input (raised before any training of the task).
    """
    stream = sys.stdout if stream is None else stream
    out = cfg.check_out_dir(config.out)
    payload: dict[str, Any] = {
        "config": {
            "seed": config.seed,
            "epochs": config.epochs,
            "steps": config.steps,
            "batch_size": config.batch_size,
            "schedule": config.schedule,
        },
        "criterion": "mean test accuracy over the run's evaluations, "
        f"among runs ending within {SWEEP_UNSTABLE} of their best; "
        f"ties within {SWEEP_TIE} broken by the final training loss",
        "tasks": {},
    }
    for task_name in config.tasks:
        task = get_task(task_name)
        ds = cfg.load_data(task, config)
        settings = cfg.run_settings(task, ds, config)
        # Build every grid point first: bad input fails before any training.
        jobs = {}
        for name in config.optimizers:
            fixed, points = grid(name, config.hparams.get(name, {}))
            jobs[name] = [
                (point, cfg.build(task, ds, settings, name, {**fixed, **point})) for point in points
            ]
        print("\n" + report.settings_line(task, ds, settings), file=stream)
        task_payload = {}
        for name, entries in jobs.items():
            points = [point for point, _ in entries]
            results = [
                _train(task, ds, built, settings, _label(point), config.quiet)
                for point, built in entries
            ]
            choice = choose(results, points)
            print(format_sweep(name, points, results, choice), file=stream, flush=True)
            task_payload[name] = {
                "chosen": points[choice.index],
                "tied": [points[i] for i in choice.tied],
                "unstable": [points[i] for i in choice.unstable],
                "at_edge": list(choice.at_edge),
                "reached_target": choice.reached_target,
                "notes": choice.notes,
                "runs": [
                    {
                        "point": p,
                        "criterion": sweep_criterion(r),
                        "final_acc": r.final_acc,
                        "final_train_loss": final_train_loss(r),
                        "best_acc": r.best_acc,
                        "steps_to_target": r.steps_to_target,
                        "mean_step_ms": r.mean_step_ms,
                        "hparams": runner.jsonable(r.hparams),
                        "test_acc": [e["test_acc"] for e in r.evals],
                    }
                    for p, r in zip(points, results)
                ],
            }
        payload["tasks"][task_name] = task_payload
        report.write_json(out / "sweep.json", payload)
        print(
            "\nchosen (* above): "
            + "; ".join(f"{n}: {_label(tp['chosen'])}" for n, tp in task_payload.items()),
            file=stream,
        )
    print(f"\nsweep results: {out / 'sweep.json'}", file=stream)
    return payload
