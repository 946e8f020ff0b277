"""``optlab lab landscape`` and ``optlab lab connect``: the lab experiments in one command each.

Usage::

    optlab lab landscape                 # SGD vs SAM on the digits: 1D, 2D, trajectory plots
    optlab lab landscape --rho 0.1 --grid 41 --out runs/landscape
    optlab lab connect                   # two SGD solutions, Bezier and polychain curves
    optlab lab connect --curves bezier --curve-epochs 40

Both train on a task of ``optlab compare`` (default ``digits-mlp``: scikit-learn's bundled
digits, offline), print a summary, and write ``landscape.json`` / ``connect.json`` (every
number, the settings, wall and CPU seconds) and PNG plots to ``--out``. Bad input prints one
line, ``optlab lab <command>: error: ...``, and exits with status 2.

``landscape`` trains the task's model from the same initialization and batch order with SGD
(momentum) and with SAM around the same SGD (optlab.sam), then evaluates the training loss
along filter-normalized random directions (Li et al. 2018; :mod:`optlab.lab.landscape`): the
same Gaussian draws, normalized to each model's filters, the same grid. The flatness numbers
are the width of ``{a : L(a) <= L(0) + rise}`` in 1D (mean over ``--directions`` draws) and the
area of that set on the 2D grid. With ``--trajectory`` (default) each model's path is also
shown in the plane of its two principal components.

``connect`` trains two models with SGD from seeds ``--seed`` and ``--seed + 1``, trains a
curve between them for each of ``--curves`` (Garipov et al. 2018;
:mod:`optlab.lab.connect`), and evaluates training and test loss and accuracy on
``--points`` values of t along the straight line and each curve; the barrier of a path is its
maximum training loss minus the mean of the two ends.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LANDSCAPE_DEFAULTS = {
    "task": "digits-mlp",
    "epochs": 20,
    "batch_size": 64,
    "lr": 0.05,
    "momentum": 0.9,
    "rho": 0.5,
    "points": 51,
    "span": 1.0,
    "directions": 3,
    "grid": 41,
    "traj_grid": 31,
    "rise": 0.1,
    "eval_batch": 2048,
}

CONNECT_DEFAULTS = {
    "task": "digits-mlp",
    "epochs": 20,
    "batch_size": 64,
    "lr": 0.05,
    "momentum": 0.9,
    "curves": "bezier,polychain",
    "curve_epochs": 20,
    "curve_lr": 0.05,
    "weight_decay": 5e-4,
    "points": 61,
    "eval_batch": 2048,
}


class LabError(ValueError):
    """Bad input to ``optlab lab ...`` (printed as one line, exit status 2)."""


# -- parser ------------------------------------------------------------------------------------


def add_parser(sub: Any, integer: Callable[[str], int], number: Callable[[str], float]) -> None:
    """Register ``lab`` and its subcommands on the ``optlab`` subparsers ``sub``."""
    lab = sub.add_parser(
        "lab",
        help="lab experiments: loss landscapes (SGD vs SAM), mode connectivity",
        description="Lab experiments about training, one command each.",
    )
    lab_sub = lab.add_subparsers(dest="lab_command", metavar="LAB_COMMAND", required=True)

    def common(p: argparse.ArgumentParser, defaults: dict[str, Any], out: str) -> None:
        p.add_argument(
            "--task",
            default=defaults["task"],
            help=f"an optlab compare task (default: {defaults['task']})",
        )
        p.add_argument(
            "--epochs",
            type=integer,
            default=defaults["epochs"],
            help=f"training epochs of each model (default: {defaults['epochs']})",
        )
        p.add_argument(
            "--batch-size",
            type=integer,
            default=defaults["batch_size"],
            help=f"training batch size (default: {defaults['batch_size']})",
        )
        p.add_argument(
            "--lr",
            type=number,
            default=defaults["lr"],
            help=f"SGD learning rate (default: {defaults['lr']})",
        )
        p.add_argument(
            "--momentum",
            type=number,
            default=defaults["momentum"],
            help=f"SGD heavy-ball momentum, 0 for none (default: {defaults['momentum']})",
        )
        p.add_argument(
            "--seed", type=integer, default=0, help="initialization and batch-order seed"
        )
        p.add_argument(
            "--eval-batch",
            type=integer,
            default=defaults["eval_batch"],
            help="examples per evaluation batch (default: %(default)s)",
        )
        p.add_argument(
            "--out", default=out, metavar="DIR", help=f"output directory (default: {out})"
        )
        p.add_argument(
            "--data-dir", default=None, metavar="DIR", help="data files for file-based tasks"
        )
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")

    d = LANDSCAPE_DEFAULTS
    p = lab_sub.add_parser(
        "landscape",
        help="SGD vs SAM loss landscapes (filter-normalized 1D/2D, trajectory PCA)",
        description=(
            "Train a task's model with SGD and with SAM around the same SGD, then plot the "
            "training loss along filter-normalized random directions (Li et al. 2018) in 1D "
            "and 2D on the same axes, and along each trajectory's principal components."
        ),
    )
    common(p, d, "runs/lab_landscape")
    p.add_argument("--rho", type=number, default=d["rho"], help="SAM radius (default: %(default)s)")
    p.add_argument(
        "--points",
        type=integer,
        default=d["points"],
        help="1D grid points (default: %(default)s)",
    )
    p.add_argument(
        "--span",
        type=number,
        default=d["span"],
        help="grids run over [-span, span] (default: %(default)s)",
    )
    p.add_argument(
        "--directions",
        type=integer,
        default=d["directions"],
        help="random 1D directions per model (default: %(default)s)",
    )
    p.add_argument(
        "--grid",
        type=integer,
        default=d["grid"],
        help="2D grid points per axis, 0 to skip the 2D plot (default: %(default)s)",
    )
    p.add_argument(
        "--traj-grid",
        type=integer,
        default=d["traj_grid"],
        help="trajectory-plane grid points per axis, 0 to skip it (default: %(default)s)",
    )
    p.add_argument(
        "--rise",
        type=number,
        default=d["rise"],
        help="loss rise above the minimum that defines the widths (default: %(default)s)",
    )

    d = CONNECT_DEFAULTS
    p = lab_sub.add_parser(
        "connect",
        help="mode connectivity: Bezier / polychain curves between two SGD solutions",
        description=(
            "Train two models with SGD from different seeds, train curves between them "
            "(Garipov et al. 2018) and compare the loss and error along the curves with "
            "the straight line."
        ),
    )
    common(p, d, "runs/lab_connect")
    p.add_argument(
        "--curves",
        default=d["curves"],
        metavar="C[,C]",
        help="curve kinds, from bezier, polychain (default: %(default)s)",
    )
    p.add_argument(
        "--curve-epochs",
        type=integer,
        default=d["curve_epochs"],
        help="epochs of curve training (default: %(default)s)",
    )
    p.add_argument(
        "--curve-lr",
        type=number,
        default=d["curve_lr"],
        help="learning rate of the bends, SGD with --momentum (default: %(default)s)",
    )
    p.add_argument(
        "--weight-decay",
        type=number,
        default=d["weight_decay"],
        help="L2 on the point of the curve (default: %(default)s)",
    )
    p.add_argument(
        "--points",
        type=integer,
        default=d["points"],
        help="values of t in [0, 1] evaluated (default: %(default)s)",
    )

    # The training-dynamics experiments (grokking, double-descent, ...) live in their own module.
    from optlab.lab import _cli_dynamics

    _cli_dynamics.add_parsers(lab_sub, integer, number)
    # The study of "Clarifying Shampoo" (optimizers on a small byte-level LM) has its own module.
    from optlab.lab import _cli_study

    _cli_study.add_parsers(lab_sub, integer, number)


# -- checks ------------------------------------------------------------------------------------


def _positive_int(args: argparse.Namespace, name: str, minimum: int = 1) -> None:
    value = getattr(args, name)
    if value < minimum:
        flag = "--" + name.replace("_", "-")
        raise LabError(f"{flag} must be an integer >= {minimum}, got {value}")


def _real(
    args: argparse.Namespace, name: str, low: float, *, open_low: bool, high: float = math.inf
) -> None:
    value = getattr(args, name)
    ok = math.isfinite(value) and (value > low if open_low else value >= low) and value <= high
    if not ok:
        flag = "--" + name.replace("_", "-")
        lo = f"{'(' if open_low else '['}{low:g}"
        hi = f"{high:g}]" if math.isfinite(high) else "inf)"
        raise LabError(f"{flag} must be a number in {lo}, {hi}, got {value!r}")


def _check_common(args: argparse.Namespace) -> None:
    from optlab.bench.config import BenchError, check_seed
    from optlab.bench.tasks import TASKS

    if args.task not in TASKS:
        raise LabError(f"unknown task {args.task!r}; known: {', '.join(TASKS)}")
    for name in ("epochs", "batch_size", "eval_batch"):
        _positive_int(args, name)
    _real(args, "lr", 0.0, open_low=True)
    _real(args, "momentum", 0.0, open_low=False, high=0.999)
    try:
        check_seed(args.seed)
    except BenchError as e:
        raise LabError(str(e)) from None


def check_landscape(args: argparse.Namespace) -> None:
    """Every range of ``optlab lab landscape``'s arguments (:class:`LabError`)."""
    _check_common(args)
    _real(args, "rho", 0.0, open_low=False)
    _positive_int(args, "points", 3)
    if args.points % 2 == 0:
        raise LabError(f"--points must be odd (the grid then contains 0), got {args.points}")
    _real(args, "span", 0.0, open_low=True)
    _positive_int(args, "directions")
    for name in ("grid", "traj_grid"):
        value = getattr(args, name)
        if value != 0 and (value < 3 or value % 2 == 0):
            flag = "--" + name.replace("_", "-")
            raise LabError(f"{flag} must be 0 (skip) or an odd integer >= 3, got {value}")
    _real(args, "rise", 0.0, open_low=True)


