"""Shampoo as an adapted Muon (arXiv 2602.09314): the decomposition and the semi-orthogonality
diagnostics, against float64 numpy references."""

import jax
import numpy as np
import pytest

from optlab.analysis import (
    SemiOrthogonality,
    ShampooMuonFactors,
    semi_orthogonality,
    shampoo_muon_decomposition,
)
from optlab.linalg import orthogonalize

SHAPES = [(24, 24), (16, 40), (40, 16)]


def f64(x):
    return np.asarray(x, np.float64)


def rel_err(x, ref):
    return np.linalg.norm(f64(x) - ref) / np.linalg.norm(ref)


def with_spectrum(rng, m, n, s):
    u, _ = np.linalg.qr(rng.standard_normal((m, len(s))))
    v, _ = np.linalg.qr(rng.standard_normal((n, len(s))))
    return (u * s) @ v.T


def accumulated_stats(rng, m, n, steps=6):
    """Shampoo's statistics after a few steps: L = sum G G^T, R = sum G^T G (float32)."""
    gs = rng.standard_normal((steps, m, n))
    left = np.einsum("tij,tkj->ik", gs, gs)
    right = np.einsum("tji,tjk->ik", gs, gs)
    return left.astype(np.float32), right.astype(np.float32)


def mat_power(a, q):
    w, v = np.linalg.eigh(a)
    return (v * np.maximum(w, 0.0) ** q) @ v.T


def gram_quarter_root(x):
    """(x x^T)^{1/4} = U S^{1/2} U^T (SVD: eigh would take 1/4 powers of round-off zeros)."""
    u, s, _ = np.linalg.svd(f64(x), full_matrices=False)
    return (u * np.sqrt(s)) @ u.T


def ridge_inverse_root(a, p, eps, eps_floor=1e-16):
    """float64 reference of optlab.linalg.inverse_root's (a + r I)^{-1/p}."""
    a = f64(a)
    r = eps * np.linalg.eigvalsh(a)[-1] + eps_floor
    return mat_power(a + r * np.eye(len(a)), -1.0 / p)


@pytest.mark.parametrize("shape", SHAPES)
def test_factors_reconstruct_the_shampoo_update(shape):
    rng = np.random.default_rng(0)
    m = rng.standard_normal(shape).astype(np.float32)
    left_stat, right_stat = accumulated_stats(rng, *shape)
    f = shampoo_muon_decomposition(m, left_stat, right_stat)
    assert isinstance(f, ShampooMuonFactors)
    assert f.left.shape == (shape[0], shape[0]) and f.right.shape == (shape[1], shape[1])
    assert f.orthogonal.shape == shape and f.update.shape == shape
    assert all(x.dtype == np.float32 for x in f)
    # update is L^{-1/p} M R^{-1/p} with inverse_root's ridge (float64 reference).
    eps = 1e-6
    ref = ridge_inverse_root(left_stat, 4, eps) @ f64(m) @ ridge_inverse_root(right_stat, 4, eps)
    assert rel_err(f.update, ref) < 1e-4
    # ... and the three factors multiply back to it (issue 5's must-show: < 1e-4 in float32).
    reconstruction = f64(f.left) @ f64(f.orthogonal) @ f64(f.right)
    assert rel_err(reconstruction, f64(f.update)) < 1e-4
    assert rel_err(reconstruction, ref) < 1e-4


@pytest.mark.parametrize("shape", SHAPES)
def test_outer_factors_match_their_definition(shape):
    rng = np.random.default_rng(1)
    m = rng.standard_normal(shape).astype(np.float32)
    left_stat, right_stat = accumulated_stats(rng, *shape)
    f = shampoo_muon_decomposition(m, left_stat, right_stat, eps=1e-5)
    left_ref = ridge_inverse_root(left_stat, 4, 1e-5) @ gram_quarter_root(m)
    right_ref = gram_quarter_root(m.T) @ ridge_inverse_root(right_stat, 4, 1e-5)
    assert rel_err(f.left, left_ref) < 1e-4
    assert rel_err(f.right, right_ref) < 1e-4


@pytest.mark.parametrize("shape", SHAPES)
def test_middle_factor_is_u_vt(shape):
    rng = np.random.default_rng(2)
    m = rng.standard_normal(shape).astype(np.float32)
    left_stat, right_stat = accumulated_stats(rng, *shape)
    f = shampoo_muon_decomposition(m, left_stat, right_stat)
    u, _, vt = np.linalg.svd(f64(m), full_matrices=False)
    assert rel_err(f.orthogonal, u @ vt) < 1e-5
    s = np.linalg.svd(f64(f.orthogonal), compute_uv=False)
    np.testing.assert_allclose(s, 1.0, atol=1e-5)  # semi-orthogonal
    np.testing.assert_allclose(f.orthogonal, orthogonalize(m, method="svd"), atol=1e-5)


