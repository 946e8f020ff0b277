"""inverse_root against float64 numpy eigh (the exact reference).

Tolerances are the round-off bounds of tests/linalg/error_bounds.py: relative root error
``d u kappa / p`` and residual ``(p + 1) d u kappa`` for float32 (u = 2^-24), with ``kappa`` the
condition number of the regularized matrix; the Newton iteration stops at its ``tol`` (1e-6), which
its residual bound includes. Results of two computations that differ only in blocking (a batch
against a loop, sharded against not) may each be anywhere within the bound of the exact root,
so they are compared with twice the bound, never bit for bit.
"""

import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optlab.linalg import (
    AUTO_FLOAT32_MAX_CONDITION,
    condition_estimate,
    inverse_root,
    matrix_power,
    max_eigenvalue_estimate,
    residual,
)
from tests.contract.checks import N_SHARDED_DEVICES, sharded_subprocess_env
from tests.linalg.error_bounds import (
    U32,
    regularized_condition,
    residual_bound,
    root_relative_error_bound,
)

METHODS = ["eigh", "eigh64", "newton", "auto"]


def spd(rng, d, cond):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.geomspace(1.0, 1.0 / cond, d)) @ q.T


def reference(a, p, eps=1e-6, floor=1e-16):
    w, v = np.linalg.eigh(np.asarray(a, np.float64))
    w = np.maximum(w, 0.0)
    return (v * (w + eps * w[-1] + floor) ** (-1.0 / p)) @ v.T


def rel_err(x, ref):
    return np.linalg.norm(np.asarray(x, np.float64) - ref) / np.linalg.norm(ref)


NEWTON_TOL = 1e-6  # inverse_root's default tol: the Newton iteration stops there


def root_bound(a, p, method, eps=1e-6, eps_floor=1e-16):
    """Relative error a root may have: round-off, plus for Newton its stopping point (residual
    ``tol``, so ``X = a^{-1/p} (I + R)^{1/p}`` with ``||R|| <= tol``: relative ``tol / p``)."""
    bound = root_relative_error_bound(a.shape[-1], regularized_condition(a, eps, eps_floor), p)
    return bound + (NEWTON_TOL / p if method == "newton" else 0.0)


