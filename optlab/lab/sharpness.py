"""Sharpness measures from Hessian-vector products: top eigenvalues and trace.

For a scalar loss L over a parameter pytree w (flattened to a vector of n entries), the
Hessian H = d^2 L / dw^2 is never formed. Everything is built on the Hessian-vector product

    H v = d/dt grad L(w + t v) |_{t=0}       (forward-over-reverse: jax.jvp of jax.grad),

which costs about two gradient evaluations. Inside the iterative solvers the product is
``jax.linearize``-d once, so the primal forward/backward pass is shared by every iteration
and each iteration pays only the tangent pass.

* Power iteration (PyHessian's ``eigenvalues``): v <- H v / ||H v||, Rayleigh quotient
  lambda = v^T H v. It converges to the eigenvalue of largest magnitude at rate
  |lambda_2 / lambda_1| per step. The k-th pair is found on the deflated operator P H P,
  P = I - V V^T (V: the pairs found so far). It stops when the residual
  ||H v - lambda v|| <= tol * |lambda|, which guarantees an eigenvalue of H within
  tol * |lambda| of the estimate (for symmetric H, some eigenvalue lies within the residual
  norm of any Rayleigh quotient), and the eigenvalue error is then ~ residual^2 / gap.
* Lanczos with full reorthogonalization: m steps build an orthonormal basis Q of the Krylov
  space span{q, Hq, ..., H^(m-1) q} and the tridiagonal T = Q^T H Q; the extreme
  eigenvalues of T (Ritz values) converge to H's much faster than power iteration (about
  sqrt(condition) times fewer steps). The iteration is :func:`optlab.linalg.lanczos.lanczos`
  (full reorthogonalization, twice; restart with a fresh random vector orthogonal to Q when
  the Krylov space becomes invariant); the cost is O(m n) memory.
  The returned residuals ||H y - theta y|| are computed with k extra products: the classic
  free estimate |beta_m s_m| drops below the rounding floor the computed vectors can reach.
* Hutchinson's trace estimator: for Rademacher z (entries +-1 with probability 1/2),
  E[z^T H z] = tr(H) and Var[z^T H z] = 2 sum_{i != j} H_ij^2, so the sample mean over N
  vectors has standard error sqrt(Var / N) (reported from the samples, Welford's update).
  For a diagonal H every sample is exact.

All loops are ``jax.lax`` loops inside one ``jax.jit`` (``loss_fn`` is a static argument:
reuse the same function object to reuse the compiled program, or call these functions from
inside your own ``jax.jit``). Computations run in the parameters' dtype promoted to at
least float32.

References:
  - Yao, Gholami, Keutzer, Mahoney, "PyHessian: Neural Networks Through the Lens of the
    Hessian", IEEE BigData 2020, arXiv:1912.07145.
  - Lanczos, "An iteration method for the solution of the eigenvalue problem of linear
    differential and integral operators", J. Res. Nat. Bur. Standards 45 (1950).
  - Golub & Van Loan, "Matrix Computations", 4th ed., sec. 10.1 (Lanczos, reorthogonalization).
  - Hutchinson, "A stochastic estimator of the trace of the influence matrix for Laplacian
    smoothing splines", Commun. Stat. Simul. Comput. 19 (1990).
  - Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation 6 (1994).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from optlab._src import tree as _tree
from optlab.linalg import _lapack
from optlab.linalg.lanczos import _unit, lanczos, tridiagonal

Params = Any
LossFn = Callable[[Params], jax.Array]

__all__ = [
    "HessianEigen",
    "TraceEstimate",
    "hessian_eigenvalues_lanczos",
    "hessian_eigenvalues_power",
    "hessian_trace",
    "hessian_vector_product",
]


class HessianEigen(NamedTuple):
    """Eigenpairs of the Hessian.

    Attributes:
      eigenvalues: shape (k,), in the order found (power: by decreasing magnitude;
        Lanczos: decreasing).
      eigenvectors: a tree like the parameters whose leaves have a leading axis of size k;
        ``jax.tree.map(lambda x: x[i], eigenvectors)`` is the i-th unit-norm eigenvector.
      residual_norms: shape (k,), ||H v - lambda v|| of each returned pair, computed with
        Hessian-vector products (for symmetric H an exact eigenvalue lies within it).
      num_iters: shape (k,), Hessian-vector products spent on each pair (Lanczos: the total,
        steps + k residual checks, repeated).
    """

    eigenvalues: jax.Array
    eigenvectors: Params
    residual_norms: jax.Array
    num_iters: jax.Array


class TraceEstimate(NamedTuple):
    """Hutchinson's estimate of tr(H): the sample mean and its standard error."""

    trace: jax.Array
    stderr: jax.Array
    num_samples: int


