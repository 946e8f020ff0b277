r"""The Kronecker-factor engine of Shampoo (and, next, SOAP and K-FAC).

Kronecker-factored methods keep, for every block ``X`` of a parameter (order ``k``), one small
``d_a x d_a`` matrix per axis ``a`` and act on the block through mode products::

    (X \times_a M)_{i_1 .. i_a .. i_k} = sum_j M_{i_a j} X_{i_1 .. j .. i_k}.

One step flows one way (nothing goes back)::

    gradient tree -> layout (merge, block, stack by size)     to_blocks
      -> statistics update                                     axis_grams (pluggable) + accumulate
      -> every N steps: batched refresh with rejection         refresh(refresh_fn: pluggable)
      -> preconditioning of the stacks along their axes        mode_products, diagonal_root
      -> grafting                                              graft
      -> unstack into the update tree                          from_blocks

Shampoo keeps the statistics ``S_a = sum_t X_(a) X_(a)^T`` (an exponential moving average or a
sum) and refreshes inverse roots ``(S_a + r I)^{-1/p}`` (:func:`inverse_roots`); SOAP will keep the
same statistics and refresh their eigenbases; K-FAC will accumulate activation and
output-gradient covariances (its own contributions, passed to :func:`accumulate`) and refresh
damped inverses. Each is a different ``refresh_fn`` and statistics function over this engine.

Layout (static, plain Python from the leaf shapes; :func:`make_layout`, cached):

* each leaf is reshaped: size-1 dims dropped, consecutive small dims merged while their product
  stays ``<= block_size`` (``[3, 3, 64, 128] -> [576, 128]``), never below two dims for a leaf
  with two non-trivial dims (a matrix stays a matrix);
* each reshaped leaf is cut into blocks: a dim larger than ``block_size`` is split into chunks
  of ``block_size`` plus a remainder; all blocks of one shape across the tree (a "kind") are
  stacked into one ``[count, *shape]`` array;
* an axis of a kind is preconditioned when it is ``<= max_preconditioned_dim``, with the root
  ``p = 2 k'`` (``k'`` preconditioned axes) or a given one;
* all statistics of equal ``(d, p)`` across the tree form one ``[n, d, d]`` "group", so that one
  batched kernel call (one ``inverse_root``, one ``eigh``) serves them all;
* leaves with fewer than two non-trivial dims (biases, gains, scalars) are "vectors": raveled
  and concatenated into one vector, with a diagonal statistic per entry;
* leaves with no elements are "empty": nothing to precondition, their update is empty.

State buffers. The statistics of all groups, then the vectors' diagonal statistics, live in one
flat buffer (``Layout.stats_size`` elements); the factors (roots, eigenbases, inverses) in a
second one (``Layout.matrix_size``). :func:`group_stacks` reads a buffer as one ``[n, d, d]``
stack per group and :func:`accumulate` / :func:`refresh` write the stacks back in place
(``dynamic_update_slice``: no copy of the whole buffer). A tuple of stacks per block size would
be shardable along the stacked-block axis, but its tree structure would depend on the
parameters' shapes, and ``optax.tree.map_params`` (how optimizer-state shardings are built from
the parameters' ones) computes the state's structure from ``init`` on a placeholder without
shapes: a tuple fails there (a structure mismatch), a flat buffer does not.

Sharded state. Over ``n`` devices (:func:`shard_layout`; the transforms' ``mesh=`` option) the
buffers are ``[n, row]`` instead: every group padded to a multiple of ``n`` statistics, row
``s`` holding device ``s``'s contiguous share of every group (then its share of the vectors'
statistics), so that splitting the leading axis (:func:`optlab.state_sharding`) gives each
device whole statistics. :func:`refresh` and :func:`refresh_bases` then run their kernels per
device on its own share (:class:`Placement`, a ``shard_map``); every other function reads the
same buffers through the same group views, and XLA's partitioner moves what it needs.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optlab import linalg
from optlab._src.common import runtime_row, runtime_slice
from optlab.linalg import _lapack
from optlab.linalg._ops import matmul
from optlab.linalg._ordering import after

__all__ = [
    "BasisRefresh",
    "Block",
    "Blocks",
    "Group",
    "Kind",
    "Layout",
    "LeafPlan",
    "Placement",
    "RefreshFn",
    "Statistics",
    "accumulate",
    "adjust_layout",
    "axis_grams",
    "basis_changes",
    "diagonal_root",
    "diagonal_statistics",
    "eigenbases",
    "from_blocks",
    "graft",
    "graft_ratio",
    "group_stack",
    "group_stacks",
    "identity_factors",
    "inverse_roots",
    "kind_factors",
    "make_layout",
    "matrix_mode_products",
    "merge_dims",
    "mode_products",
    "off_diagonal_ratio",
    "permute_modes",
    "power_qr",
    "refresh",
    "refresh_bases",
    "shard_layout",
    "statistics_bound",
    "statistics_finite",
    "to_blocks",
    "write_group",
]


# -- layout ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Block:
    kind: int  # index into Layout.kinds
    position: int  # index of this block within its kind's stack
    starts: tuple[int, ...]  # start of the block along each merged dim


@dataclasses.dataclass(frozen=True)
class LeafPlan:
    shape: tuple[int, ...]
    merged: tuple[int, ...]
    vector: bool  # fewer than two non-trivial dims: the diagonal rule
    empty: bool  # no elements: nothing to precondition
    blocks: tuple[Block, ...]
    # Blocks per merged dim; ``uniform`` when all blocks have one shape (every dim is at most the
    # block size or a multiple of it), so that a reshape and a transpose cut the whole leaf.
    grid: tuple[int, ...]
    uniform: bool


@dataclasses.dataclass(frozen=True)
class Kind:
    """All blocks of one shape: stacked to ``[count, *shape]``."""

    shape: tuple[int, ...]
    p: int  # root of every preconditioned axis (0 if none)
    axis_groups: tuple[int | None, ...]  # per axis: index into Layout.groups (None: identity)
    axis_offsets: tuple[int, ...]  # per axis: first index of this kind inside its group's stack
    count: int


@dataclasses.dataclass(frozen=True)
class Group:
    """All ``d x d`` statistics of one root ``p``: one ``[count, d, d]`` stack.

    Over ``shards`` devices (:func:`shard_layout`) the stack is padded to a multiple of
    ``shards`` (``padding`` statistics at its end) and shard ``s`` holds its ``s``-th contiguous
    ``count / shards`` statistics at ``offset`` of its row of the buffers.
    """

    dim: int
    p: int
    count: int
    offset: int  # in the flat buffers (elements); over shards: in each shard's row
    shards: int = 1
    padding: int = 0  # padded statistics at the end of the stack (never read by a kind)

    @property
    def size(self) -> int:
        return self.count * self.dim * self.dim

    @property
    def row_size(self) -> int:
        """Elements of the stack in each shard's row."""
        return self.size // self.shards


