"""``optlab compare``: train tasks with several optimizers, tabulate, plot, score.

:func:`compare` is the whole command as a function (the CLI only parses arguments into a
:class:`CompareConfig`); :func:`sweep` is ``optlab compare --sweep``, the quick
learning-rate sweep behind the registry's per-task defaults. All input is checked before any
training starts; bad input raises :class:`BenchError` (the CLI prints its one-line message and
exits with status 2).

Outputs, in ``config.out`` (default ``runs/compare``):

* ``results.json``: the configuration, the environment, and for every task and optimizer the
  hyperparameters, every step's training loss, every evaluation (step, epoch, test accuracy
  and loss, mean training loss, training clock and wall clock), the summary metrics, and with
  several tasks the performance profiles and scores (:mod:`optlab.bench.profiles`);
* ``<task>_test_acc_vs_epoch.png``, ``<task>_test_acc_vs_time.png``, ``<task>_train_loss.png``;
* ``performance_profiles.png`` with several tasks.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import jax
import numpy as np

from optlab.bench import registry, runner
from optlab.bench.profiles import Profiles, performance_profiles
from optlab.bench.tasks import DEFAULT_TASK, TASKS, Task, get_task, load_task_data, task_summary


class BenchError(ValueError):
    """Bad input to ``optlab compare`` (unknown name, bad value, unwritable directory...)."""


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """Everything ``optlab compare`` needs; ``None`` means the task's default.

    Attributes:
        tasks: task names (:data:`optlab.bench.tasks.TASKS`).
        optimizers: registry names or ``module:factory``; ``None``: every registered one.
        epochs: passes over the training set.
        steps: total steps instead of epochs (wins over ``epochs``).
        batch_size: examples per step.
        seed: initialization and batch-order seed.
        target: test-accuracy target for steps / seconds to target.
        hparams: ``{optimizer: {key: value}}`` overrides (``--hp``). For :func:`sweep`, a
            list or tuple value is a grid.
        schedule: ``"constant"`` or ``"cosine"`` learning rates.
        out: output directory.
        data_dir: where file-based tasks read their data.
        quiet: no progress bars.
        plots: write PNGs.
    """

    tasks: tuple[str, ...] = (DEFAULT_TASK,)
    optimizers: tuple[str, ...] | None = None
    epochs: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    seed: int = 0
    target: float | None = None
    hparams: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    schedule: str = "constant"
    out: str | os.PathLike = "runs/compare"
    data_dir: str | os.PathLike | None = None
    quiet: bool = False
    plots: bool = True


# -- parsing helpers (shared with the CLI) ----------------------------------------------------


def parse_value(text: str) -> Any:
    """A ``--hp`` value: a Python literal (``3e-3``, ``True``, ``None``, ``'svd'``) or a string.

    ``true`` / ``false`` are accepted in any case; anything that is not a literal (``svd``,
    ``none``: Shampoo's ``grafting="none"``) is kept as a string.
    """
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_hparams(items: Sequence[str], *, allow_grids: bool = False) -> dict[str, dict[str, Any]]:
    """Parse ``["sam.rho=0.05", "adam.learning_rate=3e-3"]`` into ``{opt: {key: value}}``.

    The optimizer is everything before the last ``.`` of the left-hand side, so
    ``mypkg.opts:make.learning_rate=0.1`` works. With ``allow_grids`` (``--sweep``),
    ``key=v1,v2,v3`` gives a list to sweep over.

    Raises:
        BenchError: malformed item, or a comma-separated value outside a sweep.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        lhs, eq, rhs = item.partition("=")
        opt, dot, key = lhs.strip().rpartition(".")
        if not eq or not dot or not opt or not key.isidentifier() or not rhs.strip():
            raise BenchError(
                f"malformed --hp {item!r}; expected OPTIMIZER.KEY=VALUE, e.g. sam.rho=0.05"
            )
        if "," in rhs and not (rhs.strip()[:1] in "([{'\"" and rhs.strip()[-1:] in ")]}'\""):
            if not allow_grids:
                raise BenchError(
                    f"--hp {item!r}: comma-separated values are grids, allowed only with --sweep"
                )
            value: Any = [parse_value(v) for v in rhs.split(",") if v.strip()]
        else:
            value = parse_value(rhs)
        out.setdefault(opt, {})[key] = value
    return out


def _split_names(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(p.strip() for p in parts if p.strip())
    return names


# -- preparation: every check before any training ---------------------------------------------


@dataclasses.dataclass
class _Prepared:
    task: Task
    ds: Any
    settings: runner.RunSettings
    optimizers: list[tuple[str, Any, dict[str, Any], bool]]


def _check_out_dir(out: str | os.PathLike) -> Path:
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".optlab_write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise BenchError(f"cannot write to output directory {str(path)!r}: {reason}") from None
    return path


def _settings(task: Task, ds: Any, config: CompareConfig) -> runner.RunSettings:
    batch_size = config.batch_size or task.batch_size
    if batch_size > ds.num_train:
        raise BenchError(
            f"--batch-size {batch_size} exceeds task {task.name!r}'s {ds.num_train} "
            "training examples"
        )
    return runner.RunSettings(
        epochs=config.epochs or task.epochs,
        steps=config.steps,
        batch_size=batch_size,
        seed=config.seed,
        target=task.target if config.target is None else config.target,
        schedule=config.schedule,
        eval_every=task.eval_every,
    )


def _validate(config: CompareConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    tasks = _split_names(config.tasks) or ()
    if not tasks:
        raise BenchError("no task given")
    for name in tasks:
        if name not in TASKS:
            raise BenchError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    if len(set(tasks)) != len(tasks):
        raise BenchError(f"a task is listed twice: {', '.join(tasks)}")
    optimizers = _split_names(config.optimizers)
    optimizers = tuple(registry.OPTIMIZERS) if optimizers is None else optimizers
    if not optimizers:
        raise BenchError("no optimizer given")
    if len(set(optimizers)) != len(optimizers):
        raise BenchError(f"an optimizer is listed twice: {', '.join(optimizers)}")
    for name in optimizers:
        try:
            registry.resolve_optimizer(name)
        except KeyError as e:
            raise BenchError(e.args[0]) from None
    for name in config.hparams:
        if name not in optimizers:
            raise BenchError(
                f"--hp names optimizer {name!r}, which is not being compared "
                f"({', '.join(optimizers)})"
            )
    for flag, value in (
        ("epochs", config.epochs),
        ("steps", config.steps),
        ("batch-size", config.batch_size),
    ):
        if value is not None and (isinstance(value, bool) or value < 1):
            raise BenchError(f"--{flag} must be a positive integer, got {value}")
    if config.target is not None and not 0.0 < config.target <= 1.0:
        raise BenchError(f"--target must be a test accuracy in (0, 1], got {config.target}")
    if config.schedule not in ("constant", "cosine"):
        raise BenchError(f"unknown schedule {config.schedule!r}; known: constant, cosine")
    return tasks, optimizers


def _load(task: Task, config: CompareConfig) -> Any:
    try:
        return load_task_data(task, config.data_dir)
    except (OSError, ValueError, ImportError) as e:
        raise BenchError(f"task {task.name!r}: {e}") from None


def _build(
    task: Task,
    ds: Any,
    settings: runner.RunSettings,
    name: str,
    overrides: Mapping[str, Any],
) -> tuple[str, Any, dict[str, Any], bool]:
    try:
        tx, hp, needs = registry.build_optimizer(
            name,
            task.name,
            overrides,
            schedule=settings.schedule,
            total_steps=runner.total_steps(ds, settings),
        )
    except KeyError as e:
        raise BenchError(e.args[0]) from None
    except (ValueError, TypeError) as e:
        raise BenchError(f"optimizer {name!r}: {e}") from None
    return name, tx, hp, needs


def _prepare(config: CompareConfig) -> tuple[list[_Prepared], Path]:
    tasks, optimizers = _validate(config)
    out = _check_out_dir(config.out)
    prepared = []
    for name in tasks:
        task = get_task(name)
        ds = _load(task, config)
        settings = _settings(task, ds, config)
        opts = [_build(task, ds, settings, opt, config.hparams.get(opt, {})) for opt in optimizers]
        prepared.append(_Prepared(task, ds, settings, opts))
    return prepared, out


# -- reporting ---------------------------------------------------------------------------------


def _fmt(x: float | None, spec: str, missing: str = "-") -> str:
    return missing if x is None or not math.isfinite(x) else format(x, spec)


def _fmt_seconds(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return format(x, ".2g" if x < 0.01 else ".2f" if x < 100 else ".1f")


def settings_line(task: Task, ds: Any, settings: runner.RunSettings) -> str:
    """One line: the task and the run's budget."""
    spe = runner.steps_per_epoch(ds, settings.batch_size)
    n = runner.total_steps(ds, settings)
    budget = (
        f"{n} steps" if settings.steps is not None else f"{settings.epochs} epochs x {spe} steps"
    )
    sched = "" if settings.schedule == "constant" else f", {settings.schedule} lr"
    return (
        f"{task.name}: {task.description}\n"
        f"  {budget}, batch {settings.batch_size}, seed {settings.seed}{sched}, "
        f"target test accuracy {settings.target:g}"
    )


def format_table(results: Sequence[runner.RunResult]) -> str:
    """The comparison table: one row per optimizer."""
    ref = next((r for r in results if r.optimizer == "sgd"), results[0] if results else None)
    ratio_head = f"x {ref.optimizer}" if ref is not None else "x sgd"
    head = (
        "optimizer",
        "final acc",
        "best acc",
        "steps to target",
        "s to target",
        "step ms",
        ratio_head,
        "compile s",
    )
    rows = []
    for r in results:
        if r.diverged:
            steps = "diverged"
        elif r.steps_to_target is None:
            steps = "NOT REACHED"
        else:
            steps = str(r.steps_to_target)
        ratio = r.mean_step_ms / ref.mean_step_ms if ref is not None else float("nan")
        rows.append(
            (
                r.optimizer,
                _fmt(r.final_acc, ".4f"),
                _fmt(r.best_acc, ".4f"),
                steps,
                _fmt_seconds(r.seconds_to_target),
                _fmt(r.mean_step_ms, ".2f" if r.mean_step_ms < 10 else ".1f"),
                _fmt(ratio, ".2f"),
                _fmt(r.compile_s, ".2f"),
            )
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:]))])

    out = [line(head), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]
    missed = [r.optimizer for r in results if r.steps_to_target is None]
    if missed and results:
        out.append(
            f"NOT REACHED: test accuracy stayed below the target {results[0].target:g} "
            f"({', '.join(missed)})."
        )
    out.append(
        "s to target: training seconds (compile and evaluation excluded) until the first "
        "evaluation at or above the target; step ms: mean step time after the first call."
    )
    return "\n".join(out)


