"""orthogonalize against the exact polar factor U V^T (float64 numpy SVD)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optlab.linalg import ORTHOGONALIZE_METHODS, orthogonality_error, orthogonalize


def with_spectrum(rng, m, n, s):
    u, _ = np.linalg.qr(rng.standard_normal((m, len(s))))
    v, _ = np.linalg.qr(rng.standard_normal((n, len(s))))
    return (u * s) @ v.T


def polar64(x):
    u, _, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
    return u @ vt


def singular_values(y):
    return np.linalg.svd(np.asarray(y, np.float64), compute_uv=False)


SHAPES = [(64, 64), (32, 96), (96, 32), (3, 24, 40)]


@pytest.mark.parametrize("shape", SHAPES)
def test_svd_matches_u_vt(shape):
    x = np.random.default_rng(0).standard_normal(shape)
    got = orthogonalize(jnp.asarray(x, jnp.float32), method="svd")
    ref = np.stack([polar64(m) for m in x.reshape(-1, *shape[-2:])]).reshape(shape)
    np.testing.assert_allclose(got, ref, atol=2e-5)


@pytest.mark.parametrize("shape", [(64, 64), (48, 160), (160, 48), (256, 256)])
@pytest.mark.parametrize("spectrum", ["geometric", "flat_with_one_small"])
def test_polar_express_default_steps_reach_005(shape, spectrum):
    k = min(shape)
    rng = np.random.default_rng(1)
    if spectrum == "geometric":
        s = np.geomspace(1.0, 1e-3, k)
    else:  # the worst case for the normalization: sum sigma^8 largest relative to sigma_max
        s = np.ones(k)
        s[-1] = 1e-3
    x = with_spectrum(rng, *shape, s) * 37.0  # scale must not matter
    y = orthogonalize(jnp.asarray(x, jnp.float32), method="polar_express")
    sv = singular_values(y)
    assert np.max(np.abs(sv - 1.0)) <= 0.05, (sv.min(), sv.max())
    # And it is the polar factor, not just some orthogonal matrix.
    assert np.linalg.norm(np.asarray(y, np.float64) - polar64(x)) / np.sqrt(k) < 0.05


@pytest.mark.parametrize("shape", [(64, 64), (40, 120), (120, 40)])
def test_newton_schulz_band(shape):
    rng = np.random.default_rng(2)
    s = np.geomspace(1.0, 1e-4, min(shape))
    x = with_spectrum(rng, *shape, s)
    y = orthogonalize(jnp.asarray(x, jnp.float32), method="newton_schulz")
    # Singular directions are preserved, so map each input sigma to its output sigma.
    u, _, vt = np.linalg.svd(x, full_matrices=False)
    out = np.einsum("ik,ij,kj->k", u, np.asarray(y, np.float64), vt)
    big = s >= 0.1 * s[0]
    assert np.all((out[big] >= 0.6) & (out[big] <= 1.25)), (out[big].min(), out[big].max())
    assert np.max(singular_values(y)) <= 1.3


@pytest.mark.parametrize("coefficients", ["newton_schulz", "polar_express"])
@pytest.mark.parametrize("shape", [(32, 128), (128, 32), (2, 48, 64)])
def test_gram_agrees_with_plain_iteration(coefficients, shape):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    plain = orthogonalize(x, method="newton_schulz", coefficients=coefficients)
    gram = orthogonalize(x, method="gram_newton_schulz", coefficients=coefficients)
    assert float(jnp.linalg.norm(gram - plain) / jnp.linalg.norm(plain)) < 1e-3


def test_gram_polar_express_geometric_spectrum_float32():
    # Squaring the condition number is what makes Gram iterations fragile; 1e-3 must be fine.
    x = with_spectrum(np.random.default_rng(4), 64, 256, np.geomspace(1, 1e-3, 64))
    y = orthogonalize(jnp.asarray(x, jnp.float32), method="gram_newton_schulz",
                      coefficients="polar_express")
    assert np.max(np.abs(singular_values(y) - 1.0)) <= 0.05


@pytest.mark.parametrize("method", ORTHOGONALIZE_METHODS)
def test_zero_input_gives_zero(method):
    y = orthogonalize(jnp.zeros((2, 6, 9)), method=method)
    assert y.shape == (2, 6, 9)
    np.testing.assert_array_equal(y, 0.0)


@pytest.mark.parametrize("method", ORTHOGONALIZE_METHODS)
def test_batch_equals_loop_and_tall_equals_transposed_wide(method):
    x = jnp.asarray(np.random.default_rng(5).standard_normal((3, 20, 12)), jnp.float32)
    batched = orthogonalize(x, method=method)
    for i in range(3):
        np.testing.assert_allclose(batched[i], orthogonalize(x[i], method=method), atol=1e-5)
        np.testing.assert_allclose(
            batched[i], orthogonalize(x[i].T, method=method).T, atol=1e-5)


def test_nan_stays_in_its_matrix():
    x = np.random.default_rng(6).standard_normal((2, 8, 8))
    x[1, 0, 0] = np.nan
    y = np.asarray(orthogonalize(jnp.asarray(x, jnp.float32)))
    assert np.all(np.isfinite(y[0])) and np.all(np.isnan(y[1]))


def test_bfloat16_compute_dtype_and_jit():
    x = jnp.asarray(np.random.default_rng(7).standard_normal((64, 128)), jnp.bfloat16)
    f = jax.jit(lambda x: orthogonalize(x, method="polar_express", compute_dtype=jnp.bfloat16))
    y = f(x)
    assert y.dtype == jnp.bfloat16
    # bfloat16 has 8 bits of mantissa: the singular values land within a few percent of 1.
    assert float(orthogonality_error(y)) < 0.1


def test_orthogonality_error_is_exact():
    q, _ = np.linalg.qr(np.random.default_rng(8).standard_normal((10, 4)))
    assert float(orthogonality_error(jnp.asarray(q * [1, 1, 1, 1.5]))) == pytest.approx(0.5, 1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "qr"}, "method must be"),
        ({"steps": 0}, "steps must be"),
        ({"steps": 2.0}, "steps must be"),
        ({"coefficients": "chebyshev"}, "coefficients must be"),
        ({"coefficients": [(1.0, 2.0)]}, "coefficients must be"),
        ({"coefficients": [(1.0, 2.0, 3.0)], "steps": 2}, "does not match"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        orthogonalize(jnp.ones((4, 4)), **kwargs)


def test_vector_rejected():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        orthogonalize(jnp.ones(4))
