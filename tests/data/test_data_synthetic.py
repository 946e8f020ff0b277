"""Generated tasks: seed 001's logistic regression, Zipf tagging, modular arithmetic."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optlab.data import (
    DATASET_NAMES,
    ENTITY_TAGS,
    MODULAR_OPS,
    load_dataset,
    logistic_regression_objective,
    make_entity_tagging,
    make_logistic_regression,
    make_modular_arithmetic,
    make_zipf_tagging,
    solve_logistic_regression,
    zipf_probabilities,
)
from optlab.data.synthetic import UNK

# --------------------------------------------------------------------------------------------
# Logistic regression (seed 001).
# --------------------------------------------------------------------------------------------


def test_logistic_regression_matches_seed_001():
    ds = make_logistic_regression()
    assert ds.x_train.shape == (200, 10) and ds.x_train.dtype == np.float32
    assert ds.y_train.shape == (200,) and set(np.unique(ds.y_train)) == {0, 1}
    assert ds.num_classes == 2 and ds.info["mu"] == 1.0 and ds.name == "logistic"
    again = make_logistic_regression()
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    np.testing.assert_array_equal(ds.y_test, again.y_test)
    assert not np.array_equal(ds.x_train, make_logistic_regression(seed=1).x_train)


def test_logistic_objective_and_exact_minimizer():
    ds = make_logistic_regression(seed=3)
    a, y, mu = ds.x_train.astype(np.float64), ds.y_train, ds.info["mu"]
    w = np.random.default_rng(0).standard_normal(10)
    s = 2 * y - 1
    expected = 0.5 * mu * w @ w + np.mean(np.log1p(np.exp(-s * (a @ w))))
    got = logistic_regression_objective(jnp.asarray(w, jnp.float32), jnp.asarray(a, jnp.float32), y)
    np.testing.assert_allclose(got, expected, rtol=1e-5)

    w_star = solve_logistic_regression(a, y, mu)
    grad = jax.grad(logistic_regression_objective)(jnp.asarray(w_star), jnp.asarray(a), y, mu)
    assert np.linalg.norm(np.asarray(grad)) < 1e-4
    # Strong convexity: f(w) - f(w*) >= mu/2 ||w - w*||^2.
    f = lambda v: float(logistic_regression_objective(jnp.asarray(v), jnp.asarray(a), y, mu))  # noqa: E731
    assert f(w) - f(w_star) >= 0.5 * mu * np.sum((w - w_star) ** 2) - 1e-6


# --------------------------------------------------------------------------------------------
# Zipf token tagging.
# --------------------------------------------------------------------------------------------


def test_zipf_tagging_shapes_and_rule():
    ds = make_zipf_tagging(num_train=300, num_test=50, seq_len=12, vocab_size=100, num_tags=4)
    assert ds.x_train.shape == ds.y_train.shape == (300, 12)
    assert ds.x_test.shape == (50, 12)
    assert ds.x_train.dtype == ds.y_train.dtype == np.int32
    assert ds.num_classes == 4 and ds.info["vocab_size"] == 100
    assert ds.x_train.min() >= 0 and ds.x_train.max() < 100
    c = ds.info["token_class"]
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        np.testing.assert_array_equal(y[:, 0], c[x[:, 0]])
        np.testing.assert_array_equal(y[:, 1:], (c[x[:, 1:]] + c[x[:, :-1]]) % 4)
    again = make_zipf_tagging(num_train=300, num_test=50, seq_len=12, vocab_size=100, num_tags=4)
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    np.testing.assert_array_equal(ds.y_test, again.y_test)


def test_zipf_tagging_token_frequencies_follow_zipf():
    ds = make_zipf_tagging(num_train=4000, num_test=10, seq_len=25, vocab_size=1000, exponent=1.0)
    counts = np.bincount(ds.x_train.ravel(), minlength=1000)
    freq = counts / counts.sum()
    np.testing.assert_allclose(freq[:5], zipf_probabilities(1000)[:5], rtol=0.05)
    # Log-log slope over the 50 most frequent ranks is about -exponent.
    ranks = np.arange(1, 51)
    slope = np.polyfit(np.log(ranks), np.log(freq[:50]), 1)[0]
    assert -1.15 < slope < -0.85
    # Heavy tail: the most common token is ~100x as frequent as rank 100.
    assert freq[0] / freq[99] > 50
    steeper = make_zipf_tagging(num_train=500, num_test=10, exponent=2.0)
    assert np.mean(steeper.x_train == 0) > 0.5


def test_zipf_probabilities():
    p = zipf_probabilities(10, 1.5)
    np.testing.assert_allclose(p.sum(), 1.0)
    np.testing.assert_allclose(p[0] / p[3], 4**1.5)


# --------------------------------------------------------------------------------------------
# Modular arithmetic.
# --------------------------------------------------------------------------------------------


def test_modular_division_uses_the_modular_inverse():
    p = 97
    ds = make_modular_arithmetic(p, "/", train_fraction=0.3, seed=0)
    x = np.concatenate([ds.x_train, ds.x_test])
    z = np.concatenate([ds.y_train, ds.y_test])
    assert x.shape == (p * (p - 1), 4)  # y = 0 is excluded
    assert ds.num_classes == p and ds.info["vocab_size"] == p + 2
    assert np.all(x[:, 1] == p) and np.all(x[:, 3] == p + 1) and np.all(x[:, 2] != 0)
    # z = x / y  <=>  z * y = x (mod p).
    np.testing.assert_array_equal((z.astype(np.int64) * x[:, 2]) % p, x[:, 0])
    # Spot checks by hand: 1 / 2 = 49 (2 * 49 = 98 = 1 mod 97); 5 / 5 = 1.
    table = {(int(a), int(b)): int(c) for (a, _, b, _), c in zip(x, z, strict=True)}
    assert table[(1, 2)] == 49 and table[(5, 5)] == 1 and table[(0, 7)] == 0
    # Every pair exactly once; train and test disjoint, in the requested proportion.
    assert len(table) == p * (p - 1)
    assert len(ds.x_train) == round(0.3 * p * (p - 1))


@pytest.mark.parametrize("op, fn", [("+", np.add), ("-", np.subtract), ("*", np.multiply)])
def test_modular_ring_operations(op, fn):
    ds = make_modular_arithmetic(11, op, train_fraction=0.5, seed=1)
    x = np.concatenate([ds.x_train, ds.x_test])
    z = np.concatenate([ds.y_train, ds.y_test])
    assert len(x) == 121
    np.testing.assert_array_equal(z, fn(x[:, 0], x[:, 2]) % 11)
    assert z.min() >= 0 and z.max() < 11


def test_modular_several_ops_and_determinism():
    ds = make_modular_arithmetic(7, ("+", "-", "/"), train_fraction=0.5, seed=2)
    assert ds.info["op_tokens"] == {"+": 7, "-": 8, "/": 9} and ds.info["eq_token"] == 10
    x = np.concatenate([ds.x_train, ds.x_test])
    assert len(x) == 49 + 49 + 42
    assert set(np.unique(x[:, 1])) == {7, 8, 9}
    again = make_modular_arithmetic(7, ("+", "-", "/"), train_fraction=0.5, seed=2)
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    other = make_modular_arithmetic(7, ("+", "-", "/"), train_fraction=0.5, seed=3)
    assert not np.array_equal(ds.x_train, other.x_train)
    assert set(MODULAR_OPS) >= {"+", "-", "/"}


def test_modular_rejects_bad_arguments():
    with pytest.raises(ValueError, match="prime"):
        make_modular_arithmetic(12, "/")
    with pytest.raises(ValueError, match="unknown ops"):
        make_modular_arithmetic(7, "^")
    with pytest.raises(ValueError, match="train_fraction"):
        make_modular_arithmetic(7, "+", train_fraction=1.0)


def test_registry_builds_offline_tasks():
    assert {"digits", "digits32", "logistic", "zipf_tagging", "modular"} <= set(DATASET_NAMES)
    assert load_dataset("modular", p=5, ops="+").x_train.shape[1] == 4
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="no data_dir"):
        load_dataset("logistic", data_dir=".")


# --------------------------------------------------------------------------------------------
# Synthetic named-entity tagging.
# --------------------------------------------------------------------------------------------


def _check_entity_rule(tokens: np.ndarray, tags: np.ndarray, info) -> None:
    """Every tag follows make_entity_tagging's documented rule (noise-free, no UNK)."""
    first = info["first_id"]
    b_tag = lambda t: 1 + 2 * t  # noqa: E731
    for toks, tgs in zip(tokens, tags):
        assert first["topic"] <= toks[0] < first["trigger"] and tgs[0] == 0
        topic = toks[0] - first["topic"]
        for i in range(1, len(toks)):
            tok, tag = int(toks[i]), int(tgs[i])
            if tok >= first["name"]:
                name = tok - first["name"]
                t = info["name_type"][name]
                if info["name_ambiguous"][name]:
                    t = (t + topic) % 3
                assert tag == b_tag(t)
                if first["trigger"] <= toks[i - 1] < first["continuation"]:
                    assert (toks[i - 1] - first["trigger"]) // 2 == t  # the trigger's type
            elif first["continuation"] <= tok < first["word"]:
                assert tag % 2 == 0 and tag > 0  # I-T ...
                assert tgs[i - 1] in (tag - 1, tag)  # ... inside a span of type T
            else:
                assert tag == 0  # words and triggers are O


