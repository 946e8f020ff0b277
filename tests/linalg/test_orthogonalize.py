"""orthogonalize against the exact polar factor U V^T (float64 numpy SVD).

Tolerances: the round-off bounds of tests/linalg/error_bounds.py (backward-stable steps, and the
polar factor's sensitivity ``2 ||E||_F / sigma_min``), or the polynomials' designed error.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optlab.linalg import (
    ORTHOGONALIZE_METHODS,
    default_steps,
    orthogonality_error,
    orthogonalize,
)
from tests.linalg.error_bounds import (
    exact_polar,
    polar_cosine,
    polar_cosine_loss_bound,
    polar_factor_error_bound,
)


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
    got = np.asarray(orthogonalize(jnp.asarray(x, jnp.float32), method="svd"), np.float64)
    for g, m in zip(got.reshape(-1, *shape[-2:]), x.reshape(-1, *shape[-2:]), strict=True):
        assert np.linalg.norm(g - polar64(m)) <= polar_factor_error_bound(m)


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
    # Designed: within 1e-2 of 1 in exact arithmetic. float32 adds about the last step's own
    # rounding (k u ~ 1.5e-5; earlier steps' errors are absorbed by the 2% safety margin and
    # contracted by the later polynomials): 0.05 leaves that a wide margin.
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
    x64 = rng.standard_normal(shape)
    x = jnp.asarray(x64, jnp.float32)
    plain = orthogonalize(x, method="newton_schulz", coefficients=coefficients)
    gram = orthogonalize(x, method="gram_newton_schulz", coefficients=coefficients)
    steps = default_steps(coefficients, shape)
    for g, q, m in zip(
        np.asarray(gram, np.float64).reshape(-1, *shape[-2:]),
        np.asarray(plain, np.float64).reshape(-1, *shape[-2:]),
        x64.reshape(-1, *shape[-2:]),
        strict=True,
    ):
        # Both are the same polynomial of X in exact arithmetic. Each is within the iteration's
        # round-off bound of it, the Gram variant with the Gram matrix's condition number
        # kappa^2, i.e. kappa times the plain bound (kappa ~ 3 for these Gaussian shapes).
        sv = np.linalg.svd(m, compute_uv=False)
        bound = polar_factor_error_bound(m, steps=steps) * (1 + sv[0] / sv[-1])
        assert np.linalg.norm(g - q) <= bound, (np.linalg.norm(g - q), bound)


def test_gram_polar_express_geometric_spectrum_float32():
    # Squaring the condition number is what makes Gram iterations fragile; 1e-3 must be fine.
    x = with_spectrum(np.random.default_rng(4), 64, 256, np.geomspace(1, 1e-3, 64))
    y = orthogonalize(
        jnp.asarray(x, jnp.float32), method="gram_newton_schulz", coefficients="polar_express"
    )
    assert np.max(np.abs(singular_values(y) - 1.0)) <= 0.05


@pytest.mark.parametrize("method", ORTHOGONALIZE_METHODS)
def test_zero_input_gives_zero(method):
    y = orthogonalize(jnp.zeros((2, 6, 9)), method=method)
    assert y.shape == (2, 6, 9)
    np.testing.assert_array_equal(y, 0.0)


@pytest.mark.parametrize("method", ORTHOGONALIZE_METHODS)
def test_batch_equals_loop_and_tall_equals_transposed_wide(method):
    x64 = np.random.default_rng(5).standard_normal((3, 20, 12))
    x = jnp.asarray(x64, jnp.float32)
    batched = np.asarray(orthogonalize(x, method=method), np.float64)
    steps = 1 if method == "svd" else default_steps(method, x.shape)
    for i in range(3):
        # Same computation up to blocking: both within the round-off bound, so within twice it.
        bound = 2 * polar_factor_error_bound(x64[i], steps=steps)
        single = np.asarray(orthogonalize(x[i], method=method), np.float64)
        transposed = np.asarray(orthogonalize(x[i].T, method=method), np.float64).T
        assert np.linalg.norm(batched[i] - single) <= bound
        assert np.linalg.norm(batched[i] - transposed) <= bound


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
    # Designed 1e-2, plus rounding the result to bfloat16: ||dY||_2 <= ||dY||_F <= u ||Y||_F =
    # 2^-8 sqrt(64) = 0.03, and about as much from the last step's own rounding: < 0.1.
    assert float(orthogonality_error(y)) < 0.1


def _family(name):
    rng = np.random.default_rng(11)
    if name == "gaussian_256x1024":
        return rng.standard_normal((256, 1024))
    if name == "gaussian_1024x256":
        return rng.standard_normal((1024, 256))
    if name == "log_spaced_1e-3_256x1024":
        return with_spectrum(rng, 256, 1024, np.geomspace(1.0, 1e-3, 256))
    return with_spectrum(rng, 128, 128, np.geomspace(1.0, 1e-2, 128))  # log_spaced_1e-2_128


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize(
    "family",
    ["gaussian_256x1024", "gaussian_1024x256", "log_spaced_1e-3_256x1024", "log_spaced_1e-2_128"],
)
def test_low_precision_polar_express_reaches_the_polar_factor(family, dtype):
    # Computed in bfloat16 the old kernel had cosines 0.83 (Gaussian) to 0.94 (log-spaced) to
    # the polar factor: its uncushioned first polynomial dips to 0.0085 inside the interval and
    # bfloat16 round-off flipped those singular values' signs. The bound (error_bounds.py): the
    # designed error (1e-2) plus T + 1 roundings, each costing at most what rounding the input
    # to the dtype once costs the exact polar factor (computed exactly in float64).
    x = _family(family)
    y = orthogonalize(jnp.asarray(x, jnp.float32), method="polar_express", compute_dtype=dtype)
    assert y.dtype == jnp.float32
    steps = default_steps("polar_express", x.shape)
    loss = 1.0 - polar_cosine(np.asarray(y, np.float64), exact_polar(x))
    assert loss <= polar_cosine_loss_bound(x, dtype, steps, design_error=1e-2), loss


@pytest.mark.parametrize("compute_dtype", [None, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("method", ORTHOGONALIZE_METHODS)
def test_power_of_two_scaling_changes_nothing(method, compute_dtype):
    # x 2^k is exact in float32, and orthogonalize's normalization undoes it exactly (a power of
    # two from the largest entry, before the cast to the compute dtype), so the results must be
    # identical bit for bit, from 2^-100 (7.9e-31) to 2^100 (1.3e30). The old Frobenius
    # pre-scaling squared the entries (overflow beyond ~1e19, underflow below ~1e-19) and cast
    # to float16 first (inf beyond 65504).
    x = jnp.asarray(np.random.default_rng(12).standard_normal((2, 12, 20)), jnp.float32)
    ref = np.asarray(orthogonalize(x, method=method, compute_dtype=compute_dtype))
    assert np.all(np.isfinite(ref)) and np.any(ref != 0)
    for k in (-100, -60, 60, 100):  # (entries stay normal: subnormals are flushed to 0)
        y = orthogonalize(x * 2.0**k, method=method, compute_dtype=compute_dtype)
        np.testing.assert_array_equal(np.asarray(y), ref, err_msg=f"2^{k}")


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
