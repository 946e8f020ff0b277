"""Muon vs AdamW on (a) multinomial logistic regression and (b) an MLP on the digits data.

(a) D. Merkulov's seminar "Stories from training neural networks" (its "Shampoo and Muon"
    part) only names "a simple comparison of Muon and AdamW on a small logistic regression
    task" without its setup, so this is our own: softmax (multinomial)
    logistic regression ``logits = x W + b`` with ``W`` of shape (64, 10) on synthetic data
    (4000 train / 2000 test points, 10 overlapping Gaussian classes in 64 dimensions, so the
    loss cannot reach 0, with feature scales spread over 100x, so that the problem is
    ill-conditioned; not standardized on purpose), full-batch, 300 steps. The model is
    ``optlab.models.LogisticRegression``, whose one layer is called ``head``: ``muon_labels``
    would send it to AdamW (heads are not hidden layers), so Muon is asked for ``W``
    explicitly here; the bias goes to AdamW.
(b) ``optlab.models.MLP`` 64 -> 256 -> 256 -> 10 (ReLU) on scikit-learn's bundled 8x8 digits
    (``optlab.data.load_digits``: 1438 train / 359 test images, no download), minibatch 128,
    30 epochs. Default labels: the two hidden kernels go to Muon, the head and the biases to
    AdamW.

Both optimizers use a cosine decay of the learning rate to 0 over the run (Muon's fixed-size
orthogonalized steps need a decaying rate to settle) and run a 4-point learning-rate grid
(3 seeds for the MLP) at otherwise default settings, no weight decay; the best learning rate by
final train loss is reported with all the others. Muon's AdamW leaves (biases, the MLP's head)
use the best AdamW learning rate. Results go to ``--out`` as JSON and a PNG of the loss curves.

Run (about 1.5 minutes on a 2-core CPU)::

    python examples/muon_vs_adamw.py [--out runs/muon_vs_adamw]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from optlab import muon, muon_labels
from optlab.data import batch_iterator, load_digits
from optlab.models.linear import MLP, LogisticRegression

LOGREG_ADAMW_LRS = (3e-3, 1e-2, 3e-2, 1e-1)
LOGREG_MUON_LRS = (0.01, 0.03, 0.1, 0.3)
MLP_ADAMW_LRS = (1e-3, 3e-3, 1e-2, 3e-2)
MLP_MUON_LRS = (3e-3, 0.01, 0.03, 0.1)


# -- (a) logistic regression ----------------------------------------------------------------------
def make_classes(
    n_train: int = 4000, n_test: int = 2000, dim: int = 64, classes: int = 10, seed: int = 0
) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes, dim)) * 0.25  # overlapping classes
    scales = np.logspace(-1, 1, dim)  # ill-conditioned features
    y = rng.integers(0, classes, n_train + n_test)
    x = (means[y] + rng.normal(size=(n_train + n_test, dim))) * scales
    x, y = x.astype(np.float32), y.astype(np.int32)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def train_full_batch(
    model: nnx.Module, tx: optax.GradientTransformation, x, y, x_test, y_test, steps: int
) -> dict[str, Any]:
    graphdef, params = nnx.split(model, nnx.Param)
    state = tx.init(params)

    def loss_fn(p):
        return cross_entropy(nnx.merge(graphdef, p)(x), y)

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(loss_fn)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    losses = []
    for _ in range(steps):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    final = float(loss_fn(params))
    acc = float(jnp.mean(jnp.argmax(nnx.merge(graphdef, params)(x_test), -1) == y_test))
    return {"train_loss": final, "test_acc": acc, "curve": losses}


def cosine(lr: float, steps: int) -> optax.Schedule:
    return optax.cosine_decay_schedule(lr, steps)


def logistic_regression(steps: int = 300) -> dict[str, Any]:
    x, y, x_test, y_test = make_classes()  # not standardized: the 100x feature scales stay

    def model() -> LogisticRegression:
        return LogisticRegression(x.shape[1], 10, rngs=nnx.Rngs(0))

    runs: dict[str, dict[str, Any]] = {"adamw": {}, "muon": {}}
    for lr in tqdm(LOGREG_ADAMW_LRS, desc="(a) logreg AdamW"):
        tx = optax.adamw(cosine(lr, steps), weight_decay=0.0)
        runs["adamw"][lr] = train_full_batch(model(), tx, x, y, x_test, y_test, steps)
    best_adamw = min(runs["adamw"], key=lambda k: runs["adamw"][k]["train_loss"])
    # Rank rule only (no name exclusions): the (64, 10) kernel to Muon, the bias to AdamW.
    labels = functools.partial(muon_labels, exclude=())
    for lr in tqdm(LOGREG_MUON_LRS, desc="(a) logreg Muon"):
        tx = muon(cosine(lr, steps), adam_learning_rate=cosine(best_adamw, steps), labels=labels)
        runs["muon"][lr] = train_full_batch(model(), tx, x, y, x_test, y_test, steps)
    return {
        "setup": {
            "train": len(y),
            "test": len(y_test),
            "dim": x.shape[1],
            "classes": 10,
            "steps": steps,
            "full_batch": True,
        },
        "runs": runs,
    }


# -- (b) MLP on digits ----------------------------------------------------------------------------
def train_mlp(tx_fn, lr: float, seed: int, data, epochs: int, batch: int) -> dict[str, Any]:
    model = MLP(64, 10, hidden=(256, 256), rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model, nnx.Param)
    x, y = data.x_train.reshape(len(data.x_train), -1), data.y_train
    tx = tx_fn(lr, epochs * (len(x) // batch))
    state = tx.init(params)
    x_test, y_test = data.x_test.reshape(len(data.x_test), -1), data.y_test

    def loss_fn(p, xb, yb):
        return cross_entropy(nnx.merge(graphdef, p)(xb), yb)

    @jax.jit
    def step(p, s, xb, yb):
        loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    full_loss = jax.jit(loss_fn)
    curve = []
    for epoch in range(epochs):
        for xb, yb in batch_iterator(
            x, y, batch_size=batch, seed=seed, epochs=1, start_epoch=epoch, drop_remainder=True
        ):
            params, state, _ = step(params, state, xb, yb)
        curve.append(float(full_loss(params, x, y)))
    logits = jax.jit(lambda p, xb: nnx.merge(graphdef, p)(xb))(params, x_test)
    acc = float(jnp.mean(jnp.argmax(logits, -1) == y_test))
    return {
        "train_loss": curve[-1],
        "train_loss_epoch5": curve[min(4, epochs - 1)],
        "test_acc": acc,
        "curve": curve,
    }


def digits_mlp(epochs: int = 30, batch: int = 128, seeds: tuple[int, ...] = (0, 1, 2)):
    data = load_digits()
    runs: dict[str, dict[str, Any]] = {"adamw": {}, "muon": {}}

    def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "train_loss": statistics.mean(r["train_loss"] for r in results),
            "train_loss_epoch5": statistics.mean(r["train_loss_epoch5"] for r in results),
            "test_acc": statistics.mean(r["test_acc"] for r in results),
            "test_acc_per_seed": [r["test_acc"] for r in results],
            "train_loss_per_seed": [r["train_loss"] for r in results],
            "curve": np.mean([r["curve"] for r in results], axis=0).tolist(),
        }

    def adamw(lr: float, steps: int) -> optax.GradientTransformation:
        return optax.adamw(cosine(lr, steps), weight_decay=0.0)

    grid = [(lr, s) for lr in MLP_ADAMW_LRS for s in seeds]
    results: dict[float, list] = {}
    for lr, s in tqdm(grid, desc="(b) digits AdamW"):
        results.setdefault(lr, []).append(train_mlp(adamw, lr, s, data, epochs, batch))
    runs["adamw"] = {lr: summarize(r) for lr, r in results.items()}
    best_adamw = min(runs["adamw"], key=lambda k: runs["adamw"][k]["train_loss"])

    def muon_tx(lr: float, steps: int) -> optax.GradientTransformation:
        return muon(cosine(lr, steps), adam_learning_rate=cosine(best_adamw, steps))

    grid = [(lr, s) for lr in MLP_MUON_LRS for s in seeds]
    results = {}
    for lr, s in tqdm(grid, desc="(b) digits Muon"):
        results.setdefault(lr, []).append(train_mlp(muon_tx, lr, s, data, epochs, batch))
    runs["muon"] = {lr: summarize(r) for lr, r in results.items()}
    return {
        "setup": {
            "train": data.num_train,
            "test": data.num_test,
            "hidden": [256, 256],
            "epochs": epochs,
            "batch": batch,
            "seeds": list(seeds),
        },
        "runs": runs,
    }


# -- reporting ------------------------------------------------------------------------------------
def best(runs: dict[float, dict[str, Any]]) -> tuple[float, dict[str, Any]]:
    lr = min(runs, key=lambda k: runs[k]["train_loss"])
    return lr, runs[lr]


def report(name: str, result: dict[str, Any]) -> list[str]:
    lines = [f"{name}:"]
    for opt, runs in result["runs"].items():
        lr, r = best(runs)
        grid = ", ".join(
            f"lr={k:g}: loss {v['train_loss']:.4g} acc {v['test_acc']:.3f}" for k, v in runs.items()
        )
        early = f", after 5 epochs {r['train_loss_epoch5']:.4f}" if "train_loss_epoch5" in r else ""
        lines.append(
            f"  {opt:5s} best lr {lr:g}: final train loss {r['train_loss']:.4g}"
            f"{early}, test accuracy {r['test_acc']:.3f}   [{grid}]"
        )
    return lines


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (name, xlabel) in zip(
        axes, [("logistic_regression", "step"), ("digits_mlp", "epoch")], strict=True
    ):
        for opt, runs in results[name]["runs"].items():
            lr, r = best(runs)
            ax.semilogy(np.arange(1, len(r["curve"]) + 1), r["curve"], label=f"{opt} (lr {lr:g})")
        ax.set_title(name.replace("_", " "))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("train loss")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/muon_vs_adamw"))
    ap.add_argument("--epochs", type=int, default=30, help="digits MLP epochs")
    ap.add_argument("--steps", type=int, default=300, help="logistic regression steps")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    results = {
        "logistic_regression": logistic_regression(args.steps),
        "digits_mlp": digits_mlp(args.epochs),
    }
    results["seconds"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    plot(results, args.out / "loss_curves.png")
    lines = report("(a) logistic regression", results["logistic_regression"])
    lines += report("(b) digits MLP (mean of 3 seeds)", results["digits_mlp"])
    lines.append(f"total {results['seconds']:.0f} s; results in {args.out}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