def format_scores(profiles: Profiles) -> str:
    """The AlgoPerf scores, best first, with the per-task ratios."""
    order = sorted(profiles.optimizers, key=lambda s: -profiles.scores[s])
    width = max(len("optimizer"), *(len(s) for s in order))
    tw = [max(len(t), 6) for t in profiles.tasks]
    head = "  ".join(
        ["optimizer".ljust(width), "score", *(t.rjust(w) for t, w in zip(profiles.tasks, tw))]
    )
    lines = [
        f"AlgoPerf-style score over {len(profiles.tasks)} tasks (area under rho(tau) on "
        "[1, 4] / 3; ratio r = time to target / fastest, inf if missed or > 4):",
        head,
    ]
    for s in order:
        ratios = [
            ("inf" if not math.isfinite(r) else f"{r:.2f}").rjust(w)
            for r, w in zip(profiles.ratios[s], tw)
        ]
        lines.append("  ".join([s.ljust(width), f"{profiles.scores[s]:.3f}", *ratios]))
    return "\n".join(lines)


def _environment() -> dict[str, Any]:
    import flax
    import optax

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "flax": flax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return repr(o)

    def clean(x: Any) -> Any:  # JSON has no inf / NaN: write null
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, Mapping):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(clean(payload), indent=1, default=default))
    tmp.replace(path)  # atomic: a crash never leaves half a file


