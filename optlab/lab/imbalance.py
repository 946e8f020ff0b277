"""Heavy-tailed class imbalance: mini-batch SGD is slow on the rare classes, Adam is not.

Kunstner, Yadav, Milligan, Schmidt, Bietti (2024), "Heavy-Tailed Class Imbalance and Why Adam
Outperforms Gradient Descent on Language Models": in language data the classes (next tokens)
follow Zipf's law, ``pi_k ~ 1/k``, so most samples belong to classes that are each rare. With
softmax cross-entropy the gradient of class ``k``'s weights is pulled towards its own samples
with weight ``pi_k``; (S)GD's step, whose size the frequent classes bound, then moves rare
classes' weights ``pi_1 / pi_k`` times more slowly, while Adam's per-coordinate normalization
(close to sign descent) moves every class's weights at a similar rate. The paper shows it on
GPT-2 and, stripped to its core, on a linear model on synthetic data whose only property is the
heavy-tailed class distribution; this experiment is of the latter kind (the input distribution
below is this module's choice; the lecture is D. Merkulov, "Modern optimization methods for
training neural networks"):

* :func:`zipf_frequencies`: ``pi_k = k^-s / sum_j j^-s``, ``k = 1 .. c``;
* :func:`make_problem`: ``n`` labels drawn i.i.d. from ``pi`` and inputs ``x ~ N(0, I_d / d)``
  independent of them, so a class is learned by memorizing its samples (a rare class's few
  samples can be memorized; the most frequent classes' thousands of samples in 128 dimensions
  cannot, and their loss stays high for every optimizer);
* :func:`class_buckets`: deciles of the classes sorted by frequency (bucket 0 the most
  frequent tenth of the classes, the last bucket the rarest tenth);
* :func:`bucket_losses`: the training loss averaged over the samples of each bucket's classes;
* :func:`train`: a linear softmax model ``W x + b`` from zero, trained with mini-batch
  ``optax.sgd`` (heavy-ball momentum) or ``optax.adam`` for every learning rate of a sweep at
  once (``jax.vmap``), the per-bucket training loss every ``eval_every`` steps;
* :func:`best_index`: the rate with the lowest final training loss (the tuning criterion).

Example:
  >>> import numpy as np
  >>> from optlab.lab import imbalance as im
  >>> np.round(im.zipf_frequencies(4), 3)  # 1/k over 1 + 1/2 + 1/3 + 1/4
  array([0.48, 0.24, 0.16, 0.12])
  >>> prob = im.make_problem(num_classes=20, num_samples=200, dim=16, seed=0)
  >>> run = im.train(prob, "adam", [0.01, 0.1], steps=20, batch_size=32, eval_every=10)
  >>> run.bucket_loss.shape  # (rates, evaluations, buckets)
  (2, 3, 10)
  >>> bool(np.allclose(run.bucket_loss[:, 0], np.log(20)))  # zero init: log c everywhere
  True

Command line: ``optlab lab imbalance``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

OPTIMIZERS = ("sgd", "adam")


def zipf_frequencies(num_classes: int, exponent: float = 1.0) -> np.ndarray:
    """``pi_k = k^-exponent / sum_{j <= num_classes} j^-exponent`` for ``k = 1 .. num_classes``
    (float64, decreasing, sums to 1)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not exponent >= 0:
        raise ValueError(f"exponent must be >= 0, got {exponent}")
    w = np.arange(1, num_classes + 1, dtype=np.float64) ** -float(exponent)
    return w / w.sum()


def class_buckets(num_classes: int, num_buckets: int = 10) -> np.ndarray:
    """Bucket of each class (classes indexed by decreasing frequency): ``floor(k B / c)``, so
    bucket ``b`` holds classes ``[b c / B, (b + 1) c / B)``, equal shares of the classes."""
    if not 1 <= num_buckets <= num_classes:
        raise ValueError(
            f"num_buckets must be in [1, num_classes={num_classes}], got {num_buckets}"
        )
    return (np.arange(num_classes) * num_buckets) // num_classes


@dataclasses.dataclass(frozen=True)
class Problem:
    """Inputs ``x`` (``n x d``, float32), labels ``y`` (class 0 the most frequent), the class
    frequencies ``pi`` the labels were drawn from, and each class's bucket."""

    x: np.ndarray
    y: np.ndarray
    frequencies: np.ndarray
    buckets: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.frequencies)

    @property
    def num_buckets(self) -> int:
        return int(self.buckets.max()) + 1

    def bucket_counts(self) -> np.ndarray:
        """Training samples per bucket."""
        return np.bincount(self.buckets[self.y], minlength=self.num_buckets)


