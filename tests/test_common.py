"""optlab._src.common: the NaN/Inf guard's two modes and its gradient bounds."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optlab._src.common import (
    DIGIT_BASE,
    digit_width,
    max_abs_within,
    runtime_digits,
    runtime_offset,
    runtime_row,
    runtime_slice,
    skip_nonfinite,
)

F32_MAX = float(np.finfo(np.float32).max)


def _counting(update_value=None) -> optax.GradientTransformation:
    """A transform whose state counts its steps and sums its gradients; its update is the
    gradient, or ``update_value`` (e.g. NaN) in every entry."""

    def init_fn(params):
        return (jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        count, total = state
        new_total = jax.tree.map(jnp.add, total, updates)
        out = updates
        if update_value is not None:
            out = jax.tree.map(lambda u: jnp.full_like(u, update_value), updates)
        return out, (count + 1, new_total)

    return optax.GradientTransformation(init_fn, update_fn)


def _below(limit):
    return lambda grads, state: max_abs_within(grads, lambda g: limit)


def test_step_is_safe_false_skips_before_the_step():
    tx = skip_nonfinite(_counting(), step_is_safe=_below(10.0))
    params = {"a": jnp.ones(3)}
    state = tx.init(params)
    u, state = jax.jit(tx.update)({"a": jnp.array([1.0, 2.0, 3.0])}, state)
    chex.assert_trees_all_equal(u, {"a": jnp.array([1.0, 2.0, 3.0])})
    for bad in (11.0, np.nan, np.inf):
        u2, state2 = jax.jit(tx.update)({"a": jnp.array([1.0, bad, 3.0])}, state)
        chex.assert_trees_all_equal(u2, {"a": jnp.zeros(3)})
        chex.assert_trees_all_equal(state2.inner, state.inner)
        assert int(state2.skipped_steps) == 1


def test_step_is_safe_with_kwargs_receives_the_extra_arguments():
    # A bound that needs more than the gradient (K-FAC's curvature) takes **kwargs; one that
    # does not is called without them (SAM's grad_fn must not reach Shampoo's bound).
    seen = []

    def safe(grads, state, *, scale=1.0, **extra):
        seen.append(sorted(extra))
        return max_abs_within(grads, lambda g: 10.0 / scale)

    tx = skip_nonfinite(_counting(), step_is_safe=safe)
    state = tx.init({"a": jnp.ones(2)})
    _, ok_state = tx.update({"a": jnp.array([3.0, 4.0])}, state, scale=1.0, other=0)
    _, bad_state = tx.update({"a": jnp.array([3.0, 4.0])}, state, scale=5.0)
    assert int(ok_state.skipped_steps) == 0 and int(bad_state.skipped_steps) == 1
    assert seen == [["other"], []]
    plain = skip_nonfinite(_counting(), step_is_safe=_below(10.0))
    _, s2 = plain.update({"a": jnp.array([3.0, 4.0])}, plain.init({"a": jnp.ones(2)}), scale=5.0)
    assert int(s2.skipped_steps) == 0


def test_a_nonfinite_update_after_a_safe_step_is_zeroed_and_counted():
    # The state (finite, by step_is_safe) keeps the step; only the update is dropped.
    tx = skip_nonfinite(_counting(update_value=np.nan), step_is_safe=_below(10.0))
    state = tx.init({"a": jnp.ones(2)})
    u, state = tx.update({"a": jnp.array([1.0, 2.0])}, state)
    chex.assert_trees_all_equal(u, {"a": jnp.zeros(2)})
    assert int(state.skipped_steps) == 1 and int(state.inner[0]) == 1
    np.testing.assert_array_equal(state.inner[1]["a"], [1.0, 2.0])


def test_check_updates_false_trusts_the_bound():
    tx = skip_nonfinite(_counting(), step_is_safe=_below(10.0), check_updates=False)
    state = tx.init({"a": jnp.ones(2)})
    u, state = tx.update({"a": jnp.array([1.0, 2.0])}, state)
    chex.assert_trees_all_equal(u, {"a": jnp.array([1.0, 2.0])})
    assert int(state.skipped_steps) == 0


def test_the_default_mode_undoes_a_step_with_a_nonfinite_update():
    tx = skip_nonfinite(_counting(update_value=np.inf))
    state = tx.init({"a": jnp.ones(2)})
    u, new_state = tx.update({"a": jnp.array([1.0, 2.0])}, state)
    chex.assert_trees_all_equal(u, {"a": jnp.zeros(2)})
    chex.assert_trees_all_equal(new_state.inner, state.inner)
    assert int(new_state.skipped_steps) == 1


def test_conflicting_options_are_rejected():
    with pytest.raises(ValueError, match="not both"):
        skip_nonfinite(_counting(), state_is_finite=lambda s: True, step_is_safe=_below(1.0))
    with pytest.raises(ValueError, match="check_updates=False needs step_is_safe"):
        skip_nonfinite(_counting(), check_updates=False)


def test_max_abs_within_matches_numpy_and_flags_nonfinite():
    rng = np.random.default_rng(0)
    tree = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": np.float32(-7.5)}
    peak = max(np.abs(tree["a"]).max(), 7.5)
    assert bool(max_abs_within(tree, lambda g: peak))
    assert not bool(max_abs_within(tree, lambda g: np.nextafter(np.float32(peak), 0)))
    assert bool(max_abs_within({}, lambda g: 0.0))
    assert bool(max_abs_within({"e": jnp.zeros((0, 3))}, lambda g: 0.0))
    for bad in (np.nan, np.inf, -np.inf):
        assert not bool(max_abs_within({"a": np.array([1.0, bad], np.float32)}, lambda g: 1e38))
    # bfloat16 leaves compare in float32 without overflow.
    assert bool(max_abs_within({"h": jnp.array([1e38], jnp.bfloat16)}, lambda g: F32_MAX))
    # A limit past float32's largest value (float64's, or one that rounds to Inf in float32)
    # still rejects an Inf, and float64 leaves compare in float64.
    assert not bool(max_abs_within({"a": np.array([np.inf], np.float32)}, lambda g: 1e300))
    with jax.enable_x64(True):
        f64_max = float(np.finfo(np.float64).max)
        assert bool(max_abs_within({"a": np.array([1e300])}, lambda g: f64_max))
        assert not bool(max_abs_within({"a": np.array([np.inf])}, lambda g: f64_max))
        assert not bool(max_abs_within({"a": np.array([1e300])}, lambda g: 1e299))


@pytest.mark.parametrize("update_value", [None, np.inf])
def test_branchless_mode_skips_and_undoes_like_the_default(update_value):
    tx = skip_nonfinite(_counting(update_value=update_value), branchless=True)
    state = tx.init({"a": jnp.ones(2)})
    step = jax.jit(tx.update)
    good, bad = {"a": jnp.array([1.0, 2.0])}, {"a": jnp.array([1.0, np.nan])}
    u, new_state = step(bad, state)
    chex.assert_trees_all_equal(u, {"a": jnp.zeros(2)})
    chex.assert_trees_all_equal(new_state.inner, state.inner)
    assert int(new_state.skipped_steps) == 1
    u, new_state = step(good, state)
    if update_value is None:
        chex.assert_trees_all_equal(u, good)
        assert int(new_state.skipped_steps) == 0 and int(new_state.inner[0]) == 1
    else:  # a non-finite update: undone, as in the default mode
        chex.assert_trees_all_equal(u, {"a": jnp.zeros(2)})
        chex.assert_trees_all_equal(new_state.inner, state.inner)
    with pytest.raises(ValueError, match="branchless or step_is_safe"):
        skip_nonfinite(_counting(), branchless=True, step_is_safe=_below(1.0))


def hlo_instructions(fn, *args) -> int:
    text = jax.jit(fn).lower(*args).compile().as_text()
    return sum(1 for line in text.splitlines() if " = " in line)


def test_branchless_guard_program_grows_linearly_with_leaves():
    # Compile time (issue 18): the guard's "all finite" scalar feeds a select per leaf.
    # Combined by a Python sum of per-leaf scalars, XLA fused the scalar chain, duplicated, into
    # every leaf's select: the program grew quadratically (8707 -> 29667 instructions for 16 ->
    # 32 leaves of adam, measured). Linear growth gives at most 2x plus the constant part's
    # share: below 2.2x.
    def instructions(n):
        tx = skip_nonfinite(optax.adam(1e-3), branchless=True)
        tree = {f"w{i}": jnp.zeros((64,)) for i in range(n)}
        return hlo_instructions(tx.update, tree, tx.init(tree))

    assert instructions(32) <= 2.2 * instructions(16)


@pytest.mark.parametrize("largest", [0, 1, 15, 16, 255, 256, 4095, 70_000])
def test_runtime_offset_writes_every_value_with_the_state_digits(largest):
    width = digit_width(largest)
    assert DIGIT_BASE ** (width - 1) <= max(largest, 1) < DIGIT_BASE**width or largest == 0
    values = sorted({0, 1, largest, largest // 2, max(largest - 1, 0), largest // 3})
    digits = runtime_digits()

    @jax.jit
    def written(digits):
        return jnp.stack([jnp.asarray(runtime_offset(v, digits, width)) for v in values])

    np.testing.assert_array_equal(np.asarray(written(digits)), values)
    # Without digits (a stateless caller) the value itself, a Python int.
    assert [runtime_offset(v, (), width) for v in values] == values


@pytest.mark.parametrize("length", [1, 16, 17, 300])
def test_runtime_slice_and_row_cut_what_indexing_cuts(length):
    # Every start of an array whose length needs one, two or three digits, with the state's
    # digits (inside jit) and without (constant slices): the same entries as Python indexing.
    x = jnp.arange(length * 3, dtype=jnp.float32).reshape(length, 3)
    starts = sorted({0, length // 2, length - 1})

    @jax.jit
    def cut(x, digits):
        return [runtime_slice(x, s, length - s, digits) for s in starts], [
            runtime_row(x, s, digits) for s in starts
        ]

    for digits in (runtime_digits(), ()):
        slices, rows = cut(x, digits)
        for s, piece, row in zip(starts, slices, rows, strict=True):
            np.testing.assert_array_equal(np.asarray(piece), np.asarray(x)[s:])
            np.testing.assert_array_equal(np.asarray(row), np.asarray(x)[s])
