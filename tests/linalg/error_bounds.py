"""Round-off error bounds that the linalg tests use as tolerances.

Every tolerance in tests/linalg comes from one of these (or from a bound stated next to the
test), never from the values one CPU printed: another CPU's LAPACK or matmul kernels block and
order their sums differently, which changes results by round-off, not bit for bit.

Notation: ``u`` is the unit round-off of a dtype (half its machine epsilon: 2^-24 for float32,
2^-8 for bfloat16, 2^-11 for float16), ``d`` the matrix size, ``kappa`` the condition number of
the matrix whose function is computed.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def unit_roundoff(dtype) -> float:
    return float(jnp.finfo(dtype).eps) / 2.0


U32 = unit_roundoff(jnp.float32)


def regularized_condition(a: np.ndarray, eps: float = 1e-6, eps_floor: float = 1e-16) -> float:
    """``kappa(a + r I)`` with inverse_root's ridge ``r = eps lambda_max + eps_floor``."""
    w = np.linalg.eigvalsh(np.asarray(a, np.float64))
    ridge = eps * w[-1] + eps_floor
    return float((w[-1] + ridge) / (max(w[0], 0.0) + ridge))


def root_relative_error_bound(d: int, kappa: float, p: int, u: float = U32) -> float:
    """Relative error (Frobenius) of a float32 inverse p-th root of a d x d SPD matrix.

    LAPACK's eigh is backward stable: its eigenpairs are exact for ``A + E`` with
    ``||E|| <= c(d) u ||A||``, ``c(d)`` growing at most like ``d`` (the eigenvalues move by up
    to ``d u lambda_max``); rounding the input to float32 and assembling ``V diag V^T`` add
    errors of the same form. ``f(A) = (A + r I)^{-1/p}`` has Frechet derivative bounded by
    ``max |f'| = (1/p) (lambda_min + r)^{-1/p - 1}``, and ``||f(A)|| = (lambda_min + r)^{-1/p}``,
    so to first order ``||df|| / ||f|| <= (1/p) ||E|| / (lambda_min + r) <= d u kappa / p``.
    Forming the result adds forward rounding that ``kappa`` does not magnify: ``w^{-1/p}``
    (2 u) and the sums of ``V diag V^T`` (``d u``). The coupled Newton iteration reaches the
    same floor (Guo & Higham 2006 show it stable). The d-fold growth is the worst case;
    rounding errors of random sign grow like ``sqrt(d)``, so real errors sit well below.
    """
    return d * u * kappa / p + (d + 2) * u


def residual_bound(d: int, kappa: float, p: int, u: float = U32) -> float:
    """Bound on ``||X^p (A + r I) - I||`` for a root computed in float32 (inverse_root's error).

    With ``X = f(A + E)`` exactly, ``X^p (A + E + r I) = I``, so the residual is ``-X^p E`` and
    ``||X^p E|| <= ||E|| / (lambda_min + r) <= d u kappa``. The forward rounding of ``X`` itself
    (relative ``(d + 2) u``, :func:`root_relative_error_bound`) enters ``X^p A`` ``p`` times, and
    evaluating the probe residual (``p + 1`` matrix-vector products of length ``d``) adds
    ``(p + 1) d u kappa``: together ``((2 p + 2) d + 2 p) u kappa``.
    """
    return ((2 * p + 2) * d + 2 * p) * u * kappa


def polar_factor_error_bound(x: np.ndarray, u: float = U32, steps: int = 1) -> float:
    """Bound on ``||Q_computed - Q||_F`` for the polar factor ``Q`` of ``x`` in precision ``u``.

    A backward-stable computation (SVD; each step of a polynomial iteration, which acts on the
    singular values and keeps the singular vectors) returns the exact result for ``x + E`` with
    ``||E||_F <= max(m, n) u ||x||_F``. The polar factor moves by at most
    ``2 ||E||_F / sigma_min(x)`` (Li 1995: ``2 ||E||_F / (sigma_min + sigma_min')``, the primed
    value that of ``x + E``). Each of ``steps`` steps can add such an error, and later steps act
    on better conditioned iterates, so ``steps`` times the first step's bound is a bound.
    """
    x = np.asarray(x, np.float64)
    s = np.linalg.svd(x, compute_uv=False)
    return steps * 2.0 * max(x.shape[-2:]) * u * np.linalg.norm(x) / s[-1]


