"""scale_by_shampoo / shampoo against float64 numpy references of the formulas in the seeds."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optlab._src.shampoo import ShampooState, scale_by_shampoo, shampoo

RAW = {"grafting": "none", "precondition_every": 1, "start_preconditioning_step": 0,
       "root_method": "eigh", "eps_floor": 0.0}


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
    # Seed 000: L = G G^T, R = G^T G, exponent 1/4  =>  L^{-1/4} G R^{-1/4} = U V^T.
    g = np.random.default_rng(0).standard_normal((6, 10))
    tx = scale_by_shampoo(beta2=0.0, eps=1e-8, root_error_threshold=np.inf, **RAW)
    (u,), _ = run(tx, [{"w": g}])
    uu, _, vt = np.linalg.svd(g, full_matrices=False)
    np.testing.assert_allclose(u["w"], uu @ vt, atol=2e-4)


def test_three_steps_of_seed_002_sums():
    # Seed 002 eq. 28-30: Hl += G G^T, Hr += G^T G, update = Hl^{-1/4} G Hr^{-1/4}.
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal((5, 7)) for _ in range(3)]
    outs, state = run(scale_by_shampoo(beta2=1.0, eps=1e-6, **RAW), [{"w": g} for g in grads])
    left, right = np.zeros((5, 5)), np.zeros((7, 7))
    for g, u in zip(grads, outs):
        left += g @ g.T
        right += g.T @ g
        assert rel(u["w"], iroot(left, 4) @ g @ iroot(right, 4)) < 1e-4
    assert int(state.rejected_roots) == 0 and int(state.count) == 3


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
    grads = [{"b": rng.standard_normal(5), "s": rng.standard_normal(()),
              "col": rng.standard_normal((1, 4))} for _ in range(3)]
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
    outs, _ = run(scale_by_shampoo(beta2=1.0, graft_beta2=0.99, graft_eps=1e-8, **kw),
                  [{"w": g} for g in grads])
    raw, _ = run(scale_by_shampoo(beta2=1.0, **{**kw, "grafting": "none"}),
                 [{"w": g} for g in grads])
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
            np.testing.assert_allclose(u["w"][sl], direction * np.linalg.norm(graft[sl]),
                                       rtol=1e-4, atol=1e-6)


def test_graft_alone_before_start_and_roots_reused_between_refreshes():
    rng = np.random.default_rng(10)
    grads = [{"w": rng.standard_normal((4, 5))} for _ in range(7)]
    tx = scale_by_shampoo(beta2=1.0, grafting="sgd", precondition_every=3,
                          start_preconditioning_step=2, root_method="eigh")
    state = tx.init(grads[0])
    roots = []
    for t, g in enumerate(grads):
        u, state = tx.update(g, state)
        if t < 2:  # grafted update alone: SGD's is the gradient itself
            np.testing.assert_allclose(u["w"], g["w"], rtol=1e-6)
        roots.append(np.asarray(state.roots))
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
    for new, old in zip(jax.tree.leaves(new_state), jax.tree.leaves(state)):
        if new.dtype != jnp.int32:
            np.testing.assert_array_equal(new, old)
    assert int(new_state.skipped_steps) == 1 and int(new_state.count) == 1


def test_nan_statistics_reject_the_root_and_keep_the_previous_one():
    rng = np.random.default_rng(12)
    g = {"w": jnp.asarray(rng.standard_normal((4, 6)), jnp.float32)}
    tx = scale_by_shampoo(**RAW)
    _, state = tx.update(g, tx.init(g))
    poisoned = state._replace(stats=state.stats.at[3].set(jnp.nan))
    u, new_state = tx.update(g, poisoned)
    assert int(new_state.rejected_roots) >= 1
    # The rejected group keeps its previous roots; the update and parameters stay finite.
    assert np.all(np.isfinite(np.asarray(u["w"])))
    assert np.all(np.isfinite(np.asarray(new_state.roots)))
    left_size = 4 * 4
    np.testing.assert_array_equal(new_state.roots[:left_size], state.roots[:left_size])


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
    assert isinstance(state.shampoo, ShampooState)

    # The same updates as the optax chain it stands for, step by step.
    chain = optax.chain(
        scale_by_shampoo(beta2=0.999, eps=1e-6, precondition_every=2, start_preconditioning_step=1),
        optax.ema(0.9, debias=True), optax.add_decayed_weights(0.01),
        optax.scale_by_learning_rate(0.1))
    alias = shampoo(0.1, b1=0.9, weight_decay=0.01, precondition_every=2,
                    start_preconditioning_step=1)
    p = {"w": jnp.asarray(np.random.default_rng(15).standard_normal((6, 4)), jnp.float32),
         "b": jnp.zeros(4)}
    sa, sc = alias.init(p), chain.init(p)
    for _ in range(4):
        g = jax.grad(loss)(p)
        ua, sa = alias.update(g, sa, p)
        uc, sc = chain.update(g, sc, p)
        chex.assert_trees_all_close(ua, uc, rtol=1e-6, atol=1e-7)
        p = optax.apply_updates(p, ua)


@pytest.mark.parametrize("freeze", [True, False])
def test_shampoo_optimizer_on_a_nan_gradient(freeze):
    params = {"w": jnp.ones((6, 4)), "b": jnp.ones(4)}
    tx = shampoo(0.1, b1=0.9, precondition_every=2, start_preconditioning_step=1,
                 skip_nonfinite=freeze)
    state = tx.init(params)
    grads = {"w": jnp.full((6, 4), 0.5), "b": jnp.full(4, 0.25)}
    for _ in range(3):
        _, state = tx.update(grads, state, params)
    bad = {"w": grads["w"].at[2, 1].set(jnp.nan), "b": grads["b"]}
    updates, new_state = jax.jit(tx.update)(bad, state, params)
    assert int(new_state.shampoo.skipped_steps) == 1
    chex.assert_trees_all_equal(new_state.shampoo._replace(skipped_steps=0),
                                state.shampoo._replace(skipped_steps=0))
    if freeze:  # exactly a skipped step: zero update, momentum and schedule untouched
        chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, params))
        chex.assert_trees_all_equal(new_state.tail, state.tail)
    else:  # a zero gradient for the momentum: it decays by b1, nothing non-finite anywhere
        mu_old, mu_new = state.tail[0].ema, new_state.tail[0].ema
        chex.assert_trees_all_close(mu_new, jax.tree.map(lambda m: 0.9 * m, mu_old), rtol=1e-6)
        assert all(np.all(np.isfinite(np.asarray(u))) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("method", ["newton", "eigh64", "auto"])
def test_other_root_methods_agree_with_eigh(method):
    g = np.random.default_rng(14).standard_normal((12, 20))
    (a,), _ = run(scale_by_shampoo(beta2=1.0, **RAW), [{"w": g}])
    (b,), _ = run(scale_by_shampoo(beta2=1.0, **{**RAW, "root_method": method}), [{"w": g}])
    assert rel(b["w"], np.asarray(a["w"], np.float64)) < 1e-3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"block_size": 0}, "block_size"),
        ({"exponent": 0.0}, "exponent"),
        ({"exponent": -0.25}, "exponent"),
        ({"exponent": 0.3}, "exponent"),
        ({"grafting": "lion"}, "grafting"),
        ({"root_method": "qr"}, "root_method"),
        ({"beta2": 1.5}, "beta2"),
        ({"beta2": -0.1}, "beta2"),
        ({"precondition_every": 0}, "precondition_every"),
        ({"start_preconditioning_step": -1}, "start_preconditioning_step"),
        ({"eps": -1.0}, "eps"),
        ({"root_error_threshold": 0.0}, "root_error_threshold"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        scale_by_shampoo(**kwargs)


def test_bad_momentum():
    with pytest.raises(ValueError, match="b1"):
        shampoo(0.1, b1=1.0)
