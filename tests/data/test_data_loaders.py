"""MNIST (IDX) and CIFAR-10 (binary) loaders on small files written here in those formats."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from optlab.data import load_cifar10, load_dataset, load_mnist, read_cifar_binary, read_idx

# --------------------------------------------------------------------------------------------
# IDX writers.
# --------------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, type_code: int = 0x08, magic: int | None = None) -> bytes:
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    header = (magic if magic is not None else (type_code << 8) | array.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.asarray(array, dtype[type_code]).tobytes()


def write(path: Path, data: bytes, gz: bool = False) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def make_mnist(directory: Path, n_train: int = 12, n_test: int = 5, gz: bool = False, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    paths = {name: write(directory / name, idx_bytes(a), gz) for name, a in arrays.items()}
    return arrays, paths


# --------------------------------------------------------------------------------------------
# MNIST.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_round_trip(tmp_path, gz):
    arrays, _ = make_mnist(tmp_path, gz=gz)
    ds = load_mnist(tmp_path)
    assert ds.name == "mnist" and ds.num_classes == 10
    assert ds.x_train.shape == (12, 28, 28, 1) and ds.x_test.shape == (5, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    np.testing.assert_allclose(ds.x_train[..., 0] * 255, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0


def test_mnist_pad_to_32_and_registry(tmp_path):
    arrays, _ = make_mnist(tmp_path)
    ds = load_dataset("mnist", data_dir=tmp_path, pad_to_32=True)
    assert ds.x_train.shape == (12, 32, 32, 1)
    assert np.all(ds.x_train[:, :2] == 0) and np.all(ds.x_train[:, :, -2:] == 0)
    inner = ds.x_train[:, 2:30, 2:30, 0] * 255
    np.testing.assert_allclose(inner, arrays["train-images-idx3-ubyte"])


def test_mnist_accepts_dotted_mirror_names(tmp_path):
    arrays, paths = make_mnist(tmp_path)
    for path in paths.values():
        path.rename(path.with_name(path.name.replace("-idx", ".idx")))
    assert load_mnist(tmp_path).x_train.shape == (12, 28, 28, 1)


def test_read_idx_other_types(tmp_path):
    a = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    np.testing.assert_array_equal(read_idx(write(tmp_path / "a", idx_bytes(a, 0x0C))), a)
    f = np.linspace(-1, 1, 6).reshape(3, 2)
    out = read_idx(write(tmp_path / "f", idx_bytes(f, 0x0E), gz=True))
    assert out.dtype == np.float64 and out.dtype.isnative
    np.testing.assert_array_equal(out, f)


def _corrupt(tmp_path, name: str, data: bytes) -> Path:
    make_mnist(tmp_path)
    return write(tmp_path / name, data)


def _images(n=12, size=(28, 28)):
    return np.zeros((n, *size), np.uint8)


MALFORMED = {
    "wrong magic number": (
        "train-images-idx3-ubyte",
        idx_bytes(_images(), magic=0x00000801),
        "wrong magic number",
    ),
    "labels file with image magic": (
        "t10k-labels-idx1-ubyte",
        idx_bytes(_images(5)),
        "wrong magic number",
    ),
    "truncated data": (
        "train-images-idx3-ubyte",
        idx_bytes(_images())[:-100],
        "truncated",
    ),
    "truncated header": ("train-labels-idx1-ubyte", b"\x00\x00\x08", "truncated"),
    "extra bytes": ("train-images-idx3-ubyte", idx_bytes(_images()) + b"\x00" * 7, "wrong size"),
    "wrong image size": ("train-images-idx3-ubyte", idx_bytes(_images(size=(27, 28))), "size"),
    "count mismatch": ("t10k-images-idx3-ubyte", idx_bytes(_images(6)), "labels"),
    "label out of range": (
        "train-labels-idx1-ubyte",
        idx_bytes(np.full(12, 10, np.uint8)),
        "out of range",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_mnist_malformed_files_raise_naming_the_file(tmp_path, case):
    name, data, message = MALFORMED[case]
    path = _corrupt(tmp_path, name, data)
    with pytest.raises(ValueError, match=message) as err:
        load_mnist(tmp_path)
    assert str(path) in str(err.value)


def test_mnist_corrupt_gzip_raises_naming_the_file(tmp_path):
    make_mnist(tmp_path, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:15])
    with pytest.raises(ValueError, match="gzip") as err:
        load_mnist(tmp_path)
    assert str(path) in str(err.value)


def test_mnist_missing_files(tmp_path):
    _, paths = make_mnist(tmp_path)
    paths["t10k-labels-idx1-ubyte"].unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_mnist(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="missing-file"):
        read_idx(tmp_path / "missing-file")
    with pytest.raises(ValueError, match="data_dir"):
        load_dataset("mnist")


# --------------------------------------------------------------------------------------------
# CIFAR-10.
# --------------------------------------------------------------------------------------------


def cifar_records(labels: np.ndarray, images: np.ndarray) -> bytes:
    """Records as in the binary version: label byte, then R, G, B planes (row-major)."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(labels), 3072)
    return np.concatenate([labels[:, None].astype(np.uint8), planes], axis=1).tobytes()


