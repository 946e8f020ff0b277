"""optlab.linalg._lapack: host LAPACK factorizations against float64 references (one device).

Tolerances are LAPACK's backward-error bounds: a computed factorization is exact for ``A + E``
with ``||E||_2 <= c(d) u ||A||_2`` (``u = 2^-24``; ``c(d)``, a modest multiple of the size, is
taken as ``d = max(m, n)``, as in tests/linalg/error_bounds.py). Hence eigenvalues and singular
values within ``d u ||A||_2`` (Weyl), eigenvectors within ``d u ||A||_2 / gap`` in angle
(Davis-Kahan), reconstructions within ``d u ||A||``. Multi-device and hang tests live in
test_multidevice.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optlab.linalg import _lapack
from tests.linalg.error_bounds import U32


def _sym_with_spectrum(rng, w):
    q, _ = np.linalg.qr(rng.standard_normal((len(w), len(w))))
    return (q * w) @ q.T, q


def _align(v, q):
    """Flip the columns of v onto q's signs (eigenvectors are defined up to sign)."""
    return v * np.sign(np.sum(v * q, axis=-2, keepdims=True))


@pytest.mark.parametrize("d", [1, 7, 64])
def test_eigh_matches_float64(d):
    rng = np.random.default_rng(d)
    w_true = np.linspace(1.0, float(d), d)  # gaps of 1
    a, q = _sym_with_spectrum(rng, w_true)
    w, v = jax.jit(_lapack.eigh)(jnp.asarray(a, jnp.float32))
    assert w.dtype == v.dtype == jnp.float32
    # Backward error: rounding a to float32 (||.||_2 <= u ||a||_F <= sqrt(d) u ||a||_2) plus
    # LAPACK's d u ||a||_2.
    err = (d + np.sqrt(d)) * U32 * float(d)  # ||a||_2 = d
    assert np.max(np.abs(np.asarray(w, np.float64) - w_true)) <= err
    # Davis-Kahan: sin(angle) <= err / (gap - 2 err) < 2 err / gap per eigenvector (gap 1).
    v = _align(np.asarray(v, np.float64), q)
    assert np.max(np.linalg.norm(v - q, axis=0)) <= 2 * err / 1.0


def test_eigh_reads_only_the_lower_triangle_and_rows_is_the_transpose():
    rng = np.random.default_rng(0)
    a, _ = _sym_with_spectrum(rng, np.linspace(1, 2, 16))
    garbage = np.tril(a) + np.triu(rng.standard_normal((16, 16)), 1)
    w1, v1 = _lapack.eigh(jnp.asarray(a, jnp.float32))
    w2, v2 = _lapack.eigh(jnp.asarray(garbage, jnp.float32))
    w3, rows = _lapack.eigh(jnp.asarray(garbage, jnp.float32), rows=True)
    # The same LAPACK call on the same lower triangle: identical results.
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_array_equal(w3, w2)
    np.testing.assert_array_equal(rows, np.swapaxes(np.asarray(v2), -1, -2))


def test_batches_nan_matrices_and_empty_shapes():
    rng = np.random.default_rng(1)
    a = np.stack([_sym_with_spectrum(rng, np.linspace(1, 3, 8))[0] for _ in range(6)])
    a = a.reshape(2, 3, 8, 8).astype(np.float32)
    bad = a.copy()
    bad[1, 2, 3, 4] = np.nan
    w, v = _lapack.eigh(jnp.asarray(bad))
    assert w.shape == (2, 3, 8) and v.shape == (2, 3, 8, 8)
    assert np.all(np.isnan(w[1, 2])) and np.all(np.isnan(v[1, 2]))
    # The others are exactly what they are alone (one LAPACK call per matrix either way).
    w_alone, v_alone = _lapack.eigh(jnp.asarray(a[0, 1]))
    np.testing.assert_array_equal(w[0, 1], w_alone)
    np.testing.assert_array_equal(v[0, 1], v_alone)
    assert _lapack.eigh(jnp.zeros((0, 5, 5)))[0].shape == (0, 5)
    assert _lapack.eigh(jnp.zeros((3, 0, 0)))[1].shape == (3, 0, 0)
    assert _lapack.svd(jnp.zeros((2, 4, 0)))[1].shape == (2, 0)
    assert _lapack.qr(jnp.zeros((2, 0, 3)))[1].shape == (2, 0, 3)