@dataclasses.dataclass(frozen=True)
class Layout:
    leaves: tuple[LeafPlan, ...]
    kinds: tuple[Kind, ...]
    groups: tuple[Group, ...]
    matrix_size: int  # elements of all groups (the factors buffer's size), padding included
    vector_sizes: tuple[int, ...]  # elements of each vector leaf, in leaf order
    shards: int = 1  # the buffers are [shards, row] over that many devices (shard_layout)

    @property
    def vector_size(self) -> int:
        return sum(self.vector_sizes)

    @property
    def matrix_row(self) -> int:
        """Elements of the matrix statistics (factors) in each shard's row."""
        return self.matrix_size // self.shards

    @property
    def vector_row(self) -> int:
        """Elements of the vectors' statistics in each shard's row (zero-padded)."""
        return -(-self.vector_size // self.shards)

    @property
    def element_size(self) -> int:
        """Elements of a tree in this layout: every block of every kind, then the vector."""
        return sum(k.count * math.prod(k.shape) for k in self.kinds) + self.vector_size

    @property
    def elements_shape(self) -> tuple[int, ...]:
        """Shape of an element buffer (:func:`pack_elements`): flat, or ``[shards, row]``
        (zero-padded) over several shards, the leading axis sharded like the statistics'."""
        return elements_shape(self.element_size, self.shards)

    @property
    def stats_size(self) -> int:
        return self.shards * (self.matrix_row + self.vector_row)

    @property
    def stats_shape(self) -> tuple[int, ...]:
        """Shape of the statistics buffer: flat, or ``[shards, row]`` over several shards (the
        leading axis is what :func:`optlab.state_sharding` shards)."""
        if self.shards == 1:
            return (self.stats_size,)
        return (self.shards, self.matrix_row + self.vector_row)

    @property
    def factors_shape(self) -> tuple[int, ...]:
        """Shape of the factors buffer (:attr:`stats_shape` without the vectors' part)."""
        return (self.matrix_size,) if self.shards == 1 else (self.shards, self.matrix_row)

    @functools.cached_property
    def segments(self) -> np.ndarray:
        """Per element of the concatenated vector: the index of its vector leaf."""
        return np.repeat(np.arange(len(self.vector_sizes)), self.vector_sizes).astype(np.int32)

    @functools.cached_property
    def diagonal_indices(self) -> np.ndarray:
        """Where the diagonals of all statistics and the vectors' statistics are in the buffer
        (raveled, for a ``[shards, row]`` buffer)."""
        row = self.matrix_row + self.vector_row
        parts = []
        for g in self.groups:
            position = np.arange(g.count)
            per_shard = g.count // g.shards
            start = (position // per_shard) * row + g.offset + (position % per_shard) * g.dim**2
            parts.append((start[:, None] + np.arange(g.dim)[None, :] * (g.dim + 1)).ravel())
        entry = np.arange(self.vector_size)
        parts.append((entry // max(self.vector_row, 1)) * row + self.matrix_row)
        parts[-1] += entry % max(self.vector_row, 1)
        return np.concatenate(parts).astype(np.int32)


def merge_dims(shape: tuple[int, ...], max_dim: int, merge: bool) -> tuple[int, ...]:
    """Squeeze size-1 dims and merge consecutive ones while their product is ``<= max_dim``."""
    dims = [d for d in shape if d != 1]
    if not merge or len(dims) < 2:
        return tuple(dims) if dims else (1,)
    merged = [dims[0]]
    for d in dims[1:]:
        if merged[-1] * d <= max_dim:
            merged[-1] *= d
        else:
            merged.append(d)
    if len(merged) < 2:
        # Keep a matrix a matrix: fold everything but the last dim (fan_in x fan_out).
        merged = [math.prod(dims[:-1]), dims[-1]]
    return tuple(merged)


def _chunks(dim: int, block_size: int) -> list[tuple[int, int]]:
    return [(s, min(block_size, dim - s)) for s in range(0, dim, block_size)]


def _group_statistics(
    kind_shapes: Sequence[tuple[int, ...]],
    kind_counts: Sequence[int],
    max_preconditioned_dim: int,
    root: int | None,
    ignored: Mapping[int, set[int]] | None = None,
) -> tuple[tuple[Kind, ...], tuple[Group, ...], int]:
    """The kinds and the groups stacking their statistics, and the statistics' total size.

    Groups: ``(dim, p)`` -> the ``(kind, axis)`` pairs whose statistics it stacks, in a fixed
    order. An axis gets a statistic if it is at most ``max_preconditioned_dim`` and not in
    ``ignored[order]`` (the kind's order: its number of axes).
    """
    ignored = ignored or {}
    group_members: dict[tuple[int, int], list[tuple[int, int]]] = {}
    kind_ps: list[int] = []
    for k, bshape in enumerate(kind_shapes):
        skip = ignored.get(len(bshape), set())
        axes = [i for i, d in enumerate(bshape) if d <= max_preconditioned_dim and i not in skip]
        p = (root if root is not None else 2 * len(axes)) if axes else 0
        kind_ps.append(p)
        for i in axes:
            group_members.setdefault((bshape[i], p), []).append((k, i))
    groups: list[Group] = []
    axis_groups: list[list[int | None]] = [[None] * len(s) for s in kind_shapes]
    axis_offsets = [[0] * len(s) for s in kind_shapes]
    offset = 0
    for gi, ((dim, p), members) in enumerate(sorted(group_members.items())):
        count = 0
        for k, i in members:
            axis_groups[k][i] = gi
            axis_offsets[k][i] = count
            count += kind_counts[k]
        groups.append(Group(dim, p, count, offset))
        offset += count * dim * dim
    kinds = tuple(
        Kind(s, kind_ps[k], tuple(axis_groups[k]), tuple(axis_offsets[k]), kind_counts[k])
        for k, s in enumerate(kind_shapes)
    )
    return kinds, tuple(groups), offset


@functools.lru_cache(maxsize=256)
def make_layout(
    shapes: tuple[tuple[int, ...], ...],
    block_size: int | None,
    max_preconditioned_dim: int,
    merge_small_dims: bool,
    root: int | None,
) -> Layout:
    """The layout of leaves of ``shapes`` (module docstring).

    ``block_size=None`` means no blocking; ``root`` gives every kind the same ``p`` (methods
    that take no root pass 1, so that groups are keyed by size only), ``None`` uses ``p = 2 k``
    for a kind with ``k`` preconditioned axes.
    """
    big = block_size if block_size is not None else max(max(s, default=1) for s in shapes)
    kind_index: dict[tuple[int, ...], int] = {}
    kind_counts: list[int] = []
    kind_shapes: list[tuple[int, ...]] = []
    plans: list[tuple[tuple[int, ...], bool, bool, list[Block], tuple[int, ...], bool]] = []
    vector_sizes: list[int] = []
    for shape in shapes:
        shape = tuple(shape)
        if math.prod(shape) == 0:
            plans.append((shape, False, True, [], (), False))
            continue
        merged = merge_dims(shape, big, merge_small_dims)
        if len(merged) < 2:
            vector_sizes.append(math.prod(merged))
            plans.append((merged, True, False, [], (), False))
            continue
        per_dim = [_chunks(d, big) for d in merged]
        grid = tuple(len(c) for c in per_dim)
        uniform = all(len({size for _, size in c}) == 1 for c in per_dim)
        blocks: list[Block] = []
        for combo in itertools.product(*per_dim):
            bshape = tuple(size for _, size in combo)
            if bshape not in kind_index:
                kind_index[bshape] = len(kind_shapes)
                kind_shapes.append(bshape)
                kind_counts.append(0)
            k = kind_index[bshape]
            blocks.append(Block(k, kind_counts[k], tuple(start for start, _ in combo)))
            kind_counts[k] += 1
        plans.append((merged, False, False, blocks, grid, uniform))

    kinds, groups, offset = _group_statistics(
        kind_shapes, kind_counts, max_preconditioned_dim, root
    )
    leaves = tuple(
        LeafPlan(tuple(shape), merged, vector, empty, tuple(blocks), grid, uniform)
        for shape, (merged, vector, empty, blocks, grid, uniform) in zip(shapes, plans, strict=True)
    )
    return Layout(leaves, kinds, groups, offset, tuple(vector_sizes))


@functools.lru_cache(maxsize=256)
def shard_layout(layout: Layout, shards: int) -> Layout:
    """``layout`` with its statistics split over ``shards`` devices along the stacked-block axis.

    The rule (balanced work, Meta's Distributed Shampoo assigns blocks to workers the same way up
    to the order): every group's stack of ``c`` statistics of size ``d`` is padded with
    ``ceil(c / shards) * shards - c`` statistics at its end (zero, with identity factors, never
    read by a block), and shard ``s`` owns the ``s``-th contiguous ``ceil(c / shards)`` of them.
    Every device thus refreshes the same number of statistics of every size, about ``d^3``
    work each: equal work, and at most ``shards - 1`` padded statistics per group more than the
    single-device run. The buffers become ``[shards, row]``: row ``s`` holds shard ``s``'s part
    of every group, then its share of the vectors' diagonal statistics (zero-padded), so that
    sharding the leading axis gives every device whole statistics and no group straddles two
    devices. ``shards=1`` returns ``layout`` itself (the flat buffers).
    """
    if shards == 1:
        return layout
    groups, offset = [], 0
    for g in layout.groups:
        count = -(-g.count // shards) * shards
        groups.append(Group(g.dim, g.p, count, offset, shards, count - g.count))
        offset += count * g.dim * g.dim // shards
    return dataclasses.replace(
        layout, groups=tuple(groups), matrix_size=offset * shards, shards=shards
    )


# -- tree <-> stacks -------------------------------------------------------------------------------
class Blocks(NamedTuple):
    """A tree in the engine's layout.

    Attributes:
      stacks: one ``[count, *shape]`` array per kind (``Layout.kinds``).
      vector: all vector leaves raveled and concatenated (``Layout.vector_size``), or None.
    """

    stacks: tuple[jax.Array, ...]
    vector: jax.Array | None


def _leaf_to_blocks(x: jax.Array, plan: LeafPlan, block_shape: tuple[int, ...]) -> jax.Array:
    """``[n_blocks, *block_shape]`` of a uniformly blocked leaf, row-major over the block grid
    (the order of ``plan.blocks``). One reshape and transpose (often a free bitcast) instead
    of a slice per block: fewer kernels for XLA to compile."""
    k = len(block_shape)
    split = [n for g, c in zip(plan.grid, block_shape) for n in (g, c)]
    x = x.reshape(split).transpose([*range(0, 2 * k, 2), *range(1, 2 * k, 2)])
    return x.reshape((-1, *block_shape))


def _blocks_to_leaf(stack: jax.Array, plan: LeafPlan, block_shape: tuple[int, ...]) -> jax.Array:
    k = len(block_shape)
    x = stack.reshape((*plan.grid, *block_shape))
    x = x.transpose([i for d in range(k) for i in (d, k + d)])
    return x.reshape(plan.merged)


def to_blocks(leaves: Sequence[jax.Array], layout: Layout, dtype) -> Blocks:
    """The leaves (in ``layout``'s order) merged, blocked and stacked, as ``dtype``."""
    pieces: list[list[jax.Array]] = [[] for _ in layout.kinds]
    vectors = []
    for x, plan in zip(leaves, layout.leaves, strict=True):
        if plan.empty:
            continue
        x = jnp.asarray(x).astype(dtype).reshape(plan.merged)
        if plan.vector:
            vectors.append(x)
        elif plan.uniform:
            kind = plan.blocks[0].kind
            pieces[kind].append(_leaf_to_blocks(x, plan, layout.kinds[kind].shape))
        else:
            # Positions within a kind follow leaf order, then block order: appending keeps them.
            for block in plan.blocks:
                shape = layout.kinds[block.kind].shape
                pieces[block.kind].append(
                    jax.lax.slice(
                        x, block.starts, tuple(s + n for s, n in zip(block.starts, shape))
                    )[None]
                )
    stacks = tuple(p[0] if len(p) == 1 else jnp.concatenate(p) for p in pieces)
    vector = None if not vectors else vectors[0] if len(vectors) == 1 else jnp.concatenate(vectors)
    return Blocks(stacks, vector)


def leaf_starts(layout: Layout) -> tuple[int, ...]:
    """Per leaf: its first row in its block stack (uniformly blocked leaves) or its first
    element in the vector of diagonal leaves; 0 for the others."""
    starts = []
    offset = 0
    for plan in layout.leaves:
        if plan.empty:
            starts.append(0)
        elif plan.vector:
            starts.append(offset)
            offset += math.prod(plan.merged)
        else:
            starts.append(plan.blocks[0].position)
    return tuple(starts)


def from_blocks(
    blocks: Blocks,
    layout: Layout,
    like: Sequence[jax.Array],
    digits: Sequence[jax.Array] = (),
) -> list[jax.Array]:
    """Inverse of :func:`to_blocks`: leaves shaped and typed like ``like`` (empty leaves: zeros).

    ``digits``: ``common.runtime_digits()`` from the transform's state: each leaf is cut out
    at a row written with them, so that XLA compiles one kernel per block shape rather than
    one per layer (see there); empty: constant rows.
    """
    starts = leaf_starts(layout)
    # Rows of a stack and offsets in the vector are written in as many digits as that array's
    # length needs (common.runtime_slice): pieces of one array share their kernels.
    out: list[jax.Array] = []
    for plan, ref, static in zip(layout.leaves, like, starts, strict=True):
        dtype = jnp.result_type(ref)
        if plan.empty:
            out.append(jnp.zeros(plan.shape, dtype))
            continue
        if plan.vector:
            size = math.prod(plan.merged)
            x = runtime_slice(blocks.vector, static, size, digits)
        elif plan.uniform:
            first = plan.blocks[0]
            kind = layout.kinds[first.kind]
            stack = blocks.stacks[first.kind]
            if len(plan.blocks) < kind.count:
                stack = runtime_slice(stack, static, len(plan.blocks), digits)
            x = _blocks_to_leaf(stack, plan, kind.shape)
        else:
            x = jnp.zeros(plan.merged, blocks.stacks[plan.blocks[0].kind].dtype)
            for block in plan.blocks:
                piece = runtime_row(blocks.stacks[block.kind], block.position, digits)
                x = jax.lax.dynamic_update_slice(x, piece, block.starts)
        out.append(x.reshape(plan.shape).astype(dtype))
    return out


# -- element buffers -------------------------------------------------------------------------------
# Elementwise state kept in the engine's layout (Shampoo's grafting moments, SOAP's Adam moments):
# the stacks and the vector raveled into one buffer. The step then reads and writes a few stacks
# instead of converting one parameter-shaped leaf per layer to blocks and back (about 1.4 s of
# the 4 s a 100-layer MLP's Shampoo step took to compile), and the state's tree structure does not
# depend on the parameters (``optax.tree.map_params``; see the module docstring).


def elements_shape(size: int, shards: int) -> tuple[int, ...]:
    """Shape of an element buffer of ``size`` entries: flat, or ``[shards, row]`` zero-padded."""
    return (size,) if shards == 1 else (shards, -(-size // shards))


def pack_tree(tree: Any, shards: int, dtype) -> jax.Array:
    """Every array of ``tree`` raveled and concatenated in leaf order, as ``dtype``, in an
    element buffer for ``shards`` devices (inverse of :func:`unpack_tree`)."""
    parts = [x.ravel().astype(dtype) for x in jax.tree.leaves(tree)]
    flat = jnp.concatenate(parts) if parts else jnp.zeros([0], dtype)
    shape = elements_shape(flat.size, shards)
    if math.prod(shape) > flat.size:
        flat = jnp.pad(flat, (0, math.prod(shape) - flat.size))
    return flat.reshape(shape)


def unpack_tree(buffer: jax.Array, like: Any) -> Any:
    """The element buffer ``buffer`` as a tree of ``like``'s structure and shapes."""
    flat = buffer.reshape(-1)
    leaves, treedef = jax.tree.flatten(like)
    out, offset = [], 0
    for x in leaves:
        size = math.prod(np.shape(x))
        out.append(jax.lax.slice_in_dim(flat, offset, offset + size).reshape(np.shape(x)))
        offset += size
    return treedef.unflatten(out)


def zero_elements(layout: Layout, dtype) -> jax.Array:
    """An element buffer of zeros (``Layout.elements_shape``)."""
    return jnp.zeros(layout.elements_shape, dtype)


def _block_shapes(layout: Layout) -> Blocks:
    """The shapes of a tree in ``layout`` (no arrays allocated: they can be parameter-sized)."""
    stacks = tuple(jax.ShapeDtypeStruct((k.count, *k.shape), jnp.float32) for k in layout.kinds)
    vector = (
        jax.ShapeDtypeStruct((layout.vector_size,), jnp.float32) if layout.vector_size else None
    )
    return Blocks(stacks, vector)


def pack_elements(blocks: Blocks, layout: Layout, dtype) -> jax.Array:
    """``blocks`` as one element buffer of ``dtype`` (inverse of :func:`unpack_elements`)."""
    return pack_tree(blocks, layout.shards, dtype)


def unpack_elements(buffer: jax.Array, layout: Layout) -> Blocks:
    """The element buffer ``buffer`` as :class:`Blocks` (one stack per kind, the vector)."""
    return unpack_tree(buffer, _block_shapes(layout))


# -- buffers ---------------------------------------------------------------------------------------
def _group_view(buffer: jax.Array, group: Group) -> jax.Array:
    if group.shards == 1:
        return jax.lax.dynamic_slice_in_dim(buffer, group.offset, group.size).reshape(
            group.count, group.dim, group.dim
        )
    # [shards, row] -> every row's part -> [count, d, d]: shard s's statistics stay on s.
    rows = buffer.reshape(group.shards, -1)
    part = jax.lax.slice_in_dim(rows, group.offset, group.offset + group.row_size, axis=1)
    return part.reshape(group.count, group.dim, group.dim)


def _write_group(buffer: jax.Array, stack: jax.Array, group: Group) -> jax.Array:
    """``buffer`` with ``group``'s stack replaced by ``stack`` (``[count, d, d]``), in place."""
    stack = stack.astype(buffer.dtype)
    if group.shards == 1:
        return jax.lax.dynamic_update_slice_in_dim(buffer, stack.ravel(), group.offset, 0)
    rows = buffer.reshape(group.shards, -1)
    rows = jax.lax.dynamic_update_slice(
        rows, stack.reshape(group.shards, group.row_size), (0, group.offset)
    )
    return rows.reshape(buffer.shape)


def _padded(stack: jax.Array, group: Group) -> jax.Array:
    """A ``[count - padding, d, d]`` stack (of the real statistics) padded with zeros."""
    if group.padding == 0:
        return stack
    return jnp.pad(stack, ((0, group.padding), (0, 0), (0, 0)))


def _real(group: Group) -> jax.Array:
    """``[count]``: False at the padded statistics (their factors are never counted)."""
    return jnp.asarray(np.arange(group.count) < group.count - group.padding)


def group_stack(buffer: jax.Array, group: Group) -> jax.Array:
    """``[count, d, d]``: one group's stack of a statistics or factors buffer (padding included,
    at its end)."""
    return _group_view(buffer, group)


def write_group(buffer: jax.Array, stack: jax.Array, group: Group) -> jax.Array:
    """``buffer`` with ``group``'s ``[count, d, d]`` stack replaced by ``stack`` (in place)."""
    return _write_group(buffer, stack, group)


def group_stacks(buffer: jax.Array, layout: Layout) -> tuple[jax.Array, ...]:
    """A statistics or factors buffer as one ``[count, d, d]`` stack per group."""
    return tuple(_group_view(buffer, g) for g in layout.groups)


def diagonal_statistics(buffer: jax.Array, layout: Layout) -> jax.Array:
    """The vectors' diagonal statistics (the tail of the statistics buffer, or of its rows)."""
    if layout.shards == 1:
        return jax.lax.dynamic_slice_in_dim(buffer, layout.matrix_size, layout.vector_size)
    tails = jax.lax.slice_in_dim(buffer, layout.matrix_row, buffer.shape[1], axis=1)
    return tails.ravel()[: layout.vector_size]


def kind_factors(factors: jax.Array, layout: Layout, kind: int, axis: int) -> jax.Array:
    """``[count, d, d]``: the factors of every block of ``kind`` along its ``axis``."""
    k = layout.kinds[kind]
    g = layout.groups[k.axis_groups[axis]]
    if g.shards > 1:
        start = k.axis_offsets[axis]
        return jax.lax.slice_in_dim(_group_view(factors, g), start, start + k.count)
    start = g.offset + k.axis_offsets[axis] * g.dim * g.dim
    return jax.lax.dynamic_slice_in_dim(factors, start, k.count * g.dim * g.dim).reshape(
        k.count, g.dim, g.dim
    )


def identity_factors(layout: Layout, dtype=jnp.float32) -> jax.Array:
    """A factors buffer holding ``I`` for every statistic."""
    if layout.shards > 1:
        s = layout.shards
        if not layout.groups:
            return jnp.zeros(layout.factors_shape, dtype)
        rows = [
            jnp.broadcast_to(jnp.eye(g.dim, dtype=dtype), (s, g.count // s, g.dim, g.dim))
            for g in layout.groups
        ]
        return jnp.concatenate([r.reshape(s, -1) for r in rows], axis=1)
    parts = [
        jnp.broadcast_to(jnp.eye(g.dim, dtype=dtype), (g.count, g.dim, g.dim)).ravel()
        for g in layout.groups
    ]
    return jnp.concatenate(parts) if parts else jnp.zeros((0,), dtype)


def statistics_finite(buffer: jax.Array, layout: Layout) -> jax.Array:
    """Whether a statistics buffer is finite, read on the diagonals only.

    A statistic is a (weighted) sum of Gram matrices, so it is positive semidefinite and
    ``|S_ij| <= sqrt(S_ii S_jj) <= max(S_ii, S_jj)``: an entry can only overflow (or become NaN
    through ``inf - inf``) where a diagonal entry has overflowed too (up to rounding at the very
    top of the float32 range). Reading the ``sum d`` diagonal entries (one gather) instead of the
    ``sum d^2`` entries keeps the check off the step time. The vectors' statistics are read whole.
    """
    if buffer.size == 0:
        return jnp.asarray(True)
    return jnp.all(jnp.isfinite(jnp.take(buffer.ravel(), jnp.asarray(layout.diagonal_indices))))


def largest_square_sum(blocks: Blocks) -> jax.Array:
    """The largest sum of squares of a block of ``blocks``, or square of a vector entry (0 for
    none; NaN or Inf when an entry is, or a sum overflows): a bound on every Gram diagonal
    ``sum_j G_ij^2`` and on every squared entry, in any orthogonal basis of its block.

    A few reductions over the stacks: a per-leaf sum of squares is one kernel per layer.
    """
    dtype = blocks.vector.dtype if blocks.vector is not None else jnp.float32
    parts = [jnp.max(jnp.sum(jnp.square(s), axis=tuple(range(1, s.ndim)))) for s in blocks.stacks]
    if blocks.vector is not None and blocks.vector.size:
        parts.append(jnp.max(jnp.square(blocks.vector)))
    if not parts:
        return jnp.zeros([], dtype)
    return functools.reduce(jnp.maximum, parts)  # max propagates NaN


def statistics_bound(buffer: jax.Array, layout: Layout, beta2, squares: jax.Array) -> jax.Array:
    """A bound, before they are formed, on every entry of ``accumulate(buffer, axis_grams(g),
    layout, beta2)`` (Shampoo's and SOAP's new statistics), from ``squares``, the largest sum of
    squares of a block of ``g`` (:func:`largest_square_sum`).

    A block's Gram diagonal ``sum_j G_ij^2`` is at most its sum of squares, a vector's
    entry ``g_i^2`` too, and a statistic's off-diagonal entries are bounded by its diagonal (it is
    positive semidefinite): ``decay * max(diag S) + weight * squares`` bounds them all, so a
    guard can decide from it that the step cannot overflow (``skip_nonfinite(step_is_safe=)``)
    and XLA can update the buffer in place. NaN or Inf when ``squares`` is.
    """
    dtype = buffer.dtype
    decay = jnp.asarray(beta2, dtype)
    weight = jnp.where(decay == 1, 1, 1 - decay).astype(dtype)
    indices = layout.diagonal_indices
    largest = (
        jnp.max(jnp.take(buffer.ravel(), jnp.asarray(indices)))
        if indices.size
        else jnp.zeros([], dtype)
    )
    return decay * largest + weight * squares.astype(dtype)


# -- statistics ------------------------------------------------------------------------------------
class Statistics(NamedTuple):
    """One step's statistics contributions.

    Attributes:
      groups: one ``[count, d, d]`` stack per group (``Layout.groups``).
      diagonal: the vectors' diagonal contributions (``Layout.vector_size``), or None.
    """

    groups: tuple[jax.Array, ...]
    diagonal: jax.Array | None


def _axis_gram(x: jax.Array, axis: int) -> jax.Array:
    """``[n, *shape] -> [n, d, d]``: ``X_(axis) X_(axis)^T`` of every block."""
    x = jnp.moveaxis(x, axis + 1, 1)
    x = x.reshape(x.shape[0], x.shape[1], -1)
    return matmul(x, jnp.swapaxes(x, 1, 2))


def axis_grams(blocks: Blocks, layout: Layout) -> Statistics:
    """Shampoo's (and SOAP's) statistics: ``X_(a) X_(a)^T`` per block and preconditioned axis
    (the mode-``a`` unfolding times its transpose), ``g * g`` for the vectors."""
    per_group: list[list[jax.Array]] = [[] for _ in layout.groups]
    for kind, x in zip(layout.kinds, blocks.stacks, strict=True):
        for axis, g in enumerate(kind.axis_groups):
            if g is not None:
                per_group[g].append(_axis_gram(x, axis))
    groups = tuple(c[0] if len(c) == 1 else jnp.concatenate(c) for c in per_group)
    return Statistics(groups, None if blocks.vector is None else jnp.square(blocks.vector))


def accumulate(buffer: jax.Array, new: Statistics, layout: Layout, beta2) -> jax.Array:
    """``beta2 S + w new`` with ``w = 1`` for ``beta2 = 1`` (sums, AdaGrad-style) and
    ``w = 1 - beta2`` otherwise (an exponential moving average); ``beta2`` may be traced."""
    decay = jnp.asarray(beta2, buffer.dtype)
    weight = jnp.where(decay == 1, 1, 1 - decay).astype(buffer.dtype)
    # Written into the old buffer group by group (in place once XLA sees the buffer is not read
    # again): a concatenation would copy the whole ~d^2-per-block buffer once more.
    out = buffer
    for group, contribution in zip(layout.groups, new.groups, strict=True):
        old = _group_view(buffer, group)
        out = _write_group(out, decay * old + weight * _padded(contribution, group), group)
    if new.diagonal is not None:
        old = diagonal_statistics(buffer, layout)
        diagonal = decay * old + weight * new.diagonal
        if layout.shards == 1:
            out = jax.lax.dynamic_update_slice_in_dim(out, diagonal, layout.matrix_size, 0)
        else:
            tails = jnp.pad(diagonal, (0, layout.shards * layout.vector_row - diagonal.size))
            tails = tails.reshape(layout.shards, layout.vector_row)
            out = jax.lax.dynamic_update_slice(out, tails, (0, layout.matrix_row))
    return out


# -- refresh ---------------------------------------------------------------------------------------
#: ``(statistics [n, d, d], group) -> (factors [n, d, d], ok [n])``: new factors for one group's
#: stacked statistics and which of them to accept (the others keep their previous factors).
RefreshFn = Callable[[jax.Array, Group], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where the statistics of a :func:`shard_layout` live: split along ``mesh``'s ``axis``
    (``mesh=None``: on one device, or wherever XLA puts them).

    :meth:`map` runs a refresh kernel on each device's own statistics with ``jax.shard_map``:
    XLA's partitioner cannot split the host LAPACK callback of the CPU kernels
    (:func:`optlab.linalg._lapack.host_call`; it would gather every statistic onto one device
    and run the whole batch there), and a shard_map also pins matmul-only kernels (Newton
    iterations) to the owner of each block.
    """

    mesh: jax.sharding.Mesh | None = None
    axis: str = "data"

    @property
    def shards(self) -> int:
        return 1 if self.mesh is None else int(self.mesh.shape[self.axis])

    def map(self, fn: Callable[..., object], *stacks: jax.Array):
        """``fn`` on each device's part of ``stacks`` (split along their leading axis); the
        outputs' leading axes concatenate the devices' results."""
        if self.shards == 1:
            return fn(*stacks)
        spec = jax.sharding.PartitionSpec(self.axis)
        return jax.shard_map(fn, mesh=self.mesh, in_specs=spec, out_specs=spec, check_vma=False)(
            *stacks
        )


def _check_placement(layout: Layout, placement: Placement | None) -> Placement:
    placement = placement or Placement()
    if placement.shards not in (1, layout.shards):
        raise ValueError(
            f"the layout is split over {layout.shards} shards, the placement over "
            f"{placement.shards} devices"
        )
    return placement


def refresh(
    stats: jax.Array,
    factors: jax.Array,
    layout: Layout,
    refresh_fn: RefreshFn,
    placement: Placement | None = None,
) -> tuple[jax.Array, jax.Array]:
    """New factors for every group, one batched ``refresh_fn`` call per group (per device, on
    its own statistics, with a sharded ``placement``).

    Returns the new factors buffer (a rejected factor keeps its previous value) and the int32
    number of rejected factors (padded statistics not counted).
    """
    placement = _check_placement(layout, placement)
    out, rejected, previous = factors, jnp.zeros([], jnp.int32), None
    for group in layout.groups:
        s = _group_view(stats, group)
        if placement.shards == 1:
            # One group after the other: concurrent batched LAPACK calls can deadlock on CPU.
            # (Not across devices: that would chain every device to shard 0's previous group.)
            s = after(s, previous)
        candidate, ok = placement.map(lambda x, g=group: refresh_fn(x, g), s)
        previous = candidate
        kept = jnp.where(ok[:, None, None], candidate, _group_view(factors, group))
        out = _write_group(out, kept, group)
        rejected = rejected + jnp.sum(~ok & _real(group)).astype(jnp.int32)
    return out, rejected


def inverse_roots(*, eps, eps_floor, method: str, threshold) -> RefreshFn:
    """Shampoo's refresh: ``(S + r I)^{-1/p}`` (:func:`optlab.linalg.inverse_root`, ``p`` of the
    group), accepted when its residual estimate ``||X^p (S + r I) - I||`` is ``<= threshold``
    (never when it is not finite)."""

    def refresh_fn(stats: jax.Array, group: Group) -> tuple[jax.Array, jax.Array]:
        new = linalg.inverse_root(
            stats, group.p, eps=eps, eps_floor=eps_floor, method=method, return_error=True
        )
        return new.root, new.error <= threshold  # False for NaN / inf

    return refresh_fn


# -- preconditioning -------------------------------------------------------------------------------
def _mode_product(x: jax.Array, factor: jax.Array, axis: int, transpose: bool) -> jax.Array:
    """``x`` ([n, *shape]) times ``factor`` ([n, d, d], or its transpose) along ``axis``."""
    moved = jnp.moveaxis(x, axis + 1, -1)
    flat = moved.reshape(moved.shape[0], -1, moved.shape[-1])
    # flat @ F = (F^T applied to each row), so F^T needs no transposed operand.
    out = matmul(flat, factor if transpose else jnp.swapaxes(factor, 1, 2))
    return jnp.moveaxis(out.reshape(moved.shape), -1, axis + 1)


def mode_products(
    stacks: Sequence[jax.Array], factors: jax.Array, layout: Layout, *, transpose: bool = False
) -> tuple[jax.Array, ...]:
    """Every stacked block ``X`` times its factor along each preconditioned axis:
    ``X \\times_1 F_1 ... \\times_k F_k`` (``F_a^T`` with ``transpose``). Shampoo applies its
    symmetric roots (either form); SOAP rotates into the eigenbasis with ``transpose`` and back
    without."""
    out = []
    for k, (kind, x) in enumerate(zip(layout.kinds, stacks, strict=True)):
        for axis, g in enumerate(kind.axis_groups):
            if g is not None:
                x = _mode_product(x, kind_factors(factors, layout, k, axis), axis, transpose)
        out.append(x)
    return tuple(out)


def diagonal_root(
    vector: jax.Array | None, diagonal: jax.Array, layout: Layout, *, eps, eps_floor, p: int
) -> jax.Array | None:
    """The diagonal rule for vector leaves: ``g * (v + r)^{-1/p}`` with the ridge
    ``r = eps * max(v) + eps_floor`` per leaf (the matrices' relative ridge, for a diagonal)."""
    if vector is None:
        return None
    segments, count = jnp.asarray(layout.segments), len(layout.vector_sizes)
    ridge = eps * jax.ops.segment_max(diagonal, segments, count, indices_are_sorted=True)
    return vector * (diagonal + (ridge + eps_floor)[segments]) ** (-1.0 / p)


# -- grafting --------------------------------------------------------------------------------------
def graft_ratio(direction_norm: jax.Array, graft_norm: jax.Array) -> jax.Array:
    """``||graft|| / ||direction||``; 0 where the direction is 0 (nothing to rescale)."""
    positive = direction_norm > 0
    return jnp.where(positive, graft_norm / jnp.where(positive, direction_norm, 1), 0)


def _block_norms(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim)), keepdims=True))


def graft(direction: Blocks, reference: Blocks, layout: Layout) -> Blocks:
    """``direction * ||reference|| / ||direction||``: the direction of each block (of each vector
    leaf) with the norm of the grafted optimizer's update of the same block (leaf)."""
    stacks = tuple(
        d * graft_ratio(_block_norms(d), _block_norms(r))
        for d, r in zip(direction.stacks, reference.stacks, strict=True)
    )
    vector = direction.vector
    if vector is not None:
        segments, count = jnp.asarray(layout.segments), len(layout.vector_sizes)

        def norms(x):
            return jnp.sqrt(
                jax.ops.segment_sum(jnp.square(x), segments, count, indices_are_sorted=True)
            )

        vector = vector * graft_ratio(norms(vector), norms(reference.vector))[segments]
    return Blocks(stacks, vector)


# -- eigenbases (SOAP) -----------------------------------------------------------------------------
# SOAP keeps Shampoo's statistics and blocks, and replaces the inverse roots by each statistic's
# eigenbasis: a full ``eigh`` once, then one step of power iteration and a QR per refresh. Its
# refresh also reorders the columns, which the caller mirrors in its second moment (the
# permutation is returned), and reads the previous factors, which ``RefreshFn`` does not see.


@functools.lru_cache(maxsize=256)
def adjust_layout(
    layout: Layout,
    *,
    block_size: int | None,
    max_preconditioned_dim: int,
    root: int | None,
    precondition_vectors: bool = False,
    ignored_axes: tuple[tuple[int, tuple[int, ...]], ...] = (),
) -> Layout:
    """``layout`` (from :func:`make_layout` with the same options) with two changes:

    * ``precondition_vectors``: every vector leaf of more than one element becomes an order-1
      kind (cut into blocks of ``block_size`` as a matrix dim is) with a ``d x d`` statistic per
      block, if its blocks are ``<= max_preconditioned_dim`` (otherwise it stays a vector);
    * ``ignored_axes``: ``((order, (axis, ...)), ...)``: those axes of every kind of that order
      get no statistic (their factor is the identity), as Meta's ``ignored_basis_change_dims``.

    Groups, offsets and roots are rebuilt by :func:`make_layout`'s rules.
    """
    kind_shapes = [k.shape for k in layout.kinds]
    kind_counts = [k.count for k in layout.kinds]
    leaves = list(layout.leaves)
    vector_sizes: list[int] = []
    index = {s: i for i, s in enumerate(kind_shapes)}
    for li, plan in enumerate(leaves):
        if not plan.vector:
            continue
        size = math.prod(plan.merged)
        chunks = _chunks(size, block_size if block_size is not None else size)
        if not precondition_vectors or size < 2 or chunks[0][1] > max_preconditioned_dim:
            vector_sizes.append(size)
            continue
        blocks = []
        for start, n in chunks:
            if (n,) not in index:
                index[(n,)] = len(kind_shapes)
                kind_shapes.append((n,))
                kind_counts.append(0)
            k = index[(n,)]
            blocks.append(Block(k, kind_counts[k], (start,)))
            kind_counts[k] += 1
        uniform = len({n for _, n in chunks}) == 1
        leaves[li] = LeafPlan(
            plan.shape, (size,), False, False, tuple(blocks), (len(chunks),), uniform
        )
    ignored = {order: set(axes) for order, axes in ignored_axes}
    kinds, groups, offset = _group_statistics(
        kind_shapes, kind_counts, max_preconditioned_dim, root, ignored
    )
    return Layout(tuple(leaves), kinds, groups, offset, tuple(vector_sizes))


def eigenbases(stats: jax.Array) -> jax.Array:
    """``[n, d, d]``: the eigenvectors (columns) of each symmetric statistic, eigenvalues
    descending (LAPACK's ascending order flipped, as SOAP's reference does)."""
    _, v = _lapack.eigh(stats)
    return jnp.flip(v, axis=-1)


def power_qr(stats: jax.Array, basis: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One step of power (orthogonal) iteration from ``basis`` towards ``stats``' eigenbasis.

    The columns of ``Q`` (``basis``) are first sorted by their Rayleigh quotients
    ``diag(Q^T S Q)``, descending (``order``, ``[n, d]``: new column ``i`` is old column
    ``order[i]``); the new basis is the ``Q`` factor of ``S Q_sorted``. Returns
    ``(new basis, order)``; whoever keeps values indexed by the basis' columns permutes them by
    ``order`` (:func:`permute_modes`).
    """
    sq = matmul(stats, basis)
    rayleigh = jnp.sum(basis * sq, axis=-2)
    order = jnp.argsort(-rayleigh, axis=-1, stable=True).astype(jnp.int32)
    # S Q_sorted is S Q with its columns sorted: no second product.
    q, _ = _lapack.qr(jnp.take_along_axis(sq, order[:, None, :], axis=-1))
    return q, order


def off_diagonal_ratio(stats: jax.Array, basis: jax.Array) -> jax.Array:
    """``[n]``: ``||B - diag B||_F / ||B||_F`` for ``B = Q^T S Q`` (0 where ``B = 0``): how far
    ``basis`` is from diagonalizing ``stats`` (the criterion of Eschenhagen et al.'s adaptive
    refresh, "Purifying Shampoo")."""
    b = matmul(jnp.swapaxes(basis, 1, 2), matmul(stats, basis))
    total = jnp.sum(jnp.square(b), axis=(1, 2))
    # Summed apart, not as total - diagonal: that difference cancels to rounding noise (or 0)
    # exactly where the criterion is decided, for a nearly diagonal B.
    off_diagonal = jnp.where(jnp.eye(b.shape[-1], dtype=bool), 0, b)
    off = jnp.sqrt(jnp.sum(jnp.square(off_diagonal), axis=(1, 2)))
    return jnp.where(total > 0, off / jnp.sqrt(jnp.where(total > 0, total, 1)), 0)


class BasisRefresh(NamedTuple):
    """The result of :func:`refresh_bases`.

    Attributes:
      bases: the new factors buffer (a rejected or skipped basis keeps its previous value).
      orders: per group, ``[count, d]`` int32 column permutations of the new bases relative to
        the previous ones (:func:`power_qr`; the identity where kept or for ``eigh``).
      rejected: int32 number of non-finite bases rejected.
      skipped: int32 number of bases kept because they already diagonalize their statistic to
        within ``tolerance``.
    """

    bases: jax.Array
    orders: tuple[jax.Array, ...]
    rejected: jax.Array
    skipped: jax.Array


def refresh_bases(
    stats: jax.Array,
    bases: jax.Array,
    layout: Layout,
    *,
    method: str,
    tolerance=None,
    placement: Placement | None = None,
) -> BasisRefresh:
    """New eigenbases for every group: ``method="eigh"`` (:func:`eigenbases`) or ``"qr"``
    (:func:`power_qr` from the current bases), one batched call per group.

    A basis with a non-finite entry is rejected: the previous one is kept and counted. With a
    ``tolerance`` (``"qr"`` only), a basis whose :func:`off_diagonal_ratio` is ``<=
    tolerance`` is kept as it is and counted as skipped; a group whose bases are all kept makes
    no QR call at all (``lax.cond``; with a sharded ``placement`` each device decides for its
    own bases).
    """
    if method not in ("eigh", "qr"):
        raise ValueError(f"method must be 'eigh' or 'qr', got {method!r}")
    placement = _check_placement(layout, placement)

    def candidates(s: jax.Array, old: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """New bases, their column orders and which bases were kept as they are."""
        identity = jnp.broadcast_to(jnp.arange(old.shape[-1], dtype=jnp.int32), old.shape[:2])
        if method == "eigh":
            return eigenbases(s), identity, jnp.zeros(old.shape[:1], bool)
        if tolerance is None:
            return (*power_qr(s, old), jnp.zeros(old.shape[:1], bool))
        keep = off_diagonal_ratio(s, old) <= tolerance  # False for NaN
        candidate, order = jax.lax.cond(
            jnp.all(keep),
            lambda o=old, i=identity: (o, i),
            lambda s=s, o=old: power_qr(s, o),
        )
        candidate = jnp.where(keep[:, None, None], old, candidate)
        return candidate, jnp.where(keep[:, None], identity, order), keep

    out, previous = bases, None
    rejected = skipped = jnp.zeros([], jnp.int32)
    orders = []
    for group in layout.groups:
        s = _group_view(stats, group)
        if placement.shards == 1:
            # One group after the other (as refresh): their LAPACK calls are serialized.
            s = after(s, previous)
        old = _group_view(bases, group).astype(s.dtype)
        identity = jnp.broadcast_to(jnp.arange(group.dim, dtype=jnp.int32), old.shape[:2])
        candidate, order, keep = placement.map(candidates, s, old)
        real = _real(group)
        skipped = skipped + jnp.sum(keep & real).astype(jnp.int32)
        previous = candidate
        ok = jnp.all(jnp.isfinite(candidate), axis=(1, 2))
        kept = jnp.where(ok[:, None, None], candidate, old)
        orders.append(jnp.where(ok[:, None], order, identity))
        out = _write_group(out, kept, group)
        rejected = rejected + jnp.sum(~ok & real).astype(jnp.int32)
    return BasisRefresh(out, tuple(orders), rejected, skipped)


def basis_changes(new: jax.Array, old: jax.Array, layout: Layout) -> jax.Array:
    """A factors buffer of ``Q_new^T Q_old`` per statistic: :func:`mode_products` with it
    carries coordinates in the old bases (``Q_old^T X``) over to the new ones (``Q_new^T X``)."""
    out = new
    for group in layout.groups:
        change = matmul(jnp.swapaxes(_group_view(new, group), 1, 2), _group_view(old, group))
        out = _write_group(out, change, group)
    return out


def permute_modes(
    stacks: Sequence[jax.Array], orders: Sequence[jax.Array], layout: Layout
) -> tuple[jax.Array, ...]:
    """Every stacked block with the indices along each preconditioned axis permuted by its
    statistic's ``order`` (from :func:`refresh_bases`): ``Y[.., i, ..] = X[.., order[i], ..]``."""
    out = []
    for kind, x in zip(layout.kinds, stacks, strict=True):
        for axis, g in enumerate(kind.axis_groups):
            if g is not None:
                start = kind.axis_offsets[axis]
                order = jax.lax.slice_in_dim(orders[g], start, start + kind.count)
                shape = [kind.count] + [1] * len(kind.shape)
                shape[axis + 1] = kind.shape[axis]
                x = jnp.take_along_axis(x, order.reshape(shape), axis=axis + 1)
        out.append(x)
    return tuple(out)


def matrix_mode_products(
    stacks: Sequence[jax.Array], factors: jax.Array, layout: Layout, *, transpose: bool = False
) -> tuple[jax.Array, ...]:
    """:func:`mode_products`, with each order-2 block multiplied as ``F_0 X F_1^T`` (``F_0^T X
    F_1`` with ``transpose``) by two batched matrix products that read ``X`` in place: no
    transposes of the blocks, which :func:`mode_products`' move of each axis last costs twice
    per axis (SOAP rotates every block twice per step). Other blocks: :func:`mode_products`."""
    out = []
    for k, (kind, x) in enumerate(zip(layout.kinds, stacks, strict=True)):
        for axis, g in enumerate(kind.axis_groups):
            if g is None:
                continue
            f = kind_factors(factors, layout, k, axis)
            if len(kind.shape) != 2:
                x = _mode_product(x, f, axis, transpose)
            elif axis == 0:  # F X, or F^T X
                x = matmul(jnp.swapaxes(f, 1, 2) if transpose else f, x)
            else:  # X F^T, or X F
                x = matmul(x, f if transpose else jnp.swapaxes(f, 1, 2))
        out.append(x)
    return tuple(out)