def check_connect(args: argparse.Namespace) -> None:
    """Every range of ``optlab lab connect``'s arguments (:class:`LabError`)."""
    from optlab.lab.connect import KINDS

    _check_common(args)
    kinds = [k for k in args.curves.split(",")]
    for k in kinds:
        if k not in KINDS:
            raise LabError(f"unknown curve {k!r} in --curves; known: {', '.join(KINDS)}")
    if len(set(kinds)) != len(kinds):
        raise LabError(f"a curve is listed twice in --curves: {args.curves}")
    _positive_int(args, "curve_epochs")
    _real(args, "curve_lr", 0.0, open_low=True)
    _real(args, "weight_decay", 0.0, open_low=False)
    _positive_int(args, "points", 3)


# -- shared ------------------------------------------------------------------------------------


class _Clock:
    """Wall and CPU (user + system, this process) seconds since creation, and per phase."""

    def __init__(self) -> None:
        self.wall0 = time.perf_counter()
        self.cpu0 = self._cpu()
        self.phases: dict[str, dict[str, float]] = {}
        self._mark = (self.wall0, self.cpu0)

    @staticmethod
    def _cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def phase(self, name: str) -> None:
        wall, cpu = time.perf_counter(), self._cpu()
        self.phases[name] = {"wall_s": wall - self._mark[0], "cpu_s": cpu - self._mark[1]}
        self._mark = (wall, cpu)

    def total(self) -> dict[str, float]:
        return {
            "wall_s": time.perf_counter() - self.wall0,
            "cpu_s": self._cpu() - self.cpu0,
        }