def test_threads_and_vmap_give_the_serial_results(monkeypatch):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((12, 48, 48)).astype(np.float32)
    a = a + np.swapaxes(a, -1, -2)
    monkeypatch.setattr(_lapack, "_batch_threads", lambda: 1)
    serial = _lapack.host_eigh(a)
    monkeypatch.setattr(_lapack, "_batch_threads", lambda: 3)  # 3 chunks
    chunked = _lapack.host_eigh(a)
    vmapped = jax.vmap(_lapack.eigh)(jnp.asarray(a))
    for x, y, z in zip(serial, chunked, vmapped):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)


def test_host_eigh_float64():
    rng = np.random.default_rng(3)
    w_true = np.geomspace(1e-6, 1.0, 20)
    a, _ = _sym_with_spectrum(rng, w_true)
    w, v = _lapack.host_eigh(a)
    assert w.dtype == v.dtype == np.float64
    # a is w_true's matrix up to forming it (q not exactly orthogonal, rounded products: d u
    # ||a|| each), and LAPACK adds d u ||a|| (||a||_2 = 1).
    u64 = np.finfo(np.float64).eps / 2
    assert np.max(np.abs(w - w_true)) <= 3 * 20 * u64
    np.testing.assert_allclose(v @ np.diag(w) @ v.T, a, rtol=0, atol=3 * 20 * u64)


def test_eigh_jvp_and_grad():
    rng = np.random.default_rng(4)
    d = 8
    w_true = np.arange(1.0, d + 1.0)  # gaps of 1
    a, q = _sym_with_spectrum(rng, w_true)
    da = rng.standard_normal((d, d))
    da = da + da.T
    (w, v), (dw, dv) = jax.jvp(
        _lapack.eigh, (jnp.asarray(a, jnp.float32),), (jnp.asarray(da, jnp.float32),)
    )
    c = q.T @ da @ q  # exact first-order perturbation theory, float64
    dw_ref = np.diag(c)
    f = 1.0 / (np.eye(d) + w_true[None, :] - w_true[:, None]) - np.eye(d)
    dv_ref = q @ (f * c)
    # Each tangent is a sum of d terms built from factors that are off by eps_v = d u ||a|| /
    # gap (angle) and eigenvalues off by d u ||a||; with gaps of 1 every term is off by at most
    # 2 eps_v ||da|| (1 + ||a||), so d times that bounds the sum.
    eps_v = d * U32 * d
    tol = d * 2 * eps_v * np.linalg.norm(da, 2) * (1 + d)
    assert np.max(np.abs(np.asarray(dw) - dw_ref)) <= tol
    sign = np.sign(np.sum(np.asarray(v, np.float64) * q, axis=0))
    assert np.max(np.abs(np.asarray(dv, np.float64) * sign - dv_ref)) <= tol
    # The sum of the eigenvalues is the trace of the lower triangle read: gradient I.
    g = jax.grad(lambda x: jnp.sum(_lapack.eigh(x)[0]))(jnp.asarray(a, jnp.float32))
    np.testing.assert_allclose(np.asarray(g), np.eye(d), atol=d * d * U32 * d)


