"""Offline data for optlab's experiments: generated tasks, local-file loaders, batching.

Nothing here touches the network, and nothing unpickles. Every task is a :class:`Dataset`
(``x_train, y_train, x_test, y_test, num_classes, name, info``) of NumPy arrays, so a harness
can treat them uniformly; :func:`load_dataset` builds one by name.

Offline (no files needed):

* :func:`load_digits` (8x8x1) and :func:`load_digits32` (32x32x1, LeNet-5's input):
  scikit-learn's bundled 1797 handwritten digits (needs the ``[lab]`` extra);
* :func:`make_logistic_regression`: strongly convex logistic regression (Merkulov, "Modern
  optimization methods"; works cited in full in :mod:`optlab.bench.references`)
  (m = 200, n = 10, mu = 1), with :func:`logistic_regression_objective` and
  :func:`solve_logistic_regression`;
* :func:`make_zipf_tagging`: token tagging with Zipf-distributed tokens (for the LSTM);
* :func:`make_entity_tagging`: synthetic named-entity tagging (context, rare and unseen
  names, label noise) for the LSTM tagger;
* :func:`make_modular_arithmetic`: ``x o y mod p`` as ``[x, op, y, =]`` sequences (grokking).

From a local directory the user names (never downloaded): :func:`load_mnist` (IDX files,
optionally ``.gz``), :func:`load_cifar10` (the binary version) and :func:`load_conll2003`
(CoNLL-2003's column files: tokens, NER tags as written, padding and an unknown token).
Malformed files raise ``ValueError`` and missing ones ``FileNotFoundError``, naming the file
(and for CoNLL the line).

Text (offline, byte-level): :func:`load_text` next-byte windows from the Python standard
library's own sources (a fixed file list and split) or from a ``text_file`` the user brings;
see :mod:`optlab.data.text`.

Batching: :func:`batch_iterator` (seeded shuffling per epoch, ``drop_remainder``, epochs).
"""

from optlab.data.base import Dataset, standardize, train_test_split
from optlab.data.batching import batch_iterator, epoch_permutation, num_batches
from optlab.data.cifar import CIFAR10_CLASSES, load_cifar10, read_cifar_binary
from optlab.data.conll import load_conll2003, read_conll
from optlab.data.digits import load_digits, load_digits32, resize_bilinear
from optlab.data.mnist import load_mnist, read_idx
from optlab.data.registry import DATASET_NAMES, load_dataset
from optlab.data.synthetic import (
    ENTITY_TAGS,
    MODULAR_OPS,
    logistic_regression_objective,
    make_entity_tagging,
    make_logistic_regression,
    make_modular_arithmetic,
    make_zipf_tagging,
    solve_logistic_regression,
    zipf_probabilities,
)
from optlab.data.text import STDLIB_FILES, load_text, stdlib_corpus, text_file_corpus

__all__ = [
    "CIFAR10_CLASSES",
    "DATASET_NAMES",
    "ENTITY_TAGS",
    "MODULAR_OPS",
    "STDLIB_FILES",
    "Dataset",
    "batch_iterator",
    "epoch_permutation",
    "load_cifar10",
    "load_conll2003",
    "load_dataset",
    "load_digits",
    "load_digits32",
    "load_mnist",
    "load_text",
    "logistic_regression_objective",
    "make_entity_tagging",
    "make_logistic_regression",
    "make_modular_arithmetic",
    "make_zipf_tagging",
    "num_batches",
    "read_cifar_binary",
    "read_conll",
    "read_idx",
    "resize_bilinear",
    "solve_logistic_regression",
    "standardize",
    "stdlib_corpus",
    "text_file_corpus",
    "train_test_split",
    "zipf_probabilities",
]
