"""Byte-level language-modelling text, offline: the Python standard library's own source files.

Every machine with Python has a real, sizeable text corpus: the standard library's ``.py``
files. :func:`stdlib_corpus` reads a fixed list of them (:data:`STDLIB_FILES`, 79 modules,
about 2.7 MB on CPython 3.11), in a fixed order, from ``sysconfig.get_paths()["stdlib"]``, and
holds every :data:`VALIDATION_EVERY`-th file of the list out for validation (7 files, about
0.2 MB). The tokens are the files' raw bytes (vocabulary 256, no tokenizer to ship or train),
each file followed by one ``0`` byte as a document separator (no source file contains a NUL).

Determinism. The split is decided by the list alone (which names are train, which are
validation), never by a random draw or the directory listing, so it is the same in every run.
The *content* is whatever the interpreter ships. Within one minor release (e.g. 3.11.x) these
modules change only by bug-fix patches, usually a few lines or none, so the corpus is the same
or nearly so across 3.11.0 .. 3.11.x; across minor releases the same files are used but their
text differs. The corpus records each file's SHA-256 and the Python version
(:attr:`TextCorpus.sha256`, ``Dataset.info["corpus_sha256"]``) so two machines can check that
they trained on the same bytes. The files were chosen to exist as single modules from Python
3.9 through 3.13 (none of the modules removed by PEP 594 in 3.13, none that became a package,
such as ``pathlib`` or ``zipfile``). A stripped-down installation without ``.py`` sources
raises ``FileNotFoundError`` naming the missing file; pass ``text_file=`` instead.

A corpus the user brings (e.g. Tiny Shakespeare's ``input.txt``): :func:`text_file_corpus`
reads the file's bytes and holds out its last ``validation_fraction`` (10% by default) as one
contiguous piece. Nothing is downloaded.

:func:`load_text` turns either corpus into a :class:`~optlab.data.Dataset` of next-byte
prediction windows: ``x`` of shape ``(N, seq_len)``, ``y = x`` shifted by one byte, both
``int32``; consecutive windows do not overlap (stride ``seq_len``), so every byte is a target
at most once per epoch. :func:`random_windows` draws training windows at random offsets
instead (the lab's training loop, where a step budget rather than epochs is the unit).

Example:
  >>> from optlab.data import load_text
  >>> ds = load_text(seq_len=64)
  >>> ds.x_train.shape[1], ds.num_classes, bool((ds.x_train[0, 1:] == ds.y_train[0, :-1]).all())
  (64, 256, True)
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from pathlib import Path
from typing import NamedTuple

import numpy as np

from optlab.data.base import Dataset, frozen

#: The standard-library modules of the corpus, in corpus order (paths relative to the stdlib
#: directory). Never reorder or edit this list: it *is* the split.
STDLIB_FILES: tuple[str, ...] = tuple(
    f"{name}.py"
    for name in (
        "abc argparse ast base64 bdb bisect calendar cmd code codecs "
        "colorsys contextlib copy csv dataclasses datetime difflib dis enum filecmp "
        "fnmatch fractions ftplib functools getopt gettext glob gzip heapq hmac "
        "inspect ipaddress keyword linecache locale mailbox mimetypes numbers operator optparse "
        "pdb pickle pickletools platform plistlib poplib pprint queue quopri random "
        "reprlib sched secrets selectors shelve shlex shutil smtplib socket socketserver "
        "statistics string subprocess tabnanny tarfile tempfile textwrap threading timeit "
        "tokenize trace traceback types typing uuid warnings wave weakref zipapp"
    ).split()
)

#: Every this-many-th file of :data:`STDLIB_FILES` (0-based positions 9, 19, ..., 69) is validation.
VALIDATION_EVERY = 10

#: The vocabulary: one token per byte value.
VOCAB_SIZE = 256

#: Appended after each file (a byte no source file contains), so windows see document ends.
SEPARATOR = 0


class TextCorpus(NamedTuple):
    """Byte tokens of a corpus split into training and validation streams.

    Attributes:
      train: ``uint8`` bytes of the training part (files concatenated, each followed by
        :data:`SEPARATOR` for the standard-library corpus).
      validation: ``uint8`` bytes of the held-out part.
      train_files: names of the files in ``train`` (or the one file a user brought).
      validation_files: names of the files in ``validation``.
      sha256: SHA-256 hex digest of each file's bytes, by name.
      source: ``"stdlib"`` or ``"text_file"``.
      description: one line for tables and JSON (source, Python version, sizes).
    """

    train: np.ndarray
    validation: np.ndarray
    train_files: tuple[str, ...]
    validation_files: tuple[str, ...]
    sha256: dict[str, str]
    source: str
    description: str


def validation_files() -> tuple[str, ...]:
    """The held-out names of :data:`STDLIB_FILES` (every :data:`VALIDATION_EVERY`-th)."""
    return STDLIB_FILES[VALIDATION_EVERY - 1 :: VALIDATION_EVERY]


def stdlib_corpus(stdlib_dir: str | os.PathLike | None = None) -> TextCorpus:
    """The standard-library corpus (module docstring): fixed files, fixed order, fixed split.

    Args:
      stdlib_dir: directory holding the files; default ``sysconfig.get_paths()["stdlib"]``
        (this interpreter's). Pointing it at another installation's ``lib/python3.X`` reads
        that version's sources.

    Raises:
      FileNotFoundError: a listed file is missing (the message names it and suggests
        ``text_file=``).
    """
    root = Path(stdlib_dir if stdlib_dir is not None else sysconfig.get_paths()["stdlib"])
    held_out = set(validation_files())
    parts: dict[bool, list[bytes]] = {False: [], True: []}
    digests: dict[str, str] = {}
    for name in STDLIB_FILES:
        path = root / name
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise FileNotFoundError(
                f"standard-library source {path} is not readable ({e.strerror or e}); this "
                "Python ships without .py sources: pass text_file= (--text-file) instead"
            ) from None
        digests[name] = hashlib.sha256(raw).hexdigest()
        parts[name in held_out].append(raw + bytes([SEPARATOR]))
    train = np.frombuffer(b"".join(parts[False]), np.uint8)
    validation = np.frombuffer(b"".join(parts[True]), np.uint8)
    version = ".".join(map(str, sys.version_info[:3]))
    return TextCorpus(
        train=train,
        validation=validation,
        train_files=tuple(n for n in STDLIB_FILES if n not in held_out),
        validation_files=validation_files(),
        sha256=digests,
        source="stdlib",
        description=(
            f"Python {version} standard library, {len(STDLIB_FILES)} files "
            f"({len(train):,} train / {len(validation):,} validation bytes)"
        ),
    )


def text_file_corpus(
    text_file: str | os.PathLike, *, validation_fraction: float = 0.1, min_bytes: int = 1024
) -> TextCorpus:
    """A user's text file as bytes, its last ``validation_fraction`` held out (contiguous).

    Args:
      text_file: path of any file (read as bytes; UTF-8 text gives multi-byte tokens for
        non-ASCII characters).
      validation_fraction: share of the bytes held out, in ``(0, 0.5]``.
      min_bytes: smallest acceptable size of *each* part (``>= 2``); :func:`load_text`
        passes what its windows need.

    Raises:
      ValueError: the file cannot be read (missing, a directory, no permission) or is too
        small; the message names the file and the size needed.
    """
    if not isinstance(validation_fraction, int | float) or not 0.0 < validation_fraction <= 0.5:
        raise ValueError(
            f"validation_fraction must be a number in (0, 0.5], got {validation_fraction!r}"
        )
    path = Path(text_file)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"text_file {str(path)!r} is not readable: {e.strerror or e}") from None
    n_val = int(round(validation_fraction * len(raw)))
    if min(n_val, len(raw) - n_val) < min_bytes:
        need = int(np.ceil(min_bytes / min(validation_fraction, 1 - validation_fraction)))
        raise ValueError(
            f"text_file {str(path)!r} has {len(raw):,} bytes; at least {need:,} are needed "
            f"({min_bytes:,} in each of the training and validation parts)"
        )
    data = np.frombuffer(raw, np.uint8)
    return TextCorpus(
        train=data[: len(raw) - n_val],
        validation=data[len(raw) - n_val :],
        train_files=(path.name,),
        validation_files=(path.name,),
        sha256={path.name: hashlib.sha256(raw).hexdigest()},
        source="text_file",
        description=(
            f"{path.name} ({len(raw) - n_val:,} train / {n_val:,} validation bytes, "
            f"last {validation_fraction:g} held out)"
        ),
    )


def windows(tokens: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping next-token windows: ``x[i] = t[i s : i s + s]``, ``y[i] = x[i]`` shifted.

    ``s = seq_len``; ``floor((len(t) - 1) / s)`` windows, ``int32``; the tail is dropped.
    """
    n = (len(tokens) - 1) // seq_len
    t = np.asarray(tokens, np.int32)
    x = t[: n * seq_len].reshape(n, seq_len)
    y = t[1 : n * seq_len + 1].reshape(n, seq_len)
    return x, y


def random_windows(
    tokens: np.ndarray, seq_len: int, batch_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``batch_size`` windows at uniformly random offsets: ``(x, y)``, each ``(B, seq_len)``."""
    starts = rng.integers(0, len(tokens) - seq_len, size=batch_size)
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    block = np.asarray(tokens, np.int32)[idx]
    return block[:, :-1], block[:, 1:]


def load_text(
    *,
    text_file: str | os.PathLike | None = None,
    seq_len: int = 128,
    validation_fraction: float = 0.1,
    min_windows: int = 4,
    stdlib_dir: str | os.PathLike | None = None,
) -> Dataset:
    """A next-byte prediction :class:`~optlab.data.Dataset` from the stdlib or ``text_file``.

    Args:
      text_file: a local file to use instead of the standard library (module docstring).
      seq_len: tokens per window (``>= 1``).
      validation_fraction: for ``text_file`` only: the held-out share (``(0, 0.5]``).
      min_windows: each part must give at least this many windows (``>= 1``).
      stdlib_dir: see :func:`stdlib_corpus`.

    Returns:
      ``Dataset(x_train, y_train, x_test, y_test, num_classes=256, name, info)`` with
      ``(N, seq_len)`` ``int32`` windows (:func:`windows`), ``name`` ``"stdlib_text"`` or
      ``"text_file"``, and ``info``: ``vocab_size``, ``seq_len``, ``description``, the file
      lists, ``corpus_sha256`` (of the per-file digests, in order) and the token streams
      ``train_tokens`` / ``validation_tokens`` (``uint8``) for random-offset sampling.

    Raises:
      ValueError: bad ``seq_len`` / ``min_windows`` / ``validation_fraction``, an unreadable
        or too small ``text_file``.
      FileNotFoundError: the interpreter has no standard-library sources.
    """
    for name, value in (("seq_len", seq_len), ("min_windows", min_windows)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    need = min_windows * seq_len + 1
    if text_file is not None:
        corpus = text_file_corpus(
            text_file, validation_fraction=validation_fraction, min_bytes=need
        )
    else:
        corpus = stdlib_corpus(stdlib_dir)
        small = min(len(corpus.train), len(corpus.validation))
        if small < need:
            raise ValueError(
                f"seq_len {seq_len} x min_windows {min_windows} needs {need:,} bytes per part; "
                f"the standard-library corpus's smaller part has {small:,}"
            )
    x_train, y_train = windows(corpus.train, seq_len)
    x_val, y_val = windows(corpus.validation, seq_len)
    joint = hashlib.sha256("".join(corpus.sha256.values()).encode()).hexdigest()
    info = {
        "vocab_size": VOCAB_SIZE,
        "seq_len": seq_len,
        "source": corpus.source,
        "description": corpus.description,
        "train_files": corpus.train_files,
        "validation_files": corpus.validation_files,
        "corpus_sha256": joint,
        "python": ".".join(map(str, sys.version_info[:3])),
        "train_tokens": corpus.train,
        "validation_tokens": corpus.validation,
    }
    name = "stdlib_text" if corpus.source == "stdlib" else "text_file"
    return Dataset(x_train, y_train, x_val, y_val, VOCAB_SIZE, name, frozen(info))


__all__ = [
    "SEPARATOR",
    "STDLIB_FILES",
    "VALIDATION_EVERY",
    "VOCAB_SIZE",
    "TextCorpus",
    "load_text",
    "random_windows",
    "stdlib_corpus",
    "text_file_corpus",
    "validation_files",
    "windows",
]