def test_entity_tagging_follows_its_rule():
    ds = make_entity_tagging(num_train=300, num_test=100, label_noise=0.0, min_count=1, seed=3)
    assert ds.x_train.shape == ds.y_train.shape == (300, 24) and ds.x_test.shape == (100, 24)
    assert ds.x_train.dtype == ds.y_train.dtype == np.int32
    assert ds.num_classes == len(ENTITY_TAGS) == 7 and ds.info["tags"] == ENTITY_TAGS
    assert ds.x_train.max() < ds.info["vocab_size"]
    # min_count 1: no training token is unknown; the test split's unknowns are exactly the
    # tokens the training split never saw (names of the Zipf tail, mostly).
    assert not np.any(ds.x_train == UNK)
    _check_entity_rule(ds.x_train, ds.y_train, ds.info)
    np.testing.assert_array_equal(ds.y_test, ds.info["clean_test_tags"])
    assert ds.info["rule_test_acc"] == 1.0
    # Deterministic for a seed; another seed draws other sentences.
    again = make_entity_tagging(num_train=300, num_test=100, label_noise=0.0, min_count=1, seed=3)
    np.testing.assert_array_equal(ds.x_test, again.x_test)
    other = make_entity_tagging(num_train=300, num_test=100, label_noise=0.0, min_count=1)
    assert not np.array_equal(ds.x_train, other.x_train)


