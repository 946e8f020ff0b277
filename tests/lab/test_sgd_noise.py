"""optlab.lab.sgd_noise: the exact optimum, the floor's scaling with the step, and
``optlab lab sgd-noise``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from optlab.cli import main
from optlab.lab import sgd_noise as sn


@pytest.fixture(scope="module")
def problem():
    prob = sn.make_problem(m=60, n=4, mu=1.0, seed=3)
    return prob, sn.exact_optimum(prob)


def test_exact_optimum_zeroes_the_gradient_and_minimizes(problem):
    prob, w = problem
    # Newton in float64 converges quadratically: the gradient is at rounding level.
    assert np.abs(sn.full_gradient(prob, w)).max() < 1e-12

    def f(v):
        z = prob.y * (prob.a @ v)
        return np.mean(np.logaddexp(0, -z)) + 0.5 * prob.mu * v @ v

    rng = np.random.default_rng(0)
    # mu-strong convexity: f(w + d) >= f(w) + mu/2 |d|^2 at the minimizer.
    for d in rng.standard_normal((20, 4)) * 0.1:
        assert f(w + d) >= f(w) + 0.5 * prob.mu * d @ d - 1e-12


def test_full_gradient_matches_finite_differences(problem):
    prob, _ = problem
    w = np.random.default_rng(1).standard_normal(4)

    def f(v):
        return np.mean(np.logaddexp(0, -prob.y * (prob.a @ v))) + 0.5 * prob.mu * v @ v

    h = 1e-6
    fd = np.array([(f(w + h * e) - f(w - h * e)) / (2 * h) for e in np.eye(4)])
    # Central differences: O(h^2) truncation + O(eps / h) rounding ~ 1e-10.
    np.testing.assert_allclose(sn.full_gradient(prob, w), fd, atol=1e-8)


def test_floor_halves_with_the_step_and_gd_converges(problem):
    prob, w = problem
    kw = dict(steps=4000, seeds=16, record_every=100, seed=0)
    floors = [sn.noise_floor(sn.run_sgd(prob, w, lr=lr, **kw)) for lr in (0.1, 0.05)]
    # E||w - w*||^2 = alpha sigma^2 / (2 mu) (1 + O(alpha)): the ratio is 2 up to O(alpha) and
    # the Monte-Carlo error of 16 runs x 20 correlated records (~10%): accept [1.5, 2.7].
    assert 1.5 < floors[0] / floors[1] < 2.7
    assert floors[0] == pytest.approx(sn.predicted_floor(prob, w, 0.1), rel=0.4)
    gd = sn.run_sgd(prob, w, lr=0.1, full_batch=True, **{**kw, "seeds": 1})
    assert gd[-1] < 1e-10 < floors[1]  # float32 iterates: ~1e-14 is the attainable level
    dec = sn.run_sgd(prob, w, lr=0.1, schedule="decreasing", **kw)
    assert dec[-1] < floors[1] / 5


def test_bad_schedule(problem):
    prob, w = problem
    with pytest.raises(ValueError, match="schedule"):
        sn.run_sgd(prob, w, lr=0.1, steps=10, seeds=1, record_every=5, schedule="cosine")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--m", "1"], "--m"),
        (["--mu", "0"], "--mu"),
        (["--lr", "-0.1"], "--lr"),
        (["--steps", "10"], "--steps must be at least"),
        (["--seeds", "0"], "--seeds"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, needle, capsys, tmp_path):
    try:
        code = main(["lab", "sgd-noise", *argv, "--out", str(tmp_path), "--quiet"])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert code == 2 and needle in err and out == ""
    assert err.startswith("optlab lab sgd-noise: error:") and err.count("\n") == 1


def test_tiny_sgd_noise_run(capsys, tmp_path):
    argv = ["lab", "sgd-noise", "--m", "20", "--n", "3", "--steps", "40", "--seeds", "2"]
    code = main([*argv, "--record-every", "10", "--out", str(tmp_path), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    payload = json.loads((tmp_path / "sgd_noise.json").read_text())
    assert payload["steps"] == [0, 10, 20, 30, 40] and len(payload["runs"]) == 5
    assert (tmp_path / "sgd_noise.png").stat().st_size > 0
    assert out.strip().splitlines()[-1].startswith("noise floor at lr 0.1")