def make_cifar(directory: Path, per_file: int = 3, seed: int = 0):
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    content = {}
    for name in names:
        labels = rng.integers(0, 10, per_file, dtype=np.uint8)
        images = rng.integers(0, 256, (per_file, 32, 32, 3), dtype=np.uint8)
        (directory / name).write_bytes(cifar_records(labels, images))
        content[name] = (labels, images)
    return content


def test_cifar10_round_trip_and_pixel_layout(tmp_path):
    content = make_cifar(tmp_path)
    ds = load_cifar10(tmp_path)
    assert ds.name == "cifar10" and ds.num_classes == 10
    assert ds.x_train.shape == (15, 32, 32, 3) and ds.x_test.shape == (3, 32, 32, 3)
    train_images = np.concatenate([content[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    np.testing.assert_allclose(ds.x_train * 255, train_images, atol=1e-4)
    np.testing.assert_array_equal(ds.y_test, content["test_batch.bin"][0])
    assert ds.info["class_names"][0] == "airplane"

    # Byte 1 of a record is the red value of the top-left pixel; byte 1025 its green value.
    record = (tmp_path / "test_batch.bin").read_bytes()[:3073]
    images, labels = read_cifar_binary(tmp_path / "test_batch.bin")
    assert images.dtype == np.uint8 and labels[0] == record[0]
    assert images[0, 0, 0, 0] == record[1] and images[0, 0, 0, 1] == record[1025]
    assert images[0, 0, 1, 2] == record[2050] and images[0, 1, 0, 0] == record[33]


def test_cifar10_extracted_subdirectory_and_meta(tmp_path):
    sub = tmp_path / "cifar-10-batches-bin"
    make_cifar(sub)
    names = [f"class{i}" for i in range(10)]
    (sub / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.x_train.shape[0] == 15 and ds.info["class_names"] == tuple(names)


@pytest.mark.parametrize(
    "case, data, message",
    [
        ("truncated", lambda b: b[:-10], "wrong size"),
        ("extra", lambda b: b + b"\x01", "wrong size"),
        ("empty", lambda b: b"", "empty"),
        ("bad label", lambda b: b"\x0c" + b[1:], "label 12"),
    ],
)
def test_cifar10_malformed_files_raise_naming_the_file(tmp_path, case, data, message):
    make_cifar(tmp_path)
    path = tmp_path / "data_batch_3.bin"
    path.write_bytes(data(path.read_bytes()))
    with pytest.raises(ValueError, match=message) as err:
        load_cifar10(tmp_path)
    assert str(path) in str(err.value)


def test_cifar10_missing_file(tmp_path):
    make_cifar(tmp_path)
    (tmp_path / "data_batch_5.bin").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_5.bin"):
        load_cifar10(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_cifar10(tmp_path / "nowhere")


def test_idx_compression_is_detected_from_content(tmp_path):
    a = np.arange(6, dtype=np.uint8)
    plain = write(tmp_path / "plain.gz", idx_bytes(a))  # named .gz, not compressed
    packed = write(tmp_path / "packed", idx_bytes(a), gz=True)
    packed = packed.rename(tmp_path / "packed-no-suffix")  # compressed, no .gz
    np.testing.assert_array_equal(read_idx(plain), a)
    np.testing.assert_array_equal(read_idx(packed), a)