def hessian_vector_product(loss_fn: LossFn, params: Params) -> Callable[[Params], Params]:
    """The map v -> H v for the Hessian of ``loss_fn`` at ``params`` (jvp of grad).

    Args:
      loss_fn: ``params -> scalar``; close over the batch.
      params: the point w where H = d^2 loss_fn / dw^2 is taken.

    Returns:
      ``hvp(v)``, ``v`` a tree like ``params``; the result is a tree like ``params``.

    Example:
      >>> import jax.numpy as jnp
      >>> hvp = hessian_vector_product(lambda w: jnp.sum(w ** 3), jnp.array([1.0, 2.0]))
      >>> hvp(jnp.array([1.0, 1.0])).tolist()    # H = diag(6 w)
      [6.0, 12.0]
    """
    grad_fn = jax.grad(loss_fn)

    def hvp(vector: Params) -> Params:
        tangent = jax.tree.map(lambda v, w: jnp.asarray(v, jnp.asarray(w).dtype), vector, params)
        return jax.jvp(grad_fn, (params,), (tangent,))[1]

    return hvp


def _flat_operator(loss_fn: LossFn, params: Params):
    """(n, compute dtype, flat H-matvec, unravel) with the primal pass linearized once."""
    flat, unravel = ravel_pytree(params)
    dtype = _tree.compute_dtype(flat.dtype)

    def flat_grad(x: jax.Array) -> jax.Array:
        return ravel_pytree(jax.grad(loss_fn)(unravel(x)))[0]

    _, lin = jax.linearize(flat_grad, flat)

    def matvec(v: jax.Array) -> jax.Array:
        return lin(v.astype(flat.dtype)).astype(dtype)

    return flat.size, dtype, matvec, unravel


def _default_key(key: jax.Array | None) -> jax.Array:
    return jax.random.key(0) if key is None else key


@functools.partial(jax.jit, static_argnums=0, static_argnames=("k", "max_iters"))
def _power(loss_fn, params, key, tol, *, k: int, max_iters: int):
    n, dtype, matvec, unravel = _flat_operator(loss_fn, params)

    def one_pair(i, carry):
        vecs, lams, res, its = carry

        def deflate(v):
            # Rows of `vecs` not found yet are zero, so they project nothing out.
            return v - vecs.T @ (vecs @ v)

        def rayleigh(v):
            w = deflate(matvec(v))
            lam = jnp.vdot(v, w)
            return w, lam, jnp.linalg.norm(w - lam * v)

        v0 = jax.random.normal(jax.random.fold_in(key, i), (n,), dtype)
        v = _unit(deflate(v0), jnp.zeros((n,), dtype))
        w, lam, r = rayleigh(v)

        def cond(s):
            _, _, lam, r, it = s
            return (it < max_iters) & (r > tol * jnp.abs(lam))

        def body(s):
            v, w, _, _, it = s
            v = _unit(deflate(w), v)  # re-deflate: rounding leaks found directions back in
            w, lam, r = rayleigh(v)
            return v, w, lam, r, it + 1

        v, _, lam, r, it = jax.lax.while_loop(cond, body, (v, w, lam, r, jnp.int32(1)))
        return (vecs.at[i].set(v), lams.at[i].set(lam), res.at[i].set(r), its.at[i].set(it))

    init = (
        jnp.zeros((k, n), dtype),
        jnp.zeros((k,), dtype),
        jnp.zeros((k,), dtype),
        jnp.zeros((k,), jnp.int32),
    )
    vecs, lams, res, its = jax.lax.fori_loop(0, k, one_pair, init)
    return HessianEigen(lams, jax.vmap(unravel)(vecs), res, its)