def test_entity_tagging_vocabulary_and_noise():
    ds = make_entity_tagging(seed=0)  # the entity-lstm task's data
    # Vocabulary from the training split: ids seen once there became UNK in both splits, so
    # every remaining training id occurs at least twice.
    counts = np.bincount(ds.x_train.ravel(), minlength=ds.info["vocab_size"])
    assert np.all(counts[1:][counts[1:] > 0] >= 2)
    assert counts[UNK] > 0 and 0 < ds.info["unk_test_fraction"] < 0.1
    assert set(np.unique(ds.x_test)) <= set(np.flatnonzero(counts)) | {UNK}
    # Label noise 0.05 replaces a tag by a uniform draw from 7, which changes it with
    # probability 0.05 * 6/7 = 0.0429. Over the 12,000 test tags the observed share has
    # standard deviation sqrt(p (1 - p) / 12000) = 0.0018: allow 4 of them.
    p = 0.05 * 6 / 7
    changed = np.mean(ds.y_test != ds.info["clean_test_tags"])
    assert abs(changed - p) < 4 * np.sqrt(p * (1 - p) / ds.y_test.size)
    assert ds.info["rule_test_acc"] == pytest.approx(1 - changed)
    # A sizable share of tags are entities (the task is not mostly O).
    assert 0.3 < np.mean(ds.info["clean_test_tags"] > 0) < 0.6


def test_entity_tagging_rejects_bad_arguments():
    with pytest.raises(ValueError, match="label_noise must be a probability in"):
        make_entity_tagging(label_noise=1.5)
    with pytest.raises(ValueError, match="min_count must be an integer >= 1"):
        make_entity_tagging(min_count=0)
    with pytest.raises(ValueError, match="positive integers"):
        make_entity_tagging(seq_len=0)
