"""PNG plots of ``optlab compare`` runs (matplotlib, Agg backend: no display needed).

* :func:`plot_accuracy_vs_epoch`, :func:`plot_accuracy_vs_time`: test accuracy per
  evaluation, against epochs and against the training clock, with the target dashed;
* :func:`plot_train_loss`: training loss of every step (faint) and its moving average;
* :func:`plot_profiles`: AlgoPerf performance profiles, scores in the legend.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from optlab.bench.profiles import Profiles
from optlab.bench.runner import RunResult


def _pyplot() -> Any:
    # Lazy: matplotlib is an optional extra, and Agg must be selected before pyplot loads.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(n: int) -> list[Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


# Markers and dash patterns cycled with the colours, so that curves lying on top of each other
# (optimizers that tie) still show which is which, also in grey print.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
_DASHES = ("-", "--", "-.", ":")


def _styles(n: int) -> list[dict[str, Any]]:
    """Matplotlib keyword arguments for ``n`` curves: colour, marker and line style."""
    return [
        {"color": c, "marker": _MARKERS[i % len(_MARKERS)], "linestyle": _DASHES[i % len(_DASHES)]}
        for i, c in enumerate(_colors(n))
    ]


def task_title(name: str, description: str | None = None, width: int = 80) -> str:
    """A plot title that says what the task is: ``name: description``, wrapped to ``width``."""
    import textwrap

    text = f"{name}: {description}" if description else name
    return "\n".join(textwrap.wrap(text, width)) or name


def _accuracy_plot(
    results: Sequence[RunResult], title: str, path: str | os.PathLike, x_key: str, xlabel: str
) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r, style in zip(results, _styles(len(results))):
        xs = [e[x_key] for e in r.evals]
        ys = [e["test_acc"] for e in r.evals]
        # Markers on at most ~12 evaluations per curve, open so that overlaps show.
        every = max(1, len(xs) // 12)
        ax.plot(xs, ys, markersize=5, markevery=every, fillstyle="none", label=r.optimizer, **style)
    if results:
        ax.axhline(results[0].target, color="gray", linestyle="--", linewidth=1, label="target")
    ax.set(xlabel=xlabel, ylabel="test accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy_vs_epoch(
    results: Sequence[RunResult], title: str, path: str | os.PathLike
) -> None:
    """Test accuracy against epochs, one line per optimizer, target dashed."""
    _accuracy_plot(results, title, path, "epoch", "epoch")


def plot_accuracy_vs_time(
    results: Sequence[RunResult], title: str, path: str | os.PathLike
) -> None:
    """Test accuracy against training seconds (compile and evaluation excluded)."""
    _accuracy_plot(
        results, title, path, "train_time", "training time, s (compile and eval excluded)"
    )


def _moving_average(x: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or x.size < window:
        return x
    c = np.cumsum(np.insert(x, 0, 0.0))
    head = c[1:window] / np.arange(1, window)  # growing window at the start
    return np.concatenate([head, (c[window:] - c[:-window]) / window])


def plot_train_loss(results: Sequence[RunResult], title: str, path: str | os.PathLike) -> None:
    """Per-step training loss (faint) and its moving average, log scale."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r, c in zip(results, _colors(len(results))):
        loss = np.asarray(r.step_loss, dtype=float)
        if loss.size == 0:
            continue
        steps = np.arange(1, loss.size + 1)
        window = max(1, loss.size // 30)
        ax.plot(steps, loss, color=c, alpha=0.2, linewidth=0.7)
        ax.plot(steps, _moving_average(loss, window), color=c, label=r.optimizer)
    ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="training loss (batch)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PROFILE_OFFSET = 0.008
"""Vertical offset between consecutive profile curves (fraction of tasks): optimizers with the
same profile would otherwise draw one line. At most ``PROFILE_OFFSET * n / 2`` either way, far
below the ``1 / tasks`` step of a profile."""


def profile_offsets(n: int) -> np.ndarray:
    """The ``n`` curves' vertical offsets, centred on 0, :data:`PROFILE_OFFSET` apart."""
    return PROFILE_OFFSET * (np.arange(n) - (n - 1) / 2)


def plot_profiles(profiles: Profiles, path: str | os.PathLike) -> None:
    """Performance profiles rho(tau) on ``[1, 4]``; the legend gives each score.

    Curves are drawn with distinct markers and dash patterns and shifted vertically by
    :func:`profile_offsets` (a small fraction of one task's step), so that tied optimizers stay
    visible; the title names the tasks.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.8))
    order = sorted(profiles.optimizers, key=lambda s: -profiles.scores[s])
    styles = dict(zip(profiles.optimizers, _styles(len(profiles.optimizers))))
    offsets = dict(zip(order, profile_offsets(len(order))))
    every = max(1, len(profiles.taus) // 8)
    for i, s in enumerate(order):
        ax.step(
            profiles.taus,
            profiles.rho[s] + offsets[s],
            where="post",
            markevery=(i % every, every),  # staggered, so markers of tied curves do not stack
            markersize=5,
            fillstyle="none",
            label=f"{s} ({profiles.scores[s]:.3f})",
            **styles[s],
        )
    tasks = ", ".join(profiles.tasks)
    ax.set(
        xlabel="tau (time to target / fastest time to target)",
        ylabel=f"fraction of tasks (curves offset by {PROFILE_OFFSET:g} each)",
        xlim=(1.0, float(profiles.taus[-1])),
        ylim=(-0.06, 1.06),
    )
    ax.set_title(
        task_title(
            f"Performance profiles over {len(profiles.tasks)} tasks (score = area / 3)", tasks
        ),
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="optimizer (score)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
