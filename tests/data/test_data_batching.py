"""The seeded batch iterator: determinism, coverage, remainders, epochs, resuming."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from optlab.data import batch_iterator, epoch_permutation, num_batches

X = np.arange(10)
Y = np.arange(10) * 10


def _batches(**kw):
    return list(batch_iterator(X, Y, **kw))


def test_every_example_once_per_epoch_and_arrays_stay_aligned():
    batches = _batches(batch_size=3, seed=1, epochs=2)
    assert [len(xb) for xb, _ in batches] == [3, 3, 3, 1] * 2
    for xb, yb in batches:
        np.testing.assert_array_equal(yb, xb * 10)
    first = np.concatenate([xb for xb, _ in batches[:4]])
    second = np.concatenate([xb for xb, _ in batches[4:]])
    assert sorted(first) == sorted(second) == list(range(10))
    assert not np.array_equal(first, second)  # a fresh order each epoch


def test_deterministic_for_a_seed_and_different_across_seeds():
    a = _batches(batch_size=4, seed=7, epochs=3)
    b = _batches(batch_size=4, seed=7, epochs=3)
    for (xa, _), (xb, _) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
    c = _batches(batch_size=4, seed=8, epochs=3)
    assert not all(np.array_equal(u[0], v[0]) for u, v in zip(a, c, strict=True))


def test_drop_remainder_and_num_batches():
    batches = _batches(batch_size=3, drop_remainder=True)
    assert [len(xb) for xb, _ in batches] == [3, 3, 3]
    assert num_batches(10, 3) == 4 and num_batches(10, 3, drop_remainder=True) == 3
    assert num_batches(9, 3) == 3


def test_resuming_at_an_epoch_gives_the_same_batches():
    full = _batches(batch_size=4, seed=3, epochs=3)
    resumed = _batches(batch_size=4, seed=3, epochs=1, start_epoch=2)
    for (xa, _), (xb, _) in zip(full[-3:], resumed, strict=True):
        np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(
        np.concatenate([b[0] for b in full[:3]]), epoch_permutation(10, 3, 0)
    )


def test_no_shuffle_endless_stream_and_single_array():
    stream = batch_iterator(X, batch_size=4, shuffle=False, epochs=None)
    first = list(itertools.islice(stream, 7))
    assert all(len(b) == 1 for b in first)  # always a tuple
    np.testing.assert_array_equal(first[0][0], [0, 1, 2, 3])
    np.testing.assert_array_equal(first[3][0], [0, 1, 2, 3])  # epoch 2 restarts in order
    assert _batches(batch_size=4, epochs=0) == []


def test_bad_arguments_fail_at_the_call():
    with pytest.raises(ValueError, match="examples"):
        batch_iterator(X, Y[:5], batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        batch_iterator(X, batch_size=0)
    with pytest.raises(ValueError, match="epochs"):
        batch_iterator(X, batch_size=2, epochs=-1)
    with pytest.raises(ValueError, match="at least one"):
        batch_iterator(batch_size=2)
