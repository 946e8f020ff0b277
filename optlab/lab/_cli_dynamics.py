"""``optlab lab grokking``, ``double-descent``, ...: the lectures' training-dynamics experiments.

Usage::

    optlab lab grokking                              # x / y mod 97, full-batch AdamW, wd 1
    optlab lab grokking --optimizers adamw,muon,shampoo --seeds 3
    optlab lab double-descent                        # Legendre min-norm; MLP width sweep
    optlab lab double-descent --mlp-long             # the longer MLP setting
    optlab lab rosenbrock                            # optax's methods on Rosenbrock's valley
    optlab lab sgd-noise                             # constant-step SGD's noise floor
    optlab lab init                                  # deep ReLU MLPs: He vs Glorot vs naive
    optlab lab imbalance                             # Zipf classes: SGD vs Adam per decile

Same conventions as ``optlab lab landscape``: offline, ``--seed``, ``--out``, ``--quiet``,
``--no-plots``, tqdm progress bars, ``<experiment>.json`` (every number, the settings, wall and
CPU seconds) and PNG plots in ``--out``, one-line errors with exit status 2, and the result the
experiment exists to show printed in one line at the end.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from optlab.lab._cli import (
    LabError,
    _bar,
    _Clock,
    _close,
    _environment,
    _positive_int,
    _real,
)

GROKKING_DEFAULTS = {
    "p": 97,
    "op": "/",
    "train_fraction": 0.5,
    "optimizers": "adamw",
    "seeds": 1,
    "steps": 3000,
    "eval_every": 50,
    "weight_decay": 1.0,
    "d_model": 128,
    "num_heads": 4,
    "d_mlp": 512,
    "num_layers": 1,
    "stop_at": 0.99,
}

DOUBLE_DESCENT_DEFAULTS = {
    "n_train": 30,
    "max_degree": 119,
    "noise": 0.2,
    "ridge": 0.1,
    "trials": 20,
    "design": "equispaced",
}

# Part (b), the MLP width sweep: the quick default (about 40 s of CPU) and the longer setting
# of --mlp-long (3 trials, twice the training, widths to 512: about 4x the CPU).
MLP_QUICK = {
    "mlp_train": 500,
    "mlp_noise": 0.2,
    "mlp_steps": 2000,
    "mlp_trials": 2,
    "mlp_lr": 3e-3,
    "mlp_widths": "1,2,3,4,6,8,11,16,23,32,45,64,91,128,181,256",
}
MLP_LONG = {
    **MLP_QUICK,
    "mlp_steps": 4000,
    "mlp_trials": 3,
    "mlp_widths": "1,2,3,4,6,8,11,16,23,32,45,64,91,128,181,256,362,512",
}

IMBALANCE_DEFAULTS = {
    "classes": 1000,
    "samples": 10000,
    "dim": 128,
    "exponent": 1.0,
    "steps": 2000,
    "batch_size": 128,
    "eval_every": 100,
    "momentum": 0.9,
    # The same sweep for both: five rates, factors of ~3 from a tenth to ten times a center
    # (10 for SGD, 0.1 for Adam); a best rate on an edge of its sweep is reported.
    "sgd_lrs": "1,3,10,30,100",
    "adam_lrs": "0.01,0.03,0.1,0.3,1",
}

ROSENBROCK_DEFAULTS = {
    "methods": "all",
    "steps": 1000,
    "lr": 0.003,
    "grid_min": 1e-5,
    "grid_max": 10.0,
    "grid_points": 25,
    "start": "-2,2",
}


def _common(p: argparse.ArgumentParser, integer: Callable[[str], int], out: str) -> None:
    p.add_argument("--seed", type=integer, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--out", default=out, metavar="DIR", help=f"output directory (default: {out})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def add_parsers(
    lab_sub: Any, integer: Callable[[str], int], number: Callable[[str], float]
) -> None:
    """Register this module's experiments on the ``optlab lab`` subparsers."""
    d = GROKKING_DEFAULTS
    p = lab_sub.add_parser(
        "grokking",
        help="grokking on x o y mod p: a transformer generalizes long after it memorizes",
        description=(
            "Full-batch training of a one-layer transformer (Nanda et al. 2023) on a fraction "
            "of the table of x o y mod p (Power et al. 2022); train and test accuracy vs steps "
            "and the time to grok (first step with test accuracy >= 0.95) per optimizer."
        ),
    )
    _common(p, integer, "runs/lab_grokking")
    p.add_argument("--p", type=integer, default=d["p"], help="prime modulus (default: 97)")
    p.add_argument(
        "--op", default=d["op"], choices=("/", "+", "-", "*"), help="operation (default: /)"
    )
    p.add_argument(
        "--train-fraction",
        type=number,
        default=d["train_fraction"],
        help="fraction of the table used for training (default: %(default)s)",
    )
    p.add_argument(
        "--optimizers",
        default=d["optimizers"],
        metavar="O[,O]",
        help="from adamw, muon, shampoo (default: %(default)s)",
    )
    p.add_argument(
        "--seeds",
        type=integer,
        default=d["seeds"],
        help="runs per optimizer, seeds --seed, --seed + 1, ... (default: %(default)s)",
    )
    p.add_argument(
        "--steps", type=integer, default=d["steps"], help="step budget (default: %(default)s)"
    )
    p.add_argument(
        "--eval-every",
        type=integer,
        default=d["eval_every"],
        help="steps between accuracy evaluations (default: %(default)s)",
    )
    p.add_argument(
        "--lr",
        type=number,
        default=None,
        help="learning rate (default: 3e-3 for adamw and shampoo, 0.02 for muon)",
    )
    p.add_argument(
        "--weight-decay",
        type=number,
        default=d["weight_decay"],
        help="decoupled weight decay (default: %(default)s)",
    )
    p.add_argument("--d-model", type=integer, default=d["d_model"], help="width (default: 128)")
    p.add_argument("--num-heads", type=integer, default=d["num_heads"], help="heads (default: 4)")
    p.add_argument("--d-mlp", type=integer, default=d["d_mlp"], help="MLP width (default: 512)")
    p.add_argument("--num-layers", type=integer, default=d["num_layers"], help="(default: 1)")
    p.add_argument(
        "--stop-at",
        type=number,
        default=d["stop_at"],
        help="stop a run once test accuracy reaches this; 0: run the whole budget "
        "(default: %(default)s)",
    )

    d = DOUBLE_DESCENT_DEFAULTS
    p = lab_sub.add_parser(
        "double-descent",
        help="double descent: Legendre min-norm least squares (with and without ridge), and "
        "an MLP width sweep on the digits with label noise",
        description=(
            "Fit n noisy samples of atan(2t) with Legendre features of degree 0 .. "
            "--max-degree by minimum-norm least squares (and by ridge): the test error peaks "
            "where the number of features equals n and falls again past it. Then (b) train "
            "one-hidden-layer MLPs of each --mlp-widths on the digits with --mlp-noise label "
            "noise: the test error peaks near the width that just fits the noisy labels."
        ),
    )
    _common(p, integer, "runs/lab_double_descent")
    p.add_argument(
        "--n-train", type=integer, default=d["n_train"], help="samples (default: %(default)s)"
    )
    p.add_argument(
        "--max-degree",
        type=integer,
        default=d["max_degree"],
        help="largest degree, > n-train (default: %(default)s)",
    )
    p.add_argument(
        "--noise", type=number, default=d["noise"], help="label noise std (default: %(default)s)"
    )
    p.add_argument(
        "--ridge", type=number, default=d["ridge"], help="ridge penalty (default: %(default)s)"
    )
    p.add_argument(
        "--trials",
        type=integer,
        default=d["trials"],
        help="noise draws averaged (default: %(default)s)",
    )
    p.add_argument(
        "--design",
        default=d["design"],
        choices=("equispaced", "uniform", "chebyshev"),
        help="training points (default: %(default)s)",
    )
    q = MLP_QUICK
    p.add_argument(
        "--no-mlp",
        action="store_true",
        help="skip part (b), the MLP width sweep on the digits",
    )
    p.add_argument(
        "--mlp-long",
        action="store_true",
        help="part (b)'s longer setting: 3 trials, 4000 Adam steps, widths to 512 (each "
        "--mlp-* option given still wins)",
    )
    p.add_argument(
        "--mlp-train",
        type=integer,
        default=None,
        help=f"MLP training samples, the rest of the 1797 digits test (default: {q['mlp_train']})",
    )
    p.add_argument(
        "--mlp-noise",
        type=number,
        default=None,
        help=f"fraction of training labels changed (default: {q['mlp_noise']})",
    )
    p.add_argument(
        "--mlp-steps",
        type=integer,
        default=None,
        help=f"full-batch Adam steps per width (default: {q['mlp_steps']})",
    )
    p.add_argument(
        "--mlp-trials",
        type=integer,
        default=None,
        help=f"splits / noise draws / initializations averaged (default: {q['mlp_trials']})",
    )
    p.add_argument(
        "--mlp-lr", type=number, default=None, help=f"Adam's rate (default: {q['mlp_lr']})"
    )
    p.add_argument(
        "--mlp-widths",
        default=None,
        metavar="W[,W]",
        help=f"hidden widths (default: {q['mlp_widths']})",
    )

    d = ROSENBROCK_DEFAULTS
    p = lab_sub.add_parser(
        "rosenbrock",
        help="paths of optax's methods (and Muon, Shampoo) on Rosenbrock's valley",
        description=(
            "Run SGD, momentum, Nesterov, Adagrad, RMSProp, Adadelta, Adam, AdamW, Lion (optax) "
            "and optlab's Muon and Shampoo from the same start on Rosenbrock's function, at one "
            "learning rate and at the best rate of a log grid per method."
        ),
    )
    _common(p, integer, "runs/lab_rosenbrock")
    p.add_argument(
        "--methods",
        default=d["methods"],
        metavar="M[,M]",
        help="'all' or a list from sgd, momentum, nesterov, adagrad, rmsprop, adadelta, adam, "
        "adamw, lion, muon, shampoo (default: all)",
    )
    p.add_argument("--steps", type=integer, default=d["steps"], help="steps (default: 1000)")
    p.add_argument(
        "--lr", type=number, default=d["lr"], help="the common learning rate (default: 0.003)"
    )
    p.add_argument(
        "--grid-min", type=number, default=d["grid_min"], help="tuning grid low (default: 1e-5)"
    )
    p.add_argument(
        "--grid-max", type=number, default=d["grid_max"], help="tuning grid high (default: 10)"
    )
    p.add_argument(
        "--grid-points",
        type=integer,
        default=d["grid_points"],
        help="log-spaced rates tried per method, 0 to skip tuning (default: 25)",
    )
    p.add_argument("--start", default=d["start"], metavar="X,Y", help="start (default: -2,2)")

    p = lab_sub.add_parser(
        "sgd-noise",
        help="constant-step SGD stalls at a noise floor proportional to the step",
        description=(
            "Strongly convex logistic regression (m samples, n features, ridge mu): squared "
            "distance to the exact optimum vs steps for single-sample SGD at --lr, --lr/2, "
            "--lr/4, for decreasing steps lr/(1 + lr mu k) and for full-batch GD."
        ),
    )
    _common(p, integer, "runs/lab_sgd_noise")
    p.add_argument("--m", type=integer, default=200, help="samples (default: %(default)s)")
    p.add_argument("--n", type=integer, default=10, help="features (default: %(default)s)")
    p.add_argument("--mu", type=number, default=1.0, help="ridge (default: %(default)s)")
    p.add_argument("--lr", type=number, default=0.1, help="largest step (default: %(default)s)")
    p.add_argument("--steps", type=integer, default=20000, help="steps (default: %(default)s)")
    p.add_argument(
        "--seeds", type=integer, default=20, help="runs averaged per curve (default: %(default)s)"
    )
    p.add_argument(
        "--record-every",
        type=integer,
        default=100,
        help="steps between recorded distances (default: %(default)s)",
    )

    p = lab_sub.add_parser(
        "init",
        help="deep plain ReLU MLPs: He vs Glorot vs naive initialization",
        description=(
            "Train plain ReLU MLPs of each --depths on the digits data with SGD (momentum 0.9) "
            "from He, Glorot and N(0, 0.01^2) initializations (He et al. 2015); training loss "
            "vs steps and the forward signal's scale per layer at initialization."
        ),
    )
    _common(p, integer, "runs/lab_init")
    p.add_argument("--depths", default="22,30", metavar="L[,L]", help="weight layers (22,30)")
    p.add_argument("--width", type=integer, default=128, help="hidden width (default: 128)")
    p.add_argument("--steps", type=integer, default=600, help="SGD steps (default: 600)")
    p.add_argument("--lr", type=number, default=0.003, help="learning rate (default: 0.003)")
    p.add_argument("--batch-size", type=integer, default=128, help="batch (default: 128)")

    d = IMBALANCE_DEFAULTS
    p = lab_sub.add_parser(
        "imbalance",
        help="Zipf-distributed classes: mini-batch SGD lags on rare classes, Adam does not",
        description=(
            "A linear softmax model on --classes Zipf-distributed classes (pi_k ~ 1/k^s) with "
            "random inputs (Kunstner et al. 2024), trained with mini-batch SGD (momentum) and "
            "Adam, each over its own learning-rate sweep of the same shape; the best rate of "
            "each by final training loss; training loss per decile of classes vs steps."
        ),
    )
    _common(p, integer, "runs/lab_imbalance")
    p.add_argument(
        "--classes", type=integer, default=d["classes"], help="classes (default: %(default)s)"
    )
    p.add_argument(
        "--samples",
        type=integer,
        default=d["samples"],
        help="training samples, labels drawn from the Zipf law (default: %(default)s)",
    )
    p.add_argument(
        "--dim", type=integer, default=d["dim"], help="input dimension (default: %(default)s)"
    )
    p.add_argument(
        "--exponent",
        type=number,
        default=d["exponent"],
        help="Zipf exponent s, pi_k ~ 1/k^s (default: %(default)s)",
    )
    p.add_argument(
        "--steps", type=integer, default=d["steps"], help="steps per run (default: %(default)s)"
    )
    p.add_argument(
        "--batch-size",
        type=integer,
        default=d["batch_size"],
        help="mini-batch size (default: %(default)s)",
    )
    p.add_argument(
        "--eval-every",
        type=integer,
        default=d["eval_every"],
        help="steps between full training-set evaluations, divides --steps (default: %(default)s)",
    )
    p.add_argument(
        "--momentum",
        type=number,
        default=d["momentum"],
        help="SGD heavy-ball momentum, 0 for none (default: %(default)s)",
    )
    p.add_argument(
        "--sgd-lrs",
        default=d["sgd_lrs"],
        metavar="LR[,LR]",
        help="SGD's learning-rate sweep (default: %(default)s)",
    )
    p.add_argument(
        "--adam-lrs",
        default=d["adam_lrs"],
        metavar="LR[,LR]",
        help="Adam's learning-rate sweep (default: %(default)s)",
    )