def _check_k(k: int, n: int, name: str) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= n:
        raise ValueError(
            f"{name}: `k` must be an int in [1, number of parameters = {n}], got {k!r}."
        )


def _num_params(params: Params) -> int:
    return sum(int(jnp.size(x)) for x in jax.tree.leaves(params))


def hessian_eigenvalues_power(
    loss_fn: LossFn,
    params: Params,
    k: int = 1,
    *,
    max_iters: int = 100,
    tol: float = 1e-3,
    key: jax.Array | None = None,
) -> HessianEigen:
    """The k largest-magnitude Hessian eigenpairs by power iteration with deflation.

    For each pair i = 1..k: start from a random unit v orthogonal to the pairs found,
    iterate v <- P H v / ||P H v|| (P = I - V V^T), lambda = v^T P H v, until
    ``||P H v - lambda v|| <= tol |lambda|`` or ``max_iters`` products (PyHessian's defaults:
    100 iterations, tolerance 1e-3). Near a minimum the top of the spectrum is positive and
    dominates, so eigenvalues[0] is the sharpness lambda_max; with a large negative
    eigenvalue, power iteration returns that one first (use Lanczos for the top algebraic).

    Args:
      loss_fn: ``params -> scalar``; close over the batch.
      params: the point where the Hessian is taken.
      k: number of pairs, small (each one is a separate power iteration).
      max_iters: Hessian-vector products per pair, at most.
      tol: relative residual tolerance.
      key: PRNG key for the start vectors (default ``jax.random.key(0)``).

    Returns:
      A :class:`HessianEigen`; check ``residual_norms`` for pairs that hit ``max_iters``.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = lambda w: 0.5 * (3.0 * w["a"][0] ** 2 + w["a"][1] ** 2) + w["b"] ** 2
      >>> eig = hessian_eigenvalues_power(loss, {"a": jnp.ones(2), "b": jnp.ones(())}, k=2,
      ...                                 tol=1e-6)
      >>> [round(x, 4) for x in eig.eigenvalues.tolist()]
      [3.0, 2.0]
    """
    n = _num_params(params)
    _check_k(k, n, "hessian_eigenvalues_power")
    if not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(
            f"hessian_eigenvalues_power: `max_iters` must be an int >= 1, got {max_iters!r}."
        )
    if not tol >= 0:
        raise ValueError(f"hessian_eigenvalues_power: `tol` must be >= 0, got {tol!r}.")
    return _power(
        loss_fn, params, _default_key(key), jnp.asarray(tol, jnp.float32), k=k, max_iters=max_iters
    )


@functools.partial(jax.jit, static_argnums=0, static_argnames=("k", "num_iters"))
def _lanczos(loss_fn, params, key, *, k: int, num_iters: int):
    n, dtype, matvec, unravel = _flat_operator(loss_fn, params)
    m = num_iters
    q0 = _unit(
        jax.random.normal(jax.random.fold_in(key, 0), (n,), dtype),
        jnp.ones((n,), dtype) / jnp.sqrt(n),
    )
    basis, alphas, betas = lanczos(matvec, q0, m, key)
    tri = tridiagonal(alphas, betas)
    theta, s = _lapack.eigh(tri)  # ascending; on CPU in NumPy's LAPACK on the host
    idx = jnp.arange(m - 1, m - 1 - k, -1)
    vecs = s[:, idx].T @ basis
    lams = theta[idx]
    # The true residuals, at k more products: the classic estimate |beta_m s_m| keeps falling
    # below the rounding floor (~eps ||H||) that the computed Ritz vectors actually reach.
    hv = jax.lax.map(matvec, vecs)
    res = jnp.linalg.norm(hv - lams[:, None] * vecs, axis=1)
    return HessianEigen(lams, jax.vmap(unravel)(vecs), res, jnp.full((k,), m + k, jnp.int32))


