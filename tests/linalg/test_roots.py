"""inverse_root against float64 numpy eigh (the exact reference)."""

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
)
from tests.contract.checks import N_SHARDED_DEVICES, sharded_subprocess_env

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


def plain_float32_eigh_root(a, p):
    """What a user gets from jnp.linalg.eigh in float32: the bar for ill-conditioned input."""
    w, v = jnp.linalg.eigh(jnp.asarray(a, jnp.float32))
    w = jnp.maximum(w, 0.0)
    return (v * (w + 1e-6 * w[-1] + 1e-16) ** (-1.0 / p)) @ v.T


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("p", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("cond", [1e2, 1e4])
def test_accurate_up_to_cond_1e4(method, p, cond):
    a = spd(np.random.default_rng(p), 48, cond)
    got = inverse_root(jnp.asarray(a, jnp.float32), p, method=method)
    assert got.dtype == jnp.float32
    assert rel_err(got, reference(a, p)) <= 1e-3


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("p", [2, 4, 8])
def test_no_worse_than_float32_eigh_at_cond_1e6(method, p):
    a = spd(np.random.default_rng(10 + p), 48, 1e6)
    ref = reference(a, p)
    bar = rel_err(plain_float32_eigh_root(a, p), ref)
    got = rel_err(inverse_root(jnp.asarray(a, jnp.float32), p, method=method), ref)
    assert got <= 1.1 * bar + 1e-6, (got, bar)


@pytest.mark.parametrize("method", METHODS)
def test_batched_equals_looped(method):
    rng = np.random.default_rng(0)
    conds = (1e1, 1e2, 1e3, 1e4, 1e5, 3.0)
    stack = np.stack([spd(rng, 16, c) for c in conds]).reshape(2, 3, 16, 16)
    batched = inverse_root(jnp.asarray(stack, jnp.float32), 4, method=method, return_error=True)
    assert batched.root.shape == (2, 3, 16, 16) and batched.error.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            single = inverse_root(jnp.asarray(stack[i, j], jnp.float32), 4, method=method,
                                  return_error=True)
            np.testing.assert_allclose(batched.root[i, j], single.root, rtol=2e-5, atol=1e-6)
            np.testing.assert_allclose(batched.error[i, j], single.error, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_zero_matrix_gives_floor_root(method):
    res = inverse_root(jnp.zeros((5, 5)), 2, eps_floor=1e-4, method=method, return_error=True)
    np.testing.assert_allclose(res.root, 100.0 * np.eye(5), rtol=1e-4)
    assert float(res.error) < 1e-3


@pytest.mark.parametrize("method", METHODS)
def test_rank_deficient_uses_ridge_on_null_space(method):
    rng = np.random.default_rng(3)
    g = rng.standard_normal((12, 3))
    a = g @ g.T  # rank 3
    got = inverse_root(jnp.asarray(a, jnp.float32), 4, eps=1e-3, method=method)
    ref = reference(a, 4, eps=1e-3)
    assert np.all(np.isfinite(np.asarray(got)))
    assert rel_err(got, ref) <= 1e-3


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_is_flagged_not_plausible(method, bad):
    rng = np.random.default_rng(4)
    a = np.stack([spd(rng, 8, 10.0), spd(rng, 8, 10.0)])
    a[1, 2, 3] = bad
    res = inverse_root(jnp.asarray(a, jnp.float32), 4, method=method, return_error=True)
    # The good matrix of the batch is untouched; the bad one is NaN with error inf.
    assert rel_err(res.root[0], reference(a[0], 4)) <= 1e-4
    assert np.isfinite(float(res.error[0])) and float(res.error[0]) < 1e-3
    assert np.all(np.isnan(np.asarray(res.root[1])))
    assert float(res.error[1]) == np.inf


@pytest.mark.parametrize("method", METHODS)
def test_error_estimate_is_the_true_residual(method):
    a = spd(np.random.default_rng(5), 32, 1e3)
    res = inverse_root(jnp.asarray(a, jnp.float32), 3, method=method, return_error=True)
    a_reg = a + (1e-6 * np.linalg.eigvalsh(a)[-1] + 1e-16) * np.eye(32)
    x = np.asarray(res.root, np.float64)
    true = np.max(np.abs(np.linalg.matrix_power(x, 3) @ a_reg - np.eye(32)))
    assert float(res.error) < 1e-3
    assert true < 1e-3
    np.testing.assert_allclose(float(res.error), true, rtol=0.5, atol=2e-5)


def test_bfloat16_input_is_computed_in_float32():
    a = spd(np.random.default_rng(6), 16, 10.0)
    a_bf16 = jnp.asarray(a, jnp.bfloat16)
    got = inverse_root(a_bf16, 2)
    assert got.dtype == jnp.float32
    ref = reference(np.asarray(a_bf16.astype(jnp.float32), np.float64), 2)
    assert rel_err(got, ref) <= 1e-4


def test_p1_is_the_inverse_and_jit_works():
    a = spd(np.random.default_rng(7), 10, 50.0)
    f = jax.jit(lambda m: inverse_root(m, 1, eps=0.0, eps_floor=0.0, method="newton"))
    np.testing.assert_allclose(f(jnp.asarray(a, jnp.float32)), np.linalg.inv(a), rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("cond", [1e4, 1e6])
def test_eigh64_is_accurate_where_float32_is_not(cond):
    a = spd(np.random.default_rng(20), 256, cond)
    ref = reference(np.asarray(jnp.asarray(a, jnp.float32), np.float64), 4)
    a32 = jnp.asarray(a, jnp.float32)
    float32_err = rel_err(inverse_root(a32, 4, method="eigh"), ref)
    assert float32_err > 1e-5  # what eigh64 and auto improve on
    assert rel_err(inverse_root(a32, 4, method="eigh64"), ref) <= 1e-6
    # auto estimates the condition number and takes the float64 path here.
    assert rel_err(inverse_root(a32, 4, method="auto"), ref) <= 1e-6


def test_auto_keeps_float32_for_well_conditioned_matrices():
    a = spd(np.random.default_rng(21), 256, 10.0)
    a32 = jnp.asarray(a, jnp.float32)
    auto = np.asarray(jax.jit(lambda m: inverse_root(m, 4, method="auto"))(a32))
    np.testing.assert_array_equal(auto, np.asarray(jax.jit(
        lambda m: inverse_root(m, 4, method="eigh"))(a32)))


@pytest.mark.parametrize("cond", [3.0, 50.0, 1e3, 1e4, 1e6])
def test_condition_estimate_is_a_close_lower_bound(cond):
    a = spd(np.random.default_rng(22), 256, cond)
    a32 = jnp.asarray(a, jnp.float32)
    w = np.linalg.eigvalsh(np.asarray(a32, np.float64))
    ridge = 1e-6 * w[-1] + 1e-16
    true = (w[-1] + ridge) / (max(w[0], 0.0) + ridge)
    est = float(condition_estimate(a32))
    assert est <= true * 1.001
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
    mapped = jax.jit(jax.vmap(lambda m, e: inverse_root(m, 3, eps=e, method="eigh64"),
                              in_axes=(0, None)))(stack, jnp.float32(1e-4))
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
        out[method] = [float(jnp.max(jnp.abs(got.root - ref.root))),
                       float(jnp.max(jnp.abs(ref.root))), len(got.root.sharding.device_set)]
    print(json.dumps({"devices": jax.device_count(), **out}))
""")


def test_roots_under_8_device_sharding():
    proc = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], env=sharded_subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == N_SHARDED_DEVICES == 8
    for method in ("auto", "eigh64", "eigh"):
        diff, scale, _ = result[method]
        assert diff <= 1e-5 * scale, (method, diff, scale)


def test_matrix_power_and_lambda_max():
    x = np.random.default_rng(8).standard_normal((5, 5)) / 3
    for p in (1, 2, 3, 5, 8):
        np.testing.assert_allclose(matrix_power(jnp.asarray(x), p), np.linalg.matrix_power(x, p),
                                   rtol=1e-4, atol=1e-5)
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
