"""Property tests (hypothesis): the kernels at any scale, in every dtype, on degenerate shapes.

Inputs are fixed well-conditioned matrices multiplied by ``10^k`` for ``k`` in [-30, 30]:
statistics and gradients can be that small or large, and a kernel must then give the same
relative accuracy as near unit scale (or say it cannot, with ``error = inf`` / NaN), never
silent garbage. Tolerances are the round-off bounds of tests/linalg/error_bounds.py.
Deterministic (``derandomize``) and small, so the file runs in seconds.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optlab.linalg import (
    INVERSE_ROOT_METHODS,
    ORTHOGONALIZE_METHODS,
    orthogonalize,
    resolve_coefficients,
)
from optlab.linalg import inverse_root as _inverse_root
from tests.linalg.error_bounds import (
    exact_polar,
    polar_cosine,
    polar_cosine_loss_bound,
    polynomial_reference,
    regularized_condition,
    residual_bound,
    root_relative_error_bound,
    singular_value_amplification,
)

# Jitted once per static configuration and shape (eagerly, the Newton iteration's while_loop
# would be traced and compiled again on every call).
inverse_root = jax.jit(
    functools.partial(_inverse_root, return_error=True), static_argnames=("p", "method")
)

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True, database=None)
COMPUTE_DTYPES = [None, jnp.bfloat16, jnp.float16]
NEWTON_TOL = 1e-6  # inverse_root's default: the Newton iteration stops there
EPS = 1e-6  # inverse_root's default relative ridge


def _with_spectrum(rng, m, n, s):
    u, _ = np.linalg.qr(rng.standard_normal((m, len(s))))
    v, _ = np.linalg.qr(rng.standard_normal((n, len(s))))
    return (u * s) @ v.T


_RNG = np.random.default_rng(0)
#: 4 x 7 with singular values 1, 0.8, 0.6, 0.5 (condition number 2).
X0 = _with_spectrum(_RNG, 4, 7, np.array([1.0, 0.8, 0.6, 0.5]))
#: 5 x 5 SPD with eigenvalues from 1 to 0.1 (condition number 10).
_Q, _ = np.linalg.qr(_RNG.standard_normal((5, 5)))
A0 = (_Q * np.geomspace(1.0, 0.1, 5)) @ _Q.T
A0 = (A0 + A0.T) / 2  # exactly symmetric


# --- orthogonalize -------------------------------------------------------------------------


def _effective_dtype(method, compute_dtype):
    # gram_newton_schulz and svd always compute in at least float32.
    if compute_dtype is None or method in ("gram_newton_schulz", "svd"):
        return jnp.float32
    return compute_dtype


def _check_orthogonalized(y, x64, method, compute_dtype):
    """``y`` is within round-off of what ``method`` gives for ``x64`` in exact arithmetic."""
    y = np.asarray(y, np.float64)
    assert np.all(np.isfinite(y))
    if method == "svd":
        coeffs, ref = (), exact_polar(x64)
    else:
        coeffs = resolve_coefficients(method, x64.shape)
        ref = polynomial_reference(x64, coeffs)
    steps = max(len(coeffs), 1)
    amplification = singular_value_amplification(x64, coeffs) if coeffs else 1.0
    bound = polar_cosine_loss_bound(
        x64, _effective_dtype(method, compute_dtype), steps, 0.0, amplification
    )
    assert 1.0 - polar_cosine(y, ref) <= bound


def _unit_scale_copy(x):
    """``x`` times the power of two that brings its largest entry into [0.5, 1) (exact)."""
    x = np.asarray(x, np.float32)
    _, e = np.frexp(np.max(np.abs(x)))
    return np.ldexp(x, -e).astype(np.float32)


@SETTINGS
@given(
    method=st.sampled_from(ORTHOGONALIZE_METHODS),
    exponent=st.integers(-30, 30),
    compute_dtype=st.sampled_from(COMPUTE_DTYPES),
    transpose=st.booleans(),
)
def test_orthogonalize_at_any_scale(method, exponent, compute_dtype, transpose):
    x64 = X0.T if transpose else X0
    x = np.asarray(x64 * 10.0**exponent, np.float32)
    y = orthogonalize(jnp.asarray(x), method=method, compute_dtype=compute_dtype)
    assert y.shape == x.shape and y.dtype == jnp.float32
    # The same float32 matrix brought to unit scale by a power of two (exact) must give the
    # same bits: the normalization undoes the scale exactly, before any rounding.
    unit = orthogonalize(
        jnp.asarray(_unit_scale_copy(x)), method=method, compute_dtype=compute_dtype
    )
    np.testing.assert_array_equal(np.asarray(y), np.asarray(unit))
    _check_orthogonalized(y, x64, method, compute_dtype)


@SETTINGS
@given(
    method=st.sampled_from(ORTHOGONALIZE_METHODS),
    shape=st.sampled_from(
        [(0, 5), (5, 0), (0, 0), (3, 0, 4), (0, 4, 7), (1, 6), (6, 1), (1, 1), (2, 1, 5)]
    ),
    exponent=st.integers(-30, 30),
    compute_dtype=st.sampled_from(COMPUTE_DTYPES),
)
def test_orthogonalize_degenerate_shapes(method, shape, exponent, compute_dtype):
    x64 = np.random.default_rng(1).standard_normal(shape) * 10.0**exponent
    y = orthogonalize(jnp.asarray(x64, jnp.float32), method=method, compute_dtype=compute_dtype)
    assert y.shape == shape and y.dtype == jnp.float32
    if y.size == 0:
        return
    # A single row or column: its polar factor is x / ||x||.
    for ym, xm in zip(
        np.asarray(y).reshape(-1, *shape[-2:]), x64.reshape(-1, *shape[-2:]), strict=True
    ):
        _check_orthogonalized(ym, xm / 10.0**exponent, method, compute_dtype)


_KINDS = st.sampled_from(["good", "good", "nan", "inf", "zero"])


#: Four matrices per batch (one shape: compiled once), each good or bad, at its own scale.
_MEMBERS = st.lists(st.tuples(_KINDS, st.integers(-30, 30)), min_size=4, max_size=4)


@SETTINGS
@given(
    method=st.sampled_from(ORTHOGONALIZE_METHODS),
    compute_dtype=st.sampled_from(COMPUTE_DTYPES),
    members=_MEMBERS,
)
def test_orthogonalize_batch_mixing_good_and_bad_matrices(method, compute_dtype, members):
    batch = []
    for kind, exponent in members:
        x = X0 * 10.0**exponent
        if kind == "nan":
            x = x.copy()
            x[1, 2] = np.nan
        elif kind == "inf":
            x = x.copy()
            x[3, 0] = -np.inf
        elif kind == "zero":
            x = np.zeros_like(x)
        batch.append(x)
    y = np.asarray(
        orthogonalize(
            jnp.asarray(np.stack(batch), jnp.float32), method=method, compute_dtype=compute_dtype
        )
    )
    for (kind, _), ym in zip(members, y, strict=True):
        if kind == "good":  # whatever its neighbours are, at whatever scales
            _check_orthogonalized(ym, X0, method, compute_dtype)
        elif kind == "zero":
            np.testing.assert_array_equal(ym, 0.0)
        else:
            assert np.all(np.isnan(ym))


# --- inverse_root ---------------------------------------------------------------------------

#: Input dtypes and the exponents they can hold A0 * 10^k in as normal numbers (float16: about
#: 6e-5 to 65504; A0's entries reach down to ~1e-2): inverse_root computes in float32.
_INPUT_RANGES = {"float32": (-30, 30), "bfloat16": (-30, 30), "float16": (-2, 4)}


def _root_reference(a, p, eps_floor):
    w, v = np.linalg.eigh(a)
    w = np.maximum(w, 0.0)
    return (v * (w + EPS * w[-1] + eps_floor) ** (-1.0 / p)) @ v.T


def _check_root(root, error, a, p, method, eps_floor):
    """``root`` and ``error`` for the input ``a`` (float64, what the kernel saw)."""
    root = np.asarray(root, np.float64)
    assert np.all(np.isfinite(root)), root
    ref = _root_reference(a, p, eps_floor)
    kappa = regularized_condition(a, EPS, eps_floor)
    d = a.shape[-1]
    # Newton stops once its residual is below tol: X = A^{-1/p} (I + R)^{1/p} with ||R|| <= tol,
    # a relative error of tol / p on top of round-off.
    tol = NEWTON_TOL if method == "newton" else 0.0
    bound = root_relative_error_bound(d, kappa, p) + tol / p
    assert np.linalg.norm(root - ref) <= bound * np.linalg.norm(ref)
    assert 0.0 <= float(error) <= residual_bound(d, kappa, p) + tol


@SETTINGS
@given(
    method=st.sampled_from(INVERSE_ROOT_METHODS),
    p=st.sampled_from([1, 2, 4]),
    dtype=st.sampled_from(sorted(_INPUT_RANGES)),
    eps_floor=st.sampled_from([0.0, 1e-16]),
    data=st.data(),
)
def test_inverse_root_at_any_scale(method, p, dtype, eps_floor, data):
    exponent = data.draw(st.integers(*_INPUT_RANGES[dtype]), label="exponent")
    a = jnp.asarray(A0 * 10.0**exponent, jnp.float32).astype(dtype)
    res = inverse_root(a, p, method=method, eps_floor=eps_floor)
    assert res.root.dtype == jnp.float32
    # The reference is the root of the matrix the kernel received (rounded to dtype); with
    # eps_floor = 1e-16 the floor dominates the ridge of matrices near or below it, as defined.
    _check_root(
        res.root, res.error, np.asarray(a.astype(jnp.float32), np.float64), p, method, eps_floor
    )


@SETTINGS
@given(
    method=st.sampled_from(INVERSE_ROOT_METHODS),
    p=st.sampled_from([1, 2, 4]),
    shape=st.sampled_from([(0, 0), (3, 0, 0), (0, 5, 5), (1, 1), (2, 1, 1)]),
    exponent=st.integers(-30, 30),
)
def test_inverse_root_degenerate_shapes(method, p, shape, exponent):
    a = np.abs(np.random.default_rng(2).standard_normal(shape)) * 10.0**exponent + 0.0
    res = inverse_root(jnp.asarray(a, jnp.float32), p, method=method)
    assert res.root.shape == shape and res.error.shape == shape[:-2]
    if res.root.size == 0:  # nothing to compute, nothing to get wrong
        np.testing.assert_array_equal(res.error, 0.0)
        return
    a32 = np.asarray(jnp.asarray(a, jnp.float32), np.float64)
    for r, e, m in zip(
        np.asarray(res.root).reshape(-1, *shape[-2:]),
        np.asarray(res.error).reshape(-1),
        a32.reshape(-1, *shape[-2:]),
        strict=True,
    ):
        _check_root(r, e, m, p, method, 1e-16)


@SETTINGS
@given(method=st.sampled_from(INVERSE_ROOT_METHODS), p=st.sampled_from([1, 2, 4]), members=_MEMBERS)
def test_inverse_root_batch_mixing_good_and_bad_matrices(method, p, members):
    batch = []
    for kind, exponent in members:
        a = A0 * 10.0**exponent
        if kind == "nan":
            a = a.copy()
            a[1, 2] = np.nan
        elif kind == "inf":
            a = a.copy()
            a[3, 3] = np.inf
        elif kind == "zero":
            a = np.zeros_like(a)
        batch.append(a)
    # eps_floor = 0: a zero matrix then has no root (inf), which must be flagged, not hidden.
    res = inverse_root(jnp.asarray(np.stack(batch), jnp.float32), p, method=method, eps_floor=0.0)
    for (kind, exponent), r, e in zip(
        members, np.asarray(res.root), np.asarray(res.error), strict=True
    ):
        if kind == "good":  # its own root, whatever its neighbours are, at whatever scales
            a32 = np.asarray(jnp.asarray(A0 * 10.0**exponent, jnp.float32), np.float64)
            _check_root(r, e, a32, p, method, 0.0)
        else:
            assert float(e) == np.inf, (kind, e)
            if kind != "zero":
                assert np.all(np.isnan(r))


@pytest.mark.parametrize("method", INVERSE_ROOT_METHODS)
def test_inverse_root_beyond_float32_is_flagged(method):
    # p = 1 of lambda_max ~ 3e38: the root's eigenvalues (~3e-39) are below float32's normal
    # range and would be flushed to zero; the root must not be passed off as accurate.
    a = jnp.asarray(A0 / np.max(np.abs(A0)) * 3e38, jnp.float32)
    assert float(inverse_root(a, 1, method=method).error) == np.inf
    # eps_floor = 0 and a tiny matrix: the inverse overflows: inf entries, error inf.
    res = inverse_root(jnp.asarray(A0 * 1e-38, jnp.float32), 1, method=method, eps_floor=0.0)
    assert float(res.error) == np.inf
