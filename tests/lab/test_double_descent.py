"""optlab.lab.double_descent: Legendre features, minimum-norm / ridge fits against numpy, the
peak at the interpolation threshold, and ``optlab lab double-descent``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from optlab.lab import double_descent as dd
from tests.cli_run import run_cli

EPS = np.finfo(np.float64).eps


def test_legendre_features_match_numpy_legvander():
    t = np.random.default_rng(0).uniform(-1, 1, 50)
    ours, ref = dd.legendre_features(t, 40), np.polynomial.legendre.legvander(t, 40)
    # |P_k| <= 1 on [-1, 1] and the recursion is stable there: errors of a few ulps per step.
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e3 * EPS)
    assert dd.legendre_features(t, 0).shape == (50, 1)
    with pytest.raises(ValueError, match="degree"):
        dd.legendre_features(t, -1)


@pytest.mark.parametrize("degree", [4, 11, 30])  # fewer, as many, more features than samples
def test_min_norm_fit_matches_numpy_lstsq(degree):
    rng = np.random.default_rng(1)
    t = np.linspace(-1, 1, 12)
    phi, y = dd.legendre_features(t, degree), rng.standard_normal(12)
    ours = dd.min_norm_fit(phi, y)
    ref = np.linalg.lstsq(phi, y, rcond=None)[0]
    s = np.linalg.svd(phi, compute_uv=False)
    # Backward-stable solvers of the same problem agree to ~cond(Phi) * eps relative.
    tol = 100 * (s[0] / s[-1]) * EPS * np.linalg.norm(ref)
    assert np.linalg.norm(ours - ref) <= tol
    if degree + 1 >= 12:  # interpolation and the minimum-norm formula Phi^T (Phi Phi^T)^-1 y
        np.testing.assert_allclose(phi @ ours, y, atol=1e3 * (s[0] / s[-1]) * EPS)
        if degree + 1 > 12:
            w = phi.T @ np.linalg.solve(phi @ phi.T, y)
            assert np.linalg.norm(ours - w) <= 100 * (s[0] / s[-1]) ** 2 * EPS * np.linalg.norm(w)


def test_ridge_fit_solves_the_normal_equations():
    rng = np.random.default_rng(2)
    phi, y = dd.legendre_features(rng.uniform(-1, 1, 15), 25), rng.standard_normal(15)
    lam = 0.3
    ref = np.linalg.solve(phi.T @ phi + lam * np.eye(26), phi.T @ y)
    # phi^T phi + lam I has condition <= (s_max^2 + lam) / lam: well conditioned here.
    np.testing.assert_allclose(dd.min_norm_fit(phi, y, ridge=lam), ref, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="ridge"):
        dd.min_norm_fit(phi, y, ridge=-1.0)


def test_peak_at_the_threshold_and_ridge_removes_it():
    kw = dict(n_train=20, degrees=range(60), noise=0.2, trials=5, seed=0)
    below, above = dd.peak_ratio(dd.degree_sweep(**kw))
    assert below >= 10 and above >= 10
    r_below, r_above = dd.peak_ratio(dd.degree_sweep(**kw, ridge=0.1))
    # With the ridge the threshold is no worse than twice the best larger model.
    assert r_above <= 2 and r_below < below / 1e3


def test_degree_sweep_rejects_unknown_design():
    with pytest.raises(ValueError, match="design"):
        dd.degree_sweep(n_train=5, degrees=[1], noise=0.1, trials=1, seed=0, design="grid")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--n-train", "1"], "--n-train"),
        (["--max-degree", "10"], "--max-degree"),
        (["--ridge", "0"], "--ridge"),
        (["--noise", "-1"], "--noise"),
        (["--trials", "0"], "--trials"),
        (["--design", "grid"], "invalid choice"),
        (["--mlp-train", "5"], "--mlp-train"),
        (["--mlp-train", "1700"], "--mlp-train"),
        (["--mlp-noise", "0.95"], "--mlp-noise"),
        (["--mlp-steps", "0"], "--mlp-steps"),
        (["--mlp-trials", "21"], "--mlp-trials"),
        (["--mlp-lr", "0"], "--mlp-lr"),
        (["--mlp-widths", "4,0"], "--mlp-widths"),
        (["--mlp-widths", "4,4"], "--mlp-widths"),
        (["--mlp-widths", "wide"], "--mlp-widths"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, needle, capsys, tmp_path):
    argv = ["lab", "double-descent", *argv, "--out", str(tmp_path), "--quiet"]
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and needle in err and out == ""
    assert err.strip().splitlines()[-1].count("error") == 1


def test_tiny_double_descent_run(capsys, tmp_path):
    argv = ["lab", "double-descent", "--n-train", "10", "--max-degree", "20", "--trials", "2"]
    argv += ["--no-mlp"]
    code, out, err = run_cli([*argv, "--out", str(tmp_path), "--quiet"], capsys)
    assert code == 0, err
    payload = json.loads((tmp_path / "double_descent.json").read_text())
    assert payload["threshold_degree"] == 9
    assert set(payload["sweeps"]) == {"min-norm", "ridge 0.1"}
    assert len(payload["sweeps"]["min-norm"]["test_mse"]) == 21
    assert (tmp_path / "double_descent.png").stat().st_size > 0
    assert out.strip().splitlines()[-1].startswith("test error at the threshold")
    assert payload["mlp"] is None and "double_descent_mlp.png" not in payload["plots"]


# -- part (b): the MLP width sweep on the digits -----------------------------------------------


@pytest.mark.parametrize("n_train, noise", [(500, 0.2), (333, 0.15), (100, 0.0), (1500, 0.9)])
def test_label_noise_changes_exactly_the_stated_fraction(n_train, noise):
    split = dd.digits_label_noise(n_train=n_train, noise=noise, seed=4)
    k = round(noise * n_train)
    assert split.flipped.sum() == k
    # Exactly the flipped labels differ from the originals, and each flip is to another class.
    np.testing.assert_array_equal(split.y_train != split.y_train_clean, split.flipped)
    assert split.x_train.shape == (n_train, 64) and len(split.y_test) == 1797 - n_train
    # Train and test are a partition of the 1797 digits (as a multiset of (pixels, label) rows).
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    # Pixels are integers 0..16, so x / 16 in float32 times 16 is exact.
    ours = np.c_[
        np.vstack([split.x_train, split.x_test]).astype(np.float64) * 16,
        np.r_[split.y_train_clean, split.y_test],
    ]
    ref = np.c_[x, y].astype(np.float64)

    def rows_sorted(a):
        return a[np.lexsort(a.T[::-1])]

    np.testing.assert_array_equal(rows_sorted(ours), rows_sorted(ref))


def test_label_noise_moves_labels_uniformly_to_the_other_classes():
    split = dd.digits_label_noise(n_train=1500, noise=0.9, seed=0)
    off = (split.y_train - split.y_train_clean)[split.flipped] % 10
    counts = np.bincount(off, minlength=10)
    assert counts[0] == 0  # never the same class
    # 1350 offsets uniform on 1..9: binomial sd sqrt(1350 (1/9)(8/9)) = 11.5; allow 5 sd.
    assert np.all(np.abs(counts[1:] - 150) <= 5 * 11.55)
    with pytest.raises(ValueError, match="noise"):
        dd.digits_label_noise(n_train=10, noise=1.5, seed=0)
    with pytest.raises(ValueError, match="n_train"):
        dd.digits_label_noise(n_train=1797, noise=0.1, seed=0)


@pytest.mark.parametrize("width", [1, 7, 256])
def test_parameter_count_matches_the_formula_and_a_flax_mlp(width):
    from flax import nnx

    from optlab.models import MLP

    model = MLP(64, 10, hidden=(width,), rngs=nnx.Rngs(0))
    n = sum(p.size for p in jax_leaves(nnx.state(model, nnx.Param)))
    assert dd.mlp_param_count(width) == n == 64 * width + width + width * 10 + 10
    # The n K threshold width solves (d_in + 1) w + (w + 1) K = n K.
    w = dd.threshold_width(500)
    assert (64 + 1) * w + (w + 1) * 10 == pytest.approx(5000, rel=1e-12)


def jax_leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


def test_padded_training_equals_unpadded():
    # A width-3 network trained inside a program padded to 16 hidden units (masked) is the
    # width-3 network: zero-masked units get zero gradients and Adam leaves them alone. The
    # only difference is float32 summation order over the (exactly zero) padded terms, so the
    # results agree to float32 rounding accumulated over 30 steps (allow 1e-4 relative).
    import jax
    import jax.numpy as jnp

    split = dd.digits_label_noise(n_train=60, noise=0.2, seed=0)
    data = [
        jnp.asarray(getattr(split, f))[None] for f in ("x_train", "y_train", "x_test", "y_test")
    ]
    keys = jax.random.split(jax.random.key(0), 1)
    lr = jnp.float32(3e-3)
    alone = dd._train_mlps(*data, keys, lr, jnp.asarray([3]), pad=3, steps=30)
    padded = dd._train_mlps(*data, keys, lr, jnp.asarray([3, 16]), pad=16, steps=30)
    np.testing.assert_allclose(np.asarray(padded)[2:, 0], np.asarray(alone)[2:, 0], rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(padded)[:2, 0], np.asarray(alone)[:2, 0])


def test_width_groups_cover_every_width_once():
    widths = np.array([256, 1, 16, 2, 64, 128, 4, 8, 1024])
    groups = dd._groups(widths)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(widths)))
    for g in groups:  # padding stays within twice the real units (or the small-width floor)
        w = widths[g]
        assert len(w) * w.max() <= max(2 * w.sum(), 512)


def test_peak_summary():
    def sweep(train, test):
        n = len(train)
        return dd.WidthSweep(
            np.array([1, 2, 4, 8, 16, 32, 64][:n]),
            np.zeros(n, int),
            100,
            0.2,
            np.asarray(train, float)[:, None],
            np.asarray(test, float)[:, None],
            np.zeros((n, 1)),
            np.zeros((n, 1)),
        )

    s = sweep([0.5, 0.3, 0.1, 0.0, 0.0, 0.0, 0.0], [0.6, 0.3, 0.4, 0.45, 0.35, 0.3, 0.2])
    pk = s.peak()
    assert pk["interpolation_width"] == 8 and pk["peak_width"] == 8
    assert pk["best_below"] == 0.3 and pk["best_below_width"] == 2
    assert pk["best_above"] == 0.2 and pk["best_above_width"] == 64 and pk["shows"]
    flat = sweep([0.5, 0.3, 0.1, 0.0, 0.0, 0.0, 0.0], [0.6, 0.3, 0.25, 0.2, 0.2, 0.2, 0.2])
    assert not flat.peak()["shows"]
    assert sweep([0.5, 0.4], [0.6, 0.5]).peak() == {"interpolation_width": None, "shows": False}


def test_tiny_width_sweep_learns():
    sw = dd.width_sweep([2, 32], n_train=300, noise=0.0, steps=300, trials=2, seed=0)
    assert sw.test_error_trials.shape == (2, 2) and sw.params.tolist() == [160, 2410]
    # Clean labels, 300 steps of Adam: the width-32 net fits far better than chance (0.9).
    assert sw.train_error[1] < 0.1 and sw.test_error[1] < 0.3
    assert sw.train_loss[1] < sw.train_loss[0]


def test_tiny_double_descent_run_with_the_mlp(capsys, tmp_path):
    argv = ["lab", "double-descent", "--n-train", "10", "--max-degree", "20", "--trials", "1"]
    argv += ["--mlp-widths", "2,8", "--mlp-steps", "10", "--mlp-trials", "1", "--mlp-train", "100"]
    code, out, err = run_cli([*argv, "--out", str(tmp_path), "--quiet"], capsys)
    assert code == 0, err
    payload = json.loads((tmp_path / "double_descent.json").read_text())
    mlp = payload["mlp"]
    assert mlp["widths"] == [2, 8] and mlp["params"] == [160, 610] and mlp["n_train"] == 100
    assert payload["settings"]["mlp_noise"] == 0.2  # the quick preset filled in
    assert (tmp_path / "double_descent_mlp.png").stat().st_size > 0
    assert out.strip().splitlines()[-1].startswith("MLP")
