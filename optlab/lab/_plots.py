"""PNG plots of ``optlab lab landscape`` and ``optlab lab connect`` (matplotlib, Agg)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _pyplot() -> Any:
    # Lazy: matplotlib is an optional extra, and Agg must be selected before pyplot loads.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_1d(panels: Mapping[str, Mapping[str, Any]], rise: float, path: str | os.PathLike) -> None:
    """One panel per optimizer (shared axes): the loss along each random direction, and the
    sublevel interval ``L <= L(0) + rise`` of each."""
    plt = _pyplot()
    names = list(panels)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), sharey=True, sharex=True)
    axes = np.atleast_1d(axes)
    top = max(float(np.max(c)) for p in panels.values() for c in p["losses"])
    for ax, name in zip(axes, names, strict=True):
        p = panels[name]
        for i, (a, v) in enumerate(zip(p["coords"], p["losses"], strict=True)):
            ax.plot(a, v, color="C0", alpha=1.0 if i == 0 else 0.45, linewidth=1.5)
        ax.axhline(p["center_loss"] + rise, color="gray", linestyle=":", linewidth=1)
        ax.set(
            title=f"{name}: mean width {p['mean_width']:.3f} at +{rise:g}",
            xlabel="filter-normalized direction coefficient",
        )
        ax.set_ylim(0, min(top, 10.0) * 1.05)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_2d(
    panels: Mapping[str, Mapping[str, Any]],
    rise: float,
    path: str | os.PathLike,
    *,
    xlabel: str = "direction 1",
    ylabel: str = "direction 2",
    paths: Mapping[str, np.ndarray] | None = None,
    axis_labels: Mapping[str, tuple[str, str]] | None = None,
) -> None:
    """Contours of the loss, one panel per optimizer, the same levels in every panel; the
    ``L(0) + rise`` contour in black; optional projected trajectories."""
    plt = _pyplot()
    names = list(panels)
    share = paths is None  # trajectory planes differ per model: their own axes
    fig, axes = plt.subplots(
        1, len(names), figsize=(5.2 * len(names), 4.4), sharex=share, sharey=share
    )
    axes = np.atleast_1d(axes)
    lo = min(float(np.min(p["losses"])) for p in panels.values())
    hi = max(float(np.max(p["losses"])) for p in panels.values())
    hi = min(hi, lo + 5.0)  # beyond a few nats the contours only crowd the edges
    levels = np.linspace(lo, hi, 26)
    cs = None
    for ax, name in zip(axes, names, strict=True):
        p = panels[name]
        a, b = p["coords"]
        v = np.minimum(np.asarray(p["losses"]), hi)
        cs = ax.contourf(a, b, v.T, levels=levels, cmap="viridis")
        ax.contour(a, b, v.T, levels=[p["center_loss"] + rise], colors="k", linewidths=1.2)
        ax.plot([0], [0], marker="*", color="w", markersize=10, markeredgecolor="k")
        if paths is not None and name in paths:
            xy = np.asarray(paths[name])
            ax.plot(xy[:, 0], xy[:, 1], color="r", marker=".", markersize=4, linewidth=1)
        title = name + (f": area {p['area']:.3f} at +{rise:g}" if "area" in p else "")
        xl, yl = (axis_labels or {}).get(name, (xlabel, ylabel))
        ax.set(title=title, xlabel=xl, ylabel=yl)
    if cs is not None:
        fig.colorbar(cs, ax=list(axes), label="training loss", format="%.2f")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_connect(
    evals: Mapping[str, Mapping[str, Sequence[float]]], path: str | os.PathLike
) -> None:
    """Training loss and test error along each path against t."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"line": ("C3", "--"), "bezier": ("C0", "-"), "polychain": ("C2", "-.")}
    for name, e in evals.items():
        color, ls = styles.get(name, ("C1", "-"))
        t = np.asarray(e["ts"])
        label = f"{name} (barrier {e['train_barrier']:.3f})"
        axes[0].plot(t, e["train_loss"], color=color, linestyle=ls, label=label)
        axes[1].plot(
            t, 100 * (1 - np.asarray(e["test_acc"])), color=color, linestyle=ls, label=name
        )
    axes[0].set(xlabel="t", ylabel="training loss", title="training loss along the path")
    axes[1].set(xlabel="t", ylabel="test error (%)", title="test error along the path")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
