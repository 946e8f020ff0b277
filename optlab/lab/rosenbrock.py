"""First-order methods on Rosenbrock's valley: the paths of optax's optimizers from one start.

``f(x, y) = (1 - x)^2 + 100 (y - x^2)^2`` has its minimum ``f = 0`` at ``(1, 1)`` at the end of a
long curved valley: gradient descent must take tiny steps across the valley's walls and crawls
along its floor, momentum overshoots, and the adaptive methods rescale each coordinate
(Merkulov, "Modern optimization methods for training neural networks": the paths of the
adaptive methods from one start at learning rate 0.003).

Every method is optax's own (never rewritten here), with the textbook hyperparameters of
Merkulov and Ostroukhov, "Stochastic gradient descent. Adaptive methods" (see :data:`METHODS`),
plus optlab's Muon and Shampoo on the point viewed as a ``1 x 2`` matrix (Muon's orthogonalized
update of a ``1 x n`` matrix is the normalized gradient direction).

* :func:`rosenbrock`, :data:`START` (``(-2, 2)``, as the pytorch-optimizer visualizations);
* :func:`trajectory`: the iterates of one method from the start;
* :func:`tune`: the learning rate of a log grid with the lowest mean ``log10 f`` (the grid runs
  as one vmapped program per method, the rate injected with ``optax.inject_hyperparams``).

Example:
  >>> from optlab.lab import rosenbrock as rb
  >>> path = rb.trajectory("adam", learning_rate=0.003, steps=100)
  >>> path.shape
  (101, 2)
  >>> bool(rb.rosenbrock(path[-1]) < rb.rosenbrock(path[0]))
  True

Command line: ``optlab lab rosenbrock``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

START = (-2.0, 2.0)
MINIMUM = (1.0, 1.0)


def rosenbrock(p: Any, a: float = 1.0, b: float = 100.0) -> Any:
    """``(a - x)^2 + b (y - x^2)^2`` at ``p = (x, y)`` (any shape ``(..., 2)``)."""
    p = jnp.asarray(p)
    x, y = p[..., 0], p[..., 1]
    return (a - x) ** 2 + b * (y - x**2) ** 2


def _muon(learning_rate: Any) -> optax.GradientTransformation:
    import optlab

    return optlab.muon(learning_rate, beta=0.95, nesterov=True)


def _shampoo(learning_rate: Any) -> optax.GradientTransformation:
    import optlab

    return optlab.shampoo(learning_rate, precondition_every=1, start_preconditioning_step=1)


# name -> factory of the learning rate. The hyperparameters are the textbook ones; optax's
# defaults differ for Adagrad (initial accumulator 0.1) and RMSProp (eps inside the square
# root), so those two are set to the textbook form here.
METHODS: dict[str, Callable[[Any], optax.GradientTransformation]] = {
    "sgd": lambda learning_rate: optax.sgd(learning_rate),
    "momentum": lambda learning_rate: optax.sgd(learning_rate, momentum=0.9),
    "nesterov": lambda learning_rate: optax.sgd(learning_rate, momentum=0.9, nesterov=True),
    "adagrad": lambda learning_rate: optax.adagrad(
        learning_rate, initial_accumulator_value=0.0, eps=1e-8
    ),
    "rmsprop": lambda learning_rate: optax.rmsprop(
        learning_rate, decay=0.9, eps=1e-8, eps_in_sqrt=False
    ),
    "adadelta": lambda learning_rate: optax.adadelta(learning_rate, rho=0.9, eps=1e-6),
    "adam": lambda learning_rate: optax.adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8),
    "adamw": lambda learning_rate: optax.adamw(
        learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2
    ),
    "lion": lambda learning_rate: optax.lion(learning_rate, b1=0.9, b2=0.99, weight_decay=0.0),
    "muon": _muon,
    "shampoo": _shampoo,
}
OPTAX_METHODS = tuple(n for n in METHODS if n not in ("muon", "shampoo"))


def _run(name: str, steps: int) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``(lr, start) -> iterates`` (``(steps + 1, 2)``), lr a traced scalar."""
    tx = optax.inject_hyperparams(METHODS[name])(learning_rate=0.0)
    grad = jax.grad(lambda p: rosenbrock(p[0]))

    def run(lr: jax.Array, start: jax.Array) -> jax.Array:
        p = start.reshape(1, 2)  # a 1 x 2 matrix: Muon and Shampoo see a matrix
        state = tx.init(p)
        state.hyperparams["learning_rate"] = jnp.asarray(lr, p.dtype)

        def body(carry: Any, _: Any) -> tuple[Any, jax.Array]:
            p, state = carry
            updates, state = tx.update(grad(p), state, p)
            p = optax.apply_updates(p, updates)
            return (p, state), p[0]

        _, path = jax.lax.scan(body, (p, state), None, length=steps)
        return jnp.concatenate([start[None], path])

    return run


def trajectory(
    name: str, *, learning_rate: float, steps: int, start: Sequence[float] = START
) -> np.ndarray:
    """The iterates ``x_0 = start, x_1, ..., x_steps`` of method ``name`` (float32)."""
    if name not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {name!r}")
    run = jax.jit(_run(name, steps))
    return np.asarray(run(jnp.float32(learning_rate), jnp.asarray(start, jnp.float32)))


def tune(
    name: str,
    *,
    steps: int,
    grid: Sequence[float],
    start: Sequence[float] = START,
) -> tuple[float, np.ndarray]:
    """The rate of ``grid`` with the lowest mean of ``log10 f`` over the run (the area under the
    loss curve on a log scale: steady progress, not a lucky last iterate of a chaotic run; a
    run that overflows counts as infinite), and that score for every rate."""
    run = jax.jit(jax.vmap(_run(name, steps), in_axes=(0, None)))
    paths = run(jnp.asarray(grid, jnp.float32), jnp.asarray(start, jnp.float32))
    f = np.asarray(rosenbrock(paths), np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.mean(np.log10(f + 1e-30), axis=1)
    score = np.where(np.isfinite(score), score, np.inf)
    return float(grid[int(np.argmin(score))]), score
