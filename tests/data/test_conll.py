"""The CoNLL-2003 loader on small files written here in its column format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from optlab.data import load_conll2003, load_dataset, read_conll
from optlab.data.conll import IGNORE_TAG, PAD, UNK, build_vocab

# Two documents, as in eng.train: -DOCSTART- lines, blank lines between sentences, IOB1 tags
# (I-ORG on a first token, B- only between two adjacent entities of one type).
TRAIN = """-DOCSTART- -X- -X- O

EU NNP I-NP I-ORG
rejects VBZ I-VP O
German JJ I-NP I-MISC
call NN I-NP O
. . O O

Peter NNP I-NP I-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

EU NNP I-NP I-ORG
Blackburn NNP I-NP I-PER
. . O O
"""

TEST = """-DOCSTART- -X- -X- O

Japan NNP I-NP I-LOC
rejects VBZ I-VP O
Japan NNP I-NP B-LOC
call NN I-NP O
again RB I-ADVP O
. . O O
"""


def write_pair(
    directory: Path, train: str = TRAIN, test: str = TEST, names=("eng.train", "eng.testb")
):
    (directory / names[0]).write_text(train)
    (directory / names[1]).write_text(test)


def test_read_conll_sentences_and_tags_as_written(tmp_path):
    write_pair(tmp_path)
    sentences = read_conll(tmp_path / "eng.train")
    assert sentences == [
        (("EU", "rejects", "German", "call", "."), ("I-ORG", "O", "I-MISC", "O", "O")),
        (("Peter", "Blackburn"), ("I-PER", "I-PER")),
        (("EU", "Blackburn", "."), ("I-ORG", "I-PER", "O")),
    ]
    # No blank line at the end of the file: the last sentence still counts; CRLF line ends and
    # several blank lines in a row are harmless; two columns (token tag) are accepted.
    (tmp_path / "short.txt").write_text("a x O\r\nb y B-PER\r\n\r\n\r\nc z O")
    assert read_conll(tmp_path / "short.txt") == [(("a", "b"), ("O", "B-PER")), (("c",), ("O",))]
    (tmp_path / "two.txt").write_text("a O\nb I-LOC\n")
    assert read_conll(tmp_path / "two.txt") == [(("a", "b"), ("O", "I-LOC"))]


def test_load_conll2003_encoding_vocab_padding(tmp_path):
    write_pair(tmp_path)
    ds = load_conll2003(tmp_path)
    assert ds.name == "conll2003"
    # Tags of both files, O first then sorted, as written (IOB1's I-ORG and the test's B-LOC).
    assert ds.info["tags"] == ("O", "B-LOC", "I-LOC", "I-MISC", "I-ORG", "I-PER")
    assert ds.num_classes == 6
    # Vocabulary from the training file, min_count 2: EU and Blackburn (2 each) and "." (2);
    # most frequent first, ties alphabetical. Singletons and test-only tokens are unknown.
    assert ds.info["vocab"] == ("<pad>", "<unk>", ".", "Blackburn", "EU")
    assert ds.x_train.shape == ds.y_train.shape == (3, 6)  # longest sentence: 6 (test)
    assert ds.x_test.shape == (1, 6) and ds.x_train.dtype == ds.y_train.dtype == np.int32
    v = {t: i for i, t in enumerate(ds.info["vocab"])}
    tag = {t: i for i, t in enumerate(ds.info["tags"])}
    np.testing.assert_array_equal(ds.x_train[0], [v["EU"], UNK, UNK, UNK, v["."], PAD])
    np.testing.assert_array_equal(
        ds.y_train[0],
        [tag["I-ORG"], tag["O"], tag["I-MISC"], tag["O"], tag["O"], IGNORE_TAG],
    )
    np.testing.assert_array_equal(ds.x_train[1], [UNK, v["Blackburn"], PAD, PAD, PAD, PAD])
    np.testing.assert_array_equal(ds.y_train[1, 2:], IGNORE_TAG)
    np.testing.assert_array_equal(ds.x_test[0], [UNK, UNK, UNK, UNK, UNK, v["."]])
    np.testing.assert_array_equal(
        ds.y_test[0], [tag["I-LOC"], tag["O"], tag["B-LOC"], tag["O"], tag["O"], tag["O"]]
    )
    np.testing.assert_array_equal(ds.info["train_lengths"], [5, 2, 3])
    assert ds.info["unk_test_fraction"] == pytest.approx(5 / 6)
    # min_count 1 keeps every training token; lowercase folds before counting.
    assert len(load_conll2003(tmp_path, min_count=1).info["vocab"]) == 2 + 7
    assert build_vocab([(("A", "a", "b"), ("O",) * 3)], min_count=2, lowercase=True) == (
        "<pad>",
        "<unk>",
        "a",
    )


def test_file_names_and_the_registry(tmp_path):
    write_pair(tmp_path, names=("train.txt", "test.txt"))
    ds = load_dataset("conll2003", data_dir=tmp_path)
    assert ds.info["files"]["train"].endswith("train.txt")
    (tmp_path / "dev.txt").write_text(TEST)
    ds = load_conll2003(tmp_path, test_file="dev.txt")
    assert ds.info["files"]["test"].endswith("dev.txt")
    with pytest.raises(ValueError, match="pass data_dir"):
        load_dataset("conll2003")


@pytest.mark.parametrize(
    "text, line, what",
    [
        ("EU NNP I-NP I-ORG\nrejects VBZ O\n", 2, "expected 4 columns"),
        ("EU NNP I-NP I-ORG\n\nJapan\n", 3, "expected 4 columns"),
        ("EU\n", 1, "at least 2 columns"),
        ("-DOCSTART- -X- -X- O\n\nEU NNP I-NP I-ORG\nb\xe9 X X O\n", 4, "not UTF-8"),
    ],
)
def test_malformed_files_name_the_file_and_line(tmp_path, text, line, what):
    path = tmp_path / "eng.train"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=what) as info:
        read_conll(path)
    assert str(path) in str(info.value) and f"line {line}:" in str(info.value)
    (tmp_path / "eng.testb").write_text(TEST)
    with pytest.raises(ValueError, match=f"line {line}:"):
        load_conll2003(tmp_path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="directory not found"):
        load_conll2003(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="eng.train or train.txt"):
        load_conll2003(tmp_path)
    (tmp_path / "eng.train").write_text("-DOCSTART- -X- -X- O\n\n")
    (tmp_path / "eng.testb").write_text(TEST)
    with pytest.raises(ValueError, match="no sentences"):
        load_conll2003(tmp_path)
    with pytest.raises(ValueError, match="min_count must be an integer >= 1"):
        load_conll2003(tmp_path, min_count=0)
