"""CoNLL-2003 named-entity data from local files: no download.

The format (Tjong Kim Sang and De Meulder, "Introduction to the CoNLL-2003 Shared Task:
Language-Independent Named Entity Recognition", 2003): one token per line, its columns
separated by white space (English: ``token POS chunk NER``, e.g. ``U.N. NNP I-NP I-ORG``);
a blank line ends a sentence; ``-DOCSTART- -X- -X- O`` lines separate documents. The tag is
the last column, kept exactly as written: the original files use IOB1, some copies IOB2
(``B-`` on every first token), and the loader converts neither.

Kuznetsova (2023) sec. 4.3 tags the English data with an LSTM (about 15,000 training
sentences and 3,500 test sentences: ``eng.train`` and ``eng.testb``, or ``train.txt`` and
``test.txt`` in the widely copied version). :func:`load_conll2003` reads those two files.

The works cited are listed in full in :mod:`optlab.bench.references`.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from optlab.data.base import Dataset, frozen

PAD = 0
"""Token id of padding (after a sentence's end)."""

UNK = 1
"""Token id of every token outside the vocabulary (rarer than ``min_count`` in training)."""

IGNORE_TAG = -1
"""Tag id of padding positions: negative, so losses and accuracies mask it out."""

DOCSTART = "-DOCSTART-"
"""First column of the lines that separate documents (skipped)."""

TRAIN_FILES = ("eng.train", "train.txt")
"""Names :func:`load_conll2003` looks for as the training split, in order."""

TEST_FILES = ("eng.testb", "test.txt")
"""Names :func:`load_conll2003` looks for as the test split, in order."""

Sentence = tuple[tuple[str, ...], tuple[str, ...]]
"""A sentence: its tokens and their tags."""


def read_conll(path: str | os.PathLike) -> list[Sentence]:
    """The sentences of one CoNLL column file, as ``(tokens, tags)`` pairs.

    The token is the first column and the tag the last; every token line must have the same
    number of columns (at least 2) as the file's first one. ``-DOCSTART-`` lines are skipped;
    blank lines (and the end of the file) end sentences, so several blank lines in a row are
    harmless.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line with a different number of columns, a single column, or bytes that
            are not UTF-8; or no sentence at all. The message names the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CoNLL file not found: {path}")
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    columns = None
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}, line {lineno}: not UTF-8 text ({e.reason})") from None
            fields = line.split()
            if not fields:
                if tokens:
                    sentences.append((tuple(tokens), tuple(tags)))
                    tokens, tags = [], []
                continue
            if fields[0] == DOCSTART:
                continue
            if columns is None:
                if len(fields) < 2:
                    raise ValueError(
                        f"{path}, line {lineno}: expected at least 2 columns (token ... tag), "
                        f"got 1: {line.strip()!r}"
                    )
                columns = len(fields)
            elif len(fields) != columns:
                raise ValueError(
                    f"{path}, line {lineno}: expected {columns} columns like the file's first "
                    f"token line, got {len(fields)}: {line.strip()!r}"
                )
            tokens.append(fields[0])
            tags.append(fields[-1])
    if tokens:
        sentences.append((tuple(tokens), tuple(tags)))
    if not sentences:
        raise ValueError(f"{path}: no sentences (an empty file, or only -DOCSTART- lines)")
    return sentences


def build_vocab(
    sentences: Iterable[Sentence], *, min_count: int = 2, lowercase: bool = False
) -> tuple[str, ...]:
    """Token strings by id: ``<pad>``, ``<unk>``, then every token seen at least ``min_count``
    times, most frequent first (ties alphabetically, so the order is reproducible)."""
    counts = collections.Counter(
        (t.lower() if lowercase else t) for tokens, _ in sentences for t in tokens
    )
    kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
    return ("<pad>", "<unk>", *kept)


def encode(
    sentences: Sequence[Sentence],
    vocab: Sequence[str],
    tags: Sequence[str],
    length: int,
    *,
    lowercase: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and tag ids ``(N, length)``, right-padded with :data:`PAD` / :data:`IGNORE_TAG`;
    tokens outside ``vocab`` become :data:`UNK`."""
    token_id = {t: i for i, t in enumerate(vocab)}
    tag_id = {t: i for i, t in enumerate(tags)}
    x = np.full((len(sentences), length), PAD, np.int32)
    y = np.full((len(sentences), length), IGNORE_TAG, np.int32)
    for i, (toks, tgs) in enumerate(sentences):
        x[i, : len(toks)] = [token_id.get(t.lower() if lowercase else t, UNK) for t in toks]
        y[i, : len(tgs)] = [tag_id[t] for t in tgs]
    return x, y


def _find(directory: Path, given: str | os.PathLike | None, names: Sequence[str]) -> Path:
    if given is not None:
        path = directory / given
        if not path.is_file():
            raise FileNotFoundError(f"CoNLL file not found: {path}")
        return path
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(
        f"no CoNLL-2003 file {' or '.join(names)} in {directory}; optlab never downloads: put "
        "the files there (or name them with train_file / test_file)"
    )


def load_conll2003(
    directory: str | os.PathLike,
    *,
    train_file: str | os.PathLike | None = None,
    test_file: str | os.PathLike | None = None,
    min_count: int = 2,
    lowercase: bool = False,
) -> Dataset:
    """CoNLL-2003 (or any file pair in its column format) for token tagging.

    Reads the training and test files from ``directory`` (by default the first of
    :data:`TRAIN_FILES` and of :data:`TEST_FILES` that exists). The vocabulary comes from the
    training file alone (:func:`build_vocab`): tokens seen fewer than ``min_count`` times there,
    and every token the test file adds, become :data:`UNK`. With ``min_count=2`` the training
    set's singletons train the ``<unk>`` embedding, so unseen test tokens get a learned one
    rather than a random one. The tags are those of both files (``O`` first, then sorted),
    kept as written. Sentences are right-padded to the longest of either file.

    Example::

        ds = load_conll2003("~/data/conll2003")
        model = LSTMTagger(len(ds.info["vocab"]), ds.num_classes, rngs=nnx.Rngs(0))

    Args:
        directory: where the files are.
        train_file, test_file: file names inside ``directory`` (default: see above).
        min_count: training-set count below which a token is unknown (>= 1).
        lowercase: fold tokens to lower case before counting and encoding.

    Returns:
        A :class:`Dataset` named ``"conll2003"``: ``int32`` token ids ``(N, T)`` padded with
        :data:`PAD`, ``int32`` tag ids ``(N, T)`` padded with :data:`IGNORE_TAG`;
        ``info`` holds ``vocab`` (token by id), ``tags`` (tag by id), ``vocab_size``,
        ``train_lengths`` and ``test_lengths`` (real tokens per sentence),
        ``unk_test_fraction`` (share of real test tokens that are unknown) and ``files``.

    Raises:
        FileNotFoundError: the directory or a file is missing.
        ValueError: a malformed file (:func:`read_conll`; the message names the file and line),
            or ``min_count < 1``.
    """
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be an integer >= 1, got {min_count!r}")
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"CoNLL directory not found: {directory}")
    train_path = _find(directory, train_file, TRAIN_FILES)
    test_path = _find(directory, test_file, TEST_FILES)
    train, test = read_conll(train_path), read_conll(test_path)
    vocab = build_vocab(train, min_count=min_count, lowercase=lowercase)
    seen = {t for _, tgs in (*train, *test) for t in tgs}
    tags = (*(("O",) if "O" in seen else ()), *sorted(seen - {"O"}))
    length = max(len(toks) for toks, _ in (*train, *test))
    x_train, y_train = encode(train, vocab, tags, length, lowercase=lowercase)
    x_test, y_test = encode(test, vocab, tags, length, lowercase=lowercase)
    test_real = y_test >= 0
    info = {
        "vocab": vocab,
        "vocab_size": len(vocab),
        "tags": tags,
        "train_lengths": np.array([len(t) for t, _ in train], np.int32),
        "test_lengths": np.array([len(t) for t, _ in test], np.int32),
        "unk_test_fraction": float(np.mean(x_test[test_real] == UNK)),
        "min_count": min_count,
        "lowercase": lowercase,
        "files": {"train": str(train_path), "test": str(test_path)},
    }
    return Dataset(x_train, y_train, x_test, y_test, len(tags), "conll2003", frozen(info))
