"""optlab.data.text: the standard-library corpus (fixed files, fixed split), user text files,
next-byte windows, and the errors for unreadable or too small files."""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from optlab.data import text


def _fake_stdlib(root: Path) -> dict[str, bytes]:
    """A directory with every listed file, distinct short contents; returns name -> bytes."""
    contents = {}
    for i, name in enumerate(text.STDLIB_FILES):
        contents[name] = f"# file {i} {name}\nx = {i}\n".encode()
        (root / name).write_bytes(contents[name])
    return contents


def test_file_list_is_fixed_and_the_split_is_every_tenth_file():
    names = text.STDLIB_FILES
    assert len(names) == len(set(names)) == 79
    assert all(n.endswith(".py") and "/" not in n for n in names)
    held = text.validation_files()
    assert held == tuple(names[i] for i in range(9, len(names), 10))
    assert len(held) == 7


def test_stdlib_corpus_is_the_listed_files_in_order_and_the_split_is_disjoint(tmp_path):
    contents = _fake_stdlib(tmp_path)
    # Extra files in the directory must not enter the corpus (no directory listing is used).
    (tmp_path / "aaa_not_listed.py").write_bytes(b"ignored\n")
    c = text.stdlib_corpus(tmp_path)
    held = set(text.validation_files())
    sep = bytes([text.SEPARATOR])
    expected_train = b"".join(contents[n] + sep for n in text.STDLIB_FILES if n not in held)
    expected_val = b"".join(contents[n] + sep for n in text.STDLIB_FILES if n in held)
    assert c.train.tobytes() == expected_train
    assert c.validation.tobytes() == expected_val
    assert set(c.train_files).isdisjoint(c.validation_files)
    assert set(c.train_files) | set(c.validation_files) == set(text.STDLIB_FILES)
    assert c.sha256 == {n: hashlib.sha256(b).hexdigest() for n, b in contents.items()}
    assert b"ignored" not in c.train.tobytes() + c.validation.tobytes()


def test_stdlib_corpus_is_deterministic_on_this_interpreter():
    a, b = text.stdlib_corpus(), text.stdlib_corpus()
    assert np.array_equal(a.train, b.train) and np.array_equal(a.validation, b.validation)
    assert a.sha256 == b.sha256
    root = Path(sysconfig.get_paths()["stdlib"])
    # Read independently: the validation stream is exactly the held-out files' bytes.
    expected = b"".join(
        (root / n).read_bytes() + bytes([text.SEPARATOR]) for n in text.validation_files()
    )
    assert a.validation.tobytes() == expected
    # The separator is a byte no source file contains, so it marks exactly the file ends.
    assert int(np.sum(a.train == text.SEPARATOR)) == len(a.train_files)


def test_missing_stdlib_file_names_it(tmp_path):
    _fake_stdlib(tmp_path)
    (tmp_path / text.STDLIB_FILES[3]).unlink()
    with pytest.raises(FileNotFoundError, match=text.STDLIB_FILES[3].replace(".", r"\.")) as e:
        text.stdlib_corpus(tmp_path)
    assert "text_file" in str(e.value)


def test_load_text_windows_predict_the_next_byte(tmp_path):
    contents = _fake_stdlib(tmp_path)
    ds = text.load_text(seq_len=16, stdlib_dir=tmp_path)
    assert ds.num_classes == ds.info["vocab_size"] == 256
    assert ds.x_train.dtype == ds.y_train.dtype == np.int32
    assert ds.x_train.shape[1] == 16
    stream = ds.info["train_tokens"]
    n = (len(stream) - 1) // 16
    assert ds.x_train.shape == (n, 16)
    # Window i covers bytes [16 i, 16 i + 16) and its targets the next byte of each.
    flat = np.asarray(stream, np.int32)
    np.testing.assert_array_equal(ds.x_train.reshape(-1), flat[: n * 16])
    np.testing.assert_array_equal(ds.y_train.reshape(-1), flat[1 : n * 16 + 1])
    assert ds.info["validation_files"] == text.validation_files()
    assert len(contents) == len(text.STDLIB_FILES)