def error_bound(a, p, method, eps=1e-6, eps_floor=1e-16):
    """inverse_root's residual estimate can reach this (module docstring)."""
    bound = residual_bound(a.shape[-1], regularized_condition(a, eps, eps_floor), p)
    return bound + (NEWTON_TOL if method == "newton" else 0.0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("p", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("cond", [1e2, 1e4])
def test_accurate_up_to_cond_1e4(method, p, cond):
    a = spd(np.random.default_rng(p), 48, cond)
    got = inverse_root(jnp.asarray(a, jnp.float32), p, method=method)
    assert got.dtype == jnp.float32
    # 2.9e-4 / p at cond 1e2, 2.9e-2 / p at 1e4 (float32 eigh's bound; eigh64 is far inside).
    assert rel_err(got, reference(a, p)) <= root_bound(a, p, method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("p", [2, 4, 8])
def test_within_float32_bound_at_cond_1e6(method, p):
    # Every method is at least as accurate as float32 eigh can be guaranteed to be. (Comparing
    # with the error of one more float32 eigh is no test: that error is round-off, and two
    # LAPACK builds differ in it by tens of percent.)
    a = spd(np.random.default_rng(10 + p), 48, 1e6)
    got = rel_err(inverse_root(jnp.asarray(a, jnp.float32), p, method=method), reference(a, p))
    assert got <= root_bound(a, p, method)


@pytest.mark.parametrize("method", METHODS)
def test_batched_equals_looped(method):
    rng = np.random.default_rng(0)
    conds = (1e1, 1e2, 1e3, 1e4, 1e5, 3.0)
    mats = [spd(rng, 16, c) for c in conds]
    stack = np.stack(mats).reshape(2, 3, 16, 16)
    batched = inverse_root(jnp.asarray(stack, jnp.float32), 4, method=method, return_error=True)
    assert batched.root.shape == (2, 3, 16, 16) and batched.error.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            a = mats[3 * i + j]
            single = inverse_root(
                jnp.asarray(stack[i, j], jnp.float32), 4, method=method, return_error=True
            )
            # LAPACK and XLA may block a batch differently from one matrix: both results are
            # within the round-off bound of the exact root, hence within twice it of each other.
            diff = rel_err(batched.root[i, j], np.asarray(single.root, np.float64))
            assert diff <= 2 * root_bound(a, 4, method)
            # The error estimates are round-off-level numbers: each within its bound (they
            # differed by 1-23% between a batch and a loop on another CPU, which is fine).
            bound = error_bound(a, 4, method)
            assert 0 <= float(batched.error[i, j]) <= bound
            assert 0 <= float(single.error) <= bound


@pytest.mark.parametrize("method", METHODS)
def test_zero_matrix_gives_floor_root(method):
    res = inverse_root(jnp.zeros((5, 5)), 2, eps_floor=1e-4, method=method, return_error=True)
    # kappa = 1: a few roundings of 100 (the bound's d u kappa / p = 1.5e-7, 4 roundings 2.4e-7).
    np.testing.assert_allclose(res.root, 100.0 * np.eye(5), rtol=4 * U32)
    assert float(res.error) <= error_bound(np.zeros((5, 5)), 2, method, eps_floor=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_rank_deficient_uses_ridge_on_null_space(method):
    rng = np.random.default_rng(3)
    g = rng.standard_normal((12, 3))
    a = g @ g.T  # rank 3
    got = inverse_root(jnp.asarray(a, jnp.float32), 4, eps=1e-3, method=method)
    ref = reference(a, 4, eps=1e-3)
    assert np.all(np.isfinite(np.asarray(got)))
    # kappa ~ 1e3 (the ridge 1e-3 lambda_max on the null space): bound 1.8e-4.
    assert rel_err(got, ref) <= root_bound(a, 4, method, eps=1e-3)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_is_flagged_not_plausible(method, bad):
    rng = np.random.default_rng(4)
    a = np.stack([spd(rng, 8, 10.0), spd(rng, 8, 10.0)])
    a[1, 2, 3] = bad
    res = inverse_root(jnp.asarray(a, jnp.float32), 4, method=method, return_error=True)
    # The good matrix of the batch is untouched; the bad one is NaN with error inf.
    assert rel_err(res.root[0], reference(a[0], 4)) <= root_bound(a[0], 4, method)
    assert np.isfinite(float(res.error[0])) and float(res.error[0]) <= error_bound(a[0], 4, method)
    assert np.all(np.isnan(np.asarray(res.root[1])))
    assert float(res.error[1]) == np.inf


@pytest.mark.parametrize("method", METHODS)
def test_error_estimate_is_the_true_residual(method):
    a = spd(np.random.default_rng(5), 32, 1e3)
    res = inverse_root(jnp.asarray(a, jnp.float32), 3, method=method, return_error=True)
    a_reg = a + (1e-6 * np.linalg.eigvalsh(a)[-1] + 1e-16) * np.eye(32)
    x = np.asarray(res.root, np.float64)
    true = np.linalg.norm(np.linalg.matrix_power(x, 3) @ a_reg - np.eye(32), 2)
    bound = error_bound(a, 3, method)  # 7.6e-3 for d = 32, kappa = 1e3, p = 3
    assert true <= bound and float(res.error) <= bound
    # A root that is off by a known factor: X' = (1 + delta)^(1/3) X has X'^3 a - I =
    # (1 + delta) (X^3 a - I) + delta I, whose probe estimate is delta up to the round-off
    # residual (times 1 + delta); delta is well above that, so the estimate must find it.
    delta = 0.1
    scaled = (1 + delta) ** (1 / 3) * np.asarray(res.root, np.float64)
    est = float(residual(jnp.asarray(a_reg, jnp.float32), jnp.asarray(scaled, jnp.float32), 3))
    assert abs(est - delta) <= (1 + delta) * bound + 4 * U32, (est, delta)


def test_bfloat16_input_is_computed_in_float32():
    a = spd(np.random.default_rng(6), 16, 10.0)
    a_bf16 = jnp.asarray(a, jnp.bfloat16)
    got = inverse_root(a_bf16, 2)
    assert got.dtype == jnp.float32
    a_in = np.asarray(a_bf16.astype(jnp.float32), np.float64)
    # The float32 bound (4.8e-6 here); computed in bfloat16 it would be ~2^-8 kappa = 4e-2.
    assert rel_err(got, reference(a_in, 2)) <= root_relative_error_bound(
        16, regularized_condition(a_in), 2
    )


def test_p1_is_the_inverse_and_jit_works():
    a = spd(np.random.default_rng(7), 10, 50.0)
    f = jax.jit(lambda m: inverse_root(m, 1, eps=0.0, eps_floor=0.0, method="newton"))
    # Normwise: d u kappa + tol = 4e-5 (elementwise tolerances would be wrong for entries
    # near zero).
    assert rel_err(f(jnp.asarray(a, jnp.float32)), np.linalg.inv(a)) <= root_bound(
        a, 1, "newton", eps=0.0, eps_floor=0.0
    )


@pytest.mark.parametrize("cond", [1e4, 1e6])
def test_eigh64_is_accurate_where_float32_is_not(cond):
    a = spd(np.random.default_rng(20), 256, cond)
    a_in = np.asarray(jnp.asarray(a, jnp.float32), np.float64)
    ref = reference(a_in, 4)
    a32 = jnp.asarray(a, jnp.float32)
    # float64 eigh's bound (u = 2^-53) plus rounding the result to float32 (relative u32 per
    # entry, so at most u32 in the Frobenius norm): 1.3e-7. float32 eigh's own bound here is
    # 2.4e-2 (cond 1e4) and its errors are typically ~1e-4: the float64 path is what makes it.
    bound = root_relative_error_bound(256, regularized_condition(a_in), 4, u=2.0**-53) + 2 * U32
    assert rel_err(inverse_root(a32, 4, method="eigh64"), ref) <= bound
    # auto estimates the condition number and takes the float64 path here.
    assert rel_err(inverse_root(a32, 4, method="auto"), ref) <= bound


def test_auto_keeps_float32_for_well_conditioned_matrices():
    a = spd(np.random.default_rng(21), 256, 10.0)
    a32 = jnp.asarray(a, jnp.float32)
    assert float(condition_estimate(a32)) <= AUTO_FLOAT32_MAX_CONDITION
    auto = np.asarray(jax.jit(lambda m: inverse_root(m, 4, method="auto"))(a32), np.float64)
    eigh = np.asarray(jax.jit(lambda m: inverse_root(m, 4, method="eigh"))(a32), np.float64)
    # The same float32 computation (inside lax.cond, XLA may fuse it differently: allow a few
    # roundings of the largest entry); the float64 path would differ by float32's error.
    assert np.max(np.abs(auto - eigh)) <= 4 * U32 * np.max(np.abs(eigh))


@pytest.mark.parametrize("cond", [3.0, 50.0, 1e3, 1e4, 1e6])
def test_condition_estimate_is_a_close_lower_bound(cond):
    a = spd(np.random.default_rng(22), 256, cond)
    a32 = jnp.asarray(a, jnp.float32)
    w = np.linalg.eigvalsh(np.asarray(a32, np.float64))
    ridge = 1e-6 * w[-1] + 1e-16
    true = (w[-1] + ridge) / (max(w[0], 0.0) + ridge)
    est = float(condition_estimate(a32))
    # Ritz values lie inside the spectrum of the matrix float32 Lanczos actually saw, whose
    # eigenvalues are within d u lambda_max of a's: theta_min >= lambda_min - d u lambda_max, so
    # est <= true / (1 - d u true) where that is positive (vacuous at cond 1e6).
    slack = 256 * U32 * true
    if slack < 0.5:
        assert est <= true / (1.0 - slack), (est, true)
    # Close enough to put every matrix on the right side of auto's threshold.
    assert est >= min(true / 10.0, 2.0 * AUTO_FLOAT32_MAX_CONDITION) or true < 4.0, (est, true)


def test_condition_estimate_special_inputs():
    est = condition_estimate(jnp.stack([jnp.eye(6), jnp.zeros((6, 6)), jnp.eye(6)]))
    np.testing.assert_allclose(est[:2], [1.0, 1.0], rtol=1e-5)
    bad = jnp.eye(6).at[1, 2].set(jnp.nan)
    assert float(condition_estimate(bad)) == np.inf


def test_eigh64_under_vmap_and_with_traced_eps():
    rng = np.random.default_rng(23)
    stack = jnp.asarray(np.stack([spd(rng, 12, c) for c in (10.0, 1e3, 1e5)]), jnp.float32)
    batched = inverse_root(stack, 3, eps=1e-4, method="eigh64")
    mapped = jax.jit(
        jax.vmap(lambda m, e: inverse_root(m, 3, eps=e, method="eigh64"), in_axes=(0, None))
    )(stack, jnp.float32(1e-4))
    # The same float64 host computation either way; only the float32 output rounding (u32 = 6e-8)
    # could differ.
    np.testing.assert_allclose(mapped, batched, rtol=1e-6, atol=1e-7)
    for i in range(3):
        assert rel_err(batched[i], reference(np.asarray(stack[i], np.float64), 3, eps=1e-4)) < 1e-6


_SHARDED_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from optlab.linalg import inverse_root
    rng = np.random.default_rng(0)
    mats = []
    for i in range(8):
        q, _ = np.linalg.qr(rng.standard_normal((32, 32)))
        mats.append((q * np.geomspace(1.0, 10.0 ** -(i % 5), 32)) @ q.T)
    stack = jnp.asarray(np.stack(mats), jnp.float32)
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    sharded = jax.device_put(stack, NamedSharding(mesh, P("batch")))
    out = {}
    for method in ("auto", "eigh64", "eigh"):
        f = jax.jit(lambda m, method=method: inverse_root(m, 4, method=method, return_error=True))
        got, ref = f(sharded), f(stack)
        diff = jnp.linalg.norm(got.root - ref.root, axis=(-2, -1))
        out[method] = [float(jnp.max(diff / jnp.linalg.norm(ref.root, axis=(-2, -1)))),
                       len(got.root.sharding.device_set)]
    print(json.dumps({"devices": jax.device_count(), **out}))
""")


def test_roots_under_8_device_sharding():
    proc = subprocess.run(
        [sys.executable, "-c", _SHARDED_SCRIPT],
        env=sharded_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == N_SHARDED_DEVICES == 8
    # Sharded and unsharded calls may block LAPACK differently: twice the round-off bound of the
    # worst matrix (d = 32, condition number 1e4, p = 4: 4.8e-3).
    for method in ("auto", "eigh64", "eigh"):
        diff, _ = result[method]
        assert diff <= 2 * root_relative_error_bound(32, 1e4, 4), (method, diff)


def test_matrix_power_and_lambda_max():
    x = np.random.default_rng(8).standard_normal((5, 5)) / 3
    for p in (1, 2, 3, 5, 8):
        # At most 2 log2(p) + 1 products, each with error <= d u |x||y| entrywise: far below.
        np.testing.assert_allclose(
            matrix_power(jnp.asarray(x), p), np.linalg.matrix_power(x, p), rtol=1e-4, atol=1e-5
        )
    a = spd(np.random.default_rng(9), 20, 100.0) * 7.0
    assert abs(float(max_eigenvalue_estimate(jnp.asarray(a, jnp.float32))) - 7.0) < 0.07


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"p": 0}, "p must be"),
        ({"p": 2.5}, "p must be"),
        ({"p": True}, "p must be"),
        ({"p": 2, "method": "qr"}, "method must be"),
        ({"p": 2, "eps": -1.0}, "eps must be"),
        ({"p": 2, "eps_floor": -1.0}, "eps_floor must be"),
        ({"p": 2, "max_iters": 0}, "max_iters must be"),
        ({"p": 2, "tol": 0.0}, "tol must be"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        inverse_root(jnp.eye(3), **kwargs)


def test_non_square_rejected():
    with pytest.raises(ValueError, match="square"):
        inverse_root(jnp.ones((3, 4)), 2)
