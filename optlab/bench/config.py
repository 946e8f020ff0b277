"""``optlab compare``'s input: :class:`CompareConfig`, ``--hp`` parsing, and every check.

This module is the one place where input is checked: the CLI (:mod:`optlab.cli`) only converts
strings to numbers and builds a :class:`CompareConfig`, whose construction runs
:func:`validate`; the registry (:func:`optlab.bench.registry.build_optimizer`) checks its
``schedule`` with :func:`check_schedule`; the harness and the sweep prepare each task with
:func:`load_data`, :func:`run_settings` and :func:`build`, which turn every failure (missing
data files, a batch larger than the data set, a hyperparameter the factory rejects) into a
:class:`BenchError`. So bad input fails before any training starts, with one line naming the
argument and what it accepts (the CLI prints it and exits with status 2).
"""

from __future__ import annotations

import ast
import dataclasses
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optlab.bench.tasks import (
    DEFAULT_TASK,
    TASKS,
    Task,
    canonical_task_name,
    load_task_data,
)

if TYPE_CHECKING:
    from optlab.bench.registry import BuiltOptimizer
    from optlab.bench.runner import RunSettings
    from optlab.data import Dataset


class BenchError(ValueError):
    """Bad input to ``optlab compare`` (unknown name, bad value, unwritable directory...)."""


SCHEDULES = ("constant", "cosine")
"""Learning-rate schedules: constant, or cosine decay to 0 over the run."""


# -- single-value checks (the CLI, CompareConfig and the registry share them) -----------------


def check_positive_int(flag: str, value: Any) -> int:
    """``value`` if it is an integer >= 1 (``--flag`` names it in the error)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise BenchError(f"--{flag} must be a positive integer, got {value!r}")
    return int(value)


def check_target(value: Any) -> float:
    """``value`` if it is a test accuracy in ``(0, 1]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < value <= 1.0:
        raise BenchError(f"--target must be a test accuracy in (0, 1], got {value!r}")
    return float(value)


def check_schedule(value: Any) -> str:
    """``value`` if it names a schedule of :data:`SCHEDULES`."""
    if value not in SCHEDULES:
        raise BenchError(f"unknown schedule {value!r}; known: {', '.join(SCHEDULES)}")
    return value


def check_seed(value: Any) -> int:
    """``value`` if it is an integer in ``[0, 2**63)``.

    NumPy's ``default_rng`` (the batch order) rejects negative seeds, and JAX's keys (the
    initialization) overflow at ``2**64``: both would otherwise fail mid-run.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise BenchError(f"--seed must be an integer in [0, 2**63), got {value!r}")
    if not 0 <= value < 2**63:
        raise BenchError(f"--seed must be an integer in [0, 2**63), got {value}")
    return int(value)


# -- parsing -----------------------------------------------------------------------------------


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
        quoted = rhs.strip()[:1] in "([{'\"" and rhs.strip()[-1:] in ")]}'\""
        if "," in rhs and not quoted:
            if not allow_grids:
                raise BenchError(
                    f"--hp {item!r}: comma-separated values are grids, allowed only with --sweep"
                )
            value: Any = [parse_value(v) for v in rhs.split(",") if v.strip()]
        else:
            value = parse_value(rhs)
        out.setdefault(opt, {})[key] = value
    return out


def split_names(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"a, b"`` or ``["a", "b"]`` -> ``("a", "b")`` (blanks dropped); ``None`` stays."""
    if text is None:
        return None
    parts = text.split(",") if isinstance(text, str) else list(text)
    return tuple(p.strip() for p in parts if p.strip())


# -- the configuration -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """Everything ``optlab compare`` needs; ``None`` means the task's default.

    Construction checks every field (:func:`validate`) and normalizes ``tasks`` and
    ``optimizers`` to tuples of names (a comma-separated string is accepted; ``optimizers=None``
    becomes every registered optimizer).

    Attributes:
        tasks: task names (:data:`optlab.bench.tasks.TASKS`).
        optimizers: registry names or ``module:factory``; ``None``: every registered one.
        epochs: passes over the training set.
        steps: total steps instead of epochs (wins over ``epochs``).
        batch_size: examples per step.
        seed: initialization and batch-order seed.
        target: test-accuracy target for steps / seconds to target.
        hparams: ``{optimizer: {key: value}}`` overrides (``--hp``). For
            :func:`optlab.bench.sweep.sweep`, a list or tuple value is a grid.
        schedule: ``"constant"`` or ``"cosine"`` learning rates.
        out: output directory.
        data_dir: where file-based tasks read their data.
        quiet: no progress bars.
        plots: write PNGs.
        trials: quasi-random trials per optimizer of :func:`optlab.bench.sweep.sweep`
            (``None``: :data:`optlab.bench.registry.SWEEP_TRIALS`).

    Raises:
        BenchError: a bad field (the message names it and what it accepts).
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
    trials: int | None = None

    def __post_init__(self) -> None:
        tasks, optimizers = validate(self)
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "optimizers", optimizers)