def test_text_file_holds_out_the_last_fraction(tmp_path):
    raw = bytes(range(256)) * 40  # 10,240 bytes
    path = tmp_path / "input.txt"
    path.write_bytes(raw)
    c = text.text_file_corpus(path, validation_fraction=0.25)
    assert c.train.tobytes() == raw[:7680] and c.validation.tobytes() == raw[7680:]
    ds = text.load_text(text_file=path, seq_len=32, validation_fraction=0.25)
    assert ds.name == "text_file"
    assert ds.x_test.shape == ((2560 - 1) // 32, 32)
    assert (
        ds.info["corpus_sha256"] == text.load_text(text_file=path, seq_len=32).info["corpus_sha256"]
    )


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p / "missing.txt", "not readable"),
        (lambda p: p, "not readable"),  # a directory
        (lambda p: (p / "tiny.txt").write_bytes(b"abc") and p / "tiny.txt", "at least"),
    ],
)
def test_text_file_errors_name_the_file(tmp_path, make, match):
    path = make(tmp_path)
    with pytest.raises(ValueError, match=match) as e:
        text.load_text(text_file=path, seq_len=8)
    assert str(path) in str(e.value)


def test_too_small_for_the_windows_says_how_many_bytes(tmp_path):
    path = tmp_path / "small.txt"
    path.write_bytes(b"x" * 1000)  # 100 validation bytes
    with pytest.raises(ValueError, match=r"1,000 bytes; at least 6,410"):
        text.load_text(text_file=path, seq_len=64, min_windows=10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seq_len": 0}, "seq_len"),
        ({"seq_len": 2.5}, "seq_len"),
        ({"min_windows": 0}, "min_windows"),
    ],
)
def test_bad_arguments(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        text.load_text(stdlib_dir=tmp_path, **kwargs)


@pytest.mark.parametrize("fraction", [0.0, 0.6, -0.1])
def test_bad_validation_fraction(tmp_path, fraction):
    path = tmp_path / "a.txt"
    path.write_bytes(b"y" * 5000)
    with pytest.raises(ValueError, match=r"validation_fraction must be a number in \(0, 0.5\]"):
        text.text_file_corpus(path, validation_fraction=fraction)


def test_random_windows_are_shifted_slices():
    tokens = np.arange(200, dtype=np.uint8)
    rng = np.random.default_rng(0)
    x, y = text.random_windows(tokens, 10, 5, rng)
    assert x.shape == y.shape == (5, 10)
    np.testing.assert_array_equal(y, x + 1)  # consecutive bytes in this stream
    np.testing.assert_array_equal(np.diff(x, axis=1), 1)
    x2, _ = text.random_windows(tokens, 10, 5, np.random.default_rng(0))
    np.testing.assert_array_equal(x, x2)


def test_compare_text_lm_task_reads_a_file_or_a_directory_with_input_txt(tmp_path):
    from optlab.bench import CompareConfig, tasks
    from optlab.bench.config import BenchError, load_data

    task = tasks.get_task("text-lm")
    assert task.needs_data_dir and tasks.get_task("stdlib-lm").needs_data_dir is False
    (tmp_path / "input.txt").write_bytes(b"To be, or not to be: that is the question.\n" * 200)
    by_dir = tasks.load_task_data(task, tmp_path)
    by_file = tasks.load_task_data(task, tmp_path / "input.txt")
    np.testing.assert_array_equal(by_dir.x_train, by_file.x_train)
    assert by_dir.x_train.shape[1] == 64 and by_dir.num_classes == 256
    config = CompareConfig(tasks="text-lm", out=tmp_path, data_dir=tmp_path / "nope.txt")
    with pytest.raises(BenchError, match="not readable") as e:
        load_data(task, config)
    assert "\n" not in str(e.value)
