"""optlab.linalg.lanczos against float64 NumPy: T = Q^T A Q with orthonormal Q.

Tolerances: Gram-Schmidt applied twice keeps the float32 basis orthonormal to ``O(n u)``
entrywise (Giraud et al. 2005), and every computed coefficient of ``T`` is an inner product of
length ``n`` with error ``<= n u ||A||_2``; 4x those first-order bounds is allowed.
"""

import jax
import jax.numpy as jnp
import numpy as np

from optlab.linalg.lanczos import lanczos, tridiagonal
from tests.linalg.error_bounds import U32


def _run(a, m, seed=0):
    q0 = np.random.default_rng(seed).standard_normal(a.shape[0])
    q0 = jnp.asarray(q0 / np.linalg.norm(q0), jnp.float32)
    a32 = jnp.asarray(a, jnp.float32)
    res = jax.jit(lambda q: lanczos(lambda v: a32 @ v, q, m, jax.random.key(1)))(q0)
    return (
        np.asarray(res.basis, np.float64),
        np.asarray(tridiagonal(res.alphas, res.betas), np.float64),
    )


def test_tridiagonal_is_the_projection_on_an_orthonormal_basis():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((40, 40))
    a = (g + g.T) / 2
    q, t = _run(a, 12)
    n, norm = 40, np.linalg.norm(a, 2)
    np.testing.assert_allclose(q @ q.T, np.eye(12), atol=4 * n * U32)
    np.testing.assert_allclose(q @ a @ q.T, t, atol=4 * n * U32 * norm)
    # Ritz values lie inside the spectrum; the extreme ones are close to it after 12 steps
    # (a convergence property: 5% is far from round-off).
    w, theta = np.linalg.eigvalsh(a), np.linalg.eigvalsh(t)
    tol = 4 * n * U32 * norm
    assert w[0] - tol <= theta[0] and theta[-1] <= w[-1] + tol
    assert abs(theta[-1] - w[-1]) < 0.05 * abs(w[-1])


def test_invariant_subspace_restarts_and_keeps_the_basis_orthonormal():
    # A has 3 distinct eigenvalues: the Krylov space is invariant after 3 steps.
    a = np.diag(np.repeat([1.0, 2.0, 5.0], 4))
    q, t = _run(a, 8)
    n, norm = 12, 5.0
    np.testing.assert_allclose(q @ q.T, np.eye(8), atol=4 * n * U32)
    np.testing.assert_allclose(q @ a @ q.T, t, atol=4 * n * U32 * norm)
    # The restart set beta to exactly 0: round-off (~u ||A||) is far below the breakdown test
    # (sqrt(u) ||A q||), so the breakdown is detected on any CPU.
    assert abs(t[2, 3]) == 0.0  # the restart made T block diagonal
    np.testing.assert_allclose(np.linalg.eigvalsh(t)[[0, -1]], [1.0, 5.0], atol=4 * n * U32 * norm)