def _bar(desc: str, total: int, quiet: bool) -> Any:
    if quiet:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="pt", leave=True, dynamic_ncols=True)


def _close(bar: Any) -> None:
    if bar is not None:
        bar.close()


def _prepare(args: argparse.Namespace) -> tuple[Any, Any, Path]:
    """The task, its data and the output directory (errors as :class:`LabError`)."""
    from optlab.bench.config import BenchError, check_out_dir
    from optlab.bench.tasks import get_task, load_task_data

    task = get_task(args.task)
    try:
        out = check_out_dir(args.out)
    except BenchError as e:
        raise LabError(str(e)) from None
    try:
        ds = load_task_data(task, args.data_dir)
    except (OSError, ValueError, ImportError) as e:
        raise LabError(f"task {task.name!r}: {e}") from None
    if args.batch_size > ds.num_train:
        raise LabError(
            f"--batch-size {args.batch_size} exceeds task {task.name!r}'s {ds.num_train} "
            "training examples"
        )
    return task, ds, out


def _sgd(args: argparse.Namespace) -> Any:
    import optax

    return optax.sgd(args.lr, momentum=args.momentum or None)


def _train(args, task, ds, tx, name: str, *, seed: int, grad_fn: bool, checkpoints: int = 0):
    from optlab.bench import runner
    from optlab.lab import _train as tr

    bar = None
    if not args.quiet:
        from tqdm.auto import tqdm

        total = args.epochs * runner.steps_per_epoch(ds, args.batch_size)
        bar = tqdm(total=total, desc=f"train {name:>6}", unit="step", dynamic_ncols=True)
    try:
        return tr.train(
            task,
            ds,
            tx,
            needs_grad_fn=grad_fn,
            seed=seed,
            epochs=args.epochs,
            batch_size=args.batch_size,
            num_checkpoints=checkpoints,
            progress=bar,
        )
    finally:
        _close(bar)