def validate(config: CompareConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Check every field of ``config``; return its task and optimizer names as tuples.

    Checks what can be checked without data: known and distinct tasks and optimizers
    (``module:factory`` is imported), ``--hp`` naming compared optimizers and hyperparameters
    their factories take, positive budgets, the target, the schedule and the seed. The data-
    dependent checks (files in ``--data-dir``, batch size vs. data set) are
    :func:`load_data` and :func:`run_settings`.
    """
    from optlab.bench import registry  # the registry imports this module: import on use

    # Old names (optlab.bench.tasks.TASK_ALIASES) run, and are recorded as, their new task.
    tasks = tuple(canonical_task_name(t) for t in split_names(config.tasks) or ())
    if not tasks:
        raise BenchError("no task given")
    for name in tasks:
        if name not in TASKS:
            raise BenchError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    if len(set(tasks)) != len(tasks):
        raise BenchError(f"a task is listed twice: {', '.join(tasks)}")
    optimizers = split_names(config.optimizers)
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
    for name, overrides in config.hparams.items():
        if name not in optimizers:
            raise BenchError(
                f"--hp names optimizer {name!r}, which is not being compared "
                f"({', '.join(optimizers)})"
            )
        try:
            registry.check_hparam_names(name, overrides)
        except KeyError as e:
            raise BenchError(e.args[0]) from None
    for flag, value in (
        ("epochs", config.epochs),
        ("steps", config.steps),
        ("batch-size", config.batch_size),
        ("trials", config.trials),
    ):
        if value is not None:
            check_positive_int(flag, value)
    if config.target is not None:
        check_target(config.target)
    check_schedule(config.schedule)
    check_seed(config.seed)
    return tasks, optimizers


# -- preparing a task: the checks that need its data ------------------------------------------


def check_out_dir(out: str | os.PathLike) -> Path:
    """Create ``out`` if needed and make sure a file can be written there."""
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


def load_data(task: Task, config: CompareConfig) -> Dataset:
    """``task``'s data set; a missing ``--data-dir`` or unreadable file is a :class:`BenchError`."""
    try:
        return load_task_data(task, config.data_dir)
    except (OSError, ValueError, ImportError) as e:
        raise BenchError(f"task {task.name!r}: {e}") from None


def run_settings(task: Task, ds: Dataset, config: CompareConfig) -> RunSettings:
    """The run's budget: ``config``'s values, the task's defaults for the ``None`` ones."""
    from optlab.bench.runner import RunSettings

    batch_size = config.batch_size or task.batch_size
    if batch_size > ds.num_train:
        raise BenchError(
            f"--batch-size {batch_size} exceeds task {task.name!r}'s {ds.num_train} "
            "training examples"
        )
    return RunSettings(
        epochs=config.epochs or task.epochs,
        steps=config.steps,
        batch_size=batch_size,
        seed=config.seed,
        target=task.target if config.target is None else config.target,
        schedule=config.schedule,
        eval_every=task.eval_every,
    )


def build(
    task: Task,
    ds: Dataset,
    settings: RunSettings,
    name: str,
    overrides: Mapping[str, Any],
) -> BuiltOptimizer:
    """Build optimizer ``name`` for ``task``; a value its factory rejects is a BenchError."""
    from optlab.bench import registry, runner

    try:
        built = registry.build_optimizer(
            name,
            task.name,
            overrides,
            schedule=settings.schedule,
            total_steps=runner.total_steps(ds, settings),
        )
        # K-FAC's curvature exists for some losses only: say so now, not after the other
        # optimizers have trained.
        runner.kfac_curvature_fn(task, built)
        return built
    except BenchError:
        raise
    except KeyError as e:
        raise BenchError(e.args[0]) from None
    except (ValueError, TypeError) as e:
        raise BenchError(f"optimizer {name!r}: {e}") from None
