"""MNIST from IDX files in a local directory: no download, no pickle.

The IDX format (LeCun, Cortes, Burges, "The MNIST database of handwritten digits"): a
big-endian header ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian ``uint32`` sizes, then
the data in C order. MNIST's images are ``0x00000803`` (2051: unsigned bytes, 3 dims
``N x 28 x 28``), its labels ``0x00000801`` (2049: unsigned bytes, 1 dim ``N``). Files may be
gzip-compressed (``.gz``), as distributed. Fashion-MNIST and KMNIST use the same files and
load the same way.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from optlab.data.base import Dataset, frozen

# IDX type codes -> big-endian NumPy dtypes.
_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    # Decide by content, not by name: gzip streams start with 1f 8b (RFC 1952), IDX with 00 00.
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise ValueError(f"{path}: not a valid gzip file ({e})") from e


def read_idx(path: str | os.PathLike, *, expected_magic: int | None = None) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a NumPy array, checking it.

    Compression is detected from the content, so a ``.gz`` file that was decompressed in
    place (or the reverse) still reads.

    Args:
        path: the file.
        expected_magic: if given, the 4-byte magic number the file must start with (e.g.
            :data:`IMAGES_MAGIC`).

    Returns:
        The array, with the file's shape and a native-endian dtype.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: wrong magic number, unknown type code, truncated header or data, extra
            bytes after the data, or a corrupt gzip stream; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need at least 4)")
    magic = int.from_bytes(raw[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(
            f"{path}: wrong magic number 0x{magic:08x} (expected 0x{expected_magic:08x}); "
            "is this the right file?"
        )
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (magic number 0x{magic:08x})")
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got < expected:
        raise ValueError(
            f"{path}: truncated data: the header declares shape {shape} ({expected} bytes) "
            f"but only {got} bytes follow"
        )
    if got > expected:
        raise ValueError(
            f"{path}: wrong size: the header declares shape {shape} ({expected} bytes) "
            f"but {got} bytes follow"
        )
    data = np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return data.reshape(shape).astype(dtype.newbyteorder("="))


def _find(directory: Path, stem: str) -> Path:
    # As distributed (.gz), decompressed, or with the '.' that some mirrors use.
    dotted = stem.replace("-idx", ".idx")
    candidates = [stem, stem + ".gz", dotted, dotted + ".gz"]
    for name in candidates:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(
        f"MNIST file {directory / stem} not found (looked for {', '.join(candidates)} in "
        f"{directory}); optlab never downloads: put the four IDX files there"
    )


def _load_split(
    images_path: Path, labels_path: Path, image_size: tuple[int, int], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, expected_magic=IMAGES_MAGIC)
    labels = read_idx(labels_path, expected_magic=LABELS_MAGIC)
    if images.shape[1:] != tuple(image_size):
        raise ValueError(
            f"{images_path}: wrong image size {images.shape[1:]}, expected {tuple(image_size)}"
        )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_path} has {images.shape[0]} images but {labels_path} has "
            f"{labels.shape[0]} labels"
        )
    if labels.size and int(labels.max()) >= num_classes:
        raise ValueError(
            f"{labels_path}: label {int(labels.max())} out of range [0, {num_classes})"
        )
    return images, labels.astype(np.int32)


def load_mnist(
    directory: str | os.PathLike,
    *,
    pad_to_32: bool = False,
    image_size: tuple[int, int] = (28, 28),
    num_classes: int = 10,
    name: str = "mnist",
) -> Dataset:
    """MNIST (or a same-format set) from the four IDX files in ``directory``.

    Files: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally ``.gz`` (and
    ``.idx`` for ``-idx`` accepted). Nothing is downloaded.

    Args:
        directory: where the files are.
        pad_to_32: zero-pad 2 pixels per side to 32x32, LeNet-5's input (LeCun et al. 1998;
            Kuznetsova (2023), sec. 4.1).
        image_size: the image height and width every file must have.
        num_classes: labels must lie in ``[0, num_classes)``.
        name: the returned data set's name (e.g. ``"fashion_mnist"``).

    Returns:
        A :class:`Dataset`: ``float32`` NHWC images ``(N, 28, 28, 1)`` (or 32x32) in ``[0, 1]``
        (pixel / 255), ``int32`` labels; 60000 train and 10000 test images for MNIST.

    Raises:
        FileNotFoundError: the directory or a file is missing.
        ValueError: a file is malformed (see :func:`read_idx`), has the wrong image size,
            out-of-range labels, or a label count that differs from its image count.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"MNIST directory not found: {directory}")
    paths = {key: _find(directory, stem) for key, stem in MNIST_FILES.items()}
    splits = []
    for part in ("train", "test"):
        images, labels = _load_split(
            paths[f"{part}_images"], paths[f"{part}_labels"], image_size, num_classes
        )
        x = (images.astype(np.float32) / 255.0)[..., None]
        if pad_to_32:
            x = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
        splits += [x, labels]
    info = {"directory": str(directory), "files": {k: str(v) for k, v in paths.items()}}
    return Dataset(*splits, num_classes, name, frozen(info))
