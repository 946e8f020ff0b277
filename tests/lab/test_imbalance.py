"""optlab.lab.imbalance: Zipf frequencies, class deciles, per-bucket losses against numpy, the
tuning rule, and ``optlab lab imbalance``."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest

from optlab.lab import imbalance as im
from tests.cli_run import run_cli

EPS64 = np.finfo(np.float64).eps
EPS32 = float(np.finfo(np.float32).eps)


def test_zipf_frequencies_match_the_formula_exactly():
    # c = 4, s = 1: pi = (1, 1/2, 1/3, 1/4) / (25/12) = (12, 6, 4, 3) / 25 in exact arithmetic.
    exact = [Fraction(12, 25), Fraction(6, 25), Fraction(4, 25), Fraction(3, 25)]
    # Each entry is a power, a sum of 4 terms and a division: a few ulps.
    np.testing.assert_allclose(im.zipf_frequencies(4), [float(f) for f in exact], rtol=8 * EPS64)
    for c, s in ((1000, 1.0), (300, 1.5), (7, 0.0)):
        pi = im.zipf_frequencies(c, s)
        ref = [k**-s / math.fsum(j**-s for j in range(1, c + 1)) for k in range(1, c + 1)]
        # numpy's pairwise sum errs by <= log2(c) eps relative; pow and the division by 1 ulp.
        np.testing.assert_allclose(pi, ref, rtol=(math.log2(c) + 4) * EPS64)
        assert np.all(np.diff(pi) <= 0) and math.isclose(pi.sum(), 1.0, rel_tol=1e-13)
    for bad in ({"num_classes": 0}, {"num_classes": 5, "exponent": -1.0}):
        with pytest.raises(ValueError):
            im.zipf_frequencies(**bad)


def test_sampled_labels_follow_the_zipf_law():
    prob = im.make_problem(num_classes=100, num_samples=200_000, dim=2, seed=1)
    counts = prob.bucket_counts()
    p = np.array([prob.frequencies[prob.buckets == b].sum() for b in range(10)])
    # Binomial counts: |count - n p| <= 5 sd fails with probability < 1e-5 per bucket.
    sd = np.sqrt(200_000 * p * (1 - p))
    assert np.all(np.abs(counts - 200_000 * p) <= 5 * sd)
    assert prob.x.dtype == np.float32 and prob.x.shape == (200_000, 2)
    # Inputs N(0, I/d): squared norms average 1, with sd sqrt(2/d / n) ~ 2e-3 here.
    assert abs(np.mean(np.sum(prob.x.astype(np.float64) ** 2, axis=1)) - 1) < 0.02


@pytest.mark.parametrize("c, b", [(1000, 10), (25, 10), (10, 10), (7, 1)])
def test_class_buckets_are_deciles_of_the_classes(c, b):
    buckets = im.class_buckets(c, b)
    sizes = np.bincount(buckets, minlength=b)
    assert sizes.sum() == c and sizes.max() - sizes.min() <= 1  # equal shares of the classes
    assert np.all(np.diff(buckets) >= 0) and buckets[0] == 0 and buckets[-1] == b - 1
    with pytest.raises(ValueError, match="num_buckets"):
        im.class_buckets(5, 6)


def test_bucket_losses_numpy_reference_on_a_hand_example():
    logits = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    y = np.array([0, 1, 2])
    got = im.bucket_losses(logits, y, np.array([0, 0, 1]), 2)
    l0 = math.log(3)
    l1 = math.log(math.e**2 + 2)
    l2 = math.log(2 + math.e**5) - 5
    np.testing.assert_allclose(got, [(l0 + l1) / 2, l2], rtol=4 * EPS64)


@pytest.fixture(scope="module")
def small_runs():
    prob = im.make_problem(num_classes=50, num_samples=400, dim=16, seed=0)
    kw = dict(steps=40, batch_size=32, eval_every=20, seed=3)
    return prob, {
        "sgd": im.train(prob, "sgd", [1.0, 10.0], **kw),
        "adam": im.train(prob, "adam", [0.01, 0.1], **kw),
    }


def test_compiled_bucket_losses_match_numpy_float64(small_runs):
    prob, runs = small_runs
    for run in runs.values():
        assert run.bucket_loss.shape == (2, 3, 10) and run.steps.tolist() == [0, 20, 40]
        # Zero initialization: every sample's loss is log c; float32 log-sum-exp rounds each to a
        # few eps, and the bucket's float32 sum of n_b of them errs by <= n_b eps relative.
        n_b = prob.bucket_counts()
        err = np.abs(run.bucket_loss[:, 0] - math.log(50)) / math.log(50)
        assert np.all(err <= (n_b + 8) * EPS32)
        for i in range(2):
            w = run.params["w"][i].astype(np.float64)
            b = run.params["b"][i].astype(np.float64)
            ref = im.bucket_losses(prob.x.astype(np.float64) @ w + b, prob.y, prob.buckets, 10)
            # float32 logits: |error| <= gamma_d sum_j |x_j w_jk| + |b_k| eps (Higham 3.1),
            # gamma_d = d eps / (1 - d eps). The loss lse(z) - z_y is 2-Lipschitz in max-norm, and
            # log-sum-exp's own rounding adds ~4 eps (|z|max + log c); a bucket mean adds its
            # summation error, <= n eps of the mean. Twice the sum of those is the tolerance.
            d = prob.x.shape[1]
            gamma = d * EPS32 / (1 - d * EPS32)
            zerr = gamma * (np.abs(prob.x) @ np.abs(w)).max() + EPS32 * np.abs(b).max()
            zmax = np.abs(prob.x @ w + b).max()
            tol = 2 * (2 * zerr + 4 * EPS32 * (zmax + math.log(50)))
            got = run.bucket_loss[i, -1]
            assert np.all(np.abs(got - ref) <= tol + len(prob.y) * EPS32 * np.abs(ref))
            # The overall loss is the sample-weighted mean of the buckets'.
            counts = prob.bucket_counts()
            overall = np.nansum(run.bucket_loss[i] * counts, axis=1) / counts.sum()
            np.testing.assert_allclose(run.loss[i], overall, rtol=1e-12)


def test_best_index_and_edges():
    def run(final):
        loss = np.array([[7.0, f] for f in final])
        return im.Run("sgd", np.arange(1.0, len(final) + 1), np.array([0, 1]), None, loss, {})

    assert im.best_index(run([3.0, 1.0, 2.0])) == 1 and not im.on_edge(run([3.0, 1.0, 2.0]))
    assert im.best_index(run([np.nan, 5.0, np.inf])) == 1  # diverged rates lose
    assert im.on_edge(run([1.0, 2.0, 3.0])) and im.on_edge(run([3.0, 2.0, 1.0]))
    assert not im.on_edge(run([1.0]))


def test_train_rejects_bad_arguments():
    prob = im.make_problem(num_classes=10, num_samples=20, dim=2, seed=0)
    with pytest.raises(ValueError, match="optimizer"):
        im.train(prob, "lion", [0.1], steps=10, batch_size=4, eval_every=5)
    with pytest.raises(ValueError, match="multiple"):
        im.train(prob, "sgd", [0.1], steps=10, batch_size=4, eval_every=3)
    with pytest.raises(ValueError, match="batch_size"):
        im.train(prob, "sgd", [0.1], steps=10, batch_size=21, eval_every=5)


def test_adam_beats_sgd_on_the_rarest_decile_at_matched_tuning():
    # The experiment's direction at a small size (200 classes, so pi_1 / pi_c = 200 rather than
    # the default's 1000; 600 steps): each optimizer's best rate of the same 3-point sweep shape
    # (factors of ~3 around its center). The default's size is what the 2x claim is about; the
    # command reports that ratio.
    prob = im.make_problem(num_classes=200, num_samples=2000, dim=32, seed=0)
    kw = dict(steps=600, batch_size=64, eval_every=600, seed=0)
    sgd = im.train(prob, "sgd", [3.0, 10.0, 30.0], **kw)
    adam = im.train(prob, "adam", [0.03, 0.1, 0.3], **kw)
    rare_sgd = sgd.bucket_loss[im.best_index(sgd), -1, -1]
    rare_adam = adam.bucket_loss[im.best_index(adam), -1, -1]
    assert rare_sgd > rare_adam


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--classes", "5"], "--classes"),
        (["--samples", "50", "--classes", "100"], "--samples"),
        (["--dim", "0"], "--dim"),
        (["--exponent", "-1"], "--exponent"),
        (["--steps", "100", "--eval-every", "30"], "--eval-every"),
        (["--batch-size", "0"], "--batch-size"),
        (["--batch-size", "20000"], "--batch-size"),
        (["--momentum", "1"], "--momentum"),
        (["--sgd-lrs", "1,-1"], "--sgd-lrs"),
        (["--adam-lrs", "0.1,0.1"], "--adam-lrs"),
        (["--adam-lrs", "fast"], "--adam-lrs"),
        (["--seed", "-1"], "--seed"),
        (["--steps", "ten"], "--steps"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, needle, capsys, tmp_path):
    argv = ["lab", "imbalance", *argv, "--out", str(tmp_path), "--quiet"]
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and needle in err and out == ""
    assert len(err.strip().splitlines()) == 1 or "usage" in err  # argparse adds its usage line
    assert err.strip().splitlines()[-1].count("error") == 1


def test_tiny_imbalance_run(capsys, tmp_path):
    argv = ["lab", "imbalance", "--classes", "40", "--samples", "300", "--dim", "8"]
    argv += ["--steps", "20", "--eval-every", "10", "--batch-size", "16"]
    argv += ["--sgd-lrs", "1,3", "--adam-lrs", "0.1", "--out", str(tmp_path), "--quiet"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    payload = json.loads((tmp_path / "imbalance.json").read_text())
    assert payload["steps"] == [0, 10, 20]
    assert sum(payload["bucket_samples"]) == 300 and len(payload["bucket_classes"]) == 10
    assert payload["bucket_classes"][-1] == [37, 40]
    assert payload["runs"]["sgd"]["best_lr"] in (1.0, 3.0)
    assert len(payload["runs"]["adam"]["bucket_loss"]) == 3
    assert (tmp_path / "imbalance.png").stat().st_size > 0
    last = out.strip().splitlines()[-1]
    assert last.startswith("final training loss on the rarest decile (classes 37-40")
