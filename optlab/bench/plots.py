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


def _accuracy_plot(
    results: Sequence[RunResult], title: str, path: str | os.PathLike, x_key: str, xlabel: str
) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r, c in zip(results, _colors(len(results))):
        xs = [e[x_key] for e in r.evals]
        ys = [e["test_acc"] for e in r.evals]
        ax.plot(xs, ys, marker="o", markersize=3, color=c, label=r.optimizer)
    if results:
        ax.axhline(results[0].target, color="gray", linestyle="--", linewidth=1, label="target")
    ax.set(xlabel=xlabel, ylabel="test accuracy", title=title)
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
    ax.set(xlabel="step", ylabel="training loss (batch)", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_profiles(profiles: Profiles, path: str | os.PathLike) -> None:
    """Performance profiles rho(tau) on ``[1, 4]``; the legend gives each score."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    order = sorted(profiles.optimizers, key=lambda s: -profiles.scores[s])
    colors = dict(zip(profiles.optimizers, _colors(len(profiles.optimizers))))
    for s in order:
        ax.step(
            profiles.taus,
            profiles.rho[s],
            where="post",
            color=colors[s],
            label=f"{s} ({profiles.scores[s]:.3f})",
        )
    ax.set(
        xlabel="tau (time to target / fastest time to target)",
        ylabel="fraction of tasks",
        title=f"Performance profiles over {len(profiles.tasks)} tasks (score = area / 3)",
        xlim=(1.0, float(profiles.taus[-1])),
        ylim=(-0.02, 1.02),
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="optimizer (score)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
