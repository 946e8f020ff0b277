"""scikit-learn's bundled digits: shapes, range, split, and the 32x32 LeNet-5 variant."""

from __future__ import annotations

import sys

import jax
import numpy as np
import pytest

from optlab.data import load_digits, load_digits32, resize_bilinear, standardize, train_test_split

pytest.importorskip("sklearn")


def test_digits_shapes_range_and_split():
    ds = load_digits()
    assert ds.name == "digits" and ds.num_classes == 10
    assert ds.num_train + ds.num_test == 1797
    assert ds.x_train.shape[1:] == (8, 8, 1) and ds.x_train.dtype == np.float32
    assert ds.y_train.dtype == np.int32
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    # Stratified: every class has about 20% of its images in the test part.
    counts = np.bincount(ds.y_test, minlength=10)
    totals = counts + np.bincount(ds.y_train, minlength=10)
    assert np.all(np.abs(counts - 0.2 * totals) <= 0.5)
    again = load_digits()
    np.testing.assert_array_equal(ds.x_test, again.x_test)
    assert not np.array_equal(ds.y_test, load_digits(seed=1).y_test)


def test_digits32_is_bilinear_28_padded_to_32():
    small, big = load_digits(), load_digits32()
    assert big.name == "digits32" and big.input_shape == (32, 32, 1)
    assert big.x_train.shape == (small.num_train, 32, 32, 1)
    np.testing.assert_array_equal(big.y_train, small.y_train)
    assert big.x_train.dtype == np.float32
    assert big.x_train.min() >= 0.0 and big.x_train.max() <= 1.0
    # A 2-pixel zero border around a 28x28 field.
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert np.all(big.x_train[:, border] == 0.0)
    # The resize agrees with jax.image.resize's bilinear (half-pixel) convention.
    ref = jax.image.resize(small.x_test[:20], (20, 28, 28, 1), "linear")
    np.testing.assert_allclose(big.x_test[:20, 2:30, 2:30], ref, atol=1e-5)


def test_resize_bilinear_preserves_constants_and_range():
    x = np.full((2, 8, 8), 0.7)
    np.testing.assert_allclose(resize_bilinear(x, (28, 28)), 0.7)
    r = resize_bilinear(np.random.default_rng(0).random((3, 8, 8, 2)), (13, 5))
    assert r.shape == (3, 13, 5, 2) and r.min() >= 0 and r.max() <= 1


def test_standardize_uses_training_statistics():
    ds = standardize(load_digits())
    assert abs(float(ds.x_train.mean())) < 1e-5 and abs(float(ds.x_train.std()) - 1) < 1e-4
    assert "mean" in ds.info and "std" in ds.info
    per = standardize(load_digits(), per_channel=True)
    assert per.info["mean"].shape == (1,)


def test_train_test_split_without_stratification():
    x, y = np.arange(100), np.arange(100) % 3
    a = train_test_split(x, y, 0.25, seed=4, stratify=False)
    b = train_test_split(x, y, 0.25, seed=4, stratify=False)
    assert len(a[2]) == 25 and len(a[0]) == 75
    assert not set(a[0]) & set(a[2])
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_split(x, y, 1.5)


def test_missing_scikit_learn_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"optlab\[lab\]"):
        load_digits()