def test_rank_deficient_middle_factor_drops_zero_singular_values():
    rng = np.random.default_rng(3)
    m = with_spectrum(rng, 12, 20, [3.0, 2.0, 1.0, 0.5]).astype(np.float32)  # rank 4
    left_stat, right_stat = accumulated_stats(rng, 12, 20)
    f = shampoo_muon_decomposition(m, left_stat, right_stat)
    s = np.linalg.svd(f64(f.orthogonal), compute_uv=False)
    np.testing.assert_allclose(s[:4], 1.0, atol=1e-5)
    np.testing.assert_allclose(s[4:], 0.0, atol=1e-5)
    np.testing.assert_allclose(f.orthogonal, orthogonalize(m, method="svd"), atol=1e-5)
    reconstruction = f64(f.left) @ f64(f.orthogonal) @ f64(f.right)
    assert rel_err(reconstruction, f64(f.update)) < 1e-4


@pytest.mark.parametrize("shape", SHAPES)
def test_without_accumulation_shampoo_is_muon(shape):
    # Seed 000: with L = M M^T, R = M^T M and p = 4 the update is U V^T, and both outer
    # factors are the projectors onto the range of M (the identity for a square full-rank M).
    rng = np.random.default_rng(4)
    k = min(shape)
    m = with_spectrum(rng, *shape, np.linspace(1.0, 3.0, k)).astype(np.float32)
    # "Tiny" eps: the ridge biases the range part by ~eps * cond^2, while for a wide or tall M
    # one of L, R is singular and float32 round-off leaks into its null space amplified by
    # ridge^{-1/4}; 1e-8 keeps both below ~3e-5 here (1e-12 would give ~2e-4).
    f = shampoo_muon_decomposition(m, m @ m.T, m.T @ m, p=4, eps=1e-8)
    u, _, vt = np.linalg.svd(f64(m), full_matrices=False)
    assert rel_err(f.update, u @ vt) < 1e-4
    assert rel_err(f.orthogonal, u @ vt) < 1e-5
    assert np.abs(f64(f.left) - u @ u.T).max() < 1e-4
    assert np.abs(f64(f.right) - vt.T @ vt).max() < 1e-4


def test_batched_and_jitted():
    rng = np.random.default_rng(5)
    ms = rng.standard_normal((3, 8, 12)).astype(np.float32)
    left = np.einsum("bij,bkj->bik", ms, ms) + np.eye(8, dtype=np.float32)
    right = np.einsum("bji,bjk->bik", ms, ms) + np.eye(12, dtype=np.float32)
    decompose = jax.jit(shampoo_muon_decomposition, static_argnames=("p", "root_method"))
    batched = decompose(ms, left, right, p=2)  # any integer root, here Shampoo^{1/2}'s
    for b in range(3):
        single = shampoo_muon_decomposition(ms[b], left[b], right[b], p=2)
        for x, y in zip(batched, single, strict=True):
            np.testing.assert_allclose(x[b], y, rtol=1e-4, atol=1e-5)


def test_bad_input_names_the_argument():
    m = np.ones((4, 6), np.float32)
    left, right = np.eye(4, dtype=np.float32), np.eye(6, dtype=np.float32)
    with pytest.raises(ValueError, match="^m must"):
        shampoo_muon_decomposition(np.ones(4), left, right)
    with pytest.raises(ValueError, match="left_stat"):
        shampoo_muon_decomposition(m, right, right)
    with pytest.raises(ValueError, match="right_stat"):
        shampoo_muon_decomposition(m, left, left)
    with pytest.raises(ValueError, match="right_stat"):
        shampoo_muon_decomposition(m, left, np.ones((6, 5), np.float32))
    with pytest.raises(ValueError, match="p must"):
        shampoo_muon_decomposition(m, left, right, p=0)
    with pytest.raises(ValueError, match="updates"):
        semi_orthogonality(np.ones((4, 6)))


