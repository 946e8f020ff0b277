"""SGD's noise floor: constant-step SGD stalls at a distance from the optimum proportional to
the step, while full-batch gradient descent and decreasing steps converge.

Merkulov, "Modern optimization methods for training neural networks" (the strongly convex
logistic regression demo, ``m = 200`` samples, ``n = 10`` features, ``mu = 1``):

``f(w) = (1/m) sum_i log(1 + exp(-y_i a_i^T w)) + (mu/2) ||w||^2``.

With step ``alpha`` and single-sample gradients ``g_i(w)``, for small ``alpha``
``E ||w_k - w*||^2 -> alpha sigma^2 / (2 mu) + O(alpha^2)`` where ``sigma^2 = E ||g_i(w*)||^2``
(Moulines and Bach 2011, "Non-asymptotic analysis of stochastic approximation algorithms for
machine learning"; Bottou, Curtis, Nocedal 2018, "Optimization methods for large-scale machine
learning", Thm. 4.6): halving the step halves the floor. Steps ``alpha_k = alpha / (1 + alpha mu
k)`` (``O(1/k)``) reach the optimum; so does full-batch GD, linearly.

* :func:`make_problem`, :func:`exact_optimum` (Newton's method in float64 to machine precision);
* :func:`run_sgd`: mean squared distance to ``w*`` over seeds, every ``record_every`` steps, for a
  constant or decreasing step, single-sample or full-batch gradients (optax.sgd);
* :func:`noise_floor`: the mean over the last half of the run;
* :func:`predicted_floor`: ``alpha sigma^2 / (2 mu)``.

Example:
  >>> from optlab.lab import sgd_noise as sn
  >>> prob = sn.make_problem(m=50, n=3, mu=1.0, seed=0)
  >>> w_star = sn.exact_optimum(prob)
  >>> float(abs(sn.full_gradient(prob, w_star)).max()) < 1e-12
  True
  >>> d = sn.run_sgd(prob, w_star, lr=0.05, steps=200, seeds=2, record_every=100)
  >>> d.shape
  (3,)

Command line: ``optlab lab sgd-noise``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax


@dataclasses.dataclass(frozen=True)
class Problem:
    """Features ``a`` (``m x n``), labels ``y`` in ``{-1, +1}``, ridge ``mu``."""

    a: np.ndarray
    y: np.ndarray
    mu: float


def make_problem(*, m: int = 200, n: int = 10, mu: float = 1.0, seed: int = 0) -> Problem:
    """Gaussian features, labels from a random linear rule with 10% of them flipped (so the
    data are not separable and ``w*`` is an interior point)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, n))
    w = rng.standard_normal(n)
    y = np.sign(a @ w + 1e-12)
    y[rng.random(m) < 0.1] *= -1
    return Problem(a, y, float(mu))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * z))  # no overflow for large |z|


def full_gradient(prob: Problem, w: np.ndarray) -> np.ndarray:
    """``grad f(w)``, float64."""
    z = prob.y * (prob.a @ w)
    return -(prob.a.T @ (prob.y * _sigmoid(-z))) / len(prob.y) + prob.mu * w


def exact_optimum(prob: Problem, *, iters: int = 50) -> np.ndarray:
    """``w*`` by Newton's method from 0 (f is ``mu``-strongly convex and smooth: quadratic
    convergence once close, full steps are safe from 0 for this ridge)."""
    m, n = prob.a.shape
    w = np.zeros(n)
    for _ in range(iters):
        z = prob.y * (prob.a @ w)
        s = _sigmoid(z)
        h = (prob.a.T * (s * (1 - s))) @ prob.a / m + prob.mu * np.eye(n)
        step = np.linalg.solve(h, full_gradient(prob, w))
        w = w - step
        if np.linalg.norm(step) <= 1e-15 * max(1.0, np.linalg.norm(w)):
            break
    return w


