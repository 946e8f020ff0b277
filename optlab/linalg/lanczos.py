"""Lanczos tridiagonalization with full reorthogonalization, for one symmetric operator.

``num_iters`` steps from a unit vector ``q0`` build an orthonormal basis ``Q`` of the Krylov
space ``span{q0, A q0, ..., A^(m-1) q0}`` and the tridiagonal ``T = Q^T A Q`` (diagonal
``alphas``, off-diagonal ``betas[:-1]``). Every new vector is orthogonalized against all of
``Q``, twice ("twice is enough", Giraud et al. 2005), so no spurious copies of converged
values appear; the cost is ``O(m n)`` memory. If the Krylov space becomes invariant
(``beta ~ 0``), the iteration restarts with a fresh random vector orthogonal to ``Q`` and
``T`` becomes block diagonal. Either way ``T = Q^T A Q`` for an orthonormal ``Q``, so its
eigenvalues (Ritz values) lie in ``[lambda_min(A), lambda_max(A)]``; the extreme ones converge
to ``A``'s first.

Used by :func:`optlab.linalg.condition_estimate` (dense matrices, vmapped over a batch) and by
``optlab.lab``'s Hessian eigenvalues (Hessian-vector products).

Reference: Golub & Van Loan, "Matrix Computations", 4th ed., sec. 10.1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Lanczos(NamedTuple):
    """The basis ``Q`` (``[m, n]``, rows orthonormal) and the coefficients of ``T``."""

    basis: jax.Array
    alphas: jax.Array
    betas: jax.Array


def _unit(v: jax.Array, fallback: jax.Array) -> jax.Array:
    """v / ||v||, or ``fallback`` where v is zero (no division by zero)."""
    nrm = jnp.linalg.norm(v)
    return jnp.where(nrm > 0, v / jnp.where(nrm > 0, nrm, 1.0), fallback)


def lanczos(
    matvec: Callable[[jax.Array], jax.Array], q0: jax.Array, num_iters: int, key: jax.Array
) -> Lanczos:
    """``num_iters`` Lanczos steps of the symmetric operator ``matvec`` from unit ``q0``.

    ``key`` draws the restart vectors after a breakdown (step ``i`` uses
    ``fold_in(key, i + 1)``). Runs in ``q0``'s dtype inside one ``lax.fori_loop``.
    """
    n, dtype = q0.shape[0], q0.dtype
    # A new direction whose component outside span(Q) is below this fraction of ||A q|| is
    # rounding noise: treat the Krylov space as invariant and restart (beta = 0).
    breakdown = jnp.sqrt(jnp.finfo(dtype).eps)

    def orthogonalize(basis, w):
        w = w - basis.T @ (basis @ w)
        return w - basis.T @ (basis @ w)  # twice is enough

    def step(i, carry):
        basis, alphas, betas, q = carry
        basis = basis.at[i].set(q)
        aq = matvec(q)
        alpha = jnp.vdot(q, aq)
        w = orthogonalize(basis, aq)  # removes alpha q, beta q_prev and all rounding drift
        beta = jnp.linalg.norm(w)
        broke = beta <= breakdown * jnp.linalg.norm(aq)
        fresh = orthogonalize(basis, jax.random.normal(jax.random.fold_in(key, i + 1), (n,), dtype))
        q_next = jnp.where(
            broke, _unit(fresh, jnp.zeros((n,), dtype)), w / jnp.where(broke, 1.0, beta)
        )
        beta = jnp.where(broke, 0.0, beta)
        return basis, alphas.at[i].set(alpha), betas.at[i].set(beta), q_next

    m = num_iters
    init = (jnp.zeros((m, n), dtype), jnp.zeros((m,), dtype), jnp.zeros((m,), dtype), q0)
    basis, alphas, betas, _ = jax.lax.fori_loop(0, m, step, init)
    return Lanczos(basis, alphas, betas)


def tridiagonal(alphas: jax.Array, betas: jax.Array) -> jax.Array:
    """``T`` from :func:`lanczos`'s coefficients (``betas[-1]`` is not part of it)."""
    off = betas[:-1]
    return jnp.diag(alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)


__all__ = ["Lanczos", "lanczos", "tridiagonal"]
