"""Initialization of deep plain ReLU networks: He versus Glorot versus a small constant scale.

He, Zhang, Ren, Sun (2015), "Delving Deep into Rectifiers": in a ReLU layer ``z' = W relu(z)``
with ``W_ij ~ N(0, s^2)`` and ``n`` inputs, ``E[z'^2] = n s^2 E[z^2] / 2``. He's ``s^2 = 2 / n``
keeps the signal's scale through any depth; Glorot and Bengio's ``s^2 = 2 / (n_in + n_out)``
(``1 / n`` for equal widths) halves its second moment at every layer, so a 30-layer net starts
with a signal ``2^-15`` times smaller and barely trains (He et al.'s Figure 3: 22 layers train
with both, 30 layers only with He's); a small fixed scale (``s = 0.01``) kills it at once
(Merkulov, "Modern optimization methods for training neural networks").

* :func:`init_mlp`: weights with one of :data:`SCHEMES`, zero biases;
* :func:`forward_scales`: the mean square of every layer's pre-activations on a batch;
* :func:`train`: SGD with momentum (optax.sgd) on the digits data, training loss per step.

Example:
  >>> import jax, numpy as np
  >>> from optlab.lab import init as ini
  >>> params = ini.init_mlp(jax.random.key(0), [64] + [256] * 10 + [10], "he")
  >>> x = np.random.default_rng(0).standard_normal((512, 64)).astype(np.float32)
  >>> s = ini.forward_scales(params, x)
  >>> bool(0.5 < s[-1] / s[0] < 2)
  True

Command line: ``optlab lab init``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

SCHEMES = ("he", "glorot", "naive")
NAIVE_STD = 0.01


def init_mlp(key: jax.Array, sizes: Sequence[int], scheme: str) -> list[dict[str, jax.Array]]:
    """Layers ``sizes[i] -> sizes[i + 1]`` with ``W ~ N(0, s^2)``: ``he`` ``s^2 = 2 / n_in``,
    ``glorot`` ``s^2 = 2 / (n_in + n_out)``, ``naive`` ``s = 0.01``; biases zero."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    params = []
    for k, (n_in, n_out) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes, sizes[1:])):
        std = {
            "he": np.sqrt(2.0 / n_in),
            "glorot": np.sqrt(2.0 / (n_in + n_out)),
            "naive": NAIVE_STD,
        }[scheme]
        params.append({"w": std * jax.random.normal(k, (n_in, n_out)), "b": jnp.zeros(n_out)})
    return params


def apply(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    """Logits of the plain ReLU MLP (no normalization, no skip connections)."""
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def forward_scales(params: list[dict[str, jax.Array]], x: Any) -> np.ndarray:
    """Mean square of each layer's pre-activations ``z_l`` on the batch ``x``."""
    out = []
    h = jnp.asarray(x)
    for i, layer in enumerate(params):
        z = h @ layer["w"] + layer["b"]
        out.append(float(jnp.mean(z**2)))
        h = jax.nn.relu(z) if i < len(params) - 1 else z
    return np.asarray(out)


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (offline), standardized features, float32."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    return x.astype(np.float32), y.astype(np.int32)


def train(
    x: np.ndarray,
    y: np.ndarray,
    *,
    depth: int,
    width: int,
    scheme: str,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> np.ndarray:
    """Training loss of every step of SGD (momentum 0.9) on a ``depth``-layer ReLU MLP
    (``depth`` weight layers, ``width`` hidden units) initialized with ``scheme``."""
    key = jax.random.key(seed)
    sizes = [x.shape[1]] + [width] * (depth - 1) + [int(y.max()) + 1]
    params = init_mlp(key, sizes, scheme)
    return np.asarray(
        _train(
            params,
            jnp.asarray(x),
            jnp.asarray(y),
            jax.random.fold_in(key, 1),
            jnp.float32(lr),
            steps=steps,
            batch_size=batch_size,
        )
    )


@jax.jit(static_argnames=("steps", "batch_size"))
def _train(
    params: Any,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    lr: jax.Array,
    *,
    steps: int,
    batch_size: int,
) -> jax.Array:
    tx = optax.sgd(lr, momentum=0.9)

    def loss(p: Any, idx: jax.Array) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(apply(p, x[idx]), y[idx]).mean()

    def step(carry: tuple, k: jax.Array) -> tuple[tuple, jax.Array]:
        p, s = carry
        idx = jax.random.choice(k, x.shape[0], (batch_size,), replace=False)
        value, g = jax.value_and_grad(loss)(p, idx)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), value

    _, losses = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(key, steps))
    return losses
