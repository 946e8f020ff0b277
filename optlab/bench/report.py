"""What ``optlab compare`` prints and writes: tables, the ``--list`` text, JSON, plots.

* :func:`settings_line`, :func:`format_table`: one task's budget and its comparison table;
* :func:`format_scores`: the AlgoPerf-style scores over several tasks;
* :func:`list_text`: ``optlab compare --list``;
* :func:`write_json`: ``results.json`` / ``sweep.json`` (atomic, ``inf`` and NaN as ``null``);
* :func:`environment`, :func:`plot_task`: the versions recorded with the results, the PNGs.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from optlab.bench import references, registry, runner
from optlab.bench.profiles import Profiles
from optlab.bench.tasks import TASKS, Task

STEPS_NOTE = (
    "profiled by steps: the performance profiles use steps to target for this task (its "
    "seconds to target are tens of milliseconds or less: timer noise, see optlab.bench.tasks)."
)
"""The table's note for a task with ``profile_by="steps"``."""

SECONDS_NOTE = (
    "s to target: training seconds (compile and evaluation excluded) until the first "
    "evaluation at or above the target; step ms: mean step time after the first call."
)
"""The table's note on its timing columns."""


def fmt(x: float | None, spec: str, missing: str = "-") -> str:
    """``format(x, spec)``, or ``missing`` for ``None`` and non-finite values."""
    return missing if x is None or not math.isfinite(x) else format(x, spec)


def fmt_seconds(x: float | None) -> str:
    """Seconds with two significant digits below 10 ms, two decimals below 100 s."""
    if x is None or not math.isfinite(x):
        return "-"
    return format(x, ".2g" if x < 0.01 else ".2f" if x < 100 else ".1f")


def settings_line(task: Task, ds: Any, settings: runner.RunSettings) -> str:
    """The task and the run's budget (two lines)."""
    spe = runner.steps_per_epoch(ds, settings.batch_size)
    n = runner.total_steps(ds, settings)
    budget = (
        f"{n} steps" if settings.steps is not None else f"{settings.epochs} epochs x {spe} steps"
    )
    sched = "" if settings.schedule == "constant" else f", {settings.schedule} lr"
    measure = ", profiled by steps" if task.profile_by == "steps" else ""
    return (
        f"{task.name}: {task.description}\n"
        f"  {budget}, batch {settings.batch_size}, seed {settings.seed}{sched}, "
        f"target test accuracy {settings.target:g}{measure}"
    )


def format_table(results: Sequence[runner.RunResult], profile_by: str = "seconds") -> str:
    """The comparison table: one row per optimizer, then notes.

    Args:
        results: one task's runs.
        profile_by: the task's :attr:`~optlab.bench.tasks.Task.profile_by`; ``"steps"`` adds
            the note that its performance profiles use steps to target.
    """
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
                fmt(r.final_acc, ".4f"),
                fmt(r.best_acc, ".4f"),
                steps,
                fmt_seconds(r.seconds_to_target),
                fmt(r.mean_step_ms, ".2f" if r.mean_step_ms < 10 else ".1f"),
                fmt(ratio, ".2f"),
                fmt(r.compile_s, ".2f"),
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
    out.append(SECONDS_NOTE)
    if profile_by == "steps":
        out.append(STEPS_NOTE)
    return "\n".join(out)


def format_scores(profiles: Profiles, measures: Mapping[str, str] | None = None) -> str:
    """The AlgoPerf scores, best first, with the per-task ratios.

    Args:
        profiles: the profiles.
        measures: ``{task: "seconds" | "steps"}``, what the ratios compare (default seconds).
    """
    measures = measures or {}
    by_steps = [t for t in profiles.tasks if measures.get(t) == "steps"]
    order = sorted(profiles.optimizers, key=lambda s: -profiles.scores[s])
    width = max(len("optimizer"), *(len(s) for s in order))
    tw = [max(len(t), 6) for t in profiles.tasks]
    head = "  ".join(
        ["optimizer".ljust(width), "score", *(t.rjust(w) for t, w in zip(profiles.tasks, tw))]
    )
    steps = f"; steps instead of seconds for {', '.join(by_steps)}" if by_steps else ""
    lines = [
        f"AlgoPerf-style score over {len(profiles.tasks)} tasks (area under rho(tau) on "
        "[1, 4] / 3; ratio r = time to target / fastest, inf if missed or > 4"
        f"{steps}):",
        head,
    ]
    for s in order:
        ratios = [
            ("inf" if not math.isfinite(r) else f"{r:.2f}").rjust(w)
            for r, w in zip(profiles.ratios[s], tw)
        ]
        lines.append("  ".join([s.ljust(width), f"{profiles.scores[s]:.3f}", *ratios]))
    return "\n".join(lines)


def list_text() -> str:
    """What ``optlab compare --list`` prints: tasks, optimizers, defaults, references."""
    lines = ["tasks (epochs, batch size, target test accuracy):"]
    width = max(len(t) for t in TASKS)
    for t in TASKS.values():
        extra = "  [needs --data-dir]" if t.needs_data_dir else ""
        extra += "  [profiled by steps]" if t.profile_by == "steps" else ""
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
    lines.append("")
    lines.append(
        f"tuning (optlab compare --sweep): {registry.SWEEP_TRIALS} quasi-random trials per "
        "optimizer and task (scrambled Halton, seed 0) from one range per hyperparameter:"
    )
    for name, space in registry.SEARCH_SPACES.items():
        ranges = "; ".join(f"{k} {r.scale} [{r.low:g}, {r.high:g}]" for k, r in space.items())
        lines.append(f"  {name}: {ranges}")
    lines.append("the commands behind the task defaults marked 'trials':")
    for t, command in registry.SWEEP_COMMANDS.items():
        lines.append(f"  {t:{width}s}  {command}")
    lines.append("")
    lines.append("references:")
    lines.append(references.references_text())
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    """Python, JAX, optax and Flax versions, the backend and the machine, for results.json."""
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


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically; ``inf`` and NaN become ``null``."""

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


def plot_task(out: Path, task: Task, results: Sequence[runner.RunResult]) -> list[str]:
    """The three PNGs of one task in ``out``; returns their file names."""
    from optlab.bench import plots  # lazy: matplotlib is an optional extra

    files = {
        f"{task.name}_test_acc_vs_epoch.png": plots.plot_accuracy_vs_epoch,
        f"{task.name}_test_acc_vs_time.png": plots.plot_accuracy_vs_time,
        f"{task.name}_train_loss.png": plots.plot_train_loss,
    }
    title = plots.task_title(task.name, task.description)
    for name, fn in files.items():
        fn(results, title, out / name)
    return list(files)
