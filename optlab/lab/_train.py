"""A small training loop for the lab commands: a bench task, one optimizer, checkpoints.

It reuses ``optlab compare``'s step (:func:`optlab.bench.runner.make_train_step`: the same
loss, BatchNorm handling and SAM ``grad_fn``) and batch order
(:func:`optlab.data.batch_iterator`), and additionally keeps the parameters at regular
steps, which the trajectory plots need.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from optlab import data as data_lib
from optlab.bench import runner
from optlab.bench.tasks import Task


@dataclasses.dataclass
class Trained:
    """A trained model and its path.

    Attributes:
      model: the final model, in eval mode.
      checkpoints: ``nnx.Param`` states at the initialization, every ``checkpoint_every``
        steps and at the end.
      step_loss: the training loss of every step.
      steps: number of steps taken.
    """

    model: nnx.Module
    checkpoints: list[Any]
    step_loss: list[float]
    steps: int


def train(
    task: Task,
    ds: data_lib.Dataset,
    tx: optax.GradientTransformation,
    *,
    needs_grad_fn: bool,
    seed: int,
    epochs: int,
    batch_size: int,
    num_checkpoints: int = 0,
    progress: Any = None,
) -> Trained:
    """Train ``task``'s model from ``nnx.Rngs(seed)`` with ``tx`` for ``epochs`` epochs."""
    model = task.make_model(ds, nnx.Rngs(seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = tx.init(params)
    step_fn = jax.jit(runner.make_train_step(task, graphdef, tx, needs_grad_fn))
    spe = runner.steps_per_epoch(ds, batch_size)
    total = epochs * spe
    every = max(1, math.ceil(total / num_checkpoints)) if num_checkpoints else 0
    checkpoints = [params] if num_checkpoints else []
    losses: list[float] = []
    batches = data_lib.batch_iterator(
        ds.x_train, ds.y_train, batch_size=batch_size, seed=seed, drop_remainder=True, epochs=epochs
    )
    for step, (xb, yb) in enumerate(batches, start=1):
        params, rest, opt_state, loss = step_fn(params, rest, opt_state, xb, yb)
        losses.append(float(loss))
        if every and (step % every == 0 or step == total):
            checkpoints.append(params)
        if progress is not None:
            progress.update(1)
            if step % spe == 0:
                progress.set_postfix_str(f"loss {np.mean(losses[-spe:]):.4f}")
    model = nnx.merge(graphdef, params, rest)
    model.eval()
    return Trained(model, checkpoints, losses, total)


def split_batches(arrays: Sequence[np.ndarray], max_batch: int) -> tuple[list[Any], list[int]]:
    """Aligned arrays cut into ``ceil(n / max_batch)`` nearly equal batches (sizes differ by at
    most one: at most two shapes to compile); returns the batches and their sizes."""
    n = len(arrays[0])
    k = max(1, math.ceil(n / max_batch))
    bounds = np.linspace(0, n, k + 1).round().astype(int)
    batches = [tuple(jnp.asarray(a[lo:hi]) for a in arrays) for lo, hi in zip(bounds, bounds[1:])]
    return batches, [int(hi - lo) for lo, hi in zip(bounds, bounds[1:])]


def evaluate(
    task: Task, model: nnx.Module, batches: Sequence[Any], sizes: Sequence[int]
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` (as it is: eval mode) over ``batches``."""

    @nnx.jit
    def sums(m, x, y):
        loss, correct = task.metrics(m, x, y)
        return jnp.sum(loss), jnp.sum(correct)

    ls = cs = 0.0
    for (x, y), _ in zip(batches, sizes, strict=True):
        lsum, csum = sums(model, x, y)
        ls, cs = ls + float(lsum), cs + float(csum)
    n = sum(sizes)
    return ls / n, cs / n
