"""Shampoo as an adapted Muon: the factorization of a Shampoo update and semi-orthogonality.

References: Eschenhagen, Cai, Lee, Shi, "Clarifying Shampoo", arXiv:2602.09314; the
no-accumulation special case is the derivation, in D. Merkulov's seminar "Stories from training
neural networks", that Shampoo without accumulation is Muon.

Decomposition. Let ``M = U S V^T`` be the thin SVD of an ``m x n`` (momentum) gradient and
``L`` (``m x m``), ``R`` (``n x n``) Shampoo's statistics (e.g. ``L = sum_t G_t G_t^T``,
``R = sum_t G_t^T G_t``). Since ``(M M^T)^{1/4} U V^T (M^T M)^{1/4} = U S^{1/2} S^{1/2} V^T = M``,

    L^{-1/p} M R^{-1/p} = [L^{-1/p} (M M^T)^{1/4}] (U V^T) [(M^T M)^{1/4} R^{-1/p}].

The middle factor ``U V^T`` is Muon's update (the orthogonal polar factor of ``M``); the outer
factors are the adaptation, the role ``|m| / sqrt(v)`` plays for Adam over Signum
(``m / sqrt(v) = (|m| / sqrt(v)) * sign(m)``). With ``L = M M^T``, ``R = M^T M`` and ``p = 4``
(no accumulation) both outer factors are the identity on the range of ``M`` (the projectors
``U U^T`` and ``V V^T``), so Shampoo's update is Muon's ``U V^T``.

Semi-orthogonality. Spectral descent (Muon) makes every update semi-orthogonal,
``O_t O_t^T = I``. The paper's reading of Shampoo is weaker: its updates are *time-averaged
semi-orthogonal in expectation*, ``(1/t) sum_{s<=t} O_s O_s^T`` is proportional to ``I`` although
no single ``O_t O_t^T`` need be. :func:`semi_orthogonality` measures both (its docstring has a
worked Kronecker-model case where this holds for ``p = 2`` but not for ``p = 4``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from optlab.linalg import _lapack, inverse_root
from optlab.linalg._ops import matmul as _matmul


class ShampooMuonFactors(NamedTuple):
    """``update = left @ orthogonal @ right`` (up to round-off), all for one matrix ``M``.

    Attributes:
      left: ``L^{-1/p} (M M^T)^{1/4}``, shape ``[..., m, m]`` (the left adaptation).
      orthogonal: ``U V^T``, shape ``[..., m, n]`` (Muon's update; singular values 1, or 0 for
        zero singular values of ``M``).
      right: ``(M^T M)^{1/4} R^{-1/p}``, shape ``[..., n, n]`` (the right adaptation).
      update: ``L^{-1/p} M R^{-1/p}`` computed directly, shape ``[..., m, n]`` (Shampoo's
        update), so that callers can check the reconstruction.
    """

    left: jax.Array
    orthogonal: jax.Array
    right: jax.Array
    update: jax.Array


class SemiOrthogonality(NamedTuple):
    """Distances from semi-orthogonality, each of shape ``[T, ...]`` (:func:`semi_orthogonality`).

    Attributes:
      per_step: ``d(O_t O_t^T)`` for each step ``t``.
      running_average: ``d((1/t) sum_{s<=t} O_s O_s^T)`` for each step ``t``.
    """

    per_step: jax.Array
    running_average: jax.Array


def _mT(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, -1, -2)


def _compute_dtype(*xs: jax.Array) -> jnp.dtype:
    return jnp.promote_types(jnp.result_type(*xs), jnp.float32)


def shampoo_muon_decomposition(
    m: jax.Array,
    left_stat: jax.Array,
    right_stat: jax.Array,
    *,
    p: int = 4,
    eps: float = 1e-6,
    eps_floor: float = 1e-16,
    root_method: str = "eigh",
) -> ShampooMuonFactors:
    """Factor Shampoo's update of a matrix into left adaptation x Muon update x right adaptation.

    For ``M = U S V^T`` (thin SVD) and statistics ``L``, ``R``:

        L^{-1/p} M R^{-1/p} = [L^{-1/p} (M M^T)^{1/4}] (U V^T) [(M^T M)^{1/4} R^{-1/p}]

    (arXiv 2602.09314, "Clarifying Shampoo"; module docstring). The inverse roots are
    :func:`optlab.linalg.inverse_root` with its ridge semantics: ``L^{-1/p}`` stands for
    ``(L + r I)^{-1/p}`` with ``r = eps * lambda_max(L) + eps_floor`` (likewise for ``R``), the
    same ridge Shampoo uses, so ``update`` is exactly what a Shampoo step with these statistics
    would apply. ``(M M^T)^{1/4} = U S^{1/2} U^T`` and ``(M^T M)^{1/4} = V S^{1/2} V^T`` come from
    the same SVD as ``U V^T``; singular values at or below ``max(s) * max(m, n) * eps_machine``
    count as zero in ``U V^T`` (as in ``orthogonalize(method="svd")``), so a rank-deficient ``M``
    has a rank-deficient middle factor. The identity holds for any ``m``, ``n`` (wide or tall).

    The reconstruction ``left @ orthogonal @ right`` equals ``update`` up to round-off (and up
    to the components along singular values dropped as zero).

    Args:
      m: the (momentum) gradient, shape ``[..., m, n]``; leading dimensions are a batch.
      left_stat: ``L``, symmetric PSD, shape ``[..., m, m]``.
      right_stat: ``R``, symmetric PSD, shape ``[..., n, n]``.
      p: the root (integer >= 1); Shampoo on a matrix uses ``p = 4``. Static under ``jit``.
      eps: relative ridge for the inverse roots (see above).
      eps_floor: absolute ridge floor for the inverse roots.
      root_method: passed to ``inverse_root`` as ``method``. Default ``"eigh"``, the exact
        one (this is an analysis tool); ``"auto"`` or ``"newton"`` reproduce what an optimizer
        using those roots would apply. Static under ``jit``.

    Returns:
      A :class:`ShampooMuonFactors` in float32 (float64 for float64 input).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from optlab.analysis import shampoo_muon_decomposition
      >>> g = jax.random.normal(jax.random.key(0), (8, 12))
      >>> f = shampoo_muon_decomposition(g, g @ g.T, g.T @ g, eps=1e-9)
      >>> bool(jnp.allclose(f.left @ f.orthogonal @ f.right, f.update, atol=1e-4))
      True
    """
    m = jnp.asarray(m)
    left_stat = jnp.asarray(left_stat)
    right_stat = jnp.asarray(right_stat)
    if m.ndim < 2:
        raise ValueError(f"m must be a matrix of shape [..., m, n], got shape {m.shape}")
    rows, cols = m.shape[-2:]
    batch = m.shape[:-2]
    if left_stat.shape != (*batch, rows, rows):
        raise ValueError(
            f"left_stat must have shape {(*batch, rows, rows)} for m of shape {m.shape}, "
            f"got {left_stat.shape}"
        )
    if right_stat.shape != (*batch, cols, cols):
        raise ValueError(
            f"right_stat must have shape {(*batch, cols, cols)} for m of shape {m.shape}, "
            f"got {right_stat.shape}"
        )
    for name, value in (("eps", eps), ("eps_floor", eps_floor)):
        if not isinstance(value, jax.Array) and not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    dtype = _compute_dtype(m, left_stat, right_stat)
    return _decompose(
        m.astype(dtype),
        left_stat.astype(dtype),
        right_stat.astype(dtype),
        jnp.asarray(eps, dtype),
        jnp.asarray(eps_floor, dtype),
        p=p,
        root_method=root_method,
    )


@functools.partial(jax.jit, static_argnames=("p", "root_method"))
def _decompose(m, left_stat, right_stat, eps, eps_floor, *, p, root_method):
    rows, cols = m.shape[-2:]
    dtype = m.dtype

    def root(a):
        return inverse_root(a, p, eps=eps, eps_floor=eps_floor, method=root_method)

    # On CPU the roots' eigh and this SVD run in NumPy's LAPACK on the host
    # (optlab.linalg._lapack), never on XLA's pool, so they need no ordering.
    left_root = root(left_stat)
    right_root = root(right_stat)
    u, s, vt = _lapack.svd(m)
    tol = jnp.max(s, axis=-1, keepdims=True) * max(rows, cols) * jnp.finfo(dtype).eps
    keep = (s > tol).astype(dtype)
    orthogonal = _matmul(u * keep[..., None, :], vt)
    s_half = jnp.sqrt(jnp.maximum(s, 0.0))
    # (M M^T)^{1/4} = U S^{1/2} U^T and (M^T M)^{1/4} = V S^{1/2} V^T (rank <= min(m, n)).
    left = _matmul(_matmul(left_root, u * s_half[..., None, :]), _mT(u))
    right = _matmul(_mT(vt), _matmul(s_half[..., :, None] * vt, right_root))
    update = _matmul(_matmul(left_root, m), right_root)
    return ShampooMuonFactors(left=left, orthogonal=orthogonal, right=right, update=update)


def _identity_distance(gram: jax.Array) -> jax.Array:
    """``||G / c - I||_F / sqrt(k)`` with ``c = trace(G) / k``, for ``G`` of shape ``[..., k, k]``.

    Scale-invariant; 0 iff ``G`` is a positive multiple of ``I``. A zero ``G`` (``c = 0``) is
    given distance 1 (``G / c`` taken as 0): a zero update is not semi-orthogonal.
    """
    k = gram.shape[-1]
    c = jnp.trace(gram, axis1=-2, axis2=-1) / k
    safe_c = jnp.where(c > 0, c, 1.0)
    normalized = jnp.where((c > 0)[..., None, None], gram / safe_c[..., None, None], 0.0)
    diff = normalized - jnp.eye(k, dtype=gram.dtype)
    return jnp.sqrt(jnp.sum(jnp.square(diff), axis=(-2, -1)) / k)


def semi_orthogonality(updates: jax.Array) -> SemiOrthogonality:
    """Per-step and time-averaged distance of a sequence of updates from semi-orthogonality.

    For updates ``O_t`` (``t = 1..T``, each ``m x n``) let ``k = min(m, n)`` and ``G_t`` the
    small Gram matrix: ``O_t O_t^T`` if ``m <= n``, ``O_t^T O_t`` if ``m > n`` (``k x k``). With
    ``c = trace(G) / k`` (the mean squared singular value) the distance is

        d(G) = ||G / c - I||_F / sqrt(k),

    the root-mean-square relative deviation of the squared singular values from their mean
    (0 iff all singular values are equal, i.e. ``O`` is a multiple of a semi-orthogonal matrix;
    scale-invariant; a zero matrix gets 1). Returned:

    - ``per_step[t] = d(G_t)``: 0 for every step of spectral descent (Muon), in general not
      for Shampoo.
    - ``running_average[t] = d((1/t) sum_{s<=t} G_s)``: for updates that are "time-averaged
      semi-orthogonal in expectation" (arXiv 2602.09314's reading of Shampoo) this goes to ~0
      while ``per_step`` need not.

    A worked case (optlab's derivation, checked in the tests, not a claim quoted from the
    paper): for Kronecker-factored Gaussian gradients ``G = A Z B`` and exact statistics
    ``L = E[G G^T]``, ``R = E[G^T G]``, the update ``O = L^{-1/p} G R^{-1/p}`` has ``E[O O^T]``
    proportional to ``I`` for ``p = 2`` (Shampoo^{1/2}: ``O`` is ``Z`` up to scale), so
    ``running_average -> 0``; for ``p = 4`` it is proportional to ``(A A^T)^{1/2}``, so
    ``running_average`` levels off at ``d((A A^T)^{1/2})``. ``running_average`` weighs every
    step equally: with AdaGrad-style sums the early, larger updates dominate it.

    Example: alternating ``diag(2, 0)`` and ``diag(0, 2)`` give ``per_step = 1`` at every step
    and ``running_average = 1, 0, 1/3, 0, 1/5, ...`` (``1/t`` at odd ``t``, 0 at even ``t``).

    Args:
      updates: shape ``[T, ..., m, n]`` (time first; further leading dims are a batch), or a
        sequence of ``T`` arrays of shape ``[..., m, n]``.

    Returns:
      A :class:`SemiOrthogonality` with two arrays of shape ``[T, ...]`` (float32, or float64
      for float64 input).
    """
    updates = jnp.asarray(updates)
    if updates.ndim < 3:
        raise ValueError(
            f"updates must be a sequence of matrices of shape [T, ..., m, n], "
            f"got shape {updates.shape}"
        )
    return _semi_orthogonality(updates.astype(_compute_dtype(updates)))


@jax.jit
def _semi_orthogonality(updates: jax.Array) -> SemiOrthogonality:
    if updates.shape[-2] > updates.shape[-1]:
        updates = _mT(updates)
    gram = _matmul(updates, _mT(updates))
    steps = jnp.arange(1, gram.shape[0] + 1, dtype=gram.dtype).reshape(
        (-1,) + (1,) * (gram.ndim - 1)
    )
    average = jnp.cumsum(gram, axis=0) / steps
    return SemiOrthogonality(
        per_step=_identity_distance(gram), running_average=_identity_distance(average)
    )
