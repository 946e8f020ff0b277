"""The common :class:`Dataset` record, a deterministic train/test split and normalization.

Arrays are NumPy (not JAX) so that the training loop decides when and where they go to the
device; features and images are ``float32``, labels and tokens ``int32``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np


class Dataset(NamedTuple):
    """A supervised task: train and test arrays plus what a harness needs to build a model.

    Attributes:
        x_train: inputs, ``(N, ...)``: NHWC images ``float32``, feature vectors ``float32``,
            or token sequences ``int32``.
        y_train: integer labels ``(N,)``, or ``(N, T)`` per-token tags.
        x_test: test inputs, same trailing shape as ``x_train``.
        y_test: test labels.
        num_classes: number of label values (labels lie in ``[0, num_classes)``).
        name: short identifier, e.g. ``"digits32"``.
        info: task-specific extras (read-only mapping), e.g. ``vocab_size`` for token tasks,
            ``mu`` for the strongly convex logistic regression, normalization constants.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str
    info: Mapping[str, Any] = MappingProxyType({})

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input example (no batch axis)."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])


def frozen(info: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only view of ``info``, for :attr:`Dataset.info`."""
    return MappingProxyType(dict(info))


def train_test_split(
    x: np.ndarray,
    y: np.ndarray,
    test_fraction: float = 0.2,
    *,
    seed: int = 0,
    stratify: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split ``(x, y)`` into train and test parts, deterministically for a given ``seed``.

    Args:
        x: inputs ``(N, ...)``.
        y: labels ``(N, ...)``; with ``stratify`` they must be ``(N,)`` integers.
        test_fraction: share of examples in the test part, in ``(0, 1)``.
        seed: seed of the NumPy generator that draws the split.
        stratify: keep each class's share the same in both parts (``round`` per class), which
            matters on small data sets such as the 1797 digits.

    Returns:
        ``(x_train, y_train, x_test, y_test)``; each part keeps the original order.
    """
    x, y = np.asarray(x), np.asarray(y)
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"x has {n} examples but y has {y.shape[0]}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    is_test = np.zeros(n, dtype=bool)
    if stratify:
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            k = int(round(test_fraction * idx.size))
            is_test[rng.permutation(idx)[:k]] = True
    else:
        is_test[rng.permutation(n)[: int(round(test_fraction * n))]] = True
    return x[~is_test], y[~is_test], x[is_test], y[is_test]


def standardize(ds: Dataset, *, per_channel: bool = False, eps: float = 1e-8) -> Dataset:
    """Shift and scale inputs to zero mean, unit variance using training statistics only.

    Args:
        ds: a data set with floating-point inputs.
        per_channel: one mean and standard deviation per entry of the last axis (image
            channels, features); otherwise a single scalar pair.
        eps: added to the standard deviation so constant inputs do not divide by zero.

    Returns:
        ``ds`` with standardized ``x_train``, ``x_test`` (``float32``); ``info`` gains
        ``"mean"`` and ``"std"`` (to apply the same transform to new data).
    """
    axes = tuple(range(ds.x_train.ndim - 1)) if per_channel else None
    x_train = ds.x_train.astype(np.float64)
    mean = x_train.mean(axis=axes)
    std = x_train.std(axis=axes) + eps
    info = dict(ds.info, mean=np.asarray(mean, np.float32), std=np.asarray(std, np.float32))
    return ds._replace(
        x_train=((x_train - mean) / std).astype(np.float32),
        x_test=((ds.x_test - mean) / std).astype(np.float32),
        info=frozen(info),
    )
