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


def plot_grokking(runs: Mapping[str, Sequence[Any]], args: Any, path: str | os.PathLike) -> None:
    """Train (dashed) and test (solid) accuracy vs steps on a log axis, one color per optimizer,
    one line per seed; the 0.95 grokking threshold dotted."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, (name, rs) in enumerate(runs.items()):
        for j, r in enumerate(rs):
            s = np.maximum(np.asarray(r.steps), 1)  # step 0 (the initialization) drawn at 1
            tr, te = (f"{name} train", f"{name} test") if j == 0 else (None, None)
            axes[0].plot(s, r.train_acc, color=f"C{i}", linestyle="--", label=tr)
            axes[0].plot(s, r.test_acc, color=f"C{i}", linestyle="-", label=te)
            axes[1].plot(s, r.train_loss, color=f"C{i}", linestyle="--", label=tr)
            axes[1].plot(s, r.test_loss, color=f"C{i}", linestyle="-", label=te)
    axes[0].axhline(0.95, color="gray", linestyle=":", linewidth=1)
    title = f"x {args.op} y mod {args.p}, {100 * args.train_fraction:g}% train, "
    title += f"wd {args.weight_decay:g}"
    axes[0].set(xscale="log", xlabel="step", ylabel="accuracy", title=title)
    axes[1].set(xscale="log", yscale="log", xlabel="step", ylabel="cross-entropy")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_double_descent(sweeps: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Test (and train) mean squared error vs polynomial degree, log scale, the interpolation
    threshold ``degree + 1 = n`` marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    thr = None
    for i, (name, s) in enumerate(sweeps.items()):
        ax.plot(s.degrees, s.test_mse, color=f"C{i}", label=f"{name}: test")
        ax.plot(s.degrees, s.train_mse, color=f"C{i}", linestyle=":", label=f"{name}: train")
        thr = s.threshold_degree
    if thr is not None:
        ax.axvline(thr, color="gray", linestyle="--", linewidth=1, label="degree + 1 = n")
    ax.set(
        yscale="log",
        xlabel="polynomial degree (features - 1)",
        ylabel="mean squared error",
        title="double descent: Legendre features, min-norm least squares",
    )
    ax.set_ylim(bottom=1e-4)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_rosenbrock(
    results: Mapping[str, Mapping[str, Any]], lr: float, path: str | os.PathLike
) -> None:
    """Contours of log10 Rosenbrock with every method's path (top: the common rate; bottom: each
    method's tuned rate), and the loss vs steps next to each."""
    plt = _pyplot()
    tuned = all("tuned" in r for r in results.values())
    rows = 2 if tuned else 1
    fig, axes = plt.subplots(rows, 2, figsize=(13, 5 * rows), squeeze=False)
    xs, ys = np.linspace(-2.5, 2.5, 300), np.linspace(-1.0, 4.0, 300)
    gx, gy = np.meshgrid(xs, ys)
    f = (1 - gx) ** 2 + 100 * (gy - gx**2) ** 2
    for row in range(rows):
        ax, axl = axes[row]
        ax.contour(gx, gy, np.log10(f + 1e-3), levels=25, cmap="Greys", linewidths=0.6)
        for i, (name, r) in enumerate(results.items()):
            rr = r["tuned"] if row == 1 else r
            p = np.asarray(rr["path"], np.float64)
            ok = np.all(np.isfinite(p), axis=1)
            color = f"C{i % 10}"
            style = "-" if i < 10 else "--"
            label = f"{name} (lr {rr['lr']:.2g})"
            ax.plot(p[ok, 0], p[ok, 1], color=color, linestyle=style, linewidth=1.2, label=label)
            steps = np.arange(len(rr["loss"]))
            axl.plot(steps, np.asarray(rr["loss"]), color=color, linestyle=style, label=label)
        ax.plot(*np.asarray(next(iter(results.values()))["path"])[0], "ko", markersize=6)
        ax.plot(1, 1, "r*", markersize=12)
        ax.set(xlim=(-2.5, 2.5), ylim=(-1, 4), xlabel="x", ylabel="y")
        ax.set_title(f"paths at lr {lr:g}" if row == 0 else "paths at each method's tuned lr")
        axl.set(xscale="log", yscale="log", xlabel="step", ylabel="f(x, y)")
        axl.set_title("loss vs steps (diverged runs end early)")
        axl.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sgd_noise(
    steps: np.ndarray, runs: Mapping[str, Mapping[str, Any]], path: str | os.PathLike
) -> None:
    """Squared distance to the optimum vs steps (log scale), the predicted floors dotted."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, (label, r) in enumerate(runs.items()):
        d = np.maximum(np.asarray(r["squared_distance"]), 1e-16)
        ax.plot(np.maximum(steps, 1), d, color=f"C{i}", label=label)
        if "predicted_floor" in r:
            ax.axhline(r["predicted_floor"], color=f"C{i}", linestyle=":", linewidth=1)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="step",
        ylabel="||w - w*||^2 (mean over runs)",
        title="constant-step SGD stalls at a floor ~ step (dotted: alpha sigma^2 / (2 mu))",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_init(runs: Mapping[str, Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Training loss vs steps (one panel per depth, one color per scheme, smoothed over 20
    steps) and the pre-activations' mean square per layer at initialization."""
    plt = _pyplot()
    depths = sorted({r["depth"] for r in runs.values()})
    fig, axes = plt.subplots(1, len(depths) + 1, figsize=(5 * (len(depths) + 1), 4))
    colors = {"he": "C0", "glorot": "C1", "naive": "C2"}
    for ax, depth in zip(axes, depths):
        for r in runs.values():
            if r["depth"] != depth:
                continue
            loss = np.asarray(r["loss"])
            k = min(20, len(loss))
            smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
            ax.plot(
                np.arange(len(smooth)) + k, smooth, color=colors[r["scheme"]], label=r["scheme"]
            )
        ax.set(title=f"{depth} layers", xlabel="step", ylabel="training loss (20-step mean)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[-1]
    for r in runs.values():
        sc = np.asarray(r["forward_scales"])
        style = "-" if r["depth"] == depths[-1] else "--"
        ax.plot(
            np.arange(1, len(sc) + 1),
            sc,
            color=colors[r["scheme"]],
            linestyle=style,
            label=f"{r['scheme']}, {r['depth']} layers",
        )
    ax.set(
        yscale="log",
        xlabel="layer",
        ylabel="mean square of pre-activations",
        title="signal at initialization",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
