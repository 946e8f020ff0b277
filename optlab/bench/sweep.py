"""``optlab compare --sweep``: the tuning behind the registry's defaults, the same for everyone.

AlgoPerf's external-tuning rules (Dahl et al., "Benchmarking Neural Network Training
Algorithms", 2023): every optimizer gets the same number of trials
(:data:`~optlab.bench.registry.SWEEP_TRIALS`, 8) per task, drawn quasi-randomly from its own
documented search space (:data:`~optlab.bench.registry.SEARCH_SPACES`: a log-uniform range
per hyperparameter, the same for every task). The points are a scrambled Halton sequence
(:func:`halton`, seed 0: reproducible) mapped onto the ranges and rounded to two significant
digits (:func:`search_points`). ``--hp opt.key=LOW:HIGH`` replaces one range, a scalar
``--hp`` fixes a value, and ``--hp opt.key=v1,v2`` sweeps an explicit grid instead (their
product, all of it).

Every point trains once with the task's budget and one seed, and :func:`choose` picks one:

1. unstable runs (diverged, or ending more than :data:`SWEEP_UNSTABLE` below their own best
   test accuracy) are set aside unless every run is unstable: a default should not collapse
   at the end of the budget;
2. among the rest, the highest :func:`sweep_criterion` (mean test accuracy over the run's
   evaluations: the area under accuracy-vs-epoch, which rewards a high accuracy early and
   kept) wins; points within :data:`SWEEP_TIE` of it are tied (a 359-image test set resolves
   about 0.3%);
3. ties go to the lowest :func:`final_train_loss`, so that where accuracy cannot separate the
   points (the convex logistic task, whose accuracy depends only on the direction of w) the
   better optimizer of the objective is chosen; losses within :data:`SWEEP_LOSS_TIE` of the
   lowest count as equal and go to the highest criterion (runs that all fit the training set
   end at a loss near 0, where the smallest step would otherwise always win).

The :class:`Choice` also flags what makes a choice provisional: a value at the edge of what
was tried (the smallest or largest value of a key among the trials: the best may lie
outside, so widen the range) and a sweep in which no trial reaches the target. Both are
printed and written to ``sweep.json`` in ``config.out``, with the trials per optimizer.
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

SWEEP_LOSS_TIE = 1e-4
"""Among tied points, final training losses within this of the lowest count as equal."""

SWEEP_UNSTABLE = 0.02
"""A run that ends more than this below its own best test accuracy is unstable."""

EDGE_NOTE = "chosen at the edge of its grid"
"""The flag of a choice that is the smallest or largest value tried (the grid's edge, or the
extreme trial of a quasi-random range)."""
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
    losses = {i: final_train_loss(results[i]) for i in tied}
    lowest = min(losses.values())
    # Training losses within SWEEP_LOSS_TIE of the lowest are equal too (runs that all fit
    # the training set end near 0, where the smallest step would otherwise always win): among
    # them the highest criterion wins.
    index = max(
        (i for i in tied if losses[i] <= lowest + SWEEP_LOSS_TIE),
        key=lambda i: (crit[i], -losses[i]),
    )
    return Choice(
        index=index,
        tied=tied,
        unstable=unstable if len(unstable) < len(results) else (),
        at_edge=grid_edges(points, index) if points is not None else (),
        reached_target=any(r.steps_to_target is not None for r in results),
    )


# Bases of the Halton sequence's coordinates: the first primes (one per hyperparameter).
_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)


def halton(num: int, dims: int, *, seed: int | None = 0) -> np.ndarray:
    """The first ``num`` points of a ``dims``-dimensional scrambled Halton sequence in ``[0, 1)``.

    Coordinate ``d`` is the radical inverse of the index ``i = 0, 1, ...`` in base ``p_d`` (the
    ``d``-th prime): ``sum_j sigma_j(a_j(i)) p_d^-(j+1)`` over the base-``p_d`` digits ``a_j``
    of ``i``, where ``sigma_j`` is a random permutation of the digits for each digit position
    (drawn from ``seed``; the identity for ``seed=None``, the plain sequence, which starts
    ``0, 1/2, 1/4, 3/4`` in base 2). Because each ``sigma_j`` is a bijection, the first
    ``p_d^k`` points still put exactly one point in each interval ``[m / p_d^k, (m + 1) /
    p_d^k)``, as the plain sequence does; the permutations break the plain sequence's
    correlations between coordinates and its start at 0 (Braaten and Weller 1979; Owen,
    "Randomized Halton sequences", 2017).

    Raises:
        ValueError: ``num < 1``, or ``dims`` outside ``[1, 12]``.
    """
    if num < 1:
        raise ValueError(f"num must be a positive integer, got {num}")
    if not 1 <= dims <= len(_PRIMES):
        raise ValueError(f"dims must be in [1, {len(_PRIMES)}], got {dims}")
    rng = np.random.default_rng(seed)
    out = np.empty((num, dims))
    for d, base in enumerate(_PRIMES[:dims]):
        # Digits enough to number every index, plus 8 more (also permuted: a random position
        # inside the finest interval, not its left end).
        ndig = 1 + int(math.log(num, base)) + 8
        perms = [
            rng.permutation(base) if seed is not None else np.arange(base) for _ in range(ndig)
        ]
        for i in range(num):
            x, scale, value = i, 1.0 / base, 0.0
            for j in range(ndig):
                x, digit = divmod(x, base)
                value += perms[j][digit] * scale
                scale /= base
            out[i, d] = value
    return out


def _round2(x: float) -> float:
    """``x`` rounded to two significant digits (readable values for tables and defaults)."""
    return float(f"{x:.2g}")


def search_points(
    space: Mapping[str, registry.SearchRange], trials: int, *, seed: int = 0
) -> list[dict[str, float]]:
    """``trials`` points of ``space``: scrambled Halton, mapped to each range, two digits."""
    keys = list(space)
    if not keys:
        return [{}]
    u = halton(trials, len(keys), seed=seed)
    points = []
    for row in u:
        point = {}
        for key, ui in zip(keys, row):
            r = space[key]
            if r.scale == "log":
                value = r.low * (r.high / r.low) ** ui
            else:
                value = r.low + (r.high - r.low) * ui
            point[key] = _round2(value)
        points.append(point)
    return points


def parse_range(key: str, text: str) -> registry.SearchRange:
    """``"LOW:HIGH"`` (``--hp opt.key=LOW:HIGH``) as a log range; ``BenchError`` otherwise."""
    lo, _, hi = text.partition(":")
    try:
        low, high = float(lo), float(hi)
    except ValueError:
        low = high = math.nan
    if not (0 < low < high < math.inf):
        raise cfg.BenchError(
            f"--hp {key}={text!r}: a search range is LOW:HIGH with 0 < LOW < HIGH "
            "(searched log-uniformly), e.g. 1e-4:1e-1"
        )
    return registry.SearchRange(low, high)


def grid(
    name: str, overrides: Mapping[str, Any], trials: int | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fixed overrides and the points to try for optimizer ``name``.

    List values of ``overrides`` are an explicit grid (their product). Otherwise the points are
    ``trials`` (default :data:`~optlab.bench.registry.SWEEP_TRIALS`) quasi-random draws from
    the optimizer's :data:`~optlab.bench.registry.SEARCH_SPACES` entry, with any ``"LOW:HIGH"``
    string value replacing (or adding) that key's range and scalar values fixed (their keys
    leave the space). An optimizer with no space and no override gets one point (the defaults).
    """
    trials = registry.SWEEP_TRIALS if trials is None else trials
    lists = {k: v for k, v in overrides.items() if isinstance(v, list)}
    ranges = {k: parse_range(k, v) for k, v in overrides.items() if isinstance(v, str) and ":" in v}
    fixed = {k: v for k, v in overrides.items() if k not in lists and k not in ranges}
    if lists:
        if ranges:
            raise cfg.BenchError(
                f"--hp for {name!r}: give either value lists (a grid) or LOW:HIGH ranges "
                "(quasi-random trials), not both"
            )
        keys = list(lists)
        return fixed, [dict(zip(keys, combo)) for combo in itertools.product(*lists.values())]
    space = {k: v for k, v in registry.SEARCH_SPACES.get(name, {}).items() if k not in fixed}
    space.update(ranges)
    if not space:
        return fixed, [{}]
    return fixed, search_points(space, trials)


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


