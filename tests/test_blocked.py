"""The full Shampoo and SOAP optimizers run momentum, weight decay and the learning rate on the
engine's blocks (``optlab._src.blocked``): the same updates as the optax chain they stand for,
built from optax's own transforms in the same process, and the NaN guard's check of the update
in the block layout."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab

PARAMS = {
    "dense": {"kernel": (10, 6), "bias": (6,)},
    "conv": {"kernel": (3, 3, 2, 4), "bias": (4,)},
    "scale": (),
}


def _params(seed: int = 0, dtype=jnp.float32) -> dict:
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(rng.standard_normal(s), dtype),
        PARAMS,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def _not_bias(params):
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key != "bias", params)


def _pair(name: str, learning_rate, weight_decay, mask):
    """(the optlab optimizer, the optax chain it computes)."""
    if name == "shampoo":
        alias = optlab.shampoo(
            learning_rate,
            b1=0.9,
            weight_decay=weight_decay,
            weight_decay_mask=mask,
            block_size=4,
            precondition_every=2,
        )
        parts = [
            optlab.scale_by_shampoo(block_size=4, precondition_every=2),
            optax.ema(0.9, debias=True),
        ]
    else:
        alias = optlab.soap(
            learning_rate,
            weight_decay=weight_decay,
            weight_decay_mask=mask,
            block_size=4,
            precondition_every=2,
        )
        parts = [optlab.scale_by_soap(b1=0.95, b2=0.95, block_size=4, precondition_every=2)]
    parts.append(optax.add_decayed_weights(weight_decay, mask))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return alias, optax.chain(*parts)


@pytest.mark.parametrize("name", ["shampoo", "soap"])
@pytest.mark.parametrize(
    "mask",
    [None, _not_bias, {"dense": True, "conv": {"kernel": True, "bias": False}, "scale": False}],
    ids=["no-mask", "callable", "prefix-tree"],
)
def test_the_optimizer_equals_its_optax_chain(name, mask):
    # float32 throughout; the two differ only in the order of a few roundings per step (the
    # momentum's and the learning rate's products), so 1e-5 relative to the update's scale is
    # ~100 float32 unit roundoffs, while a missing decay or a masked leaf decayed is 1e-2.
    schedule = optax.linear_schedule(0.1, 0.01, 5)
    alias, chain = _pair(name, schedule, 0.1, mask)
    params = _params()
    sa, sc = alias.init(params), chain.init(params)
    rng = np.random.default_rng(1)
    step_a, step_c = jax.jit(alias.update), jax.jit(chain.update)
    for _ in range(5):
        g = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
        ua, sa = step_a(g, sa, params)
        uc, sc = step_c(g, sc, params)
        scale = max(float(jnp.max(jnp.abs(u))) for u in jax.tree.leaves(uc))
        chex.assert_trees_all_close(ua, uc, rtol=0, atol=1e-5 * scale)
        params = optax.apply_updates(params, ua)
    assert int(sa.skipped_steps) == 0


@pytest.mark.parametrize("name", ["shampoo", "soap"])
def test_injected_hyperparameters_change_the_step(name):
    factory = {"shampoo": optlab.shampoo, "soap": optlab.soap}[name]
    tx = optax.inject_hyperparams(factory)(learning_rate=0.1, weight_decay=0.0)
    params = _params()
    state = tx.init(params)
    g = jax.tree.map(jnp.ones_like, params)
    step = jax.jit(tx.update)
    u0, _ = step(g, state, params)
    state.hyperparams["weight_decay"] = jnp.asarray(0.5)
    u1, _ = step(g, state, params)
    # Decoupled decay: the difference is -lr * wd * p, leaf by leaf.
    expected = jax.tree.map(lambda p: -0.1 * 0.5 * p, params)
    chex.assert_trees_all_close(jax.tree.map(jnp.subtract, u1, u0), expected, atol=1e-6)


@pytest.mark.parametrize("name", ["shampoo", "soap"])
def test_an_update_that_overflows_is_zeroed_and_counted_and_the_state_keeps_the_step(name):
    factory = {"shampoo": optlab.shampoo, "soap": optlab.soap}[name]
    # Finite parameters, learning rate and decay whose product is past float32's max.
    params = jax.tree.map(lambda p: jnp.full_like(p, 1e38), _params())
    g = jax.tree.map(jnp.ones_like, params)
    tx = factory(1.0, weight_decay=10.0)
    state = tx.init(params)
    u, state = tx.update(g, state, params)
    assert int(state.skipped_steps) == 1
    assert all(not np.asarray(x).any() for x in jax.tree.leaves(u))
    assert int(state.inner[0].count) == 1  # the finite state kept the step
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))


def test_a_float16_leaf_skips_an_update_it_cannot_hold():
    # 1e5 fits float32 (the blocks' dtype) but not float16 (max 65504): zeroed, counted.
    params = {"w": jnp.zeros((4, 3), jnp.float16), "v": jnp.zeros((4, 3), jnp.float32)}
    tx = optlab.shampoo(1e6, b1=0.0, grafting="sgd", precondition_every=100)
    state = tx.init(params)
    g = {"w": jnp.full((4, 3), 0.1, jnp.float16), "v": jnp.full((4, 3), 0.1)}
    u, state = tx.update(g, state, params)
    assert int(state.skipped_steps) == 1
    assert u["w"].dtype == jnp.float16 and not np.asarray(u["w"]).any()
    tx = optlab.shampoo(1e3, b1=0.0, grafting="sgd", precondition_every=100)
    u, state = tx.update(g, tx.init(params), params)
    assert int(state.skipped_steps) == 0 and np.isfinite(np.asarray(u["w"])).all()


@pytest.mark.parametrize("name", ["shampoo", "soap"])
def test_weight_decay_without_params_is_a_clear_error(name):
    factory = {"shampoo": optlab.shampoo, "soap": optlab.soap}[name]
    tx = factory(0.1, weight_decay=0.1)
    params = _params()
    with pytest.raises(ValueError, match="weight_decay needs the parameters"):
        tx.update(params, tx.init(params))


def test_momentum_is_kept_in_float32_for_bfloat16_parameters():
    # Cast to bfloat16 only at the end: the momentum holds the float32 average.
    params = _params(dtype=jnp.bfloat16)
    tx = optlab.shampoo(0.1)
    state = tx.init(params)
    g = jax.tree.map(jnp.ones_like, params)
    u, state = tx.update(g, state, params)
    (momentum,) = [
        x
        for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optlab.BlockMomentumState))
        if isinstance(x, optlab.BlockMomentumState)
    ]
    assert momentum.mu.dtype == jnp.float32
    assert momentum.mu.size == sum(x.size for x in jax.tree.leaves(params))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(u))
