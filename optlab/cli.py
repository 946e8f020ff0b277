"""The ``optlab`` command line: argument parsing only; the work is in :mod:`optlab.bench`.

Usage::

    optlab compare                                  # digits LeNet-5, every optimizer
    optlab compare --task digits-lenet5,digits-mlp,logistic --quiet
    optlab compare --optimizers sgd,adam,sam --epochs 5 --hp sam.rho=0.05
    optlab compare --optimizers sgd,mypkg.opts:make_opt --hp mypkg.opts:make_opt.lr=0.1
    optlab compare --sweep --optimizers lion --hp lion.learning_rate=1e-3,3e-4
    optlab compare --list
    optlab lab landscape                            # SGD vs SAM loss landscapes (digits MLP)
    optlab lab connect                              # mode connectivity between two SGD runs
    optlab lab grokking --optimizers adamw,muon     # x / y mod 97: time to grok
    optlab lab double-descent                       # Legendre min-norm fits; MLP width sweep
    optlab lab rosenbrock                           # optax's methods' paths on Rosenbrock
    optlab lab sgd-noise                            # constant-step SGD's noise floor vs the step
    optlab lab init                                 # deep ReLU MLPs: He vs Glorot vs naive init
    optlab lab imbalance                            # Zipf classes: SGD vs Adam per class decile
    optlab compare --task stdlib-lm                 # byte-level LM on the stdlib's sources
    optlab lab clarifying-shampoo                   # AdamW/Muon/Shampoo/SOAP token efficiency

Bad input prints one line, ``optlab compare: error: ...``, on stderr and exits with status 2
(no traceback); an interrupted run exits with 130. The parser only turns strings into numbers:
every range and name is checked by :class:`optlab.bench.config.CompareConfig` (the same checks
for the command line and for Python callers).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block) and exit with 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The ``optlab`` parser with its subcommands."""
    parser = _Parser(
        prog="optlab",
        description="optlab: matrix-aware optimizers as composable optax transforms.",
    )
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_Parser, required=True
    )
    p = sub.add_parser(
        "compare",
        help="train tasks with several optimizers; table, plots, AlgoPerf-style scores",
        description=(
            "Train one or more tasks with several optimizers from the same initialization "
            "and batch order; print a table (final / best test accuracy, steps and seconds "
            "to the target, step time, compile time), write results.json and PNG plots, "
            "and with several tasks the AlgoPerf-style performance profiles and scores."
        ),
    )
    p.add_argument(
        "--task",
        default=None,
        metavar="T[,T...]",
        help="task name(s), comma-separated (default: digits-lenet5; see --list)",
    )
    p.add_argument(
        "--optimizers",
        default=None,
        metavar="A,B,...",
        help="registry names or module:factory (default: every registered one)",
    )
    p.add_argument(
        "--epochs",
        type=_int,
        default=None,
        help="passes over the training set (default: the task's)",
    )
    p.add_argument(
        "--steps", type=_int, default=None, help="total training steps instead of epochs"
    )
    p.add_argument(
        "--batch-size",
        type=_int,
        default=None,
        help="examples per step (default: the task's)",
    )
    p.add_argument(
        "--seed", type=_int, default=0, help="initialization and batch-order seed (default: 0)"
    )
    p.add_argument(
        "--target", type=_number, default=None, help="test-accuracy target (default: the task's)"
    )
    p.add_argument(
        "--hp",
        action="append",
        default=[],
        metavar="OPT.KEY=VALUE",
        help="hyperparameter override, repeatable, e.g. --hp sam.rho=0.05 "
        "--hp adam.learning_rate=3e-3 (with --sweep, KEY=V1,V2,... is a grid)",
    )
    p.add_argument(
        "--schedule",
        default="constant",
        metavar="{constant,cosine}",
        help="learning-rate schedule: constant, or cosine decay to 0 over the run "
        "(Kuznetsova (2023) eq. 34)",
    )
    p.add_argument(
        "--out",
        default="runs/compare",
        metavar="DIR",
        help="output directory (default: runs/compare)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="directory with MNIST IDX / CIFAR-10 binary files (never downloaded)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--sweep",
        action="store_true",
        help="quick learning-rate sweep per optimizer instead of a comparison (writes sweep.json)",
    )
    p.add_argument(
        "--list",
        action="store_true",
        help="list tasks, optimizers and default hyperparameters, then exit",
    )
    from optlab.lab import _cli as lab_cli  # `optlab lab landscape`, `optlab lab connect`

    lab_cli.add_parser(sub, _int, _number)
    return parser


def _compare(args: argparse.Namespace) -> int:
    # Lazy: the harness imports JAX and Flax, which `optlab --help` does not need.
    from optlab import bench
    from optlab.bench import report

    if args.list:
        print(report.list_text())
        return 0
    try:
        config = bench.CompareConfig(
            tasks=tuple((args.task or bench.DEFAULT_TASK).split(",")),
            optimizers=None if args.optimizers is None else tuple(args.optimizers.split(",")),
            epochs=args.epochs,
            steps=args.steps,
            batch_size=args.batch_size,
            seed=args.seed,
            target=args.target,
            hparams=bench.parse_hparams(args.hp, allow_grids=args.sweep),
            schedule=args.schedule,
            out=args.out,
            data_dir=args.data_dir,
            quiet=args.quiet,
            plots=not args.no_plots,
        )
        if args.sweep:
            bench.sweep(config)
        else:
            bench.compare(config)
    except bench.BenchError as e:
        print(f"optlab compare: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``optlab`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "compare":
            return _compare(args)
        if args.command == "lab":
            from optlab.lab import _cli as lab_cli

            return lab_cli.main(args)
    except KeyboardInterrupt:
        print("optlab: interrupted", file=sys.stderr)
        return 130
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse restricts choices


if __name__ == "__main__":
    sys.exit(main())