def gradient_noise(prob: Problem, w_star: np.ndarray) -> float:
    """``sigma^2 = (1/m) sum_i ||grad f_i(w*)||^2`` (the full gradient is 0 there)."""
    z = prob.y * (prob.a @ w_star)
    g = -(prob.a * (prob.y * _sigmoid(-z))[:, None]) + prob.mu * w_star
    return float(np.mean(np.sum(g**2, axis=1)))


def predicted_floor(prob: Problem, w_star: np.ndarray, lr: float) -> float:
    """``alpha sigma^2 / (2 mu)``: the leading term of ``E ||w - w*||^2`` at stationarity."""
    return lr * gradient_noise(prob, w_star) / (2 * prob.mu)


def run_sgd(
    prob: Problem,
    w_star: np.ndarray,
    *,
    lr: float,
    steps: int,
    seeds: int,
    record_every: int,
    schedule: str = "constant",
    full_batch: bool = False,
    seed: int = 0,
) -> np.ndarray:
    """Mean over ``seeds`` runs of ``||w_k - w*||^2`` at ``k = 0, record_every, ...`` (length
    ``steps // record_every + 1``), optax.sgd from the all-ones vector (far from ``w*``, which
    the ridge ``mu = 1`` keeps near 0).

    ``schedule``: ``"constant"`` or ``"decreasing"`` (``lr / (1 + lr mu k)``); ``full_batch``:
    the exact gradient instead of one uniformly drawn sample's.
    """
    if schedule not in ("constant", "decreasing"):
        raise ValueError(f"schedule must be 'constant' or 'decreasing', got {schedule!r}")
    keys = jax.random.split(jax.random.key(seed), seeds)
    d = _distances(
        jnp.asarray(prob.a, jnp.float32),
        jnp.asarray(prob.y, jnp.float32),
        jnp.asarray(w_star, jnp.float32),
        jnp.float32(prob.mu),
        jnp.float32(lr),
        jnp.float32(schedule == "decreasing"),
        keys,
        steps=steps,
        every=record_every,
        full_batch=full_batch,
    )
    return np.asarray(d.mean(axis=0), np.float64)


@functools.partial(jax.jit, static_argnames=("steps", "every", "full_batch"))
def _distances(
    a: jax.Array,
    y: jax.Array,
    ws: jax.Array,
    mu: jax.Array,
    lr: jax.Array,
    decay: jax.Array,
    keys: jax.Array,
    *,
    steps: int,
    every: int,
    full_batch: bool,
) -> jax.Array:
    # One compiled program for every step size and both schedules (lr and decay are traced):
    # alpha_k = lr / (1 + decay lr mu k), decay 0 (constant) or 1 (decreasing).
    tx = optax.sgd(lambda k: lr / (1.0 + decay * lr * mu * k))
    m = a.shape[0]

    def loss(w: jax.Array, idx: jax.Array) -> jax.Array:
        z = y[idx] * (a[idx] @ w)
        return jnp.mean(jnp.logaddexp(0.0, -z)) + 0.5 * mu * jnp.sum(w**2)

    grad = jax.grad(loss)

    def one(key: jax.Array) -> jax.Array:
        w = jnp.ones(a.shape[1])

        def step(carry: tuple[jax.Array, optax.OptState], k: jax.Array) -> tuple[tuple, None]:
            w, state = carry
            idx = jnp.arange(m) if full_batch else jax.random.randint(k, (1,), 0, m)
            updates, state = tx.update(grad(w, idx), state, w)
            return (optax.apply_updates(w, updates), state), None

        def block(carry: tuple, keys: jax.Array) -> tuple[tuple, jax.Array]:
            carry, _ = jax.lax.scan(step, carry, keys)
            return carry, jnp.sum((carry[0] - ws) ** 2)

        _, d = jax.lax.scan(block, (w, tx.init(w)), jax.random.split(key, (steps // every, every)))
        return jnp.concatenate([jnp.sum((w - ws) ** 2)[None], d])

    return jax.vmap(one)(keys)


def noise_floor(distances: np.ndarray) -> float:
    """The mean of the recorded squared distances over the last half of the run."""
    return float(np.mean(distances[len(distances) // 2 :]))