def hessian_eigenvalues_lanczos(
    loss_fn: LossFn,
    params: Params,
    k: int = 1,
    *,
    num_iters: int = 30,
    key: jax.Array | None = None,
) -> HessianEigen:
    """The k largest (algebraic) Hessian eigenpairs by Lanczos with full reorthogonalization.

    Runs ``min(num_iters, n)`` Lanczos steps (one Hessian-vector product each) from a random
    unit vector, then returns the k largest Ritz values of the tridiagonal T = Q^T H Q with
    Ritz vectors Q^T s, and their residual norms (k more products). Memory is
    ``num_iters * n`` numbers for the basis; keep ``k`` well below ``num_iters`` (extreme Ritz
    values converge first).

    Args:
      loss_fn: ``params -> scalar``; close over the batch.
      params: the point where the Hessian is taken.
      k: number of pairs, 1 <= k <= min(num_iters, n).
      num_iters: Lanczos steps (Krylov dimension); clipped to n.
      key: PRNG key for the start vector (default ``jax.random.key(0)``).

    Returns:
      A :class:`HessianEigen` with eigenvalues in decreasing order.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = lambda w: 0.5 * jnp.sum(jnp.arange(1.0, 6.0) * w ** 2)   # H = diag(1..5)
      >>> eig = hessian_eigenvalues_lanczos(loss, jnp.zeros(5), k=2)
      >>> [round(x, 4) for x in eig.eigenvalues.tolist()]
      [5.0, 4.0]
    """
    n = _num_params(params)
    if not isinstance(num_iters, int) or isinstance(num_iters, bool) or num_iters < 1:
        raise ValueError(
            f"hessian_eigenvalues_lanczos: `num_iters` must be an int >= 1, got {num_iters!r}."
        )
    m = min(num_iters, n)
    _check_k(k, m, "hessian_eigenvalues_lanczos")
    return _lanczos(loss_fn, params, _default_key(key), k=k, num_iters=m)


@functools.partial(jax.jit, static_argnums=0, static_argnames=("num_samples",))
def _hutchinson(loss_fn, params, key, *, num_samples: int):
    n, dtype, matvec, _ = _flat_operator(loss_fn, params)

    def body(i, carry):
        count, mean, m2 = carry
        z = jax.random.rademacher(jax.random.fold_in(key, i), (n,), dtype)
        x = jnp.vdot(z, matvec(z))
        # Welford's update: no catastrophic cancellation in the variance.
        count = count + 1
        delta = x - mean
        mean = mean + delta / count
        return count, mean, m2 + delta * (x - mean)

    zero = jnp.zeros((), dtype)
    count, mean, m2 = jax.lax.fori_loop(0, num_samples, body, (zero, zero, zero))
    var = m2 / jnp.maximum(count - 1, 1)
    return mean, jnp.sqrt(var / count)


def hessian_trace(
    loss_fn: LossFn,
    params: Params,
    *,
    num_samples: int = 100,
    key: jax.Array | None = None,
) -> TraceEstimate:
    """Hutchinson's estimate of tr(H) = mean over Rademacher z of z^T H z.

    Args:
      loss_fn: ``params -> scalar``; close over the batch.
      params: the point where the Hessian is taken.
      num_samples: number of Rademacher vectors (one Hessian-vector product each).
      key: PRNG key (default ``jax.random.key(0)``).

    Returns:
      A :class:`TraceEstimate` (trace, stderr, num_samples); the true trace lies within
      about 2 stderr with ~95% probability for a reasonable number of samples.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = lambda w: 0.5 * jnp.sum(jnp.arange(1.0, 6.0) * w ** 2)   # tr H = 15
      >>> round(float(hessian_trace(loss, jnp.zeros(5), num_samples=10).trace), 4)
      15.0
    """
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"hessian_trace: `num_samples` must be an int >= 1, got {num_samples!r}.")
    trace, stderr = _hutchinson(loss_fn, params, _default_key(key), num_samples=num_samples)
    return TraceEstimate(trace, stderr, num_samples)
