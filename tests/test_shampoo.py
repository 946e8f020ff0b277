"""scale_by_shampoo / shampoo against float64 numpy references of Shampoo's formulas (Gupta et al.
2018; Kuznetsova's thesis eq. 28-30; Merkulov's seminar), and their NaN/Inf, dtype and
hyperparameter behaviour."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab
from optlab._src.shampoo import ShampooState, scale_by_shampoo, shampoo

RAW = {
    "grafting": "none",
    "precondition_every": 1,
    "start_preconditioning_step": 0,
    "root_method": "eigh",
    "eps_floor": 0.0,
}


def iroot(a, p, eps=1e-6):
    """(a + eps * lambda_max I)^{-1/p} in float64."""
    w, v = np.linalg.eigh(a)
    w = np.maximum(w, 0.0)
    return (v * (w + eps * w[-1]) ** (-1.0 / p)) @ v.T


def mode_gram(g, axis):
    m = np.moveaxis(g, axis, 0).reshape(g.shape[axis], -1)
    return m @ m.T


def mode_apply(g, mat, axis):
    return np.moveaxis(np.tensordot(mat, g, axes=([1], [axis])), 0, axis)


def run(tx, grads_seq, params=None):
    state = tx.init(grads_seq[0] if params is None else params)
    update = jax.jit(tx.update)
    outs = []
    for g in grads_seq:
        u, state = update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g), state)
        outs.append(jax.tree.map(np.asarray, u))
    return outs, state


def rel(a, b):
    return np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b)


def test_first_step_without_accumulation_is_muon():
    # Merkulov's seminar: L = G G^T, R = G^T G, exponent 1/4  =>  L^{-1/4} G R^{-1/4} = U V^T.
    g = np.random.default_rng(0).standard_normal((6, 10))
    tx = scale_by_shampoo(beta2=0.0, eps=1e-8, root_error_threshold=np.inf, **RAW)
    (u,), _ = run(tx, [{"w": g}])
    uu, _, vt = np.linalg.svd(g, full_matrices=False)
    np.testing.assert_allclose(u["w"], uu @ vt, atol=2e-4)


def test_three_steps_of_summed_statistics():
    # Kuznetsova's thesis eq. 28-30: Hl += G G^T, Hr += G^T G, update = Hl^{-1/4} G Hr^{-1/4}.
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal((5, 7)) for _ in range(3)]
    outs, state = run(scale_by_shampoo(beta2=1.0, eps=1e-6, **RAW), [{"w": g} for g in grads])
    left, right = np.zeros((5, 5)), np.zeros((7, 7))
    for g, u in zip(grads, outs):
        left += g @ g.T
        right += g.T @ g
        assert rel(u["w"], iroot(left, 4) @ g @ iroot(right, 4)) < 1e-4
    assert int(state.inner.rejected_roots) == 0 and int(state.inner.count) == 3


def test_moving_average_statistics():
    rng = np.random.default_rng(2)
    grads = [rng.standard_normal((4, 6)) for _ in range(3)]
    outs, _ = run(scale_by_shampoo(beta2=0.9, eps=1e-6, **RAW), [{"w": g} for g in grads])
    left, right = np.zeros((4, 4)), np.zeros((6, 6))
    for g, u in zip(grads, outs):
        left = 0.9 * left + 0.1 * g @ g.T
        right = 0.9 * right + 0.1 * g.T @ g
        assert rel(u["w"], iroot(left, 4) @ g @ iroot(right, 4)) < 1e-4


def test_blocked_matrix_equals_shampoo_per_block():
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal((6, 10)) for _ in range(2)]
    outs, _ = run(scale_by_shampoo(beta2=1.0, block_size=4, **RAW), [{"w": g} for g in grads])
    for r0, r1 in [(0, 4), (4, 6)]:
        for c0, c1 in [(0, 4), (4, 8), (8, 10)]:
            sub = [{"w": g[r0:r1, c0:c1]} for g in grads]
            ref, _ = run(scale_by_shampoo(beta2=1.0, block_size=None, **RAW), sub)
            for u, r in zip(outs, ref):
                np.testing.assert_allclose(u["w"][r0:r1, c0:c1], r["w"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 3, 4, 5)])
def test_tensor_uses_per_axis_statistics_with_exponent_1_over_2k(shape):
    rng = np.random.default_rng(4)
    grads = [rng.standard_normal(shape) for _ in range(2)]
    tx = scale_by_shampoo(beta2=1.0, merge_small_dims=False, **RAW)
    outs, _ = run(tx, [{"k": g} for g in grads])
    k = len(shape)
    stats = [np.zeros((d, d)) for d in shape]
    for g, u in zip(grads, outs):
        ref = g
        for axis in range(k):
            stats[axis] += mode_gram(g, axis)
            ref = mode_apply(ref, iroot(stats[axis], 2 * k), axis)
        assert rel(u["k"], ref) < 1e-4


def test_conv_kernel_small_dims_are_merged_into_a_matrix():
    rng = np.random.default_rng(5)
    g = rng.standard_normal((3, 3, 4, 8))
    (u,), _ = run(scale_by_shampoo(beta2=1.0, **RAW), [{"k": g}])
    m = g.reshape(36, 8)
    ref = iroot(m @ m.T, 4) @ m @ iroot(m.T @ m, 4)
    assert rel(u["k"], ref.reshape(g.shape)) < 1e-4


def test_large_dim_is_left_unpreconditioned():
    g = np.random.default_rng(6).standard_normal((8, 64))
    (u,), _ = run(scale_by_shampoo(beta2=1.0, max_preconditioned_dim=32, **RAW), [{"w": g}])
    # One preconditioned axis: exponent 1 / (2 * 1).
    assert rel(u["w"], iroot(g @ g.T, 2) @ g) < 1e-4


def test_exponent_override_gives_shampoo_half():
    rng = np.random.default_rng(7)
    grads = [rng.standard_normal((5, 9)) for _ in range(2)]  # full-rank statistics by step 2
    outs, _ = run(scale_by_shampoo(beta2=1.0, exponent=0.5, **RAW), [{"w": g} for g in grads])
    left = sum(g @ g.T for g in grads)
    right = sum(g.T @ g for g in grads)
    assert rel(outs[1]["w"], iroot(left, 2) @ grads[1] @ iroot(right, 2)) < 1e-4


def test_vectors_and_scalars_use_the_diagonal_rule():
    rng = np.random.default_rng(8)
    grads = [
        {
            "b": rng.standard_normal(5),
            "s": rng.standard_normal(()),
            "col": rng.standard_normal((1, 4)),
        }
        for _ in range(3)
    ]
    outs, _ = run(scale_by_shampoo(beta2=0.9, **RAW), grads)
    v = {k: np.zeros(np.shape(x)) for k, x in grads[0].items()}
    for g, u in zip(grads, outs):
        for name in g:
            v[name] = 0.9 * v[name] + 0.1 * g[name] ** 2
            ridge = 1e-6 * np.max(v[name])
            np.testing.assert_allclose(u[name], g[name] / np.sqrt(v[name] + ridge), rtol=1e-4)


@pytest.mark.parametrize("grafting", ["sgd", "adagrad", "rmsprop", "adam"])
def test_grafting_takes_the_norm_per_block_and_the_direction_from_shampoo(grafting):
    rng = np.random.default_rng(9)
    grads = [rng.standard_normal((6, 6)) for _ in range(3)]
    kw = {**RAW, "grafting": grafting, "block_size": 3}
    outs, _ = run(
        scale_by_shampoo(beta2=1.0, graft_beta2=0.99, graft_eps=1e-8, **kw),
        [{"w": g} for g in grads],
    )
    raw, _ = run(
        scale_by_shampoo(beta2=1.0, **{**kw, "grafting": "none"}), [{"w": g} for g in grads]
    )
    acc = np.zeros((6, 6))
    for t, (g, u, r) in enumerate(zip(grads, outs, raw), start=1):
        if grafting == "sgd":
            graft = g
        elif grafting == "adagrad":
            acc += g**2
            graft = g / (np.sqrt(acc) + 1e-8)
        else:
            acc = 0.99 * acc + 0.01 * g**2
            nu = acc / (1 - 0.99**t) if grafting == "adam" else acc
            graft = g / (np.sqrt(nu) + 1e-8)
        for sl in [np.s_[:3, :3], np.s_[:3, 3:], np.s_[3:, :3], np.s_[3:, 3:]]:
            direction = r["w"][sl] / np.linalg.norm(r["w"][sl])
            np.testing.assert_allclose(
                u["w"][sl], direction * np.linalg.norm(graft[sl]), rtol=1e-4, atol=1e-6
            )


def test_graft_alone_before_start_and_roots_reused_between_refreshes():
    rng = np.random.default_rng(10)
    grads = [{"w": rng.standard_normal((4, 5))} for _ in range(7)]
    tx = scale_by_shampoo(
        beta2=1.0,
        grafting="sgd",
        precondition_every=3,
        start_preconditioning_step=2,
        root_method="eigh",
    )
    state = tx.init(grads[0])
    roots = []
    for t, g in enumerate(grads):
        u, state = tx.update(g, state)
        if t < 2:  # grafted update alone: SGD's is the gradient itself
            np.testing.assert_allclose(u["w"], g["w"], rtol=1e-6)
        roots.append(np.asarray(state.inner.roots))
    np.testing.assert_array_equal(roots[0], roots[1])  # identity before the start
    assert not np.allclose(roots[2], roots[1])  # computed at step 2
    np.testing.assert_array_equal(roots[2], roots[3])
    np.testing.assert_array_equal(roots[3], roots[4])
    assert not np.allclose(roots[5], roots[4])  # refreshed at 2 + 3


def test_nan_gradient_is_skipped_and_never_enters_the_state():
    rng = np.random.default_rng(11)
    params = {"w": jnp.ones((4, 6)), "b": jnp.ones(6)}
    tx = scale_by_shampoo(**{**RAW, "grafting": "adam"})
    state = tx.init(params)
    good = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32), params)
    _, state = tx.update(good, state)
    bad = {"w": good["w"].at[0, 0].set(jnp.nan), "b": good["b"]}
    u, new_state = tx.update(bad, state)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
    chex.assert_trees_all_equal(new_state.inner, state.inner)
    assert int(new_state.skipped_steps) == 1 and int(new_state.inner.count) == 1


def _shampoo_steps(tx, grads, params):
    state, outs = tx.init(params), []
    update = jax.jit(tx.update)
    for g in grads:
        u, state = update(g, state, params)
        outs.append(u)
    return outs, state


@pytest.mark.parametrize("alias", [False, True])
def test_overflowing_statistics_are_skipped_and_shampoo_continues(alias):
    # A finite gradient of 1e20: G G^T = 1e40 overflows float32 (max 3.4e38). The step must be
    # skipped (counted) and the run must continue exactly as if that gradient never came.
    rng = np.random.default_rng(16)
    params = {"w": jnp.zeros((5, 3)), "b": jnp.zeros(3)}
    grads = [
        jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32), params)
        for _ in range(6)
    ]
    huge = jax.tree.map(lambda g: g * 1e20, grads[0])
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(huge))
    kw = {"precondition_every": 2, "start_preconditioning_step": 1, "root_method": "eigh"}
    tx = shampoo(0.1, **kw) if alias else scale_by_shampoo(**kw)
    with_bad, s_bad = _shampoo_steps(tx, [*grads[:3], huge, *grads[3:]], params)
    without, s_ref = _shampoo_steps(tx, grads, params)
    assert int(s_bad.skipped_steps) == 1 and int(s_ref.skipped_steps) == 0
    chex.assert_trees_all_equal(with_bad[3], jax.tree.map(jnp.zeros_like, params))
    chex.assert_trees_all_equal([*with_bad[:3], *with_bad[4:]], without)
    chex.assert_trees_all_equal(s_bad.inner, s_ref.inner)
    shampoo_state = s_bad.inner[0] if alias else s_bad.inner
    assert int(shampoo_state.count) == 6 and int(shampoo_state.rejected_roots) == 0


def test_a_step_that_could_overflow_the_graft_sums_is_skipped_before_it():
    # AdaGrad grafting sums g^2 without decay. The guard admits a step only while the new sums
    # stay below M/4 (M = float32 max = 3.4e38), bounded beforehand by the largest old sum plus
    # the largest leaf sum of squares (here w's: 4 (2e18)^2 = 1.6e37; each entry adds 4e36).
    # Before step k the sums hold (k - 1) 4e36: step 18 is admitted (8.4e37 <= 8.5e37), step 19
    # is skipped (8.8e37; margins of 1% and 3%, far above float32 rounding), state untouched and
    # finite; a normal gradient then goes through.
    tx = scale_by_shampoo(
        beta2=0.5,
        grafting="adagrad",
        precondition_every=1,
        start_preconditioning_step=0,
        root_method="eigh",
    )
    huge = {"w": jnp.full((2, 2), 2e18), "b": jnp.full(2, 2e18)}
    state = tx.init(huge)
    update = jax.jit(tx.update)
    for _ in range(18):
        _, state = update(huge, state)
    assert int(state.skipped_steps) == 0
    # The sums of every entry, the kernel's and the bias' (one buffer in the blocks' layout).
    sums = np.asarray(state.inner.graft.sum_of_squares, np.float64)
    assert sums.shape == (6,)
    np.testing.assert_allclose(sums, 18 * 4e36, rtol=1e-5)
    u, new_state = update(huge, state)
    assert int(new_state.skipped_steps) == 1
    chex.assert_trees_all_equal(new_state.inner, state.inner)
    chex.assert_trees_all_equal(u, jax.tree.map(jnp.zeros_like, huge))
    u, new_state = update(jax.tree.map(lambda x: 1e-3 * jnp.ones_like(x), huge), new_state)
    assert int(new_state.skipped_steps) == 1 and int(new_state.inner.count) == 19
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves((u, new_state)))
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves((u, new_state)))


def test_nan_statistics_reject_the_root_and_keep_the_previous_one():
    rng = np.random.default_rng(12)
    g = {"w": jnp.asarray(rng.standard_normal((4, 6)), jnp.float32)}
    tx = scale_by_shampoo(**RAW)
    _, state = tx.update(g, tx.init(g))
    # Element 3 is L[0, 3], off the diagonal, so the guard's (diagonal) state check does not see
    # it: only a corrupted state gets there; the root refresh must still reject that root.
    inner = state.inner
    poisoned = state._replace(inner=inner._replace(stats=inner.stats.at[3].set(jnp.nan)))
    u, new_state = tx.update(g, poisoned)
    assert int(new_state.inner.rejected_roots) == 1 and int(new_state.skipped_steps) == 0
    # The rejected root keeps its previous value; the update and parameters stay finite.
    assert np.all(np.isfinite(np.asarray(u["w"])))
    assert np.all(np.isfinite(np.asarray(new_state.inner.roots)))
    left_size = 4 * 4
    np.testing.assert_array_equal(new_state.inner.roots[:left_size], inner.roots[:left_size])
    assert not np.array_equal(new_state.inner.roots[left_size:], inner.roots[left_size:])


def test_shampoo_optimizer_matches_its_chain_and_trains():
    params = {"w": jnp.zeros((6, 4)), "b": jnp.zeros(4)}
    target = jnp.asarray(np.random.default_rng(13).standard_normal((6, 4)), jnp.float32)

    def loss(p):
        return jnp.sum((p["w"] - target) ** 2) + jnp.sum((p["b"] - 1.0) ** 2)

    tx = shampoo(0.1, b1=0.9, weight_decay=0.0, precondition_every=2, start_preconditioning_step=1)
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, u), s

    initial = float(loss(params))
    for _ in range(150):
        params, state = step(params, state)
    assert float(loss(params)) < 1e-3 * initial
    assert step._cache_size() == 1
    assert isinstance(state.inner[0], ShampooState) and int(state.skipped_steps) == 0

    # The same updates as the optax chain it stands for, step by step.
    chain = optax.chain(
        scale_by_shampoo(beta2=0.999, eps=1e-6, precondition_every=2, start_preconditioning_step=1),
        optax.ema(0.9, debias=True),
        optax.add_decayed_weights(0.01),
        optax.scale_by_learning_rate(0.1),
    )
    alias = shampoo(
        0.1, b1=0.9, weight_decay=0.01, precondition_every=2, start_preconditioning_step=1
    )
    p = {
        "w": jnp.asarray(np.random.default_rng(15).standard_normal((6, 4)), jnp.float32),
        "b": jnp.zeros(4),
    }
    sa, sc = alias.init(p), chain.init(p)
    for _ in range(4):
        g = jax.grad(loss)(p)
        ua, sa = alias.update(g, sa, p)
        uc, sc = chain.update(g, sc, p)
        chex.assert_trees_all_close(ua, uc, rtol=1e-6, atol=1e-7)
        p = optax.apply_updates(p, ua)


def test_shampoo_optimizer_on_a_nan_gradient_freezes_the_whole_chain():
    params = {"w": jnp.ones((6, 4)), "b": jnp.ones(4)}
    tx = shampoo(0.1, b1=0.9, precondition_every=2, start_preconditioning_step=1)
    state = tx.init(params)
    grads = {"w": jnp.full((6, 4), 0.5), "b": jnp.full(4, 0.25)}
    for _ in range(3):
        _, state = tx.update(grads, state, params)
    for value in (jnp.nan, jnp.inf):
        bad = {"w": grads["w"].at[2, 1].set(value), "b": grads["b"]}
        updates, new_state = jax.jit(tx.update)(bad, state, params)
        assert int(new_state.skipped_steps) == 1
        # Zero update; Shampoo's, the momentum's and the schedule's state all untouched.
        chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, params))
        chex.assert_trees_all_equal(new_state.inner, state.inner)


@pytest.mark.parametrize("factory", ["shampoo", "scale_by_shampoo"])
def test_extra_update_arguments_are_accepted_and_ignored(factory):
    params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
    grads = jax.tree.map(lambda x: 0.5 * x, params)
    tx = optlab.shampoo(0.1) if factory == "shampoo" else optlab.scale_by_shampoo()
    state = tx.init(params)
    plain = tx.update(grads, state, params)
    extra = tx.update(grads, state, params, some_extra_arg=1)
    chex.assert_trees_all_equal(plain, extra)


def test_inject_hyperparams_with_the_defaults():
    params = {"w": jnp.ones((6, 4)), "b": jnp.ones(4)}
    grads = {
        "w": jnp.asarray(np.random.default_rng(17).standard_normal((6, 4)), jnp.float32),
        "b": jnp.full(4, 0.25),
    }
    tx = optax.inject_hyperparams(optlab.shampoo)(learning_rate=1e-3)
    # Numeric defaults are injected too; the step counts stay integers.
    assert tx.init(params).hyperparams["precondition_every"].dtype == jnp.int32
    injected, _ = _shampoo_steps(tx, [grads] * 12, params)
    plain, _ = _shampoo_steps(optlab.shampoo(1e-3), [grads] * 12, params)
    # Injected hyperparameters are float32 arrays where the plain factory computes with Python
    # floats: 1 - b with b = 0.999 rounded to float32 moves by up to 2^-24 * 0.999 / 0.001 =
    # 6e-5 relative (the EMA weights of the statistics, the graft and the momentum).
    chex.assert_trees_all_close(injected, plain, rtol=2e-4, atol=0.0)
    # Step counts are injectable: editing them takes effect without retracing.
    tx = optax.inject_hyperparams(optlab.scale_by_shampoo)(
        precondition_every=5, start_preconditioning_step=0
    )
    state = tx.init(params)
    state.hyperparams["precondition_every"] = jnp.asarray(1)
    update = jax.jit(tx.update)
    _, state = update(grads, state)
    _, state = update(grads, state)
    assert not np.allclose(state.inner_state.inner.roots[:36], np.eye(6).ravel())
    roots_1 = state.inner_state.inner.roots
    _, state = update(grads, state)  # step 2: refreshed every step now, not every 5
    assert not np.array_equal(state.inner_state.inner.roots, roots_1)
    assert update._cache_size() == 1


def test_layout_options_under_inject_hyperparams_need_static_args():
    params = {"w": jnp.ones((6, 4))}
    with pytest.raises(ValueError, match="static_args=\\('block_size',\\)"):
        optax.inject_hyperparams(optlab.shampoo)(learning_rate=1e-3, block_size=2).init(params)
    tx = optax.inject_hyperparams(optlab.shampoo, static_args=("block_size",))(
        learning_rate=1e-3, block_size=2
    )
    state = tx.init(params)
    _, state = jax.jit(tx.update)(params, state, params)
    assert state.inner_state.inner[0].stats.shape == ((6 // 2) * (4 // 2) * (4 + 4),)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.complex64])
def test_non_floating_parameters_are_rejected_at_init(dtype):
    params = {"w": jnp.ones((4, 3)), "layer": {"table": jnp.ones((4, 3), dtype)}}
    with pytest.raises(ValueError, match=r"\['layer'\]\['table'\]"):
        optlab.shampoo(0.1).init(params)


@pytest.mark.parametrize("dtype, unit_roundoff", [(jnp.bfloat16, 2.0**-9), (jnp.float16, 2.0**-12)])
def test_half_precision_parameters_keep_float32_statistics(dtype, unit_roundoff):
    rng = np.random.default_rng(18)
    # Gradients exactly representable in the half dtype: the float64 reference sees the same.
    grads = [
        {
            "w": jnp.asarray(rng.standard_normal((6, 4)), dtype),
            "b": jnp.asarray(rng.standard_normal(4), dtype),
        }
        for _ in range(3)
    ]
    params = {"w": jnp.zeros((6, 4), dtype), "b": jnp.zeros(4, dtype)}
    tx = scale_by_shampoo(**{**RAW, "grafting": "adam"}, beta2=1.0)
    outs, state = _shampoo_steps(tx, grads, params)
    assert state.inner.stats.dtype == jnp.float32
    assert all(
        x.dtype == jnp.float32
        for x in jax.tree.leaves(state.inner.graft)
        if jnp.issubdtype(x.dtype, jnp.floating)
    )
    left, right, v = np.zeros((6, 6)), np.zeros((4, 4)), np.zeros(4)
    for g, u in zip(grads, outs):
        assert u["w"].dtype == dtype and u["b"].dtype == dtype
        w, b = np.asarray(g["w"], np.float64), np.asarray(g["b"], np.float64)
        left, right, v = left + w @ w.T, right + w.T @ w, v + b**2
        # Direction from Shampoo, norm from the graft: compare directions (unit norm). The
        # update is rounded once to the half dtype (relative error <= its unit roundoff, in
        # norm too), on top of float32 Shampoo's 1e-4 of the float32 tests above.
        ref_w = iroot(left, 4) @ w @ iroot(right, 4)
        ref_b = b / np.sqrt(v + 1e-6 * v.max())
        for out, ref in ((u["w"], ref_w), (u["b"], ref_b)):
            out = np.asarray(out, np.float64)
            assert rel(out / np.linalg.norm(out), ref / np.linalg.norm(ref)) < (
                2 * unit_roundoff + 1e-4
            )


@pytest.mark.parametrize("grafting", ["adam", "adagrad", "sgd"])
def test_zero_size_leaves_get_zero_size_updates(grafting):
    # AdaGrad grafting's overflow check reads its sums: it raised on a zero-size leaf before
    # the sums moved into the engine's layout (where empty leaves take no entries).
    rng = np.random.default_rng(19)
    params = {"w": jnp.zeros((5, 3)), "b": jnp.zeros(3)}
    empty = {"e": jnp.zeros((0, 4)), "v": jnp.zeros((0,)), "t": jnp.zeros((2, 0, 3))}
    grads = [
        jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32), params)
        for _ in range(3)
    ]
    outs, state = _shampoo_steps(
        optlab.shampoo(0.1, precondition_every=1, grafting=grafting),
        [{**g, **empty} for g in grads],
        {**params, **empty},
    )
    ref, _ = _shampoo_steps(
        optlab.shampoo(0.1, precondition_every=1, grafting=grafting), grads, params
    )
    for u, r in zip(outs, ref):
        for k, x in empty.items():
            assert u[k].shape == x.shape and u[k].dtype == x.dtype
        chex.assert_trees_all_equal({k: u[k] for k in params}, r)
    assert int(state.skipped_steps) == 0


@pytest.mark.parametrize("grafting", ["adam", "adagrad"])
def test_only_empty_or_no_leaves(grafting):
    for params in ({}, {"e": jnp.zeros((0, 3))}):
        tx = optlab.shampoo(0.1, grafting=grafting)
        updates, state = jax.jit(tx.update)(params, tx.init(params), params)
        chex.assert_trees_all_equal(updates, params)
        assert int(state.skipped_steps) == 0


def test_help_shows_the_math_and_cites_sources_by_name():
    for f in (optlab.shampoo, optlab.scale_by_shampoo):
        doc = f.__doc__
        assert "L_t = beta2 L_{t-1} + w G_t G_t^T" in doc
        assert "Kuznetsova" in doc and "Merkulov" in doc
        assert "seed" not in doc.lower()


@pytest.mark.parametrize("method", ["newton", "eigh64", "auto"])
def test_other_root_methods_agree_with_eigh(method):
    g = np.random.default_rng(14).standard_normal((12, 20))
    (a,), _ = run(scale_by_shampoo(beta2=1.0, **RAW), [{"w": g}])
    (b,), _ = run(scale_by_shampoo(beta2=1.0, **{**RAW, "root_method": method}), [{"w": g}])
    assert rel(b["w"], np.asarray(a["w"], np.float64)) < 1e-3


_BAD_VALUES = {
    "beta2": [None, float("nan"), "0.9", True, -0.1, 1.5],
    "eps": [None, float("nan"), "1e-6", True, -1.0, float("inf")],
    "exponent": [float("nan"), "0.25", True, 0.0, -0.25, 0.3],
    "block_size": [0, 2.5, "1024", True, float("nan")],
    "max_preconditioned_dim": [None, 0, 2.5, "8192", True],
    "merge_small_dims": [None, 1, "yes"],
    "precondition_every": [None, 0, 1.5, "10", True],
    "start_preconditioning_step": [-1, 1.5, "0", True],
    "grafting": [None, "lion", 1, True],
    "graft_beta2": [None, float("nan"), 1.0, -0.1, "0.9", True],
    "graft_eps": [None, float("nan"), -1e-8, "1e-8", True],
    "root_method": [None, "qr", 1, True],
    "root_error_threshold": [None, float("nan"), 0.0, -1.0, "4", True],
    "eps_floor": [None, float("nan"), -1e-30, "0", True],
}


@pytest.mark.parametrize(
    "name, value", [(n, v) for n, values in _BAD_VALUES.items() for v in values]
)
def test_bad_arguments(name, value):
    with pytest.raises(ValueError, match=name):
        scale_by_shampoo(**{name: value})
    alias_name = "b2" if name == "beta2" else name
    with pytest.raises(ValueError, match=alias_name):
        shampoo(0.1, **{alias_name: value})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"learning_rate": None}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"learning_rate": "0.1"}, "learning_rate"),
        ({"learning_rate": 0.1, "b1": 1.0}, "b1"),
        ({"learning_rate": 0.1, "b1": None}, "b1"),
        ({"learning_rate": 0.1, "b1": True}, "b1"),
        ({"learning_rate": 0.1, "weight_decay": -1e-4}, "weight_decay"),
        ({"learning_rate": 0.1, "weight_decay": float("nan")}, "weight_decay"),
        ({"learning_rate": 0.1, "weight_decay": None}, "weight_decay"),
    ],
)
def test_bad_optimizer_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        shampoo(**kwargs)


def test_options_after_the_first_arguments_are_keyword_only():
    with pytest.raises(TypeError):
        shampoo(0.1, 0.9, 0.999, 1e-6, 0.0, None)  # weight_decay_mask positionally
    with pytest.raises(TypeError):
        scale_by_shampoo(0.999)