@pytest.mark.parametrize("shape", [(9, 5), (5, 9), (6, 6)])
def test_svd_against_float64(shape):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal((3, *shape))
    u, s, vt = jax.jit(_lapack.svd)(jnp.asarray(x, jnp.float32))
    k = min(shape)
    assert u.shape == (3, shape[0], k) and s.shape == (3, k) and vt.shape == (3, k, shape[1])
    m = max(shape)
    norm = np.linalg.norm(x, 2, axis=(-2, -1))
    s_ref = np.linalg.svd(x, compute_uv=False)
    assert np.all(np.max(np.abs(np.asarray(s, np.float64) - s_ref), axis=-1) <= m * U32 * norm)
    s_only = _lapack.svd(jnp.asarray(x, jnp.float32), compute_uv=False)
    assert np.all(np.max(np.abs(np.asarray(s_only, np.float64) - s_ref), axis=-1) <= m * U32 * norm)
    recon = np.einsum("bik,bk,bkj->bij", *(np.asarray(t, np.float64) for t in (u, s, vt)))
    assert np.all(
        np.linalg.norm(recon - x, axis=(-2, -1)) <= m * U32 * np.linalg.norm(x, axis=(-2, -1)) * 4
    )
    eye = np.eye(k)
    assert (
        np.max(np.abs(np.swapaxes(np.asarray(u, np.float64), -1, -2) @ np.asarray(u) - eye))
        <= m * U32 * 4
    )
    # d s_i = u_i^T dA v_i (exact first order); factors off by m u ||x|| / gap at most.
    dx = rng.standard_normal((3, *shape))
    _, ds = jax.jvp(
        lambda y: _lapack.svd(y, compute_uv=False),
        (jnp.asarray(x, jnp.float32),),
        (jnp.asarray(dx, jnp.float32),),
    )
    u64, _, vt64 = np.linalg.svd(x, full_matrices=False)
    ds_ref = np.einsum("bik,bij,bkj->bk", u64, dx, vt64)
    s_all = np.linalg.svd(x, compute_uv=False)
    gap = np.min(np.abs(np.diff(s_all, axis=-1)))
    tol = 4 * m * U32 * np.max(norm) / gap * np.max(np.linalg.norm(dx, 2, axis=(-2, -1)))
    assert np.max(np.abs(np.asarray(ds, np.float64) - ds_ref)) <= tol


@pytest.mark.parametrize("shape", [(9, 5), (5, 9), (6, 6)])
def test_qr_against_the_input(shape):
    rng = np.random.default_rng(10 + sum(shape))
    x = rng.standard_normal((2, *shape))
    q, r = jax.jit(_lapack.qr)(jnp.asarray(x, jnp.float32))
    k = min(shape)
    q64, r64 = np.asarray(q, np.float64), np.asarray(r, np.float64)
    assert q.shape == (2, shape[0], k) and r.shape == (2, k, shape[1])
    np.testing.assert_array_equal(r64, np.triu(r64))
    m = max(shape)
    # Householder QR is backward stable: ||QR - x|| and ||Q^T Q - I|| within m u ||x|| and m u
    # (4 m u used).
    assert np.all(
        np.linalg.norm(q64 @ r64 - x, axis=(-2, -1))
        <= 4 * m * U32 * np.linalg.norm(x, axis=(-2, -1))
    )
    assert np.max(np.abs(np.swapaxes(q64, -1, -2) @ q64 - np.eye(k))) <= 4 * m * U32
    if shape[0] >= shape[1]:
        # The exact derivative satisfies dQ R + Q dR = dA, Q^T dQ skew, dR upper triangular.
        # The computed one misses by the solve with R (kappa(R) u) and the products (m u).
        dx = rng.standard_normal(x.shape)
        _, (dq, dr) = jax.jvp(
            _lapack.qr, (jnp.asarray(x, jnp.float32),), (jnp.asarray(dx, jnp.float32),)
        )
        dq, dr = np.asarray(dq, np.float64), np.asarray(dr, np.float64)
        kappa = np.max(np.linalg.cond(r64))
        tol = 4 * m * U32 * kappa * np.max(np.linalg.norm(dx, axis=(-2, -1)))
        assert np.max(np.abs(dq @ r64 + q64 @ dr - dx)) <= tol
        skew = np.swapaxes(q64, -1, -2) @ dq
        assert np.max(np.abs(skew + np.swapaxes(skew, -1, -2))) <= tol
        np.testing.assert_array_equal(dr, np.triu(dr))


def test_host_call_broadcasts_unbatched_operands_under_vmap():
    def fn(x, scale):
        return np.asarray(x * scale[..., None], np.float32)

    out = jax.ShapeDtypeStruct((3,), jnp.float32)
    got = jax.vmap(lambda x: _lapack.host_call(fn, out, x, jnp.float32(2.0)))(
        jnp.arange(12.0).reshape(4, 3)
    )
    np.testing.assert_array_equal(got, 2 * np.arange(12.0).reshape(4, 3))


def test_rejects_complex_and_non_matrices():
    with pytest.raises(ValueError, match="real"):
        _lapack.eigh(jnp.eye(2, dtype=jnp.complex64))
    with pytest.raises(ValueError, match="square"):
        _lapack.eigh(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="matrices"):
        _lapack.svd(jnp.ones(3))
