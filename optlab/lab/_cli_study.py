"""``optlab lab clarifying-shampoo``: the claims of "Clarifying Shampoo" measured on a small LM.

Usage::

    optlab lab clarifying-shampoo                    # quick setting: ~10 CPU minutes on 2 cores
    optlab lab clarifying-shampoo --full             # documented full setting (~2.6x the CPU time)
    optlab lab clarifying-shampoo --text-file input.txt --d-model 256 --steps 2000
    optlab lab clarifying-shampoo --optimizers adamw,shampoo --lrs 1e-3,2e-3,4e-3 --seeds 5

AdamW, Muon, Shampoo and SOAP train the same byte-level Transformer on the Python standard
library's sources (or ``--text-file``); each is tuned by the same learning-rate sweep on one
seed, then rerun on ``--seeds`` seeds; the Shampoo/AdamW ablation and the semi-orthogonality
of the updates follow (:mod:`optlab.lab.clarifying_shampoo` has the method). Same conventions
as the other lab commands: offline, ``--seed``, ``--out``, ``--quiet``, ``--no-plots``, tqdm
bars, ``clarifying_shampoo.json`` (every curve, the settings, wall and CPU seconds, the
machine) and PNG plots in ``--out``, one-line errors with exit status 2, the result in one
line at the end.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Mapping
from typing import Any

from optlab.lab._cli import LabError, _Clock, _positive_int, _real

_NAME = "clarifying_shampoo"


def add_parsers(
    lab_sub: Any, integer: Callable[[str], int], number: Callable[[str], float]
) -> None:
    """Register ``clarifying-shampoo`` on the ``optlab lab`` subparsers."""
    from optlab.lab.clarifying_shampoo import FULL, OPTIMIZERS, QUICK

    p = lab_sub.add_parser(
        "clarifying-shampoo",
        help="Shampoo vs SOAP vs Muon vs AdamW token efficiency on a small byte-level LM",
        description=(
            "Eschenhagen, Cai, Lee, Shi, 'Clarifying Shampoo': tokens to a target validation "
            "loss and the loss at a fixed token budget for AdamW, Muon, Shampoo and SOAP "
            "(same learning-rate sweep each, then several seeds), the ablation Shampoo on "
            "weight matrices vs on the rest, and the semi-orthogonality of the updates per "
            "step and on average. Unset model and budget flags take the quick setting's "
            "values, or the full setting's with --full."
        ),
    )
    p.add_argument("--seed", type=integer, default=0, help="first seed (default: 0)")
    out = "runs/lab_clarifying_shampoo"
    p.add_argument("--out", default=out, metavar="DIR", help=f"output directory (default: {out})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--full", action="store_true", help="the documented full setting")
    p.add_argument(
        "--optimizers",
        default=",".join(OPTIMIZERS),
        metavar="O[,O]",
        help="from adamw, muon, shampoo, soap (default: all four)",
    )
    p.add_argument(
        "--text-file",
        default=None,
        metavar="PATH",
        help="train on this text file (last 10%% held out) instead of the standard library",
    )

    def field(flag: str, name: str, kind: Callable[[str], Any], what: str) -> None:
        q, f = getattr(QUICK, name), getattr(FULL, name)
        p.add_argument(flag, type=kind, default=None, help=f"{what} (quick: {q:g}, full: {f:g})")

    field("--d-model", "d_model", integer, "model width")
    field("--num-heads", "num_heads", integer, "attention heads")
    field("--num-layers", "num_layers", integer, "decoder blocks")
    field("--seq-len", "seq_len", integer, "context length in bytes")
    field("--batch-size", "batch_size", integer, "windows per step")
    field("--steps", "steps", integer, "steps per run")
    field("--eval-every", "eval_every", integer, "steps between validation evaluations")
    field("--eval-windows", "eval_windows", integer, "validation windows evaluated")
    field("--seeds", "seeds", integer, "seeds at the tuned learning rate")
    grid = ",".join(f"{v:g}" for v in QUICK.lr_grid)
    p.add_argument(
        "--lrs",
        default=None,
        metavar="LR[,LR]",
        help=f"learning-rate grid, the same for every optimizer (default: {grid})",
    )
    p.add_argument(
        "--target-loss",
        type=number,
        default=None,
        help="validation loss for tokens-to-target (default: AdamW's mean final loss)",
    )
    p.add_argument("--no-ablation", action="store_true", help="skip the Shampoo/AdamW ablation")


def check_clarifying_shampoo(args: argparse.Namespace) -> tuple[Any, list[str]]:
    """Every range of the command's arguments (:class:`LabError` naming the flag); returns the
    :class:`~optlab.lab.clarifying_shampoo.StudyConfig` and the optimizer names."""
    from optlab.bench.config import BenchError, check_seed
    from optlab.lab._cli_dynamics import _names
    from optlab.lab.clarifying_shampoo import FULL, OPTIMIZERS, QUICK

    try:
        check_seed(args.seed)
    except BenchError as e:
        raise LabError(str(e)) from None
    names = _names(args.optimizers, OPTIMIZERS, "--optimizers")
    base = FULL if args.full else QUICK
    changes: dict[str, Any] = {}
    for name in (
        "d_model",
        "num_heads",
        "num_layers",
        "seq_len",
        "batch_size",
        "steps",
        "eval_every",
        "eval_windows",
        "seeds",
    ):
        if getattr(args, name) is not None:
            _positive_int(args, name)
            changes[name] = getattr(args, name)
    if args.lrs is not None:
        try:
            grid = tuple(float(v) for v in args.lrs.split(","))
        except ValueError:
            raise LabError(f"--lrs must be comma-separated numbers, got {args.lrs!r}") from None
        if not all(math.isfinite(v) and v > 0 for v in grid) or len(set(grid)) != len(grid):
            raise LabError(f"--lrs must be distinct numbers > 0, got {args.lrs!r}")
        changes["lr_grid"] = grid
    if args.target_loss is not None:
        _real(args, "target_loss", 0.0, open_low=True)
        changes["target_loss"] = args.target_loss
    changes["text_file"] = args.text_file
    changes["ablation"] = not args.no_ablation
    config = base.replace(**changes)
    d, h = config.d_model, config.num_heads
    if d % h:
        raise LabError(f"--d-model {d} is not divisible by --num-heads {h}")
    try:
        config.validate()
    except ValueError as e:
        raise LabError(str(e)) from None
    return config, names


def _fmt_tokens(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.0f}k"


def _spread(s: Mapping[str, Any], fmt: Callable[[float], str]) -> str:
    if s["mean"] is None:
        return f"not reached ({s['count']})"
    text = f"{fmt(s['mean'])} +- {fmt(s['std'])}"
    return (
        text if s["count"].split("/")[0] == s["count"].split("/")[1] else f"{text} ({s['count']})"
    )


def table_rows(payload: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """The result table (header first): optimizer, tuned rate, final loss, tokens to target,
    step time; then the ablation's rows."""
    rows = [("optimizer", "tuned lr", "final val loss", "tokens to target", "step ms")]
    for name in payload["ordering_by_final_loss"]:
        s = payload["summary"][name]
        lr = f"{s['learning_rate']:g}" + (" (edge)" if s["at_grid_edge"] else "")
        rows.append(
            (
                name,
                lr,
                _spread(s["final_loss"], lambda v: f"{v:.4f}"),
                _spread(s["tokens_to_target"], _fmt_tokens),
                f"{1e3 * s['step_seconds']:.0f}",
            )
        )
    ab = payload["ablation"]
    for name, s in ab["summary"].items():
        rows.append(
            (
                name,
                f"{ab['learning_rate']:g}",
                _spread(s["final_loss"], lambda v: f"{v:.4f}"),
                _spread(s["tokens_to_target"], _fmt_tokens),
                f"{1e3 * s['step_seconds']:.0f}",
            )
        )
    return rows