def test_semi_orthogonality_is_zero_for_orthogonal_updates():
    rng = np.random.default_rng(6)
    perms = np.stack([np.eye(5)[rng.permutation(5)] for _ in range(4)]).astype(np.float32)
    d = semi_orthogonality(4.0 * perms)  # scale-invariant (a power of 2: exact)
    assert isinstance(d, SemiOrthogonality)
    assert d.per_step.shape == (4,) and d.running_average.shape == (4,)
    assert np.all(np.asarray(d.per_step) == 0.0)
    assert np.all(np.asarray(d.running_average) == 0.0)
    for shape in [(6, 10), (10, 6)]:  # random semi-orthogonal, wide and tall
        q = np.stack(
            [
                np.linalg.qr(rng.standard_normal(shape[::-1] if shape[0] < shape[1] else shape))[0]
                for _ in range(5)
            ]
        )
        q = np.swapaxes(q, 1, 2) if shape[0] < shape[1] else q
        assert q.shape == (5, *shape)
        d = semi_orthogonality(q.astype(np.float32))
        assert d.per_step.shape == (5,)
        np.testing.assert_allclose(d.per_step, 0.0, atol=1e-6)
        np.testing.assert_allclose(d.running_average, 0.0, atol=1e-6)


@pytest.mark.parametrize("transpose", [False, True])
def test_semi_orthogonality_hand_computed(transpose):
    # diag(2, 0) and diag(0, 2) alternate: each Gram is diag(4, 0), c = 2, so
    # ||diag(2, 0) - I||_F / sqrt(2) = 1 at every step; the running average is 2 I at even t
    # (distance 0) and diag(4 (j + 1), 4 j) / t at t = 2 j + 1 (distance 1 / t).
    a, b = np.diag([2.0, 0.0]), np.diag([0.0, 2.0])
    updates = np.stack([a, b] * 3)
    # Pad to 2 x 3 (wide) or 3 x 2 (tall): the Gram on the small side is unchanged.
    updates = np.concatenate([updates, np.zeros((6, 2, 1))], axis=2)
    if transpose:
        updates = np.swapaxes(updates, 1, 2)
    d = semi_orthogonality(updates.astype(np.float32))
    np.testing.assert_allclose(d.per_step, np.ones(6), atol=1e-6)
    np.testing.assert_allclose(d.running_average, [1.0, 0.0, 1 / 3, 0.0, 1 / 5, 0.0], atol=1e-6)


def test_semi_orthogonality_general_case_and_zero_update():
    rng = np.random.default_rng(7)
    updates = rng.standard_normal((5, 3, 4))
    d = semi_orthogonality(updates.astype(np.float32))

    def dist(g):
        c = np.trace(g) / len(g)
        return np.linalg.norm(g / c - np.eye(len(g))) / np.sqrt(len(g))

    grams = np.einsum("tij,tkj->tik", updates, updates)
    np.testing.assert_allclose(d.per_step, [dist(g) for g in grams], rtol=1e-5)
    running = np.cumsum(grams, axis=0) / np.arange(1, 6)[:, None, None]
    np.testing.assert_allclose(d.running_average, [dist(g) for g in running], rtol=1e-5)
    jitted = jax.jit(semi_orthogonality)(updates.astype(np.float32))
    np.testing.assert_allclose(jitted.per_step, d.per_step, rtol=1e-6)
    # A zero update is not semi-orthogonal: distance 1, never NaN.
    d = semi_orthogonality(np.zeros((2, 3, 4), np.float32))
    np.testing.assert_array_equal(d.per_step, [1.0, 1.0])
    np.testing.assert_array_equal(d.running_average, [1.0, 1.0])


def test_time_averaged_but_not_per_step_semi_orthogonal():
    # Kronecker-factored Gaussian gradients G = A Z B with exact statistics L = E[G G^T] =
    # tr(B B^T) A A^T and R = E[G^T G] = tr(A A^T) B^T B. With exponent 1/2 (p = 2) the update
    # is O = Z / const, so E[O O^T] is a multiple of I: the running average goes to 0 like
    # 1/sqrt(t) while no single O_t is semi-orthogonal. With p = 4, E[O O^T] is a multiple of
    # (A A^T)^{1/2} = A instead, and the running average levels off at d(A).
    rng = np.random.default_rng(8)
    m, n, steps = 8, 16, 400
    a, b = np.diag(np.geomspace(1.0, 10.0, m)), np.diag(np.geomspace(1.0, 5.0, n))
    grads = a @ rng.standard_normal((steps, m, n)) @ b
    left, right = np.trace(b @ b.T) * a @ a.T, np.trace(a @ a.T) * b.T @ b
    for p, limit in [(2, 0.0), (4, None)]:
        updates = mat_power(left, -1 / p) @ grads @ mat_power(right, -1 / p)
        d = semi_orthogonality(updates.astype(np.float32))
        assert np.min(d.per_step) > 0.3
        if limit is None:
            diag = np.diag(a)
            limit = np.linalg.norm(diag / diag.mean() - 1.0) / np.sqrt(m)  # d(A) ~ 0.71
        assert abs(float(d.running_average[-1]) - limit) < 0.05