def _space_text(name: str, overrides: Mapping[str, Any], fixed: Mapping[str, Any]) -> str:
    """What was searched, in words: the grid or the ranges, and the fixed values."""
    lists = {k: v for k, v in overrides.items() if isinstance(v, list)}
    if lists:
        parts = [f"{k} in {{{', '.join(map(str, v))}}}" for k, v in lists.items()]
        kind = "grid"
    else:
        space = {k: v for k, v in registry.SEARCH_SPACES.get(name, {}).items() if k not in fixed}
        for k, v in overrides.items():
            if isinstance(v, str) and ":" in v:
                space[k] = parse_range(k, v)
        parts = [f"{k} {r.scale}-uniform in [{r.low:g}, {r.high:g}]" for k, r in space.items()]
        kind = "quasi-random (scrambled Halton)"
    text = f"{kind}: {'; '.join(parts) or 'defaults only'}"
    if fixed:
        text += "; fixed " + " ".join(f"{k}={v}" for k, v in fixed.items())
    return text


def format_sweep(
    name: str,
    points: Sequence[Mapping[str, Any]],
    results,
    choice: Choice,
    space: str | None = None,
) -> str:
    """One optimizer's trials: a line per point, ``*`` on the choice, then the flags."""
    head = f"\n{name}: {len(points)} trials" + (f", {space}" if space else "")
    lines = [head]
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
    """``optlab compare --sweep``: the same number of trials for every optimizer.

    Prints a table per task and optimizer and writes ``sweep.json`` to ``config.out``; see the
    module docstring for the search spaces and the rule.

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
        "trials_per_optimizer": config.trials or registry.SWEEP_TRIALS,
        "criterion": "mean test accuracy over the run's evaluations, "
        f"among runs ending within {SWEEP_UNSTABLE} of their best; "
        f"ties within {SWEEP_TIE} broken by the final training loss (within "
        f"{SWEEP_LOSS_TIE}: by the criterion)",
        "tasks": {},
    }
    for task_name in config.tasks:
        task = get_task(task_name)
        ds = cfg.load_data(task, config)
        settings = cfg.run_settings(task, ds, config)
        # Build every grid point first: bad input fails before any training.
        jobs = {}
        spaces = {}
        for name in config.optimizers:
            overrides = config.hparams.get(name, {})
            fixed, points = grid(name, overrides, config.trials)
            spaces[name] = _space_text(name, overrides, fixed)
            jobs[name] = [
                (point, cfg.build(task, ds, settings, name, {**fixed, **point})) for point in points
            ]
        print("\n" + report.settings_line(task, ds, settings), file=stream)
        print(
            "  trials per optimizer: "
            + ", ".join(f"{n} {len(entries)}" for n, entries in jobs.items()),
            file=stream,
        )
        task_payload = {}
        for name, entries in jobs.items():
            points = [point for point, _ in entries]
            results = [
                _train(task, ds, built, settings, _label(point), config.quiet)
                for point, built in entries
            ]
            choice = choose(results, points)
            print(
                format_sweep(name, points, results, choice, spaces[name]), file=stream, flush=True
            )
            task_payload[name] = {
                "search": spaces[name],
                "trials": len(points),
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