def _plot(payload: Mapping[str, Any], path: Any) -> None:
    import numpy as np

    from optlab.lab._plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    ax = axes[0]
    curves = list(payload["runs"].items()) + list(payload["ablation"]["runs"].items())
    for i, (name, runs) in enumerate(curves):
        ablated = i >= len(payload["runs"])
        n = min(len(r["val_loss"]) for r in runs)  # a diverged run stops early
        tokens = np.asarray(runs[0]["tokens"][:n], float)
        losses = np.asarray([r["val_loss"][:n] for r in runs], float)
        style = "--" if ablated else "-"
        ax.plot(tokens[1:], losses.mean(0)[1:], style, color=f"C{i}", label=name)
        if len(runs) > 1:
            ax.fill_between(
                tokens[1:], losses.min(0)[1:], losses.max(0)[1:], color=f"C{i}", alpha=0.2
            )
    target = payload["target_loss"]
    if target is not None:
        ax.axhline(target, color="gray", linestyle=":", linewidth=1, label="target")
    finals = [v for s in payload["summary"].values() for v in s["final_loss"]["values"] if v]
    if finals:
        ax.set_ylim(min(finals) * 0.97, max(finals) * 1.35)
    seeds = payload["config"]["seeds"]
    ax.set(
        xlabel="training tokens (bytes)",
        ylabel="validation loss (nats / byte)",
        title=f"tuned rates, mean and min-max over {seeds} seed(s)",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    for i, (name, runs) in enumerate(payload["sweep"].items()):
        lrs = [r["learning_rate"] for r in runs]
        fl = [r["final_loss"] if r["final_loss"] is not None else np.nan for r in runs]
        ax.plot(lrs, fl, "o-", color=f"C{i}", label=name)
    ax.set(
        xscale="log",
        xlabel="peak learning rate",
        ylabel="final validation loss",
        title=f"learning-rate sweep (seed {payload['seed']})",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_orthogonality(payload: Mapping[str, Any], path: Any) -> None:
    from optlab.lab._plots import _pyplot

    plt = _pyplot()
    matrices = payload["orthogonality"]["matrices"]
    runs = payload["orthogonality"]["runs"]
    fig, axes = plt.subplots(1, len(matrices), figsize=(6.5 * len(matrices), 4.4), sharey=True)
    for ax, m in zip(list(axes), matrices, strict=True):
        for i, (name, curves) in enumerate(runs.items()):
            if m not in curves:
                continue
            c = curves[m]
            steps = range(1, len(c["per_step"]) + 1)
            ax.plot(steps, c["per_step"], color=f"C{i}", alpha=0.35, linewidth=0.8)
            ax.plot(steps, c["running_average"], color=f"C{i}", linewidth=2, label=name)
        ax.set(
            xscale="log",
            xlabel="step",
            title=f"{m}: per step (thin), running average (thick)",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("distance from semi-orthogonality d(O O^T)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_clarifying_shampoo(args: argparse.Namespace, stream: Any = None) -> dict[str, Any]:
    """``optlab lab clarifying-shampoo``; returns the JSON payload (also written to ``--out``)."""
    config, names = check_clarifying_shampoo(args)
    stream = sys.stdout if stream is None else stream
    clock = _Clock()
    from optlab.lab._cli_dynamics import _finish, _out_dir

    out = _out_dir(args)
    from optlab.lab import clarifying_shampoo as cs

    def bar(desc: str, total: int) -> Any:
        if args.quiet:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)

    try:
        study = cs.run_study(
            config, optimizers=names, seed=args.seed, progress=bar, on_phase=clock.phase
        )
    except (OSError, ValueError) as e:
        where = f"--text-file {args.text_file}" if args.text_file else "standard-library corpus"
        raise LabError(f"{where}: {e}") from None
    payload: dict[str, Any] = {
        "command": "optlab lab clarifying-shampoo",
        "settings": {k: v for k, v in vars(args).items() if k != "func"},
        **study,
    }
    plots = []
    if not args.no_plots:
        _plot(payload, out / f"{_NAME}.png")
        _plot_orthogonality(payload, out / f"{_NAME}_orthogonality.png")
        plots += [f"{_NAME}.png", f"{_NAME}_orthogonality.png"]
    payload["plots"] = plots
    c, data = payload["config"], payload["data"]
    print(
        f"\n{data['description']}; Transformer d={c['d_model']} L={c['num_layers']} "
        f"T={c['seq_len']} ({payload['parameters']['total']:,} parameters), "
        f"{c['steps']} steps x {c['batch_size']} x {c['seq_len']} = "
        f"{_fmt_tokens(data['token_budget'])} tokens per run",
        file=stream,
    )
    target = payload["target_loss"]
    print(
        f"target validation loss {target if target is None else f'{target:.4f}'} "
        f"({payload['target_rule']})",
        file=stream,
    )
    rows = table_rows(payload)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)), file=stream)
    orth = []
    for name, curves in payload["orthogonality"]["runs"].items():
        for m, cv in curves.items():
            orth.append(
                f"{name} {m.split('.')[-2]}: per step {cv['per_step'][-1]:.3f}, "
                f"running average {cv['running_average'][-1]:.3f}"
            )
    if orth:
        print("semi-orthogonality at the last step: " + "; ".join(orth), file=stream)
    _finish(payload, clock, out, _NAME, stream)
    print(
        "ordering by final validation loss (best first): "
        + " < ".join(payload["ordering_by_final_loss"]),
        file=stream,
    )
    return payload


RUNNERS = {"clarifying-shampoo": run_clarifying_shampoo}
