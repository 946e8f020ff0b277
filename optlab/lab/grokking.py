"""Grokking on modular arithmetic: a small transformer generalizes long after it memorizes.

Power et al. (2022), "Grokking: Generalization Beyond Overfitting on Small Algorithmic
Datasets": a decoder-only transformer trained on a fraction of the table of ``x o y mod p``
reaches 100% training accuracy early and, with weight decay, 100% test accuracy much later.
Nanda et al. (2023), "Progress measures for grokking via mechanistic interpretability", give
the settings that grok quickly: one layer, width 128, 4 heads, MLP 512 with ReLU, no
LayerNorm, inputs ``[x, y, =]``, full-batch AdamW (lr 1e-3, betas (0.9, 0.98), weight decay
1, a 10-step linear warmup).

Pieces:

* :func:`modular_dataset`: the table of ``x o y mod p`` for ``o`` in ``/ + - *`` (division as in
  Power et al.: ``x / y = x * y^(p-2) mod p`` for ``y != 0``), split at random;
* :class:`GrokTransformer`: the model (separate 2D query/key/value/out kernels, so Muon and
  Shampoo see matrices; modules named ``embed``/``pos_embed``/``head`` so
  :func:`optlab.muon_labels` gives them to AdamW);
* :func:`make_optimizer`: AdamW, Muon or Shampoo with the same weight decay;
* :func:`train`: full-batch training, train and test accuracy every ``eval_every`` steps;
* :func:`time_to_grok`: the first evaluated step at which test accuracy reaches 0.95.

Example:
  >>> from optlab.lab import grokking
  >>> data = grokking.modular_dataset(7, "+", train_fraction=0.5, seed=0)
  >>> data.x_train.shape[1], data.num_classes
  (3, 7)
  >>> run = grokking.train(data, "adamw", steps=20, eval_every=10, seed=0,
  ...                      d_model=16, num_heads=2, d_mlp=32)
  >>> run.steps
  [0, 10, 20]

Command line: ``optlab lab grokking``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

OPERATIONS = ("/", "+", "-", "*")
OPTIMIZERS = ("adamw", "muon", "shampoo")
GROK_THRESHOLD = 0.95
ADAM_LR = 3e-3  # AdamW's (and Shampoo's, Muon's embedding/head) default learning rate


@dataclasses.dataclass(frozen=True)
class ModularData:
    """Pairs ``(x, y)`` as tokens ``[x, y, p]`` (``p`` is the ``=`` token) and ``x o y mod p``."""

    p: int
    op: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_classes(self) -> int:
        return self.p


def modular_result(x: np.ndarray, y: np.ndarray, p: int, op: str) -> np.ndarray:
    """``x o y mod p`` elementwise; division is multiplication by ``y^(p-2)`` (Fermat)."""
    x, y = np.asarray(x, np.int64), np.asarray(y, np.int64)
    if op == "+":
        return (x + y) % p
    if op == "-":
        return (x - y) % p
    if op == "*":
        return (x * y) % p
    if op == "/":
        inv = np.array([pow(int(b), p - 2, p) for b in range(p)], np.int64)
        return (x * inv[y]) % p
    raise ValueError(f"op must be one of {OPERATIONS}, got {op!r}")


def _is_prime(p: int) -> bool:
    return p >= 2 and all(p % d for d in range(2, int(p**0.5) + 1))


def modular_dataset(p: int = 97, op: str = "/", *, train_fraction: float, seed: int) -> ModularData:
    """All equations ``x o y = z (mod p)`` (``y != 0`` for division), a random
    ``train_fraction`` of them for training and the rest for testing."""
    if not (isinstance(p, int) and _is_prime(p)):
        raise ValueError(f"p must be a prime (division needs inverses), got {p!r}")
    if op not in OPERATIONS:
        raise ValueError(f"op must be one of {OPERATIONS}, got {op!r}")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction!r}")
    x, y = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    x, y = x.ravel(), y.ravel()
    if op == "/":
        keep = y != 0
        x, y = x[keep], y[keep]
    z = modular_result(x, y, p, op)
    tokens = np.stack([x, y, np.full_like(x, p)], axis=1).astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(z))
    n_train = max(1, min(len(z) - 1, round(train_fraction * len(z))))
    tr, te = order[:n_train], order[n_train:]
    return ModularData(
        p, op, tokens[tr], z[tr].astype(np.int32), tokens[te], z[te].astype(np.int32)
    )


class _Attention(nnx.Module):
    def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs):
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        lin = lambda: nnx.Linear(d_model, d_model, use_bias=False, rngs=rngs)  # noqa: E731
        self.query, self.key, self.value, self.out = lin(), lin(), lin(), lin()

    def __call__(self, x: jax.Array, last_only: bool) -> jax.Array:
        b, t, d = x.shape
        h = self.num_heads
        split = lambda y: jnp.reshape(y, (b, y.shape[1], h, d // h))  # noqa: E731
        # The last layer is only read at the last position: its queries there suffice.
        q = split(self.query(x[:, -1:] if last_only else x))
        k, v = split(self.key(x)), split(self.value(x))
        y = jax.nn.dot_product_attention(q, k, v, is_causal=not last_only)
        return self.out(jnp.reshape(y, (b, q.shape[1], d)))


class _Block(nnx.Module):
    def __init__(self, d_model: int, num_heads: int, d_mlp: int, *, rngs: nnx.Rngs):
        self.attn = _Attention(d_model, num_heads, rngs=rngs)
        self.fc = nnx.Linear(d_model, d_mlp, rngs=rngs)
        self.proj = nnx.Linear(d_mlp, d_model, rngs=rngs)

    def __call__(self, x: jax.Array, last_only: bool) -> jax.Array:
        x = (x[:, -1:] if last_only else x) + self.attn(x, last_only)
        return x + self.proj(jax.nn.relu(self.fc(x)))


class GrokTransformer(nnx.Module):
    """Nanda et al.'s grokking transformer: token + learned position embeddings, ``num_layers``
    blocks ``x + attn(x)`` then ``x + proj(relu(fc(x)))`` (no LayerNorm), an untied ``head``;
    returns the logits at the last (``=``) position."""

    def __init__(
        self,
        p: int,
        *,
        d_model: int = 128,
        num_heads: int = 4,
        d_mlp: int = 512,
        num_layers: int = 1,
        rngs: nnx.Rngs,
    ):
        init = nnx.initializers.normal(1.0 / np.sqrt(d_model))
        self.embed = nnx.Embed(p + 1, d_model, embedding_init=init, rngs=rngs)
        self.pos_embed = nnx.Embed(3, d_model, embedding_init=init, rngs=rngs)
        self.blocks = nnx.List(
            [_Block(d_model, num_heads, d_mlp, rngs=rngs) for _ in range(num_layers)]
        )
        self.head = nnx.Linear(d_model, p, use_bias=False, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.embed(tokens) + self.pos_embed(jnp.arange(tokens.shape[1]))
        n = len(self.blocks)
        for i, block in enumerate(self.blocks):
            x = block(x, i == n - 1)
        return self.head(x[:, -1])


def make_optimizer(
    name: str,
    *,
    learning_rate: float | None = None,
    weight_decay: float = 1.0,
    warmup_steps: int = 10,
) -> optax.GradientTransformation:
    """``adamw`` (betas (0.9, 0.98) as Nanda et al.), ``muon`` (optlab.muon on the hidden
    matrices, lr 0.02 by default, AdamW as above on embeddings, head and biases) or ``shampoo``
    (optlab.shampoo, Adam grafting); all with decoupled ``weight_decay`` and a linear warmup over
    ``warmup_steps``.

    The default AdamW and Shampoo learning rate is 3e-3, not Nanda et al.'s 1e-3: with half the
    table for training it memorizes in ~100 steps and groks in under 1000 on x / y mod 97, which
    keeps the default run within minutes on a laptop CPU."""
    import optlab

    def sched(lr: float) -> optax.Schedule:
        return optax.linear_schedule(lr / max(warmup_steps, 1), lr, max(warmup_steps, 1))

    if name == "adamw":
        lr = ADAM_LR if learning_rate is None else learning_rate
        return optax.adamw(sched(lr), b1=0.9, b2=0.98, weight_decay=weight_decay)
    if name == "muon":
        lr = 0.02 if learning_rate is None else learning_rate
        # Decoupled decay is W (1 - lr wd): the same per-step shrink as AdamW's at Muon's
        # larger lr needs wd * ADAM_LR / lr on the matrices.
        return optlab.muon(
            sched(lr),
            weight_decay=weight_decay * ADAM_LR / lr,
            adam_learning_rate=sched(ADAM_LR),
            adam_b1=0.9,
            adam_b2=0.98,
            adam_weight_decay=weight_decay,
        )
    if name == "shampoo":
        lr = ADAM_LR if learning_rate is None else learning_rate
        return optlab.shampoo(sched(lr), b1=0.9, b2=0.98, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


@dataclasses.dataclass
class GrokRun:
    """Accuracies and losses at ``steps`` (0 = initialization) of one training run."""

    optimizer: str
    seed: int
    steps: list[int]
    train_acc: list[float]
    test_acc: list[float]
    train_loss: list[float]
    test_loss: list[float]

    @property
    def time_to_grok(self) -> int | None:
        return time_to_grok(self.steps, self.test_acc)

    @property
    def time_to_memorize(self) -> int | None:
        return time_to_grok(self.steps, self.train_acc, threshold=0.99)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(time_to_grok=self.time_to_grok, time_to_memorize=self.time_to_memorize)
        return d


def time_to_grok(
    steps: Sequence[int], acc: Sequence[float], threshold: float = GROK_THRESHOLD
) -> int | None:
    """The first step whose accuracy is ``>= threshold``, or None if none is."""
    for s, a in zip(steps, acc, strict=True):
        if a >= threshold:
            return int(s)
    return None


def train(
    data: ModularData,
    optimizer: str | optax.GradientTransformation,
    *,
    steps: int,
    eval_every: int,
    seed: int,
    weight_decay: float = 1.0,
    learning_rate: float | None = None,
    stop_at: float | None = None,
    progress: Any = None,
    **model_kwargs: Any,
) -> GrokRun:
    """Full-batch training of a :class:`GrokTransformer` from ``nnx.Rngs(seed)``.

    Accuracies and mean cross-entropies on the train and test splits are recorded at step 0 and
    every ``eval_every`` steps; training stops early once test accuracy is ``>= stop_at``.
    """
    name = optimizer if isinstance(optimizer, str) else "custom"
    tx = (
        make_optimizer(optimizer, learning_rate=learning_rate, weight_decay=weight_decay)
        if isinstance(optimizer, str)
        else optimizer
    )
    model = GrokTransformer(data.p, rngs=nnx.Rngs(seed), **model_kwargs)
    graphdef, params = nnx.split(model, nnx.Param)
    opt_state = tx.init(params)
    xtr, ytr = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    xte, yte = jnp.asarray(data.x_test), jnp.asarray(data.y_test)

    def loss_fn(params: Any, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = nnx.merge(graphdef, params)(x).astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, jnp.mean(jnp.argmax(logits, -1) == y)

    @jax.jit
    def chunk(params: Any, opt_state: Any, n: jax.Array) -> tuple[Any, Any]:
        def body(_: Any, carry: tuple[Any, Any]) -> tuple[Any, Any]:
            params, opt_state = carry
            grads = jax.grad(lambda q: loss_fn(q, xtr, ytr)[0])(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        return jax.lax.fori_loop(0, n, body, (params, opt_state))

    @jax.jit
    def metrics(params: Any) -> jax.Array:
        return jnp.stack([*loss_fn(params, xtr, ytr), *loss_fn(params, xte, yte)])

    run = GrokRun(name, seed, [], [], [], [], [])

    def record(step: int) -> None:
        trl, tra, tel, tea = (float(v) for v in metrics(params))
        run.steps.append(step)
        run.train_loss.append(trl)
        run.train_acc.append(tra)
        run.test_loss.append(tel)
        run.test_acc.append(tea)

    record(0)
    done = 0
    while done < steps:
        n = min(eval_every, steps - done)
        params, opt_state = chunk(params, opt_state, jnp.asarray(n))
        done += n
        record(done)
        if progress is not None:
            progress.update(n)
            progress.set_postfix_str(f"train {run.train_acc[-1]:.3f} test {run.test_acc[-1]:.3f}")
        if stop_at is not None and run.test_acc[-1] >= stop_at:
            break
    return run