def make_problem(
    *,
    num_classes: int = 1000,
    num_samples: int = 10000,
    dim: int = 128,
    exponent: float = 1.0,
    num_buckets: int = 10,
    seed: int = 0,
) -> Problem:
    """``num_samples`` labels i.i.d. from :func:`zipf_frequencies` and Gaussian inputs
    ``N(0, I / dim)`` (unit norm on average) drawn independently of the labels."""
    if num_samples < 1 or dim < 1:
        raise ValueError(f"num_samples and dim must be >= 1, got {num_samples}, {dim}")
    pi = zipf_frequencies(num_classes, exponent)
    rng = np.random.default_rng(seed)
    y = rng.choice(num_classes, size=num_samples, p=pi).astype(np.int32)
    x = (rng.standard_normal((num_samples, dim)) / np.sqrt(dim)).astype(np.float32)
    return Problem(x, y, pi, class_buckets(num_classes, num_buckets))


def bucket_losses(
    logits: np.ndarray | jax.Array, y: np.ndarray, buckets: np.ndarray, num_buckets: int
) -> np.ndarray:
    """Mean cross-entropy of the samples whose class is in each bucket (NaN for a bucket
    without samples), float64 numpy (the reference for the compiled evaluation)."""
    z = np.asarray(logits, np.float64)
    zmax = z.max(axis=1, keepdims=True)
    lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
    loss = lse - z[np.arange(len(y)), y]
    b = buckets[y]
    counts = np.bincount(b, minlength=num_buckets)
    sums = np.bincount(b, weights=loss, minlength=num_buckets)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


@dataclasses.dataclass
class Run:
    """One optimizer over a learning-rate sweep.

    Attributes:
      optimizer: ``"sgd"`` or ``"adam"``.
      learning_rates: the sweep.
      steps: the evaluated steps ``0, eval_every, ..., steps``.
      bucket_loss: ``(rates, evaluations, buckets)`` training loss per frequency bucket.
      loss: ``(rates, evaluations)`` training loss over all samples.
      params: the final ``{"w": (rates, d, c), "b": (rates, c)}`` (float32).
    """

    optimizer: str
    learning_rates: np.ndarray
    steps: np.ndarray
    bucket_loss: np.ndarray
    loss: np.ndarray
    params: dict[str, np.ndarray]


