"""optlab.lab.double_descent: Legendre features, minimum-norm / ridge fits against numpy, the
peak at the interpolation threshold, and ``optlab lab double-descent``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from optlab.cli import main
from optlab.lab import double_descent as dd

EPS = np.finfo(np.float64).eps


def _run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


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
    ],
)
def test_bad_input_exits_2_with_one_line(argv, needle, capsys, tmp_path):
    argv = ["lab", "double-descent", *argv, "--out", str(tmp_path), "--quiet"]
    code, out, err = _run(argv, capsys)
    assert code == 2 and needle in err and out == ""
    assert err.strip().splitlines()[-1].count("error") == 1


def test_tiny_double_descent_run(capsys, tmp_path):
    argv = ["lab", "double-descent", "--n-train", "10", "--max-degree", "20", "--trials", "2"]
    code, out, err = _run([*argv, "--out", str(tmp_path), "--quiet"], capsys)
    assert code == 0, err
    payload = json.loads((tmp_path / "double_descent.json").read_text())
    assert payload["threshold_degree"] == 9
    assert set(payload["sweeps"]) == {"min-norm", "ridge 0.1"}
    assert len(payload["sweeps"]["min-norm"]["test_mse"]) == 21
    assert (tmp_path / "double_descent.png").stat().st_size > 0
    assert out.strip().splitlines()[-1].startswith("test error at the threshold")