def polar_cosine_loss_bound(
    x: np.ndarray, dtype, steps: int, design_error: float, amplification: float = 1.0
) -> float:
    """Bound on ``1 - cos(Y, R)`` for ``Y = orthogonalize(x)`` computed in ``dtype``.

    ``cos`` is the Frobenius cosine to a float64 reference ``R``: the exact polar factor ``Q``
    of ``x`` (then ``design_error`` is the polynomial's designed error), or the exact result
    of the polynomial iteration, :func:`polynomial_reference` (``design_error = 0``). Terms:

    * the design error ``eps`` (every singular value of ``Y`` within ``eps`` of 1 in exact
      arithmetic): ``1 - cos <= eps^2 / 2``;
    * rounding a matrix to ``dtype`` (relative ``u`` per entry) turns its singular vectors: the
      exact polar factor's cosine drops by ``1 - cos_q``, computed here exactly (float64 SVD of
      the rounded matrix); it also moves singular values by up to ``u`` relative, which costs
      ``u^2 / 2`` and is multiplied by the ``amplification`` of singular-value errors by the
      later steps (:func:`singular_value_amplification`; at most 1 for a converging iteration
      whose last steps are flat near 1, more for Newton-Schulz's oscillating band);
    * the products accumulate in float32 over ``K = max(m, n)`` terms, each step's backward error
      is ``eta = u + K u32`` relative rather than ``u``: the rounding terms scale by
      ``(eta / u)^2`` (negligible for bfloat16 and float16, the whole error for float32);
    * the kernel rounds ``steps + 1`` times (the input, then every step's output), each turning
      the singular vectors at most as much as the first (later iterates are better
      conditioned), so the rounding terms add up to at most ``steps + 1`` times the first.
    """
    x64 = np.asarray(x, np.float64)
    u = unit_roundoff(dtype)
    eta = u + max(x64.shape[-2:]) * U32
    rounded = np.asarray(jnp.asarray(x64, jnp.float32).astype(dtype), np.float64)
    # (For float32, 1 - cos_q is near float64's resolution; the value term then dominates.)
    direction = max(1.0 - polar_cosine(exact_polar(rounded), exact_polar(x64)), 0.0)
    per_rounding = direction * (eta / u) ** 2 + max(1.0, amplification) ** 2 * eta * eta / 2.0
    return design_error**2 / 2.0 + (steps + 1) * per_rounding


def _normalized_singular_values(x: np.ndarray) -> np.ndarray:
    # orthogonalize divides by s = ||A^2||_F^{1/4} = (sum sigma^8)^{1/8} before the iteration.
    s = np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)
    return s / np.sum(s**8) ** 0.125 if s[0] > 0 else s


def polynomial_reference(x: np.ndarray, coefficients) -> np.ndarray:
    """What the polynomial iteration gives in exact arithmetic: ``U g(sigma / s) V^T`` with
    ``g`` the composed odd quintics and ``s`` orthogonalize's normalization."""
    u, _, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
    s = _normalized_singular_values(x)
    for a, b, c in coefficients:
        s = a * s + b * s**3 + c * s**5
    return (u * s) @ vt


def singular_value_amplification(x: np.ndarray, coefficients) -> float:
    """How much the remaining steps can magnify an error in a singular value made after step t:
    ``max_t prod_{r >= t} |p_r'(sigma_r)|`` along the exact trajectories of ``x``'s singular
    values (a first-order bound, evaluated where the singular values actually are)."""
    s = _normalized_singular_values(x)
    slopes = []
    for a, b, c in coefficients:
        slopes.append(np.abs(a + 3 * b * s**2 + 5 * c * s**4))
        s = a * s + b * s**3 + c * s**5
    worst, tail = 1.0, np.ones_like(s)
    for slope in reversed(slopes):
        tail = tail * slope
        worst = max(worst, float(np.max(tail)))
    return worst


def exact_polar(x: np.ndarray) -> np.ndarray:
    """``U V^T`` in float64 (thin SVD), batched over leading dims."""
    u, _, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
    return u @ vt


def polar_cosine(y: np.ndarray, q: np.ndarray) -> float:
    """Frobenius cosine ``<y, q> / (||y|| ||q||)`` (1 for ``y`` a positive multiple of ``q``)."""
    y = np.asarray(y, np.float64)
    return float(np.sum(y * q) / (np.linalg.norm(y) * np.linalg.norm(q)))