def _loss_fn(task: Any) -> Callable[[Any, Any], Any]:
    import jax.numpy as jnp

    def loss(model: Any, batch: Any) -> Any:
        value = jnp.mean(task.metrics(model, *batch)[0])
        return value if task.penalty is None else value + task.penalty(model)

    return loss


def _environment() -> dict[str, Any]:
    from optlab.bench import report

    return report.environment()


# -- landscape ---------------------------------------------------------------------------------


def run_landscape(args: argparse.Namespace, stream: Any = None) -> dict[str, Any]:
    """``optlab lab landscape``; returns the JSON payload (also written to ``--out``)."""
    check_landscape(args)
    stream = sys.stdout if stream is None else stream
    clock = _Clock()
    task, ds, out = _prepare(args)

    import jax
    import numpy as np
    import optax
    from flax import nnx

    import optlab
    from optlab.bench import report
    from optlab.lab import _train as tr
    from optlab.lab import landscape as ls

    clock.phase("load")
    models = {
        "SGD": _train(
            args, task, ds, _sgd(args), "SGD", seed=args.seed, grad_fn=False, checkpoints=40
        ),
        "SAM": _train(
            args,
            task,
            ds,
            optlab.sam(optax.sgd(args.lr, momentum=args.momentum or None), rho=args.rho),
            "SAM",
            seed=args.seed,
            grad_fn=True,
            checkpoints=40,
        ),
    }
    clock.phase("train")
    train_b, train_n = tr.split_batches((ds.x_train, ds.y_train), args.eval_batch)
    test_b, test_n = tr.split_batches((ds.x_test, ds.y_test), args.eval_batch)
    loss_fn = _loss_fn(task)
    payload: dict[str, Any] = {
        "command": "optlab lab landscape",
        "settings": {k: v for k, v in vars(args).items() if k not in ("func",)},
        "task": task.name,
        "models": {},
        "rise": args.rise,
        "environment": _environment(),
        "references": [
            'Li, Xu, Taylor, Studer, Goldstein, "Visualizing the Loss Landscape of Neural '
            'Nets", NeurIPS 2018',
            'Foret, Kleiner, Mobahi, Neyshabur, "Sharpness-Aware Minimization for '
            'Efficiently Improving Generalization", ICLR 2021',
        ],
    }
    for name, t in models.items():
        train_loss, train_acc = tr.evaluate(task, t.model, train_b, train_n)
        test_loss, test_acc = tr.evaluate(task, t.model, test_b, test_n)
        payload["models"][name] = {
            "train_loss": train_loss,
            "train_acc": train_acc,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "step_loss": t.step_loss,
        }
    key = jax.random.key(args.seed)
    a = np.linspace(-args.span, args.span, args.points)
    panels_1d: dict[str, dict[str, Any]] = {}
    for name, t in models.items():
        params = nnx.state(t.model, nnx.Param)
        bar = _bar(f"1D {name}", args.directions * args.points, args.quiet)
        curves, widths = [], []
        try:
            for k in range(args.directions):
                d = ls.random_direction(params, jax.random.fold_in(key, k))
                land = ls.landscape_1d(
                    t.model,
                    loss_fn,
                    train_b,
                    direction=d,
                    span=(-args.span, args.span),
                    num=args.points,
                    weights=train_n,
                    progress=bar,
                )
                curves.append(land.losses)
                widths.append(ls.sublevel_width(a, land.losses, rise=args.rise))
        finally:
            _close(bar)
        center = float(curves[0][args.points // 2])
        panels_1d[name] = {
            "coords": [a] * len(curves),
            "losses": curves,
            "widths": widths,
            "mean_width": float(np.mean(widths)),
            "center_loss": center,
        }
        payload["models"][name]["1d"] = {
            "coords": a.tolist(),
            "losses": [c.tolist() for c in curves],
            "widths": widths,
            "mean_width": float(np.mean(widths)),
            "center_loss": center,
        }
    clock.phase("landscape_1d")
    plots = []
    if not args.no_plots:
        from optlab.lab import _plots

        _plots.plot_1d(panels_1d, args.rise, out / "landscape_1d.png")
        plots.append("landscape_1d.png")

    panels_2d: dict[str, dict[str, Any]] = {}
    if args.grid:
        for name, t in models.items():
            bar = _bar(f"2D {name}", args.grid**2, args.quiet)
            try:
                land = ls.landscape_2d(
                    t.model,
                    loss_fn,
                    train_b,
                    key=jax.random.fold_in(key, 1000),
                    xspan=(-args.span, args.span),
                    yspan=(-args.span, args.span),
                    num=args.grid,
                    weights=train_n,
                    progress=bar,
                )
            finally:
                _close(bar)
            c = args.grid // 2
            area = ls.sublevel_area(land.coords, land.losses, rise=args.rise)
            panels_2d[name] = {
                "coords": land.coords,
                "losses": land.losses,
                "center_loss": float(land.losses[c, c]),
                "area": area,
            }
            payload["models"][name]["2d"] = {
                "x": land.coords[0].tolist(),
                "y": land.coords[1].tolist(),
                "losses": land.losses.tolist(),
                "center_loss": float(land.losses[c, c]),
                "area": area,
            }
        clock.phase("landscape_2d")
        if not args.no_plots:
            from optlab.lab import _plots

            _plots.plot_2d(panels_2d, args.rise, out / "landscape_2d.png")
            plots.append("landscape_2d.png")

    if args.traj_grid:
        panels_t: dict[str, dict[str, Any]] = {}
        paths, labels = {}, {}
        for name, t in models.items():
            final = nnx.state(t.model, nnx.Param)
            pca = ls.trajectory_pca(t.checkpoints, final)
            xspan = ls.span_from_coords(pca.coords[:, 0])
            yspan = ls.span_from_coords(pca.coords[:, 1])
            bar = _bar(f"trajectory {name}", args.traj_grid**2, args.quiet)
            try:
                land = ls.landscape_2d(
                    t.model,
                    loss_fn,
                    train_b,
                    directions=pca.directions,
                    xspan=xspan,
                    yspan=yspan,
                    num=args.traj_grid,
                    weights=train_n,
                    progress=bar,
                )
            finally:
                _close(bar)
            # The final weights sit at the origin, usually not on this grid: the 1D center.
            center = payload["models"][name]["1d"]["center_loss"]
            r = pca.explained_variance_ratio
            panels_t[name] = {"coords": land.coords, "losses": land.losses, "center_loss": center}
            paths[name] = pca.coords
            labels[name] = (f"PC1 ({100 * r[0]:.1f}%)", f"PC2 ({100 * r[1]:.1f}%)")
            payload["models"][name]["trajectory"] = {
                "explained_variance_ratio": r.tolist(),
                "explained_variance": pca.explained_variance.tolist(),
                "path": pca.coords.tolist(),
                "x": land.coords[0].tolist(),
                "y": land.coords[1].tolist(),
                "losses": land.losses.tolist(),
            }
        clock.phase("trajectory")
        if not args.no_plots:
            from optlab.lab import _plots

            _plots.plot_2d(
                panels_t,
                args.rise,
                out / "landscape_trajectory.png",
                paths=paths,
                axis_labels=labels,
            )
            plots.append("landscape_trajectory.png")

    payload["plots"] = plots
    payload["timing"] = {"phases": clock.phases, **clock.total()}
    report.write_json(out / "landscape.json", payload)
    _print_landscape(payload, args, out, stream)
    return payload


def _print_landscape(payload: dict[str, Any], args: argparse.Namespace, out: Path, stream) -> None:
    rise = args.rise
    print(f"\n{payload['task']}: SGD vs SAM (rho={args.rho}), {args.epochs} epochs", file=stream)
    head = f"{'':4s} {'train loss':>10s} {'test acc':>8s} {'1D width':>9s} {'2D area':>8s}"
    print(head + f"   (widths: L <= L(0) + {rise:g}, filter-normalized)", file=stream)
    for name, m in payload["models"].items():
        area = m.get("2d", {}).get("area", float("nan"))
        print(
            f"{name:4s} {m['train_loss']:10.4f} {m['test_acc']:8.4f} "
            f"{m['1d']['mean_width']:9.3f} {area:8.3f}",
            file=stream,
        )
    t = payload["timing"]
    print(
        f"wall {t['wall_s']:.1f} s, CPU {t['cpu_s']:.1f} s; results: {out / 'landscape.json'}; "
        f"plots: {', '.join(payload['plots']) or 'none'}",
        file=stream,
    )


# -- connect -----------------------------------------------------------------------------------


def run_connect(args: argparse.Namespace, stream: Any = None) -> dict[str, Any]:
    """``optlab lab connect``; returns the JSON payload (also written to ``--out``)."""
    check_connect(args)
    stream = sys.stdout if stream is None else stream
    clock = _Clock()
    task, ds, out = _prepare(args)

    import jax
    import optax

    from optlab.bench import report, runner
    from optlab.data import batch_iterator
    from optlab.lab import _train as tr
    from optlab.lab import connect as cn

    clock.phase("load")
    ends = [
        _train(args, task, ds, _sgd(args), f"SGD s{s}", seed=s, grad_fn=False)
        for s in (args.seed, args.seed + 1)
    ]
    clock.phase("train_endpoints")
    metrics = lambda m, b: task.metrics(m, *b)  # noqa: E731
    kinds = args.curves.split(",")
    trained: dict[str, Any] = {}
    spe = runner.steps_per_epoch(ds, args.batch_size)
    for i, kind in enumerate(kinds):
        curve = cn.init_curve(ends[0].model, ends[1].model, kind=kind)
        batches = batch_iterator(
            ds.x_train,
            ds.y_train,
            batch_size=args.batch_size,
            seed=args.seed + 2,
            drop_remainder=True,
            epochs=args.curve_epochs,
        )
        bar = None
        if not args.quiet:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=args.curve_epochs * spe,
                desc=f"curve {kind}",
                unit="step",
                dynamic_ncols=True,
            )
        try:
            res = cn.train_curve(
                curve,
                metrics,
                batches,
                optax.sgd(args.curve_lr, momentum=args.momentum or None),
                weight_decay=args.weight_decay,
                key=jax.random.key(args.seed + i),
                progress=bar,
            )
        finally:
            _close(bar)
        trained[kind] = res
    clock.phase("train_curves")

    train_b, _ = tr.split_batches((ds.x_train, ds.y_train), args.eval_batch)
    test_b, _ = tr.split_batches((ds.x_test, ds.y_test), args.eval_batch)
    paths = {"line": cn.line(ends[0].model, ends[1].model)}
    paths.update({k: r.curve for k, r in trained.items()})
    evals: dict[str, dict[str, Any]] = {}
    for name, curve in paths.items():
        bar = _bar(f"eval {name}", args.points, args.quiet)
        try:
            e = cn.evaluate_curve(
                curve, metrics, train_b, test_b, num_points=args.points, progress=bar
            )
        finally:
            _close(bar)
        evals[name] = e.to_dict()
        evals[name]["test_error_barrier"] = cn.barrier(1.0 - e.test_acc)
    clock.phase("evaluate")
    plots = []
    if not args.no_plots:
        from optlab.lab import _plots

        _plots.plot_connect(evals, out / "connect.png")
        plots.append("connect.png")
    payload = {
        "command": "optlab lab connect",
        "settings": dict(vars(args)),
        "task": task.name,
        "endpoints": [
            {"seed": s, "step_loss": e.step_loss} for s, e in zip((args.seed, args.seed + 1), ends)
        ],
        "curve_training": {
            k: {"losses": r.losses.tolist(), "ts": r.ts.tolist()} for k, r in trained.items()
        },
        "paths": evals,
        "plots": plots,
        "environment": _environment(),
        "references": [
            'Garipov, Izmailov, Podoprikhin, Vetrov, Wilson, "Loss Surfaces, Mode '
            'Connectivity, and Fast Ensembling of DNNs", NeurIPS 2018',
        ],
        "timing": {"phases": clock.phases, **clock.total()},
    }
    report.write_json(out / "connect.json", payload)
    print(f"\n{task.name}: two SGD solutions (seeds {args.seed}, {args.seed + 1})", file=stream)
    print(
        f"{'path':10s} {'train loss barrier':>18s} {'test loss barrier':>17s} "
        f"{'max test err':>12s}   (barrier: max over t minus the mean of the ends)",
        file=stream,
    )
    for name, e in evals.items():
        print(
            f"{name:10s} {e['train_barrier']:18.4f} {e['test_barrier']:17.4f} "
            f"{100 * (1 - min(e['test_acc'])):11.2f}%",
            file=stream,
        )
    t = payload["timing"]
    print(
        f"wall {t['wall_s']:.1f} s, CPU {t['cpu_s']:.1f} s; results: {out / 'connect.json'}; "
        f"plots: {', '.join(plots) or 'none'}",
        file=stream,
    )
    return payload


def main(args: argparse.Namespace) -> int:
    """Run ``optlab lab <command>``; bad input: one line on stderr, status 2."""
    from optlab.lab._cli_dynamics import RUNNERS
    from optlab.lab._cli_study import RUNNERS as STUDY_RUNNERS

    run = {"landscape": run_landscape, "connect": run_connect, **RUNNERS, **STUDY_RUNNERS}[
        args.lab_command
    ]
    try:
        run(args)
    except LabError as e:
        print(f"optlab lab {args.lab_command}: error: {e}", file=sys.stderr)
        return 2
    return 0
