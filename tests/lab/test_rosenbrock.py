"""optlab.lab.rosenbrock: each optax method's first step equals its textbook update formula
(Merkulov and Ostroukhov, "Stochastic gradient descent. Adaptive methods"), and
``optlab lab rosenbrock``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from optlab.cli import main
from optlab.lab import rosenbrock as rb

X0 = np.array(rb.START, np.float64)


def _grad(p):
    x, y = p
    return np.array([-2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)])


G = _grad(X0)  # (-1606, -400) at (-2, 2)


# Textbook first steps from x0 with zero initial moments, float64 (constants as in METHODS).
def _sgd(lr):
    return X0 - lr * G


def _nesterov(lr):  # optax's Nesterov: g + mu * m_1 with m_1 = g
    return X0 - lr * (1 + 0.9) * G


def _adagrad(lr):  # G_1 = g^2; x - lr g / sqrt(G_1 + eps)
    return X0 - lr * G / np.sqrt(G**2 + 1e-8)


def _rmsprop(lr):  # v_1 = (1 - rho) g^2; x - lr g / (sqrt(v_1) + eps)
    return X0 - lr * G / (np.sqrt(0.1 * G**2) + 1e-8)


def _adadelta(lr):  # Zeiler: dx = -sqrt(E[dx^2]_0 + eps) / sqrt(E[g^2]_1 + eps) g, times lr
    return X0 - lr * np.sqrt(1e-6) / np.sqrt(0.1 * G**2 + 1e-6) * G


def _adam(lr):  # m_hat = g, v_hat = g^2 after bias correction
    return X0 - lr * G / (np.abs(G) + 1e-8)


def _adamw(lr):
    return X0 - lr * (G / (np.abs(G) + 1e-8) + 1e-2 * X0)


def _lion(lr):  # sign(beta1 m_0 + (1 - beta1) g) = sign(g)
    return X0 - lr * np.sign(G)


FIRST_STEP = {
    "sgd": _sgd,
    "momentum": _sgd,  # heavy ball: m_1 = g, the first step is plain SGD's
    "nesterov": _nesterov,
    "adagrad": _adagrad,
    "rmsprop": _rmsprop,
    "adadelta": _adadelta,
    "adam": _adam,
    "adamw": _adamw,
    "lion": _lion,
}


def test_every_optax_method_has_a_formula():
    assert set(FIRST_STEP) == set(rb.OPTAX_METHODS)


@pytest.mark.parametrize("name", rb.OPTAX_METHODS)
@pytest.mark.parametrize("lr", [0.003, 0.1])
def test_first_step_equals_the_textbook_formula(name, lr):
    path = rb.trajectory(name, learning_rate=lr, steps=1)
    np.testing.assert_array_equal(path[0], X0.astype(np.float32))
    # float32 arithmetic on O(1e3) gradients: relative error a few ulps (2^-24 ~ 6e-8) of each
    # term; 1e-5 of |x0| + |step| leaves a wide margin and still catches any wrong constant.
    expected = FIRST_STEP[name](lr)
    tol = 1e-5 * (np.abs(X0) + np.abs(expected - X0))
    assert np.all(np.abs(path[1] - expected) <= tol), (path[1], expected)


def test_muon_first_step_is_along_the_negative_gradient():
    # A 1 x 2 matrix has one singular value: U V^T = g / ||g||, and Newton-Schulz only rescales it.
    step = rb.trajectory("muon", learning_rate=0.01, steps=1)[1] - X0
    cos = step @ -G / (np.linalg.norm(step) * np.linalg.norm(G))
    assert cos > 1 - 1e-5


def test_rosenbrock_values():
    assert float(rb.rosenbrock(np.array(rb.MINIMUM))) == 0.0
    assert float(rb.rosenbrock(X0)) == pytest.approx(9 + 100 * 4)


def test_tune_picks_a_grid_rate_and_scores_divergence_as_inf():
    best, score = rb.tune("sgd", steps=50, grid=[1e-4, 1e-3, 0.1])
    assert best in (1e-4, 1e-3) and np.isinf(score[2]) and score.shape == (3,)


def test_unknown_method():
    with pytest.raises(ValueError, match="method"):
        rb.trajectory("bfgs", learning_rate=0.1, steps=1)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--methods", "sgd,bfgs"], "unknown name 'bfgs'"),
        (["--steps", "0"], "--steps"),
        (["--lr", "0"], "--lr"),
        (["--start", "1"], "--start"),
        (["--grid-min", "1", "--grid-max", "0.1"], "--grid-max"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, needle, capsys, tmp_path):
    try:
        code = main(["lab", "rosenbrock", *argv, "--out", str(tmp_path), "--quiet"])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert code == 2 and needle in err and out == ""
    assert err.startswith("optlab lab rosenbrock: error:") and err.count("\n") == 1


def test_tiny_rosenbrock_run(capsys, tmp_path):
    argv = ["lab", "rosenbrock", "--methods", "sgd,adam", "--steps", "5", "--grid-points", "3"]
    code = main([*argv, "--out", str(tmp_path), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    payload = json.loads((tmp_path / "rosenbrock.json").read_text())
    assert set(payload["methods"]) == {"sgd", "adam"}
    adam = payload["methods"]["adam"]
    assert len(adam["path"]) == 6 and adam["tuned"]["lr"] in payload["tuning_grid"]
    assert (tmp_path / "rosenbrock.png").stat().st_size > 0
    assert out.strip().splitlines()[-1].startswith("closest to the minimum")
