"""The Kronecker-factor engine (optlab._src.kronecker) against float64 numpy references.

Tolerances come from float32 error bounds, with ``U = 2^-24`` (float32's unit roundoff): a dot
product of length ``m`` in float32 is within ``m U sum |a_i| |b_i|`` of the exact one (the
standard componentwise bound, to first order), so each check scales ``U`` by the operation's
length and by the absolute-value version of the same computation. Inputs are float32 numbers,
so the float64 reference sees exactly what the engine sees.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optlab._src import kronecker as kron

U = 2.0**-24


def f32(rng, shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def layout_of(leaves, block_size=4, max_dim=8192, merge=True, root=None):
    return kron.make_layout(tuple(tuple(x.shape) for x in leaves), block_size, max_dim, merge, root)


def mode_apply(x, m, axis):
    """``x \\times_axis m``: ``m`` (d x d) multiplies the ``axis`` index of ``x``."""
    return np.moveaxis(np.tensordot(m, x, axes=([1], [axis])), 0, axis)


def mode_gram(x, axis):
    m = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
    return m @ m.T


def block_of(merged, block, shape):
    return merged[tuple(slice(s, s + n) for s, n in zip(block.starts, shape))]


def group_members(layout):
    """Per group, its stack entries in order: (kind, axis, block position)."""
    out = [[None] * g.count for g in layout.groups]
    for k, kind in enumerate(layout.kinds):
        for axis, g in enumerate(kind.axis_groups):
            if g is not None:
                for b in range(kind.count):
                    out[g][kind.axis_offsets[axis] + b] = (k, axis, b)
    return out


def blocks_np(leaves, layout):
    """Per kind, the float64 blocks in stack order, cut by numpy slicing of the merged leaves."""
    stacks = [[None] * kind.count for kind in layout.kinds]
    for x, plan in zip(leaves, layout.leaves):
        for block in plan.blocks:
            shape = layout.kinds[block.kind].shape
            stacks[block.kind][block.position] = block_of(
                np.asarray(x, np.float64).reshape(plan.merged), block, shape
            )
    return stacks


# Leaf sets: uniform blocks, ragged blocks, merged dims, 3-D / 4-D tensors, vectors, scalars, empty.
LEAF_SETS = {
    "uniform": ([(8, 12)], {}),
    "ragged": ([(10, 7)], {}),
    "merged_conv": ([(3, 3, 4, 8)], {"block_size": 64}),
    "tensor_3d": ([(3, 4, 5)], {"merge": False, "block_size": 8}),
    "tensor_4d": ([(2, 3, 4, 5)], {"merge": False, "block_size": 8}),
    "ragged_3d": ([(6, 5, 7)], {"merge": False}),
    "mixed_tree": ([(8, 12), (5,), (), (1, 4), (0, 3), (10, 7), (4, 4)], {}),
}


# -- layout ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, max_dim, merge, expected",
    [
        ((3, 3, 64, 128), 1024, True, (576, 128)),
        ((1, 2, 768, 1, 2048), 4096, True, (1536, 2048)),
        ((1, 2, 768, 1, 2048), 4096, False, (2, 768, 2048)),
        ((4, 4), 1024, True, (4, 4)),  # a matrix stays a matrix
        ((2, 3, 4), 1024, True, (6, 4)),
        ((7,), 1024, True, (7,)),
        ((1, 1), 1024, True, (1,)),
        ((), 1024, True, (1,)),
    ],
)
def test_merge_dims(shape, max_dim, merge, expected):
    assert kron.merge_dims(shape, max_dim, merge) == expected


def test_layout_groups_by_size_and_root():
    # (8, 12) with block 4: six 4x4 blocks, both axes in the (4, 4) group: 12 statistics.
    # (4, 4, 4) unmerged: one block of order 3 (p = 6): a separate (4, 6) group of 3.
    # (6, 20) with max_preconditioned_dim 8: 2x5 blocks of (4, 4) and (2, 4): all axes <= 8.
    # (3, 100) with block_size None and max 8: axis 1 not preconditioned, p = 2 * 1.
    layout = kron.make_layout(((8, 12), (4, 4, 4)), 4, 8192, False, None)
    assert [(g.dim, g.p, g.count) for g in layout.groups] == [(4, 4, 12), (4, 6, 3)]
    assert layout.matrix_size == 15 * 16 and layout.stats_size == 15 * 16
    layout = kron.make_layout(((3, 100), (5,)), None, 8, True, None)
    (kind,) = layout.kinds
    assert kind.axis_groups == (0, None) and kind.p == 2
    assert [(g.dim, g.p, g.count) for g in layout.groups] == [(3, 2, 1)]
    assert layout.vector_sizes == (5,) and layout.stats_size == 9 + 5
    # A root override puts every kind's statistics of one size into one group.
    layout = kron.make_layout(((8, 12), (4, 4, 4)), 4, 8192, False, 2)
    assert [(g.dim, g.p, g.count) for g in layout.groups] == [(4, 2, 15)]


def test_layout_flags_vectors_and_empty_leaves():
    layout = kron.make_layout(((5,), (), (1, 4), (0, 3), (2, 0, 3), (3, 3)), 4, 8192, True, None)
    assert [p.vector for p in layout.leaves] == [True, True, True, False, False, False]
    assert [p.empty for p in layout.leaves] == [False, False, False, True, True, False]
    assert layout.vector_sizes == (5, 1, 4)
    np.testing.assert_array_equal(layout.segments, [0] * 5 + [1] + [2] * 4)


# -- tree <-> stacks -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(LEAF_SETS))
def test_blocks_round_trip_and_match_numpy_slices(name):
    shapes, kw = LEAF_SETS[name]
    rng = np.random.default_rng(0)
    leaves = [f32(rng, s) for s in shapes]
    layout = layout_of(leaves, **kw)
    blocks = kron.to_blocks([jnp.asarray(x) for x in leaves], layout, jnp.float32)
    # Pure data movement: exact.
    for stack, ref in zip(blocks.stacks, blocks_np(leaves, layout)):
        np.testing.assert_array_equal(stack, np.stack(ref))
    vectors = [x.ravel() for x, p in zip(leaves, layout.leaves) if p.vector]
    if vectors:
        np.testing.assert_array_equal(blocks.vector, np.concatenate(vectors))
    else:
        assert blocks.vector is None
    back = kron.from_blocks(blocks, layout, leaves)
    for x, y in zip(leaves, back):
        assert y.shape == x.shape and y.dtype == x.dtype
        np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("name", list(LEAF_SETS))
@pytest.mark.parametrize("shards", [1, 3])
def test_element_buffers_hold_every_entry_once_in_stack_order(name, shards):
    # An element buffer is the stacks raveled in kind order, then the vector, zero-padded to a
    # multiple of the shards: checked against numpy's concatenation, exactly (data movement).
    shapes, kw = LEAF_SETS[name]
    rng = np.random.default_rng(1)
    leaves = [f32(rng, s) for s in shapes]
    layout = kron.shard_layout(layout_of(leaves, **kw), shards)
    blocks = kron.to_blocks([jnp.asarray(x) for x in leaves], layout, jnp.float32)
    buffer = kron.pack_elements(blocks, layout, jnp.float32)
    assert buffer.shape == layout.elements_shape
    assert layout.element_size == sum(x.size for x in leaves)
    expected = [np.stack(ref).ravel() for ref in blocks_np(leaves, layout)]
    expected += [x.ravel() for x, p in zip(leaves, layout.leaves) if p.vector]
    expected = np.concatenate(expected) if expected else np.zeros(0)
    flat = np.asarray(buffer).ravel()
    np.testing.assert_array_equal(flat[: layout.element_size], expected)
    np.testing.assert_array_equal(flat[layout.element_size :], 0)
    assert len(flat) - layout.element_size < shards
    back = kron.unpack_elements(buffer, layout)
    for x, y in zip(back.stacks, blocks.stacks, strict=True):
        np.testing.assert_array_equal(x, y)
    assert (back.vector is None) == (blocks.vector is None)
    if back.vector is not None:
        np.testing.assert_array_equal(back.vector, blocks.vector)
    zero = kron.zero_elements(layout, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    assert zero.shape == buffer.shape and not np.asarray(zero).any()


def test_largest_square_sum_bounds_every_block_and_vector_entry():
    rng = np.random.default_rng(2)
    leaves = [f32(rng, (8, 12)), f32(rng, (10, 7), 3.0), f32(rng, (5,), 4.0), f32(rng, ())]
    layout = layout_of(leaves)
    blocks = kron.to_blocks([jnp.asarray(x) for x in leaves], layout, jnp.float32)
    per_block = [np.sum(b**2) for ref in blocks_np(leaves, layout) for b in ref]
    entries = np.concatenate([leaves[2].ravel(), leaves[3].ravel()]).astype(np.float64) ** 2
    expected = max(max(per_block), entries.max())
    # A float32 sum of at most 16 squares: relative error below 16 U.
    np.testing.assert_allclose(kron.largest_square_sum(blocks), expected, rtol=16 * U)
    bad = kron.Blocks(blocks.stacks, blocks.vector.at[1].set(jnp.nan))
    assert np.isnan(kron.largest_square_sum(bad))
    huge = kron.Blocks((blocks.stacks[0].at[0, 0, 0].set(3e38),) + blocks.stacks[1:], None)
    assert np.isinf(kron.largest_square_sum(huge))
    assert float(kron.largest_square_sum(kron.Blocks((), None))) == 0.0


def test_from_blocks_returns_the_dtype_of_like():
    leaves = [jnp.ones((4, 6), jnp.bfloat16), jnp.ones(3, jnp.float16)]
    layout = layout_of(leaves)
    blocks = kron.to_blocks(leaves, layout, jnp.float32)
    assert all(s.dtype == jnp.float32 for s in blocks.stacks) and blocks.vector.dtype == jnp.float32
    assert [x.dtype for x in kron.from_blocks(blocks, layout, leaves)] == [
        jnp.bfloat16,
        jnp.float16,
    ]


# -- statistics ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(LEAF_SETS))
@pytest.mark.parametrize("beta2", [1.0, 0.9])
def test_statistics_sum_and_moving_average(name, beta2):
    shapes, kw = LEAF_SETS[name]
    rng = np.random.default_rng(1)
    steps = [[f32(rng, s) for s in shapes] for _ in range(3)]
    layout = layout_of(steps[0], **kw)
    weight = 1.0 if beta2 == 1.0 else 1.0 - beta2
    buffer = jnp.zeros((layout.stats_size,), jnp.float32)
    members = group_members(layout)
    ref = [np.zeros((g.count, g.dim, g.dim)) for g in layout.groups]
    bound = [np.zeros((g.count, g.dim, g.dim)) for g in layout.groups]
    ref_v = np.zeros(layout.vector_size)
    for leaves in steps:
        blocks = kron.to_blocks([jnp.asarray(x) for x in leaves], layout, jnp.float32)
        buffer = kron.accumulate(buffer, kron.axis_grams(blocks, layout), layout, beta2)
        np_blocks = blocks_np(leaves, layout)
        for g, entries in enumerate(members):
            for i, (k, axis, b) in enumerate(entries):
                x = np_blocks[k][b]
                ref[g][i] = beta2 * ref[g][i] + weight * mode_gram(x, axis)
                bound[g][i] = beta2 * bound[g][i] + weight * mode_gram(np.abs(x), axis)
        vectors = [x.ravel() for x, p in zip(leaves, layout.leaves) if p.vector]
        if vectors:
            ref_v = beta2 * ref_v + weight * np.concatenate(vectors).astype(np.float64) ** 2
    # Each Gram entry is a length-m dot product (m = block size / d), then 3 roundings per step
    # (decay * S, weight * C, the sum): |error| <= (m + 3 T) U (the same sums over |x|), with a
    # factor 2 for the second-order terms and the rounding of the float32 weights.
    for g, stack in enumerate(kron.group_stacks(buffer, layout)):
        m = max(math.prod(layout.kinds[k].shape) // layout.groups[g].dim for k, _, _ in members[g])
        tol = 2 * (m + 3 * len(steps)) * U * bound[g]
        assert np.all(np.abs(np.asarray(stack, np.float64) - ref[g]) <= tol)
    if layout.vector_size:
        v = np.asarray(kron.diagonal_statistics(buffer, layout), np.float64)
        np.testing.assert_allclose(v, ref_v, rtol=2 * 4 * len(steps) * U, atol=0)


def test_statistics_finite_reads_the_diagonals_and_the_vectors():
    layout = layout_of([np.zeros((4, 6)), np.zeros(3)], block_size=64)
    buffer = jnp.zeros((layout.stats_size,), jnp.float32)
    assert bool(kron.statistics_finite(buffer, layout))
    # Off the diagonal: not read (a Gram sum overflows on its diagonal first, see the docstring).
    assert bool(kron.statistics_finite(buffer.at[1].set(jnp.inf), layout))
    left = layout.groups[0]
    diagonal_2 = left.offset + 2 * (left.dim + 1)
    assert not bool(kron.statistics_finite(buffer.at[diagonal_2].set(jnp.inf), layout))
    assert not bool(kron.statistics_finite(buffer.at[-1].set(jnp.nan), layout))
    # An overflowing (finite) gradient shows on the diagonal: 1e20^2 > float32's max.
    blocks = kron.to_blocks([jnp.full((4, 6), 1e20), jnp.ones(3)], layout, jnp.float32)
    stats = kron.accumulate(buffer, kron.axis_grams(blocks, layout), layout, 0.9)
    assert not bool(kron.statistics_finite(stats, layout))


# -- refresh ---------------------------------------------------------------------------------------
def test_refresh_bookkeeping_with_a_custom_refresh_fn():
    # Two groups; the refresh_fn proposes 2 S and accepts the blocks with an even index only.
    layout = kron.make_layout(((8, 8), (4, 4, 4)), 4, 8192, False, None)
    rng = np.random.default_rng(2)
    stats = jnp.asarray(f32(rng, (layout.matrix_size,)))
    factors = kron.identity_factors(layout)
    seen = []

    def refresh_fn(s, group):
        seen.append((group.dim, group.p, s.shape))
        return 2 * s, jnp.arange(s.shape[0]) % 2 == 0

    new, rejected = kron.refresh(stats, factors, layout, refresh_fn)
    assert seen == [(g.dim, g.p, (g.count, g.dim, g.dim)) for g in layout.groups]
    assert int(rejected) == sum(g.count // 2 for g in layout.groups)
    for s, old, out in zip(
        kron.group_stacks(stats, layout),
        kron.group_stacks(factors, layout),
        kron.group_stacks(new, layout),
    ):
        np.testing.assert_array_equal(out[0::2], 2 * np.asarray(s[0::2]))
        np.testing.assert_array_equal(out[1::2], old[1::2])
        np.testing.assert_array_equal(
            old[1::2], np.broadcast_to(np.eye(old.shape[-1]), old[1::2].shape)
        )


def _ref_root(a, p, eps):
    w, v = np.linalg.eigh(a)
    w = np.maximum(w, 0.0)
    ridge = eps * w[-1]
    return (v * (w + ridge) ** (-1.0 / p)) @ v.T, (w[-1] + ridge) / (w[0] + ridge)


@pytest.mark.parametrize("shapes", [((6, 24), (12, 48)), ((3, 4, 5),)])
def test_inverse_roots_against_float64_eigh(shapes):
    rng = np.random.default_rng(3)
    leaves = [f32(rng, s) for s in shapes]
    layout = layout_of(leaves, block_size=64, merge=False)
    blocks = kron.to_blocks([jnp.asarray(x) for x in leaves], layout, jnp.float32)
    stats = kron.accumulate(
        jnp.zeros((layout.stats_size,), jnp.float32), kron.axis_grams(blocks, layout), layout, 1.0
    )
    refresh_fn = kron.inverse_roots(eps=1e-6, eps_floor=0.0, method="eigh", threshold=np.inf)
    roots, rejected = kron.refresh(stats, kron.identity_factors(layout), layout, refresh_fn)
    assert int(rejected) == 0
    for group, s, r in zip(
        layout.groups, kron.group_stacks(stats, layout), kron.group_stacks(roots, layout)
    ):
        for a, x in zip(np.asarray(s, np.float64), np.asarray(r, np.float64)):
            ref, kappa = _ref_root(a, group.p, 1e-6)
            # eigh is backward stable: exact eigenpairs of S + E, ||E||_2 <= c d U ||S||_2.
            # x -> x^{-1/p} has divided differences <= (1/p) lambda_min^{-1/p - 1}, so the root
            # moves by <= (1/p) kappa sqrt(d) c d U relative to ||root||_2 = lambda_min^{-1/p};
            # forming V diag V^T adds ~ d U. c = 4.
            d = group.dim
            tol = 4 * (kappa * d**1.5 / group.p + 2 * d) * U
            assert np.linalg.norm(x - ref) / np.linalg.norm(ref, 2) <= tol


def test_inverse_roots_reject_non_finite_statistics_and_keep_the_old_factor():
    layout = kron.make_layout(((4, 6),), 64, 8192, True, None)
    rng = np.random.default_rng(4)
    blocks = kron.to_blocks([jnp.asarray(f32(rng, (4, 6)))], layout, jnp.float32)
    stats = kron.accumulate(
        jnp.zeros((layout.stats_size,), jnp.float32), kron.axis_grams(blocks, layout), layout, 1.0
    )
    refresh_fn = kron.inverse_roots(eps=1e-6, eps_floor=0.0, method="eigh", threshold=4.0)
    good, rejected = kron.refresh(stats, kron.identity_factors(layout), layout, refresh_fn)
    assert int(rejected) == 0
    left = layout.groups[0]  # (4, p=4): the left statistic; (6, 4) the right one
    poisoned = stats.at[left.offset + 1].set(jnp.nan)
    new, rejected = kron.refresh(poisoned, good, layout, refresh_fn)
    assert int(rejected) == 1
    np.testing.assert_array_equal(new, good)  # rejected: kept; the other: recomputed, the same
    # A threshold no root can meet rejects all of them.
    _, rejected = kron.refresh(
        stats,
        good,
        layout,
        kron.inverse_roots(eps=1e-6, eps_floor=0.0, method="eigh", threshold=1e-30),
    )
    assert int(rejected) == 2


# -- preconditioning -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in LEAF_SETS if n != "mixed_tree"] + ["unpreconditioned"])
@pytest.mark.parametrize("transpose", [False, True])
def test_mode_products_along_each_axis(name, transpose):
    shapes, kw = LEAF_SETS.get(name, ([(3, 10), (4, 4)], {"block_size": None, "max_dim": 4}))
    rng = np.random.default_rng(5)
    leaves = [f32(rng, s) for s in shapes]
    layout = layout_of(leaves, **kw)
    # Random, non-symmetric factors: transpose must matter.
    factor_stacks = [f32(rng, (g.count, g.dim, g.dim)) for g in layout.groups]
    factors = jnp.asarray(np.concatenate([f.ravel() for f in factor_stacks]))
    blocks = kron.to_blocks([jnp.asarray(x) for x in leaves], layout, jnp.float32)
    out = kron.mode_products(blocks.stacks, factors, layout, transpose=transpose)
    for kind, stack, ref_blocks in zip(layout.kinds, out, blocks_np(leaves, layout)):
        for b, x in enumerate(ref_blocks):
            ref, bound, length = x, np.abs(x), 0
            for axis, g in enumerate(kind.axis_groups):
                if g is None:
                    continue
                f = factor_stacks[g][kind.axis_offsets[axis] + b].astype(np.float64)
                f = f.T if transpose else f
                ref, bound = mode_apply(ref, f, axis), mode_apply(bound, np.abs(f), axis)
                length += layout.groups[g].dim
            # Each product is a length-d dot product per entry; errors of earlier products are
            # carried through the later ones: |error| <= (sum of d) U (the |.| computation).
            assert np.all(np.abs(np.asarray(stack[b], np.float64) - ref) <= 2 * length * U * bound)


def test_diagonal_root_uses_a_ridge_per_leaf():
    rng = np.random.default_rng(6)
    layout = layout_of([np.zeros(5), np.zeros(()), np.zeros(3)])
    g = f32(rng, (9,))
    # Statistics in [0.5, 4] (and one leaf far smaller, so a shared ridge would show).
    v = rng.uniform(0.5, 4.0, 9).astype(np.float32)
    v[6:] *= np.float32(1e-6)
    out = kron.diagonal_root(jnp.asarray(g), jnp.asarray(v), layout, eps=1e-2, eps_floor=1e-9, p=2)
    ref = np.empty(9)
    for lo, hi in [(0, 5), (5, 6), (6, 9)]:
        vv = v[lo:hi].astype(np.float64)
        ref[lo:hi] = g[lo:hi] / np.sqrt(vv + 1e-2 * vv.max() + 1e-9)
    # max, two additions, a power (XLA's pow is exp(y log x): a few ulps for |y log x| < 1) and a
    # product: 16 U.
    np.testing.assert_allclose(np.asarray(out, np.float64), ref, rtol=16 * U, atol=0)
    assert (
        kron.diagonal_root(
            None, jnp.zeros(0), layout_of([np.zeros((2, 2))]), eps=0.0, eps_floor=0.0, p=2
        )
        is None
    )


# -- grafting --------------------------------------------------------------------------------------
def test_graft_takes_each_block_norm_and_each_vector_leaf_norm_from_the_reference():
    rng = np.random.default_rng(7)
    shapes = [(10, 7), (5,), (3,)]
    layout = layout_of([np.zeros(s) for s in shapes])
    direction = kron.to_blocks([jnp.asarray(f32(rng, s)) for s in shapes], layout, jnp.float32)
    reference = kron.to_blocks(
        [jnp.asarray(f32(rng, s, 1e-3)) for s in shapes], layout, jnp.float32
    )
    # One all-zero direction block and one zero vector leaf: their update is zero.
    direction = kron.Blocks(
        (direction.stacks[0].at[0].set(0.0), *direction.stacks[1:]),
        direction.vector.at[5:].set(0.0),
    )
    out = kron.graft(direction, reference, layout)

    def grafted(d, r):
        d, r = np.asarray(d, np.float64), np.asarray(r, np.float64)
        n = np.linalg.norm(d)
        return d * (np.linalg.norm(r) / n) if n > 0 else np.zeros_like(d)

    # Two norms of length m (relative error <= m U / 2 each after the square root), a division
    # and a product: (m + 4) U, doubled.
    for o, d, r in zip(out.stacks, direction.stacks, reference.stacks):
        m = math.prod(d.shape[1:])
        for ob, db, rb in zip(o, d, r):
            np.testing.assert_allclose(ob, grafted(db, rb), rtol=2 * (m + 4) * U, atol=0)
    for lo, hi in [(0, 5), (5, 8)]:
        np.testing.assert_allclose(
            out.vector[lo:hi],
            grafted(direction.vector[lo:hi], reference.vector[lo:hi]),
            rtol=2 * (hi - lo + 4) * U,
            atol=0,
        )


def test_graft_ratio():
    ratio = kron.graft_ratio(jnp.asarray([2.0, 0.0, 1e-30]), jnp.asarray([1.0, 5.0, 1e-30]))
    np.testing.assert_array_equal(ratio, [0.5, 0.0, 1.0])


def test_engine_runs_under_jit_with_one_trace_per_layout():
    leaves = [jnp.ones((10, 7)), jnp.ones(3)]
    layout = layout_of(leaves)
    traces = []

    @jax.jit
    def step(stats, leaves):
        traces.append(1)
        blocks = kron.to_blocks(leaves, layout, jnp.float32)
        stats = kron.accumulate(stats, kron.axis_grams(blocks, layout), layout, 0.9)
        return stats, kron.from_blocks(blocks, layout, leaves)

    stats = jnp.zeros((layout.stats_size,), jnp.float32)
    for _ in range(3):
        stats, back = step(stats, leaves)
    assert len(traces) == 1


# -- eigenbases (SOAP) -----------------------------------------------------------------------------
def _spd(rng, n, count, low=1.0, high=4.0):
    """``count`` float32 SPD ``n x n`` matrices with eigenvalues evenly spread in [low, high]."""
    out = []
    for _ in range(count):
        q, _ = np.linalg.qr(rng.standard_normal((n, n)))
        out.append((q * rng.permutation(np.linspace(low, high, n))) @ q.T)
    return np.asarray(out, np.float32)


def test_adjust_layout_promotes_vectors_and_drops_ignored_axes():
    shapes = ((8, 12), (6,), (10,), (), (1, 4), (0, 3), (3, 4, 5), (20,))
    base = kron.make_layout(shapes, 4, 8192, False, 1)
    layout = kron.adjust_layout(
        base,
        block_size=4,
        max_preconditioned_dim=8192,
        root=1,
        precondition_vectors=True,
        ignored_axes=((3, (1,)),),
    )
    # (6,), (10,), (1, 4) and (20,) become order-1 kinds cut into blocks of 4; () stays a vector.
    assert layout.vector_sizes == (1,)
    vector_kinds = {k.shape: k.count for k in layout.kinds if len(k.shape) == 1}
    assert vector_kinds == {(4,): 1 + 2 + 1 + 5, (2,): 2}
    for kind in layout.kinds:
        if len(kind.shape) == 3:
            assert kind.axis_groups[1] is None and None not in (kind.axis_groups[0::2])
        else:
            assert None not in kind.axis_groups
    # Groups are rebuilt: every (kind, axis) is in its group exactly once, offsets contiguous.
    members = group_members(layout)
    assert all(None not in m for m in members)
    assert sum(g.size for g in layout.groups) == layout.matrix_size
    offsets = [g.offset for g in layout.groups]
    assert offsets == sorted(offsets) and offsets[0] == 0
    rng = np.random.default_rng(20)
    leaves = [jnp.asarray(f32(rng, s)) for s in shapes]
    blocks = kron.to_blocks(leaves, layout, jnp.float32)
    for a, b in zip(kron.from_blocks(blocks, layout, leaves), leaves):
        np.testing.assert_array_equal(a, b)
    # Without the options it is make_layout's own layout; a vector above max_dim stays a vector.
    same = kron.adjust_layout(base, block_size=4, max_preconditioned_dim=8192, root=1)
    assert same == base
    big = kron.make_layout(((6,),), None, 4, True, 1)
    assert kron.adjust_layout(
        big, block_size=None, max_preconditioned_dim=4, root=1, precondition_vectors=True
    ).vector_sizes == (6,)


def test_eigenbases_are_orthonormal_and_descending():
    rng = np.random.default_rng(21)
    s = _spd(rng, 5, 3)
    q = np.asarray(kron.eigenbases(jnp.asarray(s)), np.float64)
    for a, v in zip(s.astype(np.float64), q):
        w_ref = np.linalg.eigvalsh(a)[::-1]
        rayleigh = np.diag(v.T @ a @ v)
        # Eigenvalues spread 0.6 apart on a scale of 4: each Rayleigh quotient is within
        # c d U ||S|| of its eigenvalue (backward stability; quadratic in the vector error).
        np.testing.assert_allclose(rayleigh, w_ref, atol=4 * 5 * U * 4)
        np.testing.assert_allclose(v.T @ v, np.eye(5), atol=4 * 5 * U)


def test_power_qr_sorts_by_rayleigh_quotient_then_takes_one_power_step():
    rng = np.random.default_rng(22)
    s = _spd(rng, 6, 4)
    basis = np.asarray([np.linalg.qr(rng.standard_normal((6, 6)))[0] for _ in range(4)])
    q, order = kron.power_qr(jnp.asarray(s), jnp.asarray(basis, jnp.float32))
    for a, o, got, got_order in zip(s.astype(np.float64), basis, np.asarray(q), order):
        expected_order = np.argsort(-np.diag(o.T @ a @ o), kind="stable")
        np.testing.assert_array_equal(got_order, expected_order)
        ref = np.linalg.qr(a @ o[:, expected_order])[0]
        # QR's Q is unique up to column signs; kappa(S) <= 4 bounds its sensitivity.
        signs = np.sign(np.sum(got * ref, axis=0))
        np.testing.assert_allclose(got * signs, ref, atol=4 * 4 * 6 * U * 4)


def test_off_diagonal_ratio_against_numpy():
    rng = np.random.default_rng(23)
    s = _spd(rng, 5, 3)
    basis = np.asarray([np.linalg.qr(rng.standard_normal((5, 5)))[0] for _ in range(3)])
    ratio = kron.off_diagonal_ratio(jnp.asarray(s), jnp.asarray(basis, jnp.float32))
    for a, o, r in zip(s.astype(np.float64), basis, np.asarray(ratio)):
        b = o.T @ a @ o
        assert abs(r - np.linalg.norm(b - np.diag(np.diag(b))) / np.linalg.norm(b)) <= 50 * U
    # An eigenbasis diagonalizes: ratio ~ U; a zero statistic: 0 (nothing to refresh).
    eig = kron.eigenbases(jnp.asarray(s))
    assert float(jnp.max(kron.off_diagonal_ratio(jnp.asarray(s), eig))) <= 50 * U
    zero = kron.off_diagonal_ratio(jnp.zeros((1, 5, 5)), jnp.eye(5)[None])
    np.testing.assert_array_equal(zero, [0.0])


def test_refresh_bases_rejects_non_finite_and_skips_within_tolerance():
    layout = kron.make_layout(((5, 5),), None, 8192, False, 1)  # one group: L and R, 5 x 5
    rng = np.random.default_rng(24)
    stats = jnp.asarray(_spd(rng, 5, 2).ravel())
    first = kron.refresh_bases(stats, kron.identity_factors(layout), layout, method="eigh")
    assert int(first.rejected) == 0 and int(first.skipped) == 0
    np.testing.assert_array_equal(first.orders[0], np.broadcast_to(np.arange(5), (2, 5)))
    # A NaN in the first statistic: its basis is rejected (kept, identity order), R refreshed.
    poisoned = stats.at[1].set(jnp.nan)
    new = kron.refresh_bases(poisoned, first.bases, layout, method="qr")
    assert int(new.rejected) == 1
    np.testing.assert_array_equal(new.bases[:25], first.bases[:25])
    np.testing.assert_array_equal(new.orders[0][0], np.arange(5))
    assert np.all(np.isfinite(new.bases))
    # The eigenbases already diagonalize: a tolerance of 1e-3 keeps both; 0 keeps neither.
    kept = kron.refresh_bases(stats, first.bases, layout, method="qr", tolerance=1e-3)
    assert int(kept.skipped) == 2 and int(kept.rejected) == 0
    np.testing.assert_array_equal(kept.bases, first.bases)
    moved = kron.refresh_bases(stats, first.bases, layout, method="qr", tolerance=0.0)
    assert int(moved.skipped) == 0


def test_basis_changes_and_permute_modes_against_numpy():
    rng = np.random.default_rng(25)
    shapes = ((4, 6), (3, 4, 5))
    layout = kron.make_layout(shapes, None, 8192, False, 1)
    eye = np.asarray(kron.identity_factors(layout))
    old = jnp.asarray(
        np.concatenate(
            [
                np.ravel(
                    [np.linalg.qr(rng.standard_normal((g.dim, g.dim)))[0] for _ in range(g.count)]
                )
                for g in layout.groups
            ]
        ).astype(np.float32)
    )
    new = jnp.asarray(eye)
    leaves = [jnp.asarray(f32(rng, s)) for s in shapes]
    blocks = kron.to_blocks(leaves, layout, jnp.float32)
    # Coordinates in the old bases, carried to the new ones (here I): back to the plain blocks.
    rotated = kron.mode_products(blocks.stacks, old, layout, transpose=True)
    carried = kron.mode_products(rotated, kron.basis_changes(new, old, layout), layout)
    for a, b in zip(carried, blocks.stacks):
        np.testing.assert_allclose(a, b, atol=4 * 3 * 6 * U * float(np.max(np.abs(b))) * 10)
    orders = tuple(
        jnp.asarray(np.asarray([rng.permutation(g.dim) for _ in range(g.count)], np.int32))
        for g in layout.groups
    )
    permuted = kron.permute_modes(blocks.stacks, orders, layout)
    for kind, x, y in zip(layout.kinds, blocks.stacks, permuted):
        for b in range(kind.count):
            ref = np.asarray(x[b])
            for axis, g in enumerate(kind.axis_groups):
                order = np.asarray(orders[g][kind.axis_offsets[axis] + b])
                ref = np.take(ref, order, axis=axis)
            np.testing.assert_array_equal(y[b], ref)


@pytest.mark.parametrize("name", list(LEAF_SETS))
@pytest.mark.parametrize("transpose", [False, True])
def test_matrix_mode_products_equal_mode_products(name, transpose):
    shapes, kw = LEAF_SETS[name]
    rng = np.random.default_rng(26)
    leaves = [jnp.asarray(f32(rng, s)) for s in shapes]
    layout = layout_of(leaves, **kw)
    factors = jnp.asarray(f32(rng, (layout.matrix_size,)))
    blocks = kron.to_blocks(leaves, layout, jnp.float32)
    fast = kron.matrix_mode_products(blocks.stacks, factors, layout, transpose=transpose)
    slow = kron.mode_products(blocks.stacks, factors, layout, transpose=transpose)
    bounds = kron.mode_products(
        tuple(jnp.abs(x) for x in blocks.stacks), jnp.abs(factors), layout, transpose=transpose
    )
    for a, b, bound, x in zip(fast, slow, bounds, blocks.stacks):
        # The same sums in another order: each result within (sum of the dims) U of the
        # product of the absolute values, for each of the two computations.
        tol = 2 * sum(x.shape[1:]) * U * np.asarray(bound)
        assert np.all(np.abs(np.asarray(a) - np.asarray(b)) <= tol)