def make_optimizer(name: str, learning_rate: float | jax.Array, *, momentum: float = 0.9):
    """``optax.sgd`` with heavy-ball ``momentum`` (0: plain SGD) or ``optax.adam`` (its
    defaults, betas (0.9, 0.999), eps 1e-8)."""
    if name == "sgd":
        return optax.sgd(learning_rate, momentum=momentum or None)
    if name == "adam":
        return optax.adam(learning_rate)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def train(
    problem: Problem,
    optimizer: str,
    learning_rates: Sequence[float],
    *,
    steps: int,
    batch_size: int,
    eval_every: int,
    momentum: float = 0.9,
    seed: int = 0,
) -> Run:
    """Train ``logits = x W + b`` (``W``, ``b`` zero at the start: loss ``log c`` on every
    sample) by minimizing the mean cross-entropy over mini-batches of ``batch_size`` samples
    drawn uniformly with replacement, once per learning rate (the same batches for every
    rate); the per-bucket training loss over the whole training set every ``eval_every`` steps
    (``steps`` must be a multiple of it)."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if steps < 1 or eval_every < 1 or steps % eval_every:
        raise ValueError(
            f"steps ({steps}) must be a positive multiple of eval_every ({eval_every})"
        )
    if not 1 <= batch_size <= len(problem.y):
        raise ValueError(f"batch_size must be in [1, {len(problem.y)}], got {batch_size}")
    lrs = np.asarray(learning_rates, np.float64)
    bucket_of_sample = problem.buckets[problem.y].astype(np.int32)
    curves, params = _sweep(
        jnp.asarray(problem.x),
        jnp.asarray(problem.y),
        jnp.asarray(bucket_of_sample),
        jnp.asarray(lrs, jnp.float32),
        jax.random.key(seed),
        optimizer=optimizer,
        momentum=float(momentum),
        num_classes=problem.num_classes,
        num_buckets=problem.num_buckets,
        steps=steps,
        every=eval_every,
        batch_size=batch_size,
    )
    sums = np.asarray(curves, np.float64)  # (rates, evaluations, buckets): sums of losses
    counts = problem.bucket_counts()
    with np.errstate(invalid="ignore", divide="ignore"):
        per_bucket = sums / counts
    return Run(
        optimizer=optimizer,
        learning_rates=lrs,
        steps=np.arange(steps // eval_every + 1) * eval_every,
        bucket_loss=per_bucket,
        loss=sums.sum(axis=-1) / len(problem.y),
        params={k: np.asarray(v) for k, v in params.items()},
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "optimizer",
        "momentum",
        "num_classes",
        "num_buckets",
        "steps",
        "every",
        "batch_size",
    ),
)
def _sweep(
    x: jax.Array,
    y: jax.Array,
    bucket: jax.Array,
    lrs: jax.Array,
    key: jax.Array,
    *,
    optimizer: str,
    momentum: float,
    num_classes: int,
    num_buckets: int,
    steps: int,
    every: int,
    batch_size: int,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    # One compiled program for the whole sweep: the rate is traced and vmapped, and the batch
    # keys do not depend on it, so every rate sees the same batches.
    n, d = x.shape
    keys = jax.random.split(key, (steps // every, every))

    def loss_sums(p: dict[str, jax.Array]) -> jax.Array:
        losses = optax.softmax_cross_entropy_with_integer_labels(x @ p["w"] + p["b"], y)
        return jax.ops.segment_sum(losses, bucket, num_buckets)

    def one(lr: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        tx = make_optimizer(optimizer, lr, momentum=momentum)
        p = {"w": jnp.zeros((d, num_classes)), "b": jnp.zeros(num_classes)}

        def batch_loss(p: dict[str, jax.Array], idx: jax.Array) -> jax.Array:
            logits = x[idx] @ p["w"] + p["b"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, y[idx]).mean()

        def step(carry: tuple, k: jax.Array) -> tuple[tuple, None]:
            p, s = carry
            idx = jax.random.randint(k, (batch_size,), 0, n)
            u, s = tx.update(jax.grad(batch_loss)(p, idx), s, p)
            return (optax.apply_updates(p, u), s), None

        def block(carry: tuple, ks: jax.Array) -> tuple[tuple, jax.Array]:
            carry, _ = jax.lax.scan(step, carry, ks)
            return carry, loss_sums(carry[0])

        first = loss_sums(p)
        (p, _), sums = jax.lax.scan(block, (p, tx.init(p)), keys)
        return jnp.concatenate([first[None], sums]), p

    return jax.vmap(one)(lrs)


def best_index(run: Run) -> int:
    """Index of the rate with the lowest final training loss (non-finite losses lose)."""
    final = np.where(np.isfinite(run.loss[:, -1]), run.loss[:, -1], np.inf)
    return int(np.argmin(final))


def on_edge(run: Run) -> bool:
    """Whether the best rate is the smallest or the largest of a sweep of several (then the
    sweep may not contain the optimum)."""
    i = best_index(run)
    return len(run.learning_rates) > 1 and i in (0, len(run.learning_rates) - 1)


def plot(problem: Problem, runs: dict[str, Run], path: str | os.PathLike) -> None:
    """The class distribution with its buckets, the overall training loss of each optimizer's
    best rate, and its training loss per bucket vs steps (the layout of Kunstner et al.'s
    Figure 1)."""
    from optlab.lab._plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2 + len(runs), figsize=(4.6 * (2 + len(runs)), 4))
    counts = np.bincount(problem.y, minlength=problem.num_classes)
    ranks = np.arange(1, problem.num_classes + 1)
    nb = problem.num_buckets
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.95, nb))
    ax = axes[0]
    for b in range(nb):
        sel = problem.buckets == b
        ax.bar(ranks[sel], np.maximum(counts[sel], 0.5), width=1.0, color=colors[b])
    ax.plot(ranks, problem.frequencies * len(problem.y), "k--", linewidth=1, label="n pi_k")
    ax.set(xscale="log", yscale="log", xlabel="class (by frequency)", ylabel="training samples")
    ax.set_title("Zipf classes, colored by decile")
    ax.legend(fontsize=8)
    ax = axes[1]
    for i, (name, r) in enumerate(runs.items()):
        j = best_index(r)
        ax.plot(r.steps, r.loss[j], color=f"C{i}", label=f"{name} lr {r.learning_rates[j]:g}")
    ax.set(xlabel="step", ylabel="training loss", title="overall training loss")
    top = 1.15 * max(float(np.nanmax(r.loss[best_index(r)])) for r in runs.values())
    ax.set_ylim(0, top)
    ax.legend(fontsize=8)
    for ax, (name, r) in zip(axes[2:], runs.items()):
        j = best_index(r)
        for b in range(nb):
            label = "most frequent" if b == 0 else ("rarest" if b == nb - 1 else None)
            ax.plot(r.steps, r.bucket_loss[j, :, b], color=colors[b], label=label)
        ax.set(xlabel="step", ylabel="training loss per decile", ylim=(0, top))
        ax.set_title(f"{name} (lr {r.learning_rates[j]:g}), per class decile")
        ax.legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
