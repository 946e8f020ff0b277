"""optlab.lab.sharpness against the exact Hessian (jax.hessian, flattened, np.linalg.eigh)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from optlab.lab import sharpness as sh


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


_RNG = np.random.default_rng(0)
_X, _Y = _RNG.normal(size=(32, 4)), _RNG.normal(size=(32, 1))


def _mlp_loss(p):
    """A tiny tanh MLP on fixed random data: a non-quadratic loss over a tree (n = 37).

    One function object for every test, so the solvers compile once per static config."""
    dtype = p["l1"]["w"].dtype  # the data follows the params (float32 or float64 tests)
    h = jnp.tanh(jnp.asarray(_X, dtype) @ p["l1"]["w"] + p["l1"]["b"])
    return jnp.mean((h @ p["l2"]["w"] + p["l2"]["b"] - jnp.asarray(_Y, dtype)) ** 2)


def _mlp_params(seed: int = 0):
    rng = np.random.default_rng(seed)
    params = {
        "l1": {"w": rng.normal(size=(4, 6)) / 2, "b": rng.normal(size=6) / 4},
        "l2": {"w": rng.normal(size=(6, 1)) / 2, "b": np.zeros(1)},
    }
    return jax.tree.map(jnp.asarray, params)


@functools.cache
def _mlp_hessian(seed: int) -> np.ndarray:
    """The exact float64 Hessian at _mlp_params(seed), flattened in ravel_pytree order."""
    with jax.enable_x64(True):
        return _exact_hessian(_mlp_loss, _mlp_params(seed))


def _exact_hessian(loss, params) -> np.ndarray:
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.jit(jax.hessian(lambda v: loss(unravel(v))))(flat), np.float64)


def _flat_vectors(tree) -> np.ndarray:
    """(k, n) from a tree whose leaves have a leading axis k."""
    return np.asarray(jax.vmap(lambda t: ravel_pytree(t)[0])(tree))


def _quadratic_with_spectrum(eigs, seed=0):
    """0.5 w^T A w over a two-leaf tree, A = Q diag(eigs) Q^T."""
    n = len(eigs)
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    a = jnp.asarray(q @ np.diag(eigs) @ q.T)
    params = {"a": jnp.ones(n // 2), "b": jnp.ones((n - n // 2, 1))}
    _, unravel = ravel_pytree(params)

    def loss(p):
        w = ravel_pytree(p)[0]
        return 0.5 * w @ (a @ w)

    return loss, params


def test_hvp_matches_exact_hessian(x64):
    params = _mlp_params(0)
    h = _mlp_hessian(0)
    flat, unravel = ravel_pytree(params)
    v = np.random.default_rng(1).normal(size=flat.size)
    hv = ravel_pytree(sh.hessian_vector_product(_mlp_loss, params)(unravel(jnp.asarray(v))))[0]
    np.testing.assert_allclose(np.asarray(hv), h @ v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 3])
def test_power_iteration_top_eigenvalue_on_mlp(x64, seed):
    params = _mlp_params(seed)
    evals, evecs = np.linalg.eigh(_mlp_hessian(seed))
    top = np.argmax(np.abs(evals))  # power iteration finds the dominant eigenvalue
    eig = sh.hessian_eigenvalues_power(_mlp_loss, params, k=1, max_iters=500, tol=1e-6)
    assert abs(float(eig.eigenvalues[0]) - evals[top]) / abs(evals[top]) < 1e-6
    v = _flat_vectors(eig.eigenvectors)[0]
    assert abs(v @ evecs[:, top]) > 1 - 1e-6
    assert float(eig.residual_norms[0]) <= 1e-6 * abs(float(eig.eigenvalues[0]))
    # PyHessian's tolerance: the residual test bounds the error by tol * |lambda|.
    eig = sh.hessian_eigenvalues_power(_mlp_loss, params, k=1, max_iters=500, tol=1e-3)
    assert float(eig.residual_norms[0]) <= 1e-3 * abs(float(eig.eigenvalues[0]))
    assert abs(float(eig.eigenvalues[0]) - evals[top]) / abs(evals[top]) < 1e-3


def test_power_iteration_deflation_top_k(x64):
    spectrum = np.array([10.0, -7.0, 5.0, 2.0, 1.0, 0.5, 0.1, 0.0])
    loss, params = _quadratic_with_spectrum(spectrum)
    eig = sh.hessian_eigenvalues_power(loss, params, k=3, max_iters=1000, tol=1e-8)
    np.testing.assert_allclose(np.asarray(eig.eigenvalues), [10.0, -7.0, 5.0], rtol=1e-6)
    v = _flat_vectors(eig.eigenvectors)
    np.testing.assert_allclose(v @ v.T, np.eye(3), atol=1e-6)
    assert eig.eigenvectors["b"].shape == (3, 4, 1)


@pytest.mark.parametrize("seed", [0, 1])
def test_lanczos_top_k_on_mlp_in_float32(seed):
    params = jax.tree.map(lambda x: x.astype(jnp.float32), _mlp_params(seed))
    evals, evecs = np.linalg.eigh(_mlp_hessian(seed))
    eig = sh.hessian_eigenvalues_lanczos(_mlp_loss, params, k=3, num_iters=30)
    assert eig.eigenvalues.dtype == jnp.float32
    want = evals[::-1][:3]
    assert abs(float(eig.eigenvalues[0]) - want[0]) / abs(want[0]) < 1e-5
    np.testing.assert_allclose(np.asarray(eig.eigenvalues), want, rtol=1e-4)
    v = _flat_vectors(eig.eigenvectors)
    assert abs(v[0] @ evecs[:, -1]) > 1 - 1e-4
    assert np.all(np.asarray(eig.residual_norms) < 1e-3 * abs(want[0]))


def test_lanczos_returns_top_algebraic_and_survives_repeated_eigenvalues(x64):
    # Krylov space of dimension 3 (three distinct eigenvalues): Lanczos breaks down and restarts.
    d = jnp.array([4.0, 4.0, 4.0, 1.0, 1.0, -9.0, -9.0, 0.0])

    def loss(w):
        return 0.5 * jnp.sum(d * w**2)

    eig = sh.hessian_eigenvalues_lanczos(loss, jnp.zeros(8), k=4, num_iters=8)
    assert np.all(np.isfinite(np.asarray(eig.eigenvalues)))
    np.testing.assert_allclose(np.asarray(eig.eigenvalues), [4.0, 4.0, 4.0, 1.0], atol=1e-8)


def test_hutchinson_is_exact_for_a_diagonal_hessian(x64):
    d = jnp.array([3.0, -1.0, 0.5, 2.0, 7.0])

    def loss(p):
        return 0.5 * jnp.sum(d * p["w"] ** 2) + jnp.sum(p["c"] ** 3)

    params = {"w": jnp.ones(5), "c": jnp.array([1.0, -2.0])}  # H_c = diag(6 c)
    est = sh.hessian_trace(loss, params, num_samples=7, key=jax.random.key(3))
    np.testing.assert_allclose(float(est.trace), float(jnp.sum(d)) + 6 * (1 - 2), rtol=1e-12)
    assert float(est.stderr) == pytest.approx(0.0, abs=1e-12)


def test_hutchinson_dense_within_statistical_tolerance(x64):
    h = _mlp_hessian(0)
    est = sh.hessian_trace(_mlp_loss, _mlp_params(0), num_samples=2000, key=jax.random.key(0))
    # Var[z^T H z] = 2 sum_{i != j} H_ij^2 for Rademacher z.
    sd = np.sqrt(2 * (np.sum(h**2) - np.sum(np.diag(h) ** 2)) / 2000)
    assert abs(float(est.trace) - np.trace(h)) < 4 * sd
    assert float(est.stderr) == pytest.approx(sd, rel=0.2)
    assert est.num_samples == 2000


def test_inside_user_jit_and_no_retrace_for_same_loss_fn():
    x = jnp.linspace(-1.0, 1.0, 16)
    traces = []

    def loss_with(batch):
        def loss(w):
            traces.append(1)
            return jnp.mean((jnp.sin(w[0] * batch) * w[1] - batch) ** 2)

        return loss

    @jax.jit
    def sharpness(w, batch):
        return sh.hessian_trace(loss_with(batch), w, num_samples=3).trace

    w = jnp.array([0.5, 1.5])
    a = sharpness(w, x)
    n_traces = len(traces)
    b = sharpness(w, 2 * x)
    assert len(traces) == n_traces  # compiled once
    assert a.shape == b.shape == () and float(a) != float(b)

    fixed = loss_with(x)
    sh.hessian_trace(fixed, w, num_samples=3)
    n_traces = len(traces)
    sh.hessian_trace(fixed, w + 1.0, num_samples=3)
    assert len(traces) == n_traces  # same loss_fn object: the cached program is reused


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda f, p: sh.hessian_eigenvalues_power(f, p, k=0), "k"),
        (lambda f, p: sh.hessian_eigenvalues_power(f, p, k=4), "k"),
        (lambda f, p: sh.hessian_eigenvalues_power(f, p, max_iters=0), "max_iters"),
        (lambda f, p: sh.hessian_eigenvalues_power(f, p, tol=-1.0), "tol"),
        (lambda f, p: sh.hessian_eigenvalues_lanczos(f, p, num_iters=0), "num_iters"),
        (lambda f, p: sh.hessian_eigenvalues_lanczos(f, p, k=3, num_iters=2), "k"),
        (lambda f, p: sh.hessian_trace(f, p, num_samples=0), "num_samples"),
    ],
)
def test_bad_arguments_raise(call, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        call(lambda w: jnp.sum(w**2), jnp.ones(3))
