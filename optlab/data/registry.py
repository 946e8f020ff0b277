"""Data sets by name, so a harness can take ``--task digits32`` and the like."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from optlab.data.base import Dataset
from optlab.data.cifar import load_cifar10
from optlab.data.conll import load_conll2003
from optlab.data.digits import load_digits, load_digits32
from optlab.data.mnist import load_mnist
from optlab.data.synthetic import (
    make_entity_tagging,
    make_logistic_regression,
    make_modular_arithmetic,
    make_zipf_tagging,
)

_OFFLINE: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits,
    "digits32": load_digits32,
    "logistic": make_logistic_regression,
    "zipf_tagging": make_zipf_tagging,
    "entity_tagging": make_entity_tagging,
    "modular": make_modular_arithmetic,
}
_FROM_FILES: dict[str, Callable[..., Dataset]] = {
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "conll2003": load_conll2003,
}

DATASET_NAMES: tuple[str, ...] = tuple(_OFFLINE) + tuple(_FROM_FILES)
"""Names :func:`load_dataset` accepts; ``mnist`` and ``cifar10`` need ``data_dir``."""


def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None, **kwargs: Any) -> Dataset:
    """Build or load the data set called ``name``.

    Args:
        name: one of :data:`DATASET_NAMES`.
        data_dir: the local directory of the file-based sets (``mnist``, ``cifar10``);
            must be ``None`` for the others.
        **kwargs: passed to the loader or generator (e.g. ``seed``, ``test_fraction``,
            ``p``, ``ops``, ``pad_to_32``).

    Raises:
        ValueError: unknown name, or ``data_dir`` missing / given where it has no use.
    """
    if name in _OFFLINE:
        if data_dir is not None:
            raise ValueError(f"data set {name!r} is generated offline and takes no data_dir")
        return _OFFLINE[name](**kwargs)
    if name in _FROM_FILES:
        if data_dir is None:
            raise ValueError(
                f"data set {name!r} is read from local files: pass data_dir (nothing is downloaded)"
            )
        return _FROM_FILES[name](data_dir, **kwargs)
    raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASET_NAMES)}")
