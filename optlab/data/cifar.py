"""CIFAR-10 from its binary version in a local directory: no download, no pickle.

Krizhevsky (2009), "Learning multiple layers of features from tiny images"; the "CIFAR-10
binary version" (``cifar-10-binary.tar.gz``, which extracts to ``cifar-10-batches-bin/``):
``data_batch_1.bin`` .. ``data_batch_5.bin`` (training, 10000 records each) and
``test_batch.bin``. Each record is 3073 bytes: one label byte in ``0..9``, then the 32x32
image as 1024 red, 1024 green and 1024 blue bytes, each plane in row-major order.
``batches.meta.txt`` (optional) lists the class names, one a line.

The Python version of CIFAR-10 is a set of pickles; optlab does not read it (unpickling can
run arbitrary code).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from optlab.data.base import Dataset, frozen

RECORD_BYTES = 3073
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch.bin",)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def read_cifar_binary(
    path: str | os.PathLike, num_classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 binary batch file.

    Args:
        path: the ``.bin`` file.
        num_classes: labels must lie in ``[0, num_classes)``.

    Returns:
        ``(images, labels)``: ``uint8`` NHWC images ``(N, 32, 32, 3)`` and ``int32`` labels.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty, its size is not a multiple of 3073 bytes (truncated
            or not a CIFAR-10 binary file), or a label byte is out of range; the message names
            the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 file not found: {path}")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0:
        raise ValueError(f"{path}: empty file")
    if raw.size % RECORD_BYTES:
        raise ValueError(
            f"{path}: wrong size: {raw.size} bytes is not a multiple of the {RECORD_BYTES}-byte "
            f"record (truncated, or not the CIFAR-10 binary version; {raw.size // RECORD_BYTES} "
            f"whole records and {raw.size % RECORD_BYTES} bytes left over)"
        )
    records = raw.reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int32)
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        raise ValueError(
            f"{path}: record {int(bad[0])} has label {int(labels[bad[0]])}, outside "
            f"[0, {num_classes}) (not a CIFAR-10 binary file?)"
        )
    # Planes R, G, B of 32x32 each -> NHWC.
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _class_names(directory: Path) -> tuple[str, ...]:
    meta = directory / "batches.meta.txt"
    if meta.is_file():
        names = tuple(s.strip() for s in meta.read_text().splitlines() if s.strip())
        if len(names) == len(CIFAR10_CLASSES):
            return names
    return CIFAR10_CLASSES


def load_cifar10(directory: str | os.PathLike) -> Dataset:
    """CIFAR-10 from the binary batch files in ``directory`` (or its ``cifar-10-batches-bin``).

    Args:
        directory: the folder holding ``data_batch_{1..5}.bin`` and ``test_batch.bin``, or the
            folder the archive was extracted into.

    Returns:
        A :class:`Dataset` named ``"cifar10"``: ``float32`` NHWC images ``(N, 32, 32, 3)`` in
        ``[0, 1]`` (byte / 255; see :func:`optlab.data.standardize` for per-channel
        standardization), ``int32`` labels, 10 classes; ``info["class_names"]``. The full set
        has 50000 training and 10000 test images.

    Raises:
        FileNotFoundError: the directory or one of the six files is missing.
        ValueError: a file is malformed (see :func:`read_cifar_binary`).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"CIFAR-10 directory not found: {directory}")
    if (
        not (directory / CIFAR10_TEST_FILES[0]).exists()
        and (directory / "cifar-10-batches-bin").is_dir()
    ):
        directory = directory / "cifar-10-batches-bin"
    for name in CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES:
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"CIFAR-10 file {directory / name} not found; optlab never downloads: extract "
                "the binary version (cifar-10-binary.tar.gz) there"
            )

    def load(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        parts = [read_cifar_binary(directory / n) for n in names]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        return images.astype(np.float32) / 255.0, labels

    x_train, y_train = load(CIFAR10_TRAIN_FILES)
    x_test, y_test = load(CIFAR10_TEST_FILES)
    info = {"directory": str(directory), "class_names": _class_names(directory)}
    return Dataset(x_train, y_train, x_test, y_test, 10, "cifar10", frozen(info))