def _plot_task(out: Path, task: Task, results: Sequence[runner.RunResult]) -> list[str]:
    from optlab.bench import plots

    files = {
        f"{task.name}_test_acc_vs_epoch.png": plots.plot_accuracy_vs_epoch,
        f"{task.name}_test_acc_vs_time.png": plots.plot_accuracy_vs_time,
        f"{task.name}_train_loss.png": plots.plot_train_loss,
    }
    for name, fn in files.items():
        fn(results, task.name, out / name)
    return list(files)


# -- the command -------------------------------------------------------------------------------


def compare(config: CompareConfig, stream: TextIO | None = None) -> dict[str, Any]:
    """Run ``optlab compare``; print tables to ``stream`` and write results to ``config.out``.

    Returns:
        The ``results.json`` payload (with ``inf`` where JSON has ``null``).

    Raises:
        BenchError: bad input (raised before any training).
    """
    stream = sys.stdout if stream is None else stream
    prepared, out = _prepare(config)
    t_start = time.perf_counter()
    payload: dict[str, Any] = {
        "config": {
            "tasks": [p.task.name for p in prepared],
            "optimizers": [name for name, *_ in prepared[0].optimizers],
            "epochs": config.epochs,
            "steps": config.steps,
            "batch_size": config.batch_size,
            "seed": config.seed,
            "target": config.target,
            "hparams_overrides": {k: dict(v) for k, v in config.hparams.items()},
            "schedule": config.schedule,
            "data_dir": None if config.data_dir is None else str(config.data_dir),
        },
        "environment": _environment(),
        "tasks": {},
        "profiles": None,
        "plots": [],
    }
    all_results: dict[str, list[runner.RunResult]] = {}
    for p in prepared:
        results = runner.run_task(p.task, p.ds, p.optimizers, p.settings, quiet=config.quiet)
        all_results[p.task.name] = results
        print("\n" + settings_line(p.task, p.ds, p.settings), file=stream)
        print(format_table(results), file=stream)
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
            payload["plots"] += _plot_task(out, p.task, results)
        _write_json(out / "results.json", payload)  # after every task: partial results survive

    if len(prepared) > 1:
        times = {
            name: {
                t: (r.seconds_to_target if r.seconds_to_target is not None else math.inf)
                for t, rs in all_results.items()
                for r in rs
                if r.optimizer == name
            }
            for name, *_ in prepared[0].optimizers
        }
        profiles = performance_profiles(times, [p.task.name for p in prepared])
        payload["profiles"] = profiles.to_dict()
        print("\n" + format_scores(profiles), file=stream)
        if config.plots:
            from optlab.bench import plots

            plots.plot_profiles(profiles, out / "performance_profiles.png")
            payload["plots"].append("performance_profiles.png")
    payload["total_wall_s"] = time.perf_counter() - t_start
    _write_json(out / "results.json", payload)
    print(
        f"\nresults: {out / 'results.json'}; plots: {', '.join(payload['plots']) or 'none'}",
        file=stream,
    )
    return payload


