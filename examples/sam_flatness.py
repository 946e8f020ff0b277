"""SAM finds flatter minima: SGD vs SAM(SGD) on scikit-learn's digits, same model, same loss.

Trains one small Flax NNX MLP with BatchNorm twice from the same initialization, once with
plain minibatch SGD and once with ``optlab.sam(sgd, rho=rho)``, each until its
full-training-set loss first reaches the same target. At that point it measures the
sharpness of the training loss (the top Hessian eigenvalue, by Lanczos, and the Hessian trace,
by Hutchinson's estimator; ``optlab.lab.sharpness``) and the test accuracy. Foret et al. (2021)
predict a smaller top eigenvalue for SAM at equal training loss.

BatchNorm with SAM: the second (perturbed) forward pass must not touch the running
statistics. The training step below splits the model once into ``graphdef``, parameters and
the rest (the BatchNorm statistics), computes the clean gradient together with the new
statistics, and hands SAM a pure ``grad_fn`` that merges a *copy* of the current statistics,
differentiates the loss at the perturbed parameters and throws the statistics it produced
away. Only the clean pass's statistics are kept.

Sharpness is measured on the whole training set with BatchNorm in inference mode (running
statistics), so the loss is a fixed function of the parameters.

Run (about a minute on a 2-core CPU for the default 3 seeds; no network, the digits ship
with scikit-learn)::

    python examples/sam_flatness.py                       # writes runs/sam_flatness/
    python examples/sam_flatness.py --seeds 0 --rho 0.05 --out runs/sam_flatness_rho005
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from optlab import sam
from optlab.lab.sharpness import hessian_eigenvalues_lanczos, hessian_trace


class MLP(nnx.Module):
    """64 -> width -> BatchNorm -> ReLU -> width -> ReLU -> 10."""

    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(64, width, rngs=rngs)
        self.bn = nnx.BatchNorm(width, momentum=0.9, rngs=rngs)
        self.l2 = nnx.Linear(width, width, rngs=rngs)
        self.head = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        h = nnx.relu(self.bn(self.l1(x), use_running_average=not train))
        return self.head(nnx.relu(self.l2(h)))


def load_data(seed: int) -> tuple[np.ndarray, ...]:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-3
    return (x_tr - mean) / std, y_tr.astype(np.int32), (x_te - mean) / std, y_te.astype(np.int32)


def train(
    opt_name: str,
    tx: optax.GradientTransformation,
    data: tuple[np.ndarray, ...],
    args: Any,
    seed: int,
) -> dict[str, Any]:
    x_tr, y_tr, x_te, y_te = (jnp.asarray(a) for a in data)
    # Same initialization for both optimizers (same seed).
    graphdef, params, stats = nnx.split(MLP(args.width, rngs=nnx.Rngs(seed)), nnx.Param, ...)

    def loss_and_stats(params, stats, x, y, training: bool):
        # copy=True: fresh Variables, so merging inside jax.grad never mutates `stats`.
        model = nnx.merge(graphdef, params, stats, copy=True)
        logits = model(x, train=training)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, (logits, nnx.state(model, nnx.Not(nnx.Param)))

    @jax.jit
    def step(params, stats, opt_state, x, y):
        # Clean pass: gradient at w and the BatchNorm statistics to keep.
        (_, (_, new_stats)), grads = jax.value_and_grad(loss_and_stats, has_aux=True)(
            params, stats, x, y, True
        )

        # Perturbed pass for SAM: same batch, the *current* statistics, new ones discarded.
        grad_fn = jax.grad(lambda p: loss_and_stats(p, stats, x, y, True)[0])

        # optax.sgd ignores grad_fn (and XLA drops the unused second pass).
        updates, opt_state = tx.update(grads, opt_state, params, grad_fn=grad_fn)
        return optax.apply_updates(params, updates), new_stats, opt_state

    @jax.jit
    def evaluate(params, stats):
        tr_loss, (tr_logits, _) = loss_and_stats(params, stats, x_tr, y_tr, False)
        _, (te_logits, _) = loss_and_stats(params, stats, x_te, y_te, False)
        return (
            tr_loss,
            jnp.mean(jnp.argmax(tr_logits, -1) == y_tr),
            jnp.mean(jnp.argmax(te_logits, -1) == y_te),
        )

    opt_state = tx.init(params)
    n, bs = x_tr.shape[0], args.batch_size
    rng = np.random.default_rng(seed)
    history, reached = [], False
    t0 = time.perf_counter()
    bar = tqdm(range(1, args.max_epochs + 1), desc=f"{opt_name} seed {seed}", leave=False)
    for epoch in bar:
        perm = rng.permutation(n)
        for i in range(n // bs):
            idx = perm[i * bs : (i + 1) * bs]
            params, stats, opt_state = step(params, stats, opt_state, x_tr[idx], y_tr[idx])
        tr_loss, tr_acc, te_acc = (float(v) for v in evaluate(params, stats))
        history.append(
            {"epoch": epoch, "train_loss": tr_loss, "train_acc": tr_acc, "test_acc": te_acc}
        )
        bar.set_postfix(train_loss=f"{tr_loss:.4f}", test_acc=f"{te_acc:.4f}")
        if tr_loss <= args.target_loss:
            reached = True
            break
    train_seconds = time.perf_counter() - t0

    # Sharpness of the full-training-set loss (inference-mode BatchNorm) at the final point.
    def train_loss(p):
        return loss_and_stats(p, stats, x_tr, y_tr, False)[0]

    eig = hessian_eigenvalues_lanczos(
        train_loss, params, k=1, num_iters=args.lanczos_iters, key=jax.random.key(seed)
    )
    trace = hessian_trace(
        train_loss, params, num_samples=args.trace_samples, key=jax.random.key(seed + 1)
    )
    return {
        "optimizer": opt_name,
        "seed": seed,
        "reached_target": reached,
        "epochs": history[-1]["epoch"],
        "train_loss": history[-1]["train_loss"],
        "train_acc": history[-1]["train_acc"],
        "test_acc": history[-1]["test_acc"],
        "top_eigenvalue": float(eig.eigenvalues[0]),
        "top_eigenvalue_residual": float(eig.residual_norms[0]),
        "hessian_trace": float(trace.trace),
        "hessian_trace_stderr": float(trace.stderr),
        "train_seconds": train_seconds,
        "history": history,
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = {"sgd": "tab:blue", "sam": "tab:red"}
    for r in results:
        h = r["history"]
        ax1.semilogy(
            [e["epoch"] for e in h],
            [e["train_loss"] for e in h],
            color=colors[r["optimizer"]],
            alpha=0.8,
            label=f"{r['optimizer']} (seed {r['seed']})",
        )
    ax1.set(xlabel="epoch", ylabel="train loss (full set)", title="training to equal loss")
    ax1.legend(fontsize=8)
    for name in ("sgd", "sam"):
        rs = [r for r in results if r["optimizer"] == name]
        ax2.scatter(
            [r["top_eigenvalue"] for r in rs],
            [r["test_acc"] for r in rs],
            color=colors[name],
            label=name,
            s=40,
        )
    ax2.set(
        xlabel="top Hessian eigenvalue (train loss)",
        ylabel="test accuracy",
        title="sharpness vs generalization",
    )
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/sam_flatness"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--rho", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--target-loss", type=float, default=0.02)
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--lanczos-iters", type=int, default=30)
    parser.add_argument("--trace-samples", type=int, default=100)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()

    optimizers = {
        "sgd": optax.sgd(args.lr),
        "sam": sam(optax.sgd(args.lr), rho=args.rho),
    }
    results = []
    for seed in args.seeds:
        data = load_data(seed)
        for name, tx in optimizers.items():
            results.append(train(name, tx, data, args, seed))

    rows = []
    for name in optimizers:
        rs = [r for r in results if r["optimizer"] == name]
        rows.append(
            {
                "optimizer": name,
                "top_eigenvalue": float(np.mean([r["top_eigenvalue"] for r in rs])),
                "hessian_trace": float(np.mean([r["hessian_trace"] for r in rs])),
                "test_acc": float(np.mean([r["test_acc"] for r in rs])),
                "train_loss": float(np.mean([r["train_loss"] for r in rs])),
                "epochs": float(np.mean([r["epochs"] for r in rs])),
                "all_reached_target": all(r["reached_target"] for r in rs),
            }
        )
    print(f"\nmean over seeds {args.seeds}; stop at full-train loss <= {args.target_loss}")
    print("| optimizer | epochs | train loss | top Hessian eigenvalue | Hessian trace | test acc |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['optimizer']} | {r['epochs']:.0f} | {r['train_loss']:.4f} | "
            f"{r['top_eigenvalue']:.3f} | {r['hessian_trace']:.2f} | {r['test_acc']:.4f} |"
        )

    args.out.mkdir(parents=True, exist_ok=True)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (args.out / "results.json").write_text(
        json.dumps({"config": config, "summary": rows, "runs": results}, indent=2)
    )
    if not args.no_plot:
        plot(results, args.out / "sam_flatness.png")
    print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
