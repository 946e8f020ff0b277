"""Minibatches from in-memory NumPy arrays, shuffled deterministically from a seed.

Epoch ``e`` uses the permutation drawn by ``np.random.default_rng((seed, e))``, so the order
of any epoch depends only on ``(seed, e)``: a run that stops after epoch 3 and resumes with
``start_epoch=3`` sees the same batches as one that never stopped, and two runs with the same
seed see the same data whatever their optimizer (as comparisons like Kuznetsova (2023)'s need).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np


def num_batches(n: int, batch_size: int, *, drop_remainder: bool = False) -> int:
    """Batches per epoch for ``n`` examples."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return n // batch_size if drop_remainder else math.ceil(n / batch_size)


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The example order of epoch ``epoch`` (a permutation of ``range(n)``)."""
    return np.random.default_rng((seed, epoch)).permutation(n)


def batch_iterator(
    *arrays: np.ndarray,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    drop_remainder: bool = False,
    epochs: int | None = 1,
    start_epoch: int = 0,
) -> Iterator[tuple[np.ndarray, ...]]:
    """Yield tuples of aligned minibatches ``(a[idx], b[idx], ...)`` for ``epochs`` epochs.

    Example::

        for xb, yb in batch_iterator(ds.x_train, ds.y_train, batch_size=100, seed=0):
            ...

    Args:
        *arrays: one or more arrays with the same leading (example) dimension.
        batch_size: examples per batch.
        shuffle: visit the examples in a fresh seeded order each epoch
            (:func:`epoch_permutation`); otherwise in stored order.
        seed: the shuffling seed.
        drop_remainder: skip the last, smaller batch of each epoch (keeps shapes static
            under ``jit``); otherwise it is yielded.
        epochs: number of passes; ``None`` for an endless stream.
        start_epoch: index of the first epoch (for resuming).

    Returns:
        A lazy iterator of tuples with one batch per input array (a tuple even for a single
        array). Every example appears exactly once per epoch (except the dropped remainder).

    Raises:
        ValueError: at the call, not at the first batch: no arrays, arrays of different
            lengths, ``batch_size < 1`` or negative ``epochs``.
    """
    if not arrays:
        raise ValueError("batch_iterator needs at least one array")
    n = len(arrays[0])
    for i, a in enumerate(arrays):
        if len(a) != n:
            raise ValueError(f"array {i} has {len(a)} examples, array 0 has {n}")
    steps = num_batches(n, batch_size, drop_remainder=drop_remainder)
    if epochs is not None and epochs < 0:
        raise ValueError(f"epochs must be non-negative or None, got {epochs}")
    # Arguments are checked above, at the call; the generator below runs lazily.
    return _batches(arrays, n, steps, batch_size, shuffle, seed, epochs, start_epoch)


def _batches(
    arrays: tuple[np.ndarray, ...],
    n: int,
    steps: int,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epochs: int | None,
    start_epoch: int,
) -> Iterator[tuple[np.ndarray, ...]]:
    epoch = start_epoch
    while epochs is None or epoch < start_epoch + epochs:
        order = epoch_permutation(n, seed, epoch) if shuffle else np.arange(n)
        for b in range(steps):
            idx = order[b * batch_size : (b + 1) * batch_size]
            yield tuple(a[idx] for a in arrays)
        epoch += 1