# -- the sweep ---------------------------------------------------------------------------------


def _grid(name: str, overrides: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fixed overrides and the list of grid points for optimizer ``name``."""
    fixed = {k: v for k, v in overrides.items() if not isinstance(v, list)}
    lists = {k: v for k, v in overrides.items() if isinstance(v, list)}
    if not lists:
        lists = {k: list(v) for k, v in registry.SWEEP_GRIDS.get(name, {}).items()}
    if not lists:
        return fixed, [{}]
    keys = list(lists)
    return fixed, [dict(zip(keys, combo)) for combo in itertools.product(*lists.values())]


SWEEP_TIE = 0.005
"""Grid points whose criterion is within this of the best count as tied (test-set noise)."""

SWEEP_UNSTABLE = 0.02
"""A run that ends more than this below its own best test accuracy is unstable."""


def sweep_criterion(result: runner.RunResult) -> float:
    """Mean test accuracy over a run's evaluations (area under accuracy-vs-epoch / epochs)."""
    accs = [e["test_acc"] for e in result.evals]
    return float(np.mean(accs)) if accs and not result.diverged else -math.inf


def final_train_loss(result: runner.RunResult) -> float:
    """Mean training loss over the run's last epoch of steps."""
    if result.diverged or not result.evals or not result.step_loss:
        return math.inf
    last = result.evals[-1]
    per_epoch = max(1, round(last["step"] / last["epoch"]))
    return float(np.mean(result.step_loss[-per_epoch:]))


def choose(results: Sequence[runner.RunResult]) -> int:
    """Index of the sweep's choice among ``results`` (one per grid point).

    1. Unstable runs (final test accuracy more than :data:`SWEEP_UNSTABLE` below the run's
       best, or diverged) are set aside unless every run is unstable: a default should not
       collapse at the end of the budget.
    2. Among the rest, the highest :func:`sweep_criterion` wins; points within
       :data:`SWEEP_TIE` of it are tied (a 359-image test set resolves about 0.3%).
    3. Ties go to the lowest :func:`final_train_loss`, so that where accuracy cannot separate
       the points (the convex logistic task, whose accuracy depends only on the direction of
       w) the better optimizer of the objective is chosen.
    """
    stable = [
        i
        for i, r in enumerate(results)
        if not r.diverged and r.final_acc >= r.best_acc - SWEEP_UNSTABLE
    ]
    pool = stable or list(range(len(results)))
    crit = {i: sweep_criterion(results[i]) for i in pool}
    best = max(crit.values())
    tied = [i for i in pool if crit[i] >= best - SWEEP_TIE]
    return min(tied, key=lambda i: (final_train_loss(results[i]), -crit[i]))


def sweep(config: CompareConfig, stream: TextIO | None = None) -> dict[str, Any]:
    """``optlab compare --sweep``: a quick grid over each optimizer's hyperparameters.

    For every task and optimizer, trains once per grid point (:data:`registry.SWEEP_GRIDS`,
    or the lists given as ``--hp opt.key=v1,v2``; scalar ``--hp`` values stay fixed) with the
    task's budget and one seed, and picks a point with :func:`choose` (the highest
    :func:`sweep_criterion` among stable runs, ties within :data:`SWEEP_TIE` broken by the
    final training loss).
    Prints a table per task and writes ``sweep.json`` to ``config.out``.
    """
    stream = sys.stdout if stream is None else stream
    tasks, optimizers = _validate(config)
    out = _check_out_dir(config.out)
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
    for task_name in tasks:
        task = get_task(task_name)
        ds = _load(task, config)
        settings = _settings(task, ds, config)
        # Build every grid point first: bad input fails before any training.
        jobs = {}
        for name in optimizers:
            fixed, points = _grid(name, config.hparams.get(name, {}))
            jobs[name] = [
                (point, _build(task, ds, settings, name, {**fixed, **point})) for point in points
            ]
        print("\n" + settings_line(task, ds, settings), file=stream)
        task_payload = {}
        for name, entries in jobs.items():
            results = []
            for point, built in entries:
                label = " ".join(f"{k}={v}" for k, v in point.items()) or "defaults"
                bar = None
                if not config.quiet:
                    from tqdm.auto import tqdm

                    bar = tqdm(
                        total=runner.total_steps(ds, settings),
                        desc=f"{name} {label}",
                        unit="step",
                        leave=False,
                        dynamic_ncols=True,
                    )
                try:
                    results.append(runner.train_one(task, ds, *built, settings, progress=bar))
                finally:
                    if bar is not None:
                        bar.close()
            best = choose(results)
            print(f"\n{name}:", file=stream)
            for i, ((point, _), r) in enumerate(zip(entries, results)):
                label = " ".join(f"{k}={v}" for k, v in point.items()) or "defaults"
                mark = "*" if i == best else " "
                print(
                    f" {mark} {label:28s} mean acc {_fmt(sweep_criterion(r), '.4f')}  "
                    f"final {_fmt(r.final_acc, '.4f')}  best {_fmt(r.best_acc, '.4f')}  "
                    f"last train loss {_fmt(final_train_loss(r), '.4f')}  "
                    f"steps to target {r.steps_to_target or '-'}",
                    file=stream,
                    flush=True,
                )
            task_payload[name] = {
                "chosen": entries[best][0],
                "runs": [
                    {
                        "point": p,
                        "criterion": sweep_criterion(r),
                        "final_acc": r.final_acc,
                        "final_train_loss": final_train_loss(r),
                        "best_acc": r.best_acc,
                        "steps_to_target": r.steps_to_target,
                        "mean_step_ms": r.mean_step_ms,
                        "hparams": runner._jsonable(r.hparams),
                        "test_acc": [e["test_acc"] for e in r.evals],
                    }
                    for (p, _), r in zip(entries, results)
                ],
            }
        payload["tasks"][task_name] = task_payload
        _write_json(out / "sweep.json", payload)
        print(
            "\nchosen (* above): "
            + "; ".join(
                f"{n}: " + (" ".join(f"{k}={v}" for k, v in tp["chosen"].items()) or "defaults")
                for n, tp in task_payload.items()
            ),
            file=stream,
        )
    print(f"\nsweep results: {out / 'sweep.json'}", file=stream)
    return payload


# -- listing -----------------------------------------------------------------------------------


def list_text() -> str:
    """What ``optlab compare --list`` prints: tasks, optimizers and their default settings."""
    lines = ["tasks (epochs, batch size, target test accuracy):"]
    width = max(len(t) for t in TASKS)
    for t in TASKS.values():
        extra = "  [needs --data-dir]" if t.needs_data_dir else ""
        lines.append(
            f"  {t.name:{width}s}  {t.epochs:3d} ep  batch {t.batch_size:3d}  "
            f"target {t.target:g}  {t.description}{extra}"
        )
    lines.append("")
    lines.append("optimizers (default hyperparameters per task; override with --hp NAME.KEY=V):")
    for spec in registry.OPTIMIZERS.values():
        lines.append(f"  {spec.name}: {spec.description}")
        base = spec.defaults()
        lines.append("    defaults: " + " ".join(f"{k}={v}" for k, v in base.items()))
        for t in TASKS:
            task_hp = registry.TASK_DEFAULTS.get(t, {}).get(spec.name)
            if task_hp:
                src = registry.hparam_source(spec.name, t)
                hp = " ".join(f"{k}={v}" for k, v in task_hp.items())
                lines.append(f"    {t:{width}s}  {hp}  ({src})")
    lines.append("  module:factory: any callable (**hyperparameters) -> optax transform")
    return "\n".join(lines)