def _out_dir(args: argparse.Namespace) -> Any:
    from optlab.bench.config import BenchError, check_out_dir

    try:
        return check_out_dir(args.out)
    except BenchError as e:
        raise LabError(str(e)) from None


def _check_seed(args: argparse.Namespace) -> None:
    from optlab.bench.config import BenchError, check_seed

    try:
        check_seed(args.seed)
    except BenchError as e:
        raise LabError(str(e)) from None


def _names(text: str, known: tuple[str, ...], flag: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise LabError(f"{flag} is empty; known: {', '.join(known)}")
    for n in names:
        if n not in known:
            raise LabError(f"unknown name {n!r} in {flag}; known: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise LabError(f"a name is listed twice in {flag}: {text}")
    return names


def _finish(payload: dict[str, Any], clock: Any, out: Any, name: str, stream: Any) -> None:
    from optlab.bench import report

    payload["timing"] = {"phases": clock.phases, **clock.total()}
    payload["environment"] = _environment()
    report.write_json(out / f"{name}.json", payload)
    t = payload["timing"]
    print(
        f"wall {t['wall_s']:.1f} s, CPU {t['cpu_s']:.1f} s; results: {out / (name + '.json')}; "
        f"plots: {', '.join(payload['plots']) or 'none'}",
        file=stream,
    )


# -- grokking ----------------------------------------------------------------------------------


def check_grokking(args: argparse.Namespace) -> list[str]:
    """Every range of ``optlab lab grokking``'s arguments; returns the optimizer names."""
    from optlab.lab import grokking as gk

    _check_seed(args)
    if not gk._is_prime(args.p) or args.p > 1000:
        raise LabError(f"--p must be a prime in [2, 1000], got {args.p}")
    _real(args, "train_fraction", 0.0, open_low=True, high=0.99)
    names = _names(args.optimizers, gk.OPTIMIZERS, "--optimizers")
    for name in ("seeds", "steps", "eval_every", "d_model", "num_heads", "d_mlp", "num_layers"):
        _positive_int(args, name)
    if args.d_model % args.num_heads:
        raise LabError(f"--d-model {args.d_model} is not divisible by --num-heads {args.num_heads}")
    if args.lr is not None:
        _real(args, "lr", 0.0, open_low=True)
    _real(args, "weight_decay", 0.0, open_low=False)
    _real(args, "stop_at", 0.0, open_low=False, high=1.0)
    return names


def run_grokking(args: argparse.Namespace, stream: Any = None) -> dict[str, Any]:
    """``optlab lab grokking``; returns the JSON payload (also written to ``--out``)."""
    names = check_grokking(args)
    stream = sys.stdout if stream is None else stream
    clock = _Clock()
    out = _out_dir(args)

    import numpy as np

    from optlab.lab import grokking as gk

    data = gk.modular_dataset(args.p, args.op, train_fraction=args.train_fraction, seed=args.seed)
    runs: dict[str, list[Any]] = {n: [] for n in names}
    for name in names:
        for k in range(args.seeds):
            seed = args.seed + k
            bar = _bar(f"{name} seed {seed}", args.steps, args.quiet)
            try:
                run = gk.train(
                    data,
                    name,
                    steps=args.steps,
                    eval_every=args.eval_every,
                    seed=seed,
                    weight_decay=args.weight_decay,
                    learning_rate=args.lr,
                    stop_at=args.stop_at or None,
                    progress=bar,
                    d_model=args.d_model,
                    num_heads=args.num_heads,
                    d_mlp=args.d_mlp,
                    num_layers=args.num_layers,
                )
            finally:
                _close(bar)
            runs[name].append(run)
        clock.phase(f"train_{name}")
    plots = []
    if not args.no_plots:
        from optlab.lab import _plots

        _plots.plot_grokking(runs, args, out / "grokking.png")
        plots.append("grokking.png")
    summary = {}
    for name, rs in runs.items():
        grok = [r.time_to_grok for r in rs]
        mem = [r.time_to_memorize for r in rs]
        done = [g for g in grok if g is not None]
        summary[name] = {
            "time_to_grok": grok,
            "time_to_memorize": mem,
            "grokked": f"{len(done)}/{len(rs)}",
            "median_time_to_grok": float(np.median(done)) if done else None,
        }
    payload: dict[str, Any] = {
        "command": "optlab lab grokking",
        "settings": {k: v for k, v in vars(args).items() if k != "func"},
        "data": {"p": args.p, "op": args.op, "train": len(data.y_train), "test": len(data.y_test)},
        "runs": {n: [r.to_dict() for r in rs] for n, rs in runs.items()},
        "summary": summary,
        "plots": plots,
        "references": [
            'Power, Burda, Edwards, Babuschkin, Misra, "Grokking: Generalization Beyond '
            'Overfitting on Small Algorithmic Datasets", 2022',
            'Nanda, Chan, Lieberum, Smith, Steinhardt, "Progress measures for grokking via '
            'mechanistic interpretability", ICLR 2023',
        ],
    }
    print(
        f"\nx {args.op} y mod {args.p}: {len(data.y_train)} train / {len(data.y_test)} test "
        f"equations, full batch, weight decay {args.weight_decay:g}",
        file=stream,
    )
    print(
        f"{'optimizer':9s} {'memorized (train acc >= 0.99) at':>33s} "
        f"{'grokked (test acc >= 0.95) at':>30s}",
        file=stream,
    )
    for name, s in summary.items():
        fmt = lambda v: ", ".join("-" if x is None else str(x) for x in v)  # noqa: E731
        print(
            f"{name:9s} {fmt(s['time_to_memorize']):>33s} {fmt(s['time_to_grok']):>30s}",
            file=stream,
        )
    _finish(payload, clock, out, "grokking", stream)
    line = "; ".join(
        f"{n} {s['grokked']} runs, median {s['median_time_to_grok']:.0f} steps"
        if s["median_time_to_grok"] is not None
        else f"{n} 0/{len(runs[n])} runs within {args.steps} steps"
        for n, s in summary.items()
    )
    print(f"time to grok (test acc >= 0.95): {line}", file=stream)
    return payload


# -- double descent ----------------------------------------------------------------------------


def check_double_descent(args: argparse.Namespace) -> list[int] | None:
    """Every range of ``optlab lab double-descent``'s arguments (:class:`LabError`); fills in
    the MLP options left out from the quick or long preset; returns the MLP widths (None with
    ``--no-mlp``)."""
    _check_seed(args)
    _positive_int(args, "n_train", 2)
    if args.max_degree < args.n_train or args.max_degree > 2000:
        raise LabError(
            f"--max-degree must be in [--n-train, 2000] = [{args.n_train}, 2000] (the sweep must "
            f"pass the threshold degree n-train - 1), got {args.max_degree}"
        )
    _real(args, "noise", 0.0, open_low=False)
    _real(args, "ridge", 0.0, open_low=True)
    _positive_int(args, "trials")
    if args.no_mlp:
        return None
    preset = MLP_LONG if args.mlp_long else MLP_QUICK
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    _positive_int(args, "mlp_train", 10)
    if args.mlp_train > 1697:
        raise LabError(
            f"--mlp-train must be an integer in [10, 1697] (at least 100 of the 1797 digits are "
            f"left to test), got {args.mlp_train}"
        )
    _real(args, "mlp_noise", 0.0, open_low=False, high=0.9)
    _positive_int(args, "mlp_steps")
    _positive_int(args, "mlp_trials")
    if args.mlp_trials > 20:
        raise LabError(f"--mlp-trials must be an integer in [1, 20], got {args.mlp_trials}")
    _real(args, "mlp_lr", 0.0, open_low=True)
    try:
        widths = [int(v) for v in args.mlp_widths.split(",")]
    except ValueError:
        widths = []
    if not widths or any(w < 1 or w > 4096 for w in widths) or len(set(widths)) != len(widths):
        raise LabError(
            "--mlp-widths must be distinct integers in [1, 4096] separated by commas, got "
            f"{args.mlp_widths!r}"
        )
    return sorted(widths)


def run_double_descent(args: argparse.Namespace, stream: Any = None) -> dict[str, Any]:
    """``optlab lab double-descent``; returns the JSON payload (also written to ``--out``)."""
    widths = check_double_descent(args)
    stream = sys.stdout if stream is None else stream
    clock = _Clock()
    out = _out_dir(args)

    from optlab.lab import double_descent as dd

    degrees = list(range(args.max_degree + 1))
    sweeps = {}
    bar = _bar("double descent", 2, args.quiet)
    try:
        for label, ridge in (("min-norm", 0.0), (f"ridge {args.ridge:g}", args.ridge)):
            sweeps[label] = dd.degree_sweep(
                n_train=args.n_train,
                degrees=degrees,
                noise=args.noise,
                trials=args.trials,
                seed=args.seed,
                ridge=ridge,
                design=args.design,
            )
            if bar is not None:
                bar.update(1)
    finally:
        _close(bar)
    clock.phase("sweep")
    mlp = None
    if widths is not None:
        bar = _bar("MLP widths", len(widths), args.quiet)
        try:
            mlp = dd.width_sweep(
                widths,
                n_train=args.mlp_train,
                noise=args.mlp_noise,
                steps=args.mlp_steps,
                trials=args.mlp_trials,
                seed=args.seed,
                learning_rate=args.mlp_lr,
                progress=bar,
            )
        finally:
            _close(bar)
        clock.phase("mlp_width_sweep")
    plots = []
    if not args.no_plots:
        from optlab.lab import _plots

        _plots.plot_double_descent(sweeps, out / "double_descent.png")
        plots.append("double_descent.png")
        if mlp is not None:
            dd.plot_width_sweep(mlp, out / "double_descent_mlp.png")
            plots.append("double_descent_mlp.png")
    ratios = {k: dd.peak_ratio(s) for k, s in sweeps.items()}
    payload: dict[str, Any] = {
        "command": "optlab lab double-descent",
        "settings": {k: v for k, v in vars(args).items() if k != "func"},
        "threshold_degree": args.n_train - 1,
        "sweeps": {
            k: {
                "ridge": s.ridge,
                "degrees": s.degrees.tolist(),
                "test_mse": s.test_mse.tolist(),
                "train_mse": s.train_mse.tolist(),
                "coef_norm": s.coef_norm.tolist(),
                "peak_over_min_below": ratios[k][0],
                "peak_over_min_above": ratios[k][1],
            }
            for k, s in sweeps.items()
        },
        "mlp": None
        if mlp is None
        else {
            "n_train": mlp.n_train,
            "noise": mlp.noise,
            "widths": mlp.widths,
            "params": mlp.params,
            "params_equal_n_times_classes_at_width": dd.threshold_width(mlp.n_train),
            "train_error": mlp.train_error,
            "test_error": mlp.test_error,
            "train_loss": mlp.train_loss,
            "test_loss": mlp.test_loss,
            "test_error_trials": mlp.test_error_trials,
            "train_error_trials": mlp.train_error_trials,
            "peak": mlp.peak(),
        },
        "plots": plots,
        "references": [
            'Belkin, Hsu, Ma, Mandal, "Reconciling modern machine-learning practice and the '
            'classical bias-variance trade-off", PNAS 2019',
            'Nakkiran, Venkat, Kakade, Ma, "Optimal Regularization Can Mitigate Double '
            'Descent", ICLR 2021',
            'Nakkiran, Kaplun, Bansal, Yang, Barak, Sutskever, "Deep Double Descent: Where '
            'Bigger Models and More Data Hurt", ICLR 2020',
        ],
    }
    thr = args.n_train - 1
    print(
        f"\nLegendre features, n = {args.n_train} {args.design} samples of atan(2t) + "
        f"{args.noise:g} N(0,1), degrees 0..{args.max_degree}, mean over {args.trials} draws",
        file=stream,
    )
    print(f"{'fit':12s} {'best below':>10s} {'at threshold':>13s} {'best above':>10s}", file=stream)
    for k, s in sweeps.items():
        d = s.degrees
        print(
            f"{k:12s} {s.test_mse[d < thr].min():10.4g} {s.test_mse[d == thr][0]:13.4g} "
            f"{s.test_mse[d > thr].min():10.4g}",
            file=stream,
        )
    if mlp is not None:
        print(
            f"\nMLP 64-w-10 on the digits: {mlp.n_train} training samples, "
            f"{100 * mlp.noise:g}% of their labels changed, full-batch Adam lr {args.mlp_lr:g} for "
            f"{args.mlp_steps} steps, mean of {args.mlp_trials} trials",
            file=stream,
        )
        print(
            f"{'width':>6s} {'params':>7s} {'train err':>9s} {'test err':>9s} {'test loss':>9s}",
            file=stream,
        )
        for k in range(len(mlp.widths)):
            print(
                f"{mlp.widths[k]:6d} {mlp.params[k]:7d} {mlp.train_error[k]:9.3f} "
                f"{mlp.test_error[k]:9.3f} {mlp.test_loss[k]:9.3g}",
                file=stream,
            )
    _finish(payload, clock, out, "double_descent", stream)
    mn, rg = ratios["min-norm"], ratios[f"ridge {args.ridge:g}"]
    print(
        f"test error at the threshold (degree {thr}) / best below, / best above: min-norm "
        f"{mn[0]:.3g}, {mn[1]:.3g}; ridge {args.ridge:g}: {rg[0]:.3g}, {rg[1]:.3g}",
        file=stream,
    )
    if mlp is not None:
        print(_mlp_line(mlp), file=stream)
    return payload


def _mlp_line(mlp: Any) -> str:
    """Part (b)'s closing line: the test-error peak next to the interpolation width."""
    import numpy as np

    from optlab.lab import double_descent as dd

    pk = mlp.peak()
    nk = (
        f"n K = {mlp.n_train * dd.DIGITS_CLASSES} parameters at width "
        f"{dd.threshold_width(mlp.n_train):.0f}"
    )
    if pk["interpolation_width"] is None:
        return (
            f"MLP: no width fits the noisy training labels (best train error "
            f"{np.min(mlp.train_error):.3f}): no interpolation threshold in the sweep ({nk})"
        )
    head = (
        f"MLP test error: {pk['peak_test_error']:.3f} at width {pk['peak_width']} next to the "
        f"interpolation width {pk['interpolation_width']} ({nk})"
    )
    if pk["best_below"] is None or pk["best_above"] is None:
        return head + "; the sweep has no widths on both sides of it: peak not assessed"
    return (
        f"{head}; best below {pk['best_below']:.3f} (width {pk['best_below_width']}), best "
        f"above {pk['best_above']:.3f} (width {pk['best_above_width']}): "
        + ("the peak shows" if pk["shows"] else "no peak")
    )


# -- rosenbrock --------------------------------------------------------------------------------


def check_rosenbrock(args: argparse.Namespace) -> tuple[list[str], tuple[float, float]]:
    """Every range of ``optlab lab rosenbrock``'s arguments; returns the methods and start."""
    import math

    from optlab.lab import rosenbrock as rb

    _check_seed(args)
    names = list(rb.METHODS) if args.methods == "all" else None
    if names is None:
        names = _names(args.methods, tuple(rb.METHODS), "--methods")
    _positive_int(args, "steps")
    if args.steps > 100_000:
        raise LabError(f"--steps must be an integer in [1, 100000], got {args.steps}")
    _real(args, "lr", 0.0, open_low=True)
    _positive_int(args, "grid_points", 0)
    if args.grid_points:
        _real(args, "grid_min", 0.0, open_low=True)
        _real(args, "grid_max", args.grid_min, open_low=False)
    try:
        start = tuple(float(v) for v in args.start.split(","))
    except ValueError:
        start = ()
    if len(start) != 2 or not all(math.isfinite(v) for v in start):
        raise LabError(f"--start must be two finite numbers X,Y, got {args.start!r}")
    return names, start  # type: ignore[return-value]


def run_rosenbrock(args: argparse.Namespace, stream: Any = None) -> dict[str, Any]:
    """``optlab lab rosenbrock``; returns the JSON payload (also written to ``--out``)."""
    names, start = check_rosenbrock(args)
    stream = sys.stdout if stream is None else stream
    clock = _Clock()
    out = _out_dir(args)

    import numpy as np

    from optlab.lab import rosenbrock as rb

    grid = (
        np.geomspace(args.grid_min, args.grid_max, args.grid_points) if args.grid_points else None
    )
    results: dict[str, dict[str, Any]] = {}
    bar = _bar("rosenbrock", len(names), args.quiet)
    try:
        for name in names:
            path = rb.trajectory(name, learning_rate=args.lr, steps=args.steps, start=start)
            r: dict[str, Any] = {
                "lr": args.lr,
                "path": path,
                "loss": np.asarray(rb.rosenbrock(path)),
            }
            if grid is not None:
                best, finals = rb.tune(name, steps=args.steps, grid=grid, start=start)
                tuned = rb.trajectory(name, learning_rate=best, steps=args.steps, start=start)
                r["tuned"] = {
                    "lr": best,
                    "grid_mean_log10_loss": finals,
                    "path": tuned,
                    "loss": np.asarray(rb.rosenbrock(tuned)),
                }
            results[name] = r
            if bar is not None:
                bar.update(1)
    finally:
        _close(bar)
    clock.phase("optimize")
    plots = []
    if not args.no_plots:
        from optlab.lab import _plots

        _plots.plot_rosenbrock(results, args.lr, out / "rosenbrock.png")
        plots.append("rosenbrock.png")
    payload: dict[str, Any] = {
        "command": "optlab lab rosenbrock",
        "settings": {k: v for k, v in vars(args).items() if k != "func"},
        "function": "(1 - x)^2 + 100 (y - x^2)^2, minimum 0 at (1, 1)",
        "tuning_grid": None if grid is None else grid.tolist(),
        "methods": results,
        "plots": plots,
        "references": [
            'Merkulov, "Modern optimization methods for training neural networks", lecture',
            'Merkulov, Ostroukhov, "Stochastic gradient descent. Adaptive methods", seminar',
        ],
    }
    print(
        f"\nRosenbrock from ({start[0]:g}, {start[1]:g}), {args.steps} steps; final f "
        f"(minimum 0 at (1, 1))",
        file=stream,
    )
    print(f"{'method':9s} {f'lr {args.lr:g}':>12s} {'tuned lr':>10s} {'tuned f':>10s}", file=stream)
    for name, r in results.items():
        t = r.get("tuned")
        tail = f"{t['lr']:10.3g} {float(t['loss'][-1]):10.3g}" if t else ""
        print(f"{name:9s} {float(r['loss'][-1]):12.3g} {tail}", file=stream)
    _finish(payload, clock, out, "rosenbrock", stream)
    key = "tuned" if grid is not None else None
    final = {n: float((r[key] if key else r)["loss"][-1]) for n, r in results.items()}
    final = {n: (v if np.isfinite(v) else np.inf) for n, v in final.items()}
    best = min(final, key=final.get)
    fixed = {n: float(r["loss"][-1]) for n, r in results.items()}
    diverged = [n for n, v in fixed.items() if not np.isfinite(v)]
    print(
        f"closest to the minimum {'(tuned rates)' if key else ''}: {best} "
        f"(f = {final[best]:.3g}); at lr {args.lr:g}: "
        + (f"diverged: {', '.join(diverged)}" if diverged else "none diverged"),
        file=stream,
    )
    return payload


# -- sgd-noise ---------------------------------------------------------------------------------


def check_sgd_noise(args: argparse.Namespace) -> None:
    """Every range of ``optlab lab sgd-noise``'s arguments (:class:`LabError`)."""
    _check_seed(args)
    for name, low in (("m", 2), ("n", 1), ("seeds", 1), ("record_every", 1)):
        _positive_int(args, name, low)
    _real(args, "mu", 0.0, open_low=True)
    _real(args, "lr", 0.0, open_low=True)
    if args.steps < 2 * args.record_every:
        raise LabError(
            f"--steps must be at least 2 x --record-every = {2 * args.record_every}, "
            f"got {args.steps}"
        )


def run_sgd_noise(args: argparse.Namespace, stream: Any = None) -> dict[str, Any]:
    """``optlab lab sgd-noise``; returns the JSON payload (also written to ``--out``)."""
    check_sgd_noise(args)
    stream = sys.stdout if stream is None else stream
    clock = _Clock()
    out = _out_dir(args)

    import numpy as np

    from optlab.lab import sgd_noise as sn

    prob = sn.make_problem(m=args.m, n=args.n, mu=args.mu, seed=args.seed)
    w_star = sn.exact_optimum(prob)
    lrs = [args.lr, args.lr / 2, args.lr / 4]
    runs: dict[str, dict[str, Any]] = {}
    common = dict(steps=args.steps, record_every=args.record_every, seed=args.seed)
    specs = [(f"SGD lr {lr:g}", lr, "constant", False, args.seeds) for lr in lrs]
    specs.append((f"SGD lr {args.lr:g}/(1 + lr mu k)", args.lr, "decreasing", False, args.seeds))
    specs.append((f"GD lr {args.lr:g} (full batch)", args.lr, "constant", True, 1))
    bar = _bar("sgd-noise", len(specs), args.quiet)
    try:
        for label, lr, sched, full, seeds in specs:
            d = sn.run_sgd(
                prob, w_star, lr=lr, schedule=sched, full_batch=full, seeds=seeds, **common
            )
            runs[label] = {
                "lr": lr,
                "schedule": sched,
                "full_batch": full,
                "squared_distance": d,
                "floor": sn.noise_floor(d),
            }
            if sched == "constant" and not full:
                runs[label]["predicted_floor"] = sn.predicted_floor(prob, w_star, lr)
            if bar is not None:
                bar.update(1)
    finally:
        _close(bar)
    clock.phase("optimize")
    steps = np.arange(args.steps // args.record_every + 1) * args.record_every
    plots = []
    if not args.no_plots:
        from optlab.lab import _plots

        _plots.plot_sgd_noise(steps, runs, out / "sgd_noise.png")
        plots.append("sgd_noise.png")
    floors = [runs[f"SGD lr {lr:g}"]["floor"] for lr in lrs]
    ratios = [floors[0] / floors[1], floors[1] / floors[2]]
    payload: dict[str, Any] = {
        "command": "optlab lab sgd-noise",
        "settings": {k: v for k, v in vars(args).items() if k != "func"},
        "w_star": w_star,
        "gradient_noise_sigma2": sn.gradient_noise(prob, w_star),
        "steps": steps,
        "runs": runs,
        "floor_ratios_halving_the_step": ratios,
        "plots": plots,
        "references": [
            'Merkulov, "Modern optimization methods for training neural networks", lecture',
            'Moulines, Bach, "Non-asymptotic analysis of stochastic approximation algorithms '
            'for machine learning", NeurIPS 2011',
        ],
    }
    print(
        f"\nlogistic regression m={args.m}, n={args.n}, mu={args.mu:g}; ||w - w*||^2 averaged "
        f"over the last half of {args.steps} steps ({args.seeds} runs)",
        file=stream,
    )
    print(f"{'run':34s} {'floor':>10s} {'alpha sigma^2/(2 mu)':>21s}", file=stream)
    for label, r in runs.items():
        pred = r.get("predicted_floor")
        print(
            f"{label:34s} {r['floor']:10.3g} {'' if pred is None else f'{pred:21.3g}'}",
            file=stream,
        )
    _finish(payload, clock, out, "sgd_noise", stream)
    print(
        f"noise floor at lr {lrs[0]:g} / {lrs[1]:g} / {lrs[2]:g}: {floors[0]:.3g} / "
        f"{floors[1]:.3g} / {floors[2]:.3g} (halving the step divides it by {ratios[0]:.2f}, "
        f"{ratios[1]:.2f}); decreasing steps reach "
        f"{runs[specs[3][0]]['squared_distance'][-1]:.2g}, GD "
        f"{runs[specs[4][0]]['squared_distance'][-1]:.2g}",
        file=stream,
    )
    return payload


# -- init --------------------------------------------------------------------------------------


def check_init(args: argparse.Namespace) -> list[int]:
    """Every range of ``optlab lab init``'s arguments; returns the depths."""
    _check_seed(args)
    try:
        depths = [int(v) for v in args.depths.split(",")]
    except ValueError:
        depths = []
    if not depths or any(d < 2 or d > 200 for d in depths):
        raise LabError(
            f"--depths must be integers in [2, 200] separated by commas, got {args.depths!r}"
        )
    _positive_int(args, "width")
    _positive_int(args, "steps")
    _real(args, "lr", 0.0, open_low=True)
    _positive_int(args, "batch_size")
    if args.batch_size > 1797:
        raise LabError(f"--batch-size exceeds the 1797 digits, got {args.batch_size}")
    return depths


def run_init(args: argparse.Namespace, stream: Any = None) -> dict[str, Any]:
    """``optlab lab init``; returns the JSON payload (also written to ``--out``)."""
    depths = check_init(args)
    stream = sys.stdout if stream is None else stream
    clock = _Clock()
    out = _out_dir(args)

    import jax
    import numpy as np

    from optlab.lab import init as ini

    x, y = ini.digits()
    runs: dict[str, dict[str, Any]] = {}
    bar = _bar("init", len(depths) * len(ini.SCHEMES), args.quiet)
    try:
        for depth in depths:
            for scheme in ini.SCHEMES:
                sizes = [x.shape[1]] + [args.width] * (depth - 1) + [10]
                params = ini.init_mlp(jax.random.key(args.seed), sizes, scheme)
                losses = ini.train(
                    x,
                    y,
                    depth=depth,
                    width=args.width,
                    scheme=scheme,
                    steps=args.steps,
                    lr=args.lr,
                    batch_size=args.batch_size,
                    seed=args.seed,
                )
                tail = max(1, args.steps // 10)
                runs[f"{depth} layers, {scheme}"] = {
                    "depth": depth,
                    "scheme": scheme,
                    "loss": losses,
                    "final_loss": float(np.mean(losses[-tail:])),
                    "forward_scales": ini.forward_scales(params, x[:512]),
                }
                if bar is not None:
                    bar.update(1)
    finally:
        _close(bar)
    clock.phase("train")
    plots = []
    if not args.no_plots:
        from optlab.lab import _plots

        _plots.plot_init(runs, out / "init.png")
        plots.append("init.png")
    payload: dict[str, Any] = {
        "command": "optlab lab init",
        "settings": {k: v for k, v in vars(args).items() if k != "func"},
        "runs": runs,
        "plots": plots,
        "references": [
            'He, Zhang, Ren, Sun, "Delving Deep into Rectifiers: Surpassing Human-Level '
            'Performance on ImageNet Classification", ICCV 2015',
            'Glorot, Bengio, "Understanding the difficulty of training deep feedforward '
            'neural networks", AISTATS 2010',
        ],
    }
    print(
        f"\ndigits, plain ReLU MLPs of width {args.width}, SGD lr {args.lr:g} momentum 0.9, "
        f"{args.steps} steps; loss = mean of the last 10% of steps",
        file=stream,
    )
    print(
        f"{'run':22s} {'final loss':>10s} {'last/first layer signal^2 at init':>34s}", file=stream
    )
    for label, r in runs.items():
        sc = r["forward_scales"]
        print(f"{label:22s} {r['final_loss']:10.3g} {sc[-1] / sc[0]:34.3g}", file=stream)
    _finish(payload, clock, out, "init", stream)
    line = "; ".join(
        f"{d} layers: "
        + ", ".join(f"{s} {runs[f'{d} layers, {s}']['final_loss']:.3g}" for s in ini.SCHEMES)
        for d in depths
    )
    print(f"final training loss (log 10 = 2.30 is chance): {line}", file=stream)
    return payload


# -- imbalance ---------------------------------------------------------------------------------


def _rates(text: str, flag: str) -> list[float]:
    import math

    try:
        rates = [float(v) for v in text.split(",")]
    except ValueError:
        rates = []
    if not rates or not all(math.isfinite(r) and r > 0 for r in rates):
        raise LabError(f"{flag} must be positive numbers separated by commas, got {text!r}")
    if len(set(rates)) != len(rates):
        raise LabError(f"a rate is listed twice in {flag}: {text}")
    return rates


def check_imbalance(args: argparse.Namespace) -> dict[str, list[float]]:
    """Every range of ``optlab lab imbalance``'s arguments; returns each optimizer's rates."""
    _check_seed(args)
    _positive_int(args, "classes", 10)
    if args.classes > 100_000:
        raise LabError(f"--classes must be an integer in [10, 100000], got {args.classes}")
    _positive_int(args, "samples", args.classes)
    _positive_int(args, "dim")
    _real(args, "exponent", 0.0, open_low=False, high=10.0)
    _positive_int(args, "steps")
    _positive_int(args, "eval_every")
    if args.steps % args.eval_every:
        raise LabError(
            f"--eval-every must divide --steps, got --steps {args.steps}, "
            f"--eval-every {args.eval_every}"
        )
    _positive_int(args, "batch_size")
    if args.batch_size > args.samples:
        raise LabError(
            f"--batch-size must be in [1, --samples = {args.samples}], got {args.batch_size}"
        )
    _real(args, "momentum", 0.0, open_low=False, high=0.999)
    return {
        "sgd": _rates(args.sgd_lrs, "--sgd-lrs"),
        "adam": _rates(args.adam_lrs, "--adam-lrs"),
    }


def run_imbalance(args: argparse.Namespace, stream: Any = None) -> dict[str, Any]:
    """``optlab lab imbalance``; returns the JSON payload (also written to ``--out``)."""
    sweeps = check_imbalance(args)
    stream = sys.stdout if stream is None else stream
    clock = _Clock()
    out = _out_dir(args)

    import numpy as np

    from optlab.lab import imbalance as im

    prob = im.make_problem(
        num_classes=args.classes,
        num_samples=args.samples,
        dim=args.dim,
        exponent=args.exponent,
        seed=args.seed,
    )
    clock.phase("data")
    runs: dict[str, Any] = {}
    bar = _bar("imbalance", len(sweeps), args.quiet)
    try:
        for name, lrs in sweeps.items():
            runs[name] = im.train(
                prob,
                name,
                lrs,
                steps=args.steps,
                batch_size=args.batch_size,
                eval_every=args.eval_every,
                momentum=args.momentum,
                seed=args.seed,
            )
            if bar is not None:
                bar.set_postfix_str(name)
                bar.update(1)
            clock.phase(f"train_{name}")
    finally:
        _close(bar)
    plots = []
    if not args.no_plots:
        im.plot(prob, runs, out / "imbalance.png")
        plots.append("imbalance.png")
    nb = prob.num_buckets
    counts = prob.bucket_counts()
    best = {n: im.best_index(r) for n, r in runs.items()}
    final = {n: r.bucket_loss[best[n], -1] for n, r in runs.items()}
    edges = [n for n, r in runs.items() if im.on_edge(r)]
    lo, hi = (nb - 1) * args.classes // nb + 1, args.classes
    payload: dict[str, Any] = {
        "command": "optlab lab imbalance",
        "settings": {k: v for k, v in vars(args).items() if k != "func"},
        "bucket_classes": [
            [b * args.classes // nb + 1, (b + 1) * args.classes // nb] for b in range(nb)
        ],
        "bucket_samples": counts,
        "bucket_frequency": [float(prob.frequencies[prob.buckets == b].sum()) for b in range(nb)],
        "steps": runs["sgd"].steps,
        "runs": {
            n: {
                "learning_rates": r.learning_rates,
                "final_loss": r.loss[:, -1],
                "final_bucket_loss": r.bucket_loss[:, -1],
                "best_lr": float(r.learning_rates[best[n]]),
                "best_on_sweep_edge": n in edges,
                "loss": r.loss[best[n]],
                "bucket_loss": r.bucket_loss[best[n]],
            }
            for n, r in runs.items()
        },
        "rarest_bucket_ratio_sgd_over_adam": float(final["sgd"][-1] / final["adam"][-1]),
        "plots": plots,
        "references": [
            'Kunstner, Yadav, Milligan, Schmidt, Bietti, "Heavy-Tailed Class Imbalance and Why '
            'Adam Outperforms Gradient Descent on Language Models", NeurIPS 2024',
            'Merkulov, "Modern optimization methods for training neural networks", lecture',
        ],
    }
    print(
        f"\nlinear softmax, {args.classes} Zipf classes (s = {args.exponent:g}), {args.samples} "
        f"samples, inputs N(0, I/{args.dim}); {args.steps} steps of batch {args.batch_size}; "
        "final training loss per decile of classes (log c = "
        f"{np.log(args.classes):.2f} at the start)",
        file=stream,
    )
    print(
        f"{'decile':>6s} {'classes':>11s} {'samples':>7s} "
        + " ".join(f"{f'{n} lr {runs[n].learning_rates[best[n]]:g}':>13s}" for n in runs),
        file=stream,
    )
    for b in range(nb):
        cl = payload["bucket_classes"][b]
        print(
            f"{b + 1:6d} {f'{cl[0]}-{cl[1]}':>11s} {counts[b]:7d} "
            + " ".join(f"{final[n][b]:13.3g}" for n in runs),
            file=stream,
        )
    print(
        f"{'all':>6s} {'':>11s} {args.samples:7d} "
        + " ".join(f"{r.loss[best[n], -1]:13.3g}" for n, r in runs.items()),
        file=stream,
    )
    if edges:
        print(
            f"note: the best rate of {', '.join(edges)} is on an edge of its sweep; widen it",
            file=stream,
        )
    _finish(payload, clock, out, "imbalance", stream)
    s, a = final["sgd"][-1], final["adam"][-1]
    print(
        f"final training loss on the rarest decile (classes {lo}-{hi}, {counts[-1]} samples): "
        f"SGD {s:.3g}, Adam {a:.3g} (SGD / Adam = {s / a:.3g}); all classes: SGD "
        f"{runs['sgd'].loss[best['sgd'], -1]:.3g}, Adam {runs['adam'].loss[best['adam'], -1]:.3g}",
        file=stream,
    )
    return payload


RUNNERS = {
    "init": run_init,
    "sgd-noise": run_sgd_noise,
    "grokking": run_grokking,
    "double-descent": run_double_descent,
    "rosenbrock": run_rosenbrock,
    "imbalance": run_imbalance,
}
