"""Inverse p-th roots of symmetric PSD matrices (Shampoo's and K-FAC's kernel), batched.

``inverse_root(a, p)`` returns ``(a + r I)^{-1/p}`` for ``a`` of shape ``[..., d, d]`` and any
integer ``p >= 1`` (optax's own kernel is exact only for p in {1, 2, 4, 8}). The ridge is

    r = eps * lambda_max(a) + eps_floor

(relative to the largest eigenvalue, with an absolute floor so the zero matrix has a root).

Methods:

``"eigh"``
    ``V diag((w + r)^{-1/p}) V^T`` from LAPACK's float32 ``eigh`` (eigenvalues clipped at 0 first:
    round-off makes those of a rank-deficient matrix slightly negative). Most accurate; on CPU
    also the fastest (LAPACK's divide and conquer). On CPU LAPACK runs on the host
    (:mod:`optlab.linalg._lapack`: the ``syevd`` jaxlib's kernel calls, whose batched form can
    hang a step that runs on several CPU devices); under automatic sharding, on one device.
``"eigh64"``
    The same formula in float64, computed on the host (LAPACK's ``dsyevd`` through
    :func:`optlab.linalg._lapack.host_call`; works under ``jit``, ``vmap`` and sharding, on
    any number of CPU devices; the operands travel to the host, so on an accelerator this
    costs a transfer). float32 ``eigh`` resolves eigenvalues
    only to about ``2^-24 lambda_max``, so the root's relative error grows like
    ``2^-24 kappa``: 3e-4 at condition number ``kappa = 1e4`` for d = 1024, where float64 gives
    2e-8 for ~1.6x the float32 time on a 2-core CPU. Not differentiable (a host callback);
    differentiate through ``"eigh"`` or ``"newton"``.
``"newton"``
    The coupled Newton iteration of Guo & Higham (2006), matmul-only, for accelerators where
    ``eigh`` is slow. With ``M_0 = z a``, ``H_0 = z^{1/p} I`` and ``z = (p + 1) / (2 lambda)``
    (``lambda`` from a power iteration),

        T_k = ((p + 1) I - M_k) / p,   H_{k+1} = H_k T_k,   M_{k+1} = T_k^p M_k,

    keeps ``M_k = H_k^p a`` and converges quadratically to ``M = I``, ``H = a^{-1/p}``. Each
    matrix of a batch stops on its own when ``||(M_k - I) v|| <= tol`` (probe vectors ``v``) or
    when that residual grows (round-off floor reached); the best iterate is kept.
``"auto"``
    On CPU (decided by ``jax.default_backend()`` when the function is traced), per matrix:
    ``"eigh"`` when it is well conditioned, ``condition_estimate(a) <=``
    ``AUTO_FLOAT32_MAX_CONDITION`` (100; float32's error is then below ~1e-5), else
    ``"eigh64"``. Each path runs (under ``lax.cond``) only if some matrix of the batch needs it,
    so a batch gives exactly what a loop over its matrices gives. The estimate (24 Lanczos
    steps, :func:`condition_estimate`) costs a few percent of an eigh. On this project's 2-core
    CPU both eigh paths are 3x to 6x faster than float32 coupled Newton at d = 1024 and at
    least as accurate (benchmarks/RESULTS.md). On GPU/TPU:
    ``"newton"``: batched eigh is slow there and has failed to converge on low-rank float32
    factors (PyTorch Distributed Shampoo's reports), while the iteration is all matmuls.

Failure detection: :func:`inverse_root` with ``return_error=True`` also returns
``error``, an estimate of ``||X^p (a + r I) - I||`` per matrix from a few fixed probe vectors
(:func:`residual`; the coupled iteration's own ``M`` drifts from ``X^p a`` by round-off, so the
estimate uses ``X`` and ``a`` themselves). A non-finite input or result has ``error = inf``;
callers such as Shampoo reject a root whose error is above a threshold and keep the previous
one. Computation is in float32 at least (float64 input stays float64), also for bfloat16 input.

The input is taken to be symmetric: the eigh methods read only its lower triangle (LAPACK's
convention), the Newton iteration uses ``(a + a^T) / 2``.

Scale: ``(c a + r I)^{-1/p} = c^{-1/p} (a + (r / c) I)^{-1/p}``. Every method gives the same
relative accuracy for statistics of any size in float32's normal range (tested from 1e-30 to
1e30): LAPACK's eigh scales internally, and the power iteration, the Lanczos estimate, the
Newton iteration and the residual run on ``a`` multiplied by a power of two that brings it to
unit size (exact; the result is scaled back exactly). Only ``eps_floor`` is absolute: it
dominates the ridge of matrices whose entries are near it or below. Where the root itself
leaves float32's range, the result says so: an overflowing root (a ridge and eigenvalues below
about ``1e-38^p``) has inf entries and ``error = inf``; a root whose smallest eigenvalues could
fall below the normal range (``lambda_max`` above about ``1e38^p / d``: only ``p = 1`` in float32)
would lose them to zero, and gets ``error = inf`` too. (Just inside that limit, p = 1 and
``lambda_max`` ~1e37, products in the eigh paths' ``V diag(...) V^T`` can fall below the normal
range and be flushed: the residual then reports errors of ~1e-2.)
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optlab.linalg import _lapack
from optlab.linalg._ops import matmul as _matmul
from optlab.linalg._ops import max_abs_exponent, scale_pow2
from optlab.linalg.lanczos import _unit, lanczos, tridiagonal

INVERSE_ROOT_METHODS = ("auto", "eigh", "eigh64", "newton")

#: ``method="auto"`` on CPU keeps float32 eigh while every matrix's estimated condition number
#: (of the regularized matrix) is at most this; above it float32's root error (~2^-24 kappa
#: relative, times a small constant) would exceed ~1e-5, and float64 is used.
AUTO_FLOAT32_MAX_CONDITION = 100.0


class InverseRoot(NamedTuple):
    """An inverse root with its residual estimate (:func:`residual`; ``inf`` if not finite)."""

    root: jax.Array
    error: jax.Array


def matrix_power(x: jax.Array, p: int) -> jax.Array:
    """``x^p`` for a static integer ``p >= 1`` by binary powering (``O(log p)`` matmuls)."""
    result = None
    base = x
    while True:
        if p & 1:
            result = base if result is None else _matmul(result, base)
        p >>= 1
        if not p:
            return result
        base = _matmul(base, base)


def _eye_like(a: jax.Array) -> jax.Array:
    return jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape)


def _symmetrize(a: jax.Array) -> jax.Array:
    return 0.5 * (a + jnp.swapaxes(a, -1, -2))


def max_eigenvalue_estimate(a: jax.Array, iters: int = 20) -> jax.Array:
    """Power-iteration estimate of ``lambda_max`` of symmetric PSD ``a`` (shape ``[...]``).

    A lower bound that is within a few percent after 20 iterations for the spectra that
    statistics matrices have; deterministic (starts from the all-ones vector plus a ramp, which
    is orthogonal to no eigenvector in practice). Scale invariant: runs on ``a`` scaled by a
    power of two to unit size (the norms of ``a v`` would overflow float32 beyond ~1e19).
    """
    k = max_abs_exponent(a)
    return scale_pow2(_max_eigenvalue_unit_scale(scale_pow2(a, -k), iters)[..., None, None], k)[
        ..., 0, 0
    ]


def _max_eigenvalue_unit_scale(a: jax.Array, iters: int) -> jax.Array:
    d = a.shape[-1]
    v = jnp.ones(a.shape[:-1], a.dtype) + jnp.arange(d, dtype=a.dtype) / d
    v = v / jnp.linalg.norm(v, axis=-1, keepdims=True)

    def body(_, v):
        w = jnp.einsum("...ij,...j->...i", a, v, precision=jax.lax.Precision.HIGHEST)
        n = jnp.linalg.norm(w, axis=-1, keepdims=True)
        return w / jnp.where(n > 0, n, 1.0)

    v = jax.lax.fori_loop(0, iters, body, v)
    return jnp.einsum("...i,...ij,...j->...", v, a, v, precision=jax.lax.Precision.HIGHEST)


#: Probe vectors for residual estimates (a fixed Rademacher sample: deterministic, and enough to
#: tell a converged root, residual << 1, from a failed one, residual >~ 1 or non-finite).
NUM_PROBES = 4


def _probes(d: int, dtype) -> jax.Array:
    # A NumPy constant (not jax.random inside the traced function: nothing to compile).
    signs = np.random.default_rng(0).integers(0, 2, size=(d, NUM_PROBES)) * 2 - 1
    return jnp.asarray(signs, dtype)


def _probe_norm(r_times_v: jax.Array) -> jax.Array:
    """``max_j ||R v_j|| / ||v_j||`` from ``R V`` ([..., d, k]); inf where not finite."""
    d = r_times_v.shape[-2]
    err = jnp.max(jnp.sqrt(jnp.sum(jnp.square(r_times_v), axis=-2) / d), axis=-1)
    return jnp.where(jnp.isfinite(err), err, jnp.inf)


def residual(a_regularized: jax.Array, root: jax.Array, p: int) -> jax.Array:
    """Estimate of ``||root^p a - I||`` per matrix, ``inf`` where anything is not finite.

    ``max_j ||(X^p a - I) v_j|| / ||v_j||`` over ``NUM_PROBES`` fixed Rademacher vectors: a lower
    bound on the spectral norm and, in expectation, the RMS of the eigenvalue residuals
    ``||X^p a - I||_F / sqrt(d)``. Matrix-vector products only (``O(p d^2)``): forming ``X^p a``
    would cost ``O(log p)`` matmuls, and on XLA's CPU backend a chain of matmuls feeding a
    reduction runs ~20x slower than the matmuls themselves (jaxlib 0.10). Scale invariant:
    ``X^p a = (2^k X)^p (2^(-p k) a)`` exactly, with ``2^(-p k) a`` of unit size, so the products
    stay in range whatever the scale of ``a``.
    """
    k = max_abs_exponent(a_regularized, p)
    a_unit, root_unit = scale_pow2(a_regularized, -p * k), scale_pow2(root, k)
    v = _probes(a_regularized.shape[-1], a_regularized.dtype)
    w = _matmul(a_unit, v)
    for _ in range(p):
        w = _matmul(root_unit, w)
    return _probe_norm(w - v)


def _eigh_root(a, p, eps, eps_floor):
    # Through optlab.linalg._lapack: jaxlib's own batched CPU eigh can hang a multi-device step.
    # The eigenvectors as rows: how LAPACK's column-major output lies in memory (no transpose
    # of the whole stack; on XLA's CPU backend such copies cost more than the work around it).
    w, rows = _lapack.eigh(a, rows=True)
    w = jnp.maximum(w, 0.0)
    ridge = eps * w[..., -1:] + eps_floor
    w = w + ridge
    root = jnp.einsum(
        "...ki,...kj->...ij",
        rows * (w ** (-1.0 / p))[..., :, None],
        rows,
        precision=jax.lax.Precision.HIGHEST,
    )
    return root, ridge[..., 0]


def _host_eigh_root_numpy(a, eps, eps_floor, *, p: int):
    """The ``"eigh64"`` callback: float64 ``eigh`` and assembly on the host, rounded at the end.

    Non-finite matrices are decomposed as the identity (LAPACK may fail on NaN); the caller
    masks them. (Assembling ``V S V^T`` in float32 on the device instead saved no time and lost
    an order of magnitude of accuracy, 5e-7 vs 2e-8 at d = 1024.)
    """
    out_dtype = a.dtype
    a = np.asarray(a, np.float64)
    finite = np.all(np.isfinite(a), axis=(-2, -1), keepdims=True)
    a = np.where(finite, a, np.eye(a.shape[-1]))
    w, v = _lapack.host_eigh(a)
    w = np.maximum(w, 0.0)
    ridge = (
        np.asarray(eps, np.float64)[..., None] * w[..., -1:]
        + np.asarray(eps_floor, np.float64)[..., None]
    )
    root = (v * ((w + ridge) ** (-1.0 / p))[..., None, :]) @ np.swapaxes(v, -1, -2)
    return root.astype(out_dtype), ridge[..., 0].astype(out_dtype)


def _host_eigh_root(a, p, eps, eps_floor):
    out = (jax.ShapeDtypeStruct(a.shape, a.dtype), jax.ShapeDtypeStruct(a.shape[:-2], a.dtype))
    return _lapack.host_call(
        functools.partial(_host_eigh_root_numpy, p=p),
        out,
        a,
        jnp.asarray(eps, a.dtype),
        jnp.asarray(eps_floor, a.dtype),
    )


def condition_estimate(
    a: jax.Array, eps: float = 1e-6, eps_floor: float = 1e-16, steps: int = 24
) -> jax.Array:
    """A lower estimate of the condition number of ``a + r I`` (the matrix whose root is taken).

    ``steps`` Lanczos iterations (:func:`optlab.linalg.lanczos.lanczos`) from a fixed start
    vector give Ritz values ``theta_min >= lambda_min`` and ``theta_max <= lambda_max``; the
    estimate is ``(theta_max + r) / (theta_min + r)`` with ``r = eps * theta_max + eps_floor``.
    It is never above the true condition number, and it is meant to tell well conditioned
    matrices (``inverse_root``'s threshold, 100) from badly conditioned ones, not to measure the
    latter: at d = 1024, 24 steps give 8.7 for a true 8.8 (G G^T / 4d), but 1.4e3 for a true
    9.9e3 (geometric spectrum) and 9.1e2 for a true 9.7e5 (near-singular G G^T / d). Matrix-
    vector products only (``O(steps d^2)``). ``inf`` for non-finite input. Batched over leading
    dims. Scale invariant: runs on ``a`` and ``eps_floor`` scaled by a power of two that brings
    ``a`` to unit size (Lanczos' vector norms would overflow float32 beyond ~1e19 and underflow
    below ~1e-19).
    """
    if a.shape[-1] == 0:
        return jnp.ones(a.shape[:-2], a.dtype)
    shift = max_abs_exponent(a)
    eps_floor = scale_pow2(jnp.full(a.shape[:-2] + (1, 1), eps_floor, a.dtype), -shift)[..., 0, 0]
    a = scale_pow2(a, -shift)
    d = a.shape[-1]
    k = min(steps, d)
    q0 = _unit(jnp.sum(_probes(d, a.dtype), axis=-1), jnp.ones((d,), a.dtype) / jnp.sqrt(d))

    def extreme_ritz_values(m: jax.Array) -> jax.Array:
        def matvec(v):
            return jnp.matmul(m, v, precision=jax.lax.Precision.HIGHEST)

        _, alphas, betas = lanczos(matvec, q0, k, jax.random.key(0))
        ritz = _lapack.eigh(tridiagonal(alphas, betas))[0]
        return jnp.stack([ritz[0], ritz[-1]])

    flat = a.reshape(-1, d, d)
    ritz = jax.vmap(extreme_ritz_values)(flat).reshape(*a.shape[:-2], 2)
    theta_max = jnp.maximum(ritz[..., 1], 0.0)
    ridge = eps * theta_max + eps_floor
    kappa = (theta_max + ridge) / (jnp.maximum(ritz[..., 0], 0.0) + ridge)
    finite = jnp.all(jnp.isfinite(a), axis=(-2, -1))
    return jnp.where(jnp.logical_and(finite, jnp.isfinite(kappa)), kappa, jnp.inf)


def _auto_cpu_root(a, p, eps, eps_floor):
    """Per matrix: float32 eigh if well conditioned, else float64 (each path runs only if used)."""
    well = condition_estimate(a, eps, eps_floor) <= AUTO_FLOAT32_MAX_CONDITION

    def maybe(path, needed):
        zeros = (jnp.zeros_like(a), jnp.zeros(a.shape[:-2], a.dtype))
        return jax.lax.cond(needed, lambda: path(a, p, eps, eps_floor), lambda: zeros)

    root32, ridge32 = maybe(_eigh_root, jnp.any(well))
    root64, ridge64 = maybe(_host_eigh_root, jnp.any(~well))
    return (jnp.where(well[..., None, None], root32, root64), jnp.where(well, ridge32, ridge64))


def _newton_root(a, p, eps, eps_floor, max_iters, tol):
    # Scale invariance: (2^(p k) b + r I)^(-1/p) = 2^-k (b + 2^(-p k) r I)^(-1/p) exactly, so the
    # iteration runs on the unit-size b = 2^(-p k) a (z, H_0 and the probe residuals would
    # overflow or underflow float32 for a beyond ~1e19 or below ~1e-19).
    k = max_abs_exponent(a, p)
    eps_floor = scale_pow2(jnp.full(a.shape[:-2] + (1, 1), eps_floor, a.dtype), -p * k)[..., 0, 0]
    root, ridge = _newton_root_unit_scale(scale_pow2(a, -p * k), p, eps, eps_floor, max_iters, tol)
    return scale_pow2(root, -k), scale_pow2(ridge[..., None, None], p * k)[..., 0, 0]


def _newton_root_unit_scale(a, p, eps, eps_floor, max_iters, tol):
    lam = jnp.maximum(max_eigenvalue_estimate(a), 0.0)
    ridge = eps * lam + eps_floor
    eye = _eye_like(a)
    a = a + ridge[..., None, None] * eye
    # lam + ridge >= lambda_max(a + r I) up to the power iteration's few percent, so the
    # eigenvalues of M_0 lie in (0, ~(p + 1) / 2], inside the region of convergence (0, p + 1).
    z = (p + 1.0) / (2.0 * (lam + ridge))
    m = z[..., None, None] * a
    h = (z ** (1.0 / p))[..., None, None] * eye
    probes = _probes(a.shape[-1], a.dtype)
    err = _probe_norm(_matmul(m, probes) - probes)
    state = (
        jnp.zeros((), jnp.int32),
        m,
        h,
        # The previous residual; inf because the first step may raise it.
        jnp.full(err.shape, jnp.inf, m.dtype),
        h,  # best root so far
        err,  # its residual
        jnp.ones(err.shape, bool),  # still iterating
    )

    def cond(state):
        i, *_, active = state
        return jnp.logical_and(i < max_iters, jnp.any(active))

    def body(state):
        i, m, h, prev_err, best_h, best_err, active = state
        t = ((p + 1.0) * eye - m) / p
        new_h = _matmul(h, t)
        new_m = _matmul(matrix_power(t, p), m)
        new_err = _probe_norm(_matmul(new_m, probes) - probes)
        improved = jnp.logical_and(active, new_err < best_err)
        best_h = jnp.where(improved[..., None, None], new_h, best_h)
        best_err = jnp.where(improved, new_err, best_err)
        # A matrix stops when converged or when its residual stops shrinking (round-off floor).
        # ||(M - I) v||^2 = sum_i (mu_i - 1)^2 (q_i . v)^2 is monotone: after the first step
        # every eigenvalue mu_i of M lies in (0, 1] and moves towards 1 (an elementwise max of
        # M - I is not, it can rise and fall).
        active = jnp.logical_and(active, jnp.logical_and(new_err > tol, new_err < prev_err))
        keep = active[..., None, None]
        return (
            i + 1,
            jnp.where(keep, new_m, m),
            jnp.where(keep, new_h, h),
            jnp.where(active, new_err, prev_err),
            best_h,
            best_err,
            active,
        )

    *_, best_h, _, _ = jax.lax.while_loop(cond, body, state)
    return best_h, ridge


def _check_args(p, eps, eps_floor, method, max_iters, tol):
    if isinstance(p, bool) or not isinstance(p, int) or p < 1:
        try:
            ok = int(p) == p and p >= 1 and not isinstance(p, bool)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"p must be an integer >= 1, got {p!r}")
    if method not in INVERSE_ROOT_METHODS:
        raise ValueError(f"method must be one of {INVERSE_ROOT_METHODS}, got {method!r}")
    if not (isinstance(eps, jax.Array) or eps >= 0):
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    if not (isinstance(eps_floor, jax.Array) or eps_floor >= 0):
        raise ValueError(f"eps_floor must be >= 0, got {eps_floor!r}")
    if not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"max_iters must be an integer >= 1, got {max_iters!r}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")


def resolve_method(method: str) -> str:
    """What ``"auto"`` stands for on the current default backend.

    ``"auto"`` itself on CPU (float32 or float64 eigh, chosen per matrix from a condition
    estimate when the function runs), ``"newton"`` on accelerators; other names unchanged.
    """
    if method != "auto":
        return method
    return "auto" if jax.default_backend() == "cpu" else "newton"


def inverse_root(
    a: jax.Array,
    p: int,
    *,
    eps: float = 1e-6,
    eps_floor: float = 1e-16,
    method: str = "auto",
    max_iters: int = 100,
    tol: float = 1e-6,
    return_error: bool = False,
) -> jax.Array | InverseRoot:
    """``(a + r I)^{-1/p}`` with ``r = eps * lambda_max(a) + eps_floor`` (module docstring).

    Args:
      a: symmetric PSD matrices, shape ``[..., d, d]`` (leading dims are a batch).
      p: the root, an integer >= 1.
      eps: ridge relative to ``lambda_max(a)``, >= 0.
      eps_floor: absolute ridge floor, >= 0 (keeps the zero matrix invertible).
      method: ``"auto"``, ``"eigh"``, ``"eigh64"`` or ``"newton"`` (module docstring).
      max_iters: iteration cap for ``"newton"``.
      tol: ``"newton"`` stops a matrix once its probe residual ``||(M - I) v|| <= tol``.
      return_error: also return the residual (an :class:`InverseRoot`).

    Returns:
      The root (float32, or float64 for float64 input), or an :class:`InverseRoot`.

    Example:
      >>> import jax.numpy as jnp, numpy as np
      >>> from optlab.linalg import inverse_root
      >>> a = jnp.diag(jnp.array([16.0, 81.0]))
      >>> np.round(np.asarray(inverse_root(a, 4, eps=0.0, eps_floor=0.0), np.float64), 4).tolist()
      [[0.5, 0.0], [0.0, 0.3333]]
    """
    _check_args(p, eps, eps_floor, method, max_iters, tol)
    p = int(p)
    a = jnp.asarray(a)
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"a must be square matrices of shape [..., d, d], got shape {a.shape}")
    a = a.astype(jnp.promote_types(a.dtype, jnp.float32))
    if a.shape[-1] == 0:  # 0 x 0 matrices: an empty root, and nothing to get wrong (error 0)
        return InverseRoot(a, jnp.zeros(a.shape[:-2], a.dtype)) if return_error else a
    method = resolve_method(method)
    if method == "eigh":
        root, ridge = _eigh_root(a, p, eps, eps_floor)
    elif method == "eigh64":
        root, ridge = _host_eigh_root(a, p, eps, eps_floor)
    elif method == "auto":
        root, ridge = _auto_cpu_root(a, p, eps, eps_floor)
    else:
        a = _symmetrize(a)
        root, ridge = _newton_root(a, p, eps, eps_floor, max_iters, tol)
    root = jnp.where(jnp.all(jnp.isfinite(a), axis=(-2, -1), keepdims=True), root, jnp.nan)
    if not return_error:
        return root
    # Measured on root and a themselves for both methods (the coupled iteration's own M drifts
    # from root^p a by round-off).
    a_reg = a + ridge[..., None, None] * _eye_like(a)
    error = residual(a_reg, root, p)
    # lambda_max(a_reg) < d 2^(p k) (module docstring, "Scale"), so the root's smallest eigenvalue
    # exceeds d^(-1/p) 2^-k: flag the root when that bound is below the normal range.
    k = max_abs_exponent(a_reg, p)
    may_underflow = k + np.log2(a.shape[-1]) / p > -jnp.finfo(a.dtype).minexp
    return InverseRoot(root, jnp.where(may_underflow, jnp.inf, error))
