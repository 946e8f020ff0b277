"""Static layout of Shampoo's preconditioner blocks across a whole parameter tree.

Everything here is plain Python computed from leaf shapes (cached), never traced. It decides:

* how each leaf is reshaped: size-1 dims are dropped and consecutive small dims are merged while
  their product stays <= ``block_size`` (``[3, 3, 64, 128] -> [576, 128]``), never below two dims
  for a leaf that has two non-trivial dims (a matrix stays a matrix);
* how each reshaped leaf is cut into blocks (dims larger than ``block_size`` are split into
  chunks of ``block_size`` plus a remainder);
* which axes of each block shape ("kind") are preconditioned (``<= max_preconditioned_dim``) and
  with which root ``p`` (``2 k`` for ``k`` preconditioned axes, or ``1 / exponent``);
* where every statistic lives: all statistics of the same ``(d, p)`` across the tree form one
  contiguous ``[n, d, d]`` "group" so that one batched ``inverse_root`` call serves them all.
  Groups are laid out one after another in a single flat buffer, followed by the diagonal
  statistics of vector leaves. A single flat buffer keeps the optimizer state's tree structure
  independent of parameter shapes, which is what ``optax.tree.map_params`` and checkpointing
  rely on.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math


@dataclasses.dataclass(frozen=True)
class Block:
    kind: int  # index into Layout.kinds
    position: int  # index of this block within its kind's stack
    starts: tuple[int, ...]  # start of the block along each merged dim


@dataclasses.dataclass(frozen=True)
class LeafPlan:
    shape: tuple[int, ...]
    merged: tuple[int, ...]
    vector: bool  # handled by the diagonal rule
    blocks: tuple[Block, ...]
    # Blocks per merged dim; ``uniform`` when all blocks have one shape (every dim is at most the
    # block size or a multiple of it), so that a reshape and a transpose cut the whole leaf.
    grid: tuple[int, ...]
    uniform: bool


@dataclasses.dataclass(frozen=True)
class Kind:
    """All blocks of one shape: stacked to ``[count, *shape]`` at update time."""

    shape: tuple[int, ...]
    p: int  # root of every preconditioned axis (0 if none)
    axis_groups: tuple[int | None, ...]  # per axis: index into Layout.groups, or None
    axis_offsets: tuple[int, ...]  # per axis: first index of this kind inside its group stack
    count: int


@dataclasses.dataclass(frozen=True)
class Group:
    dim: int
    p: int
    count: int
    offset: int  # in the flat buffer (elements)

    @property
    def size(self) -> int:
        return self.count * self.dim * self.dim


@dataclasses.dataclass(frozen=True)
class Layout:
    leaves: tuple[LeafPlan, ...]
    kinds: tuple[Kind, ...]
    groups: tuple[Group, ...]
    matrix_size: int  # elements of all groups (the roots buffer's size)
    diag_size: int  # elements of vector leaves' diagonal statistics

    @property
    def stats_size(self) -> int:
        return self.matrix_size + self.diag_size


def merge_dims(shape: tuple[int, ...], max_dim: int, merge: bool) -> tuple[int, ...]:
    """Squeeze size-1 dims and merge consecutive small ones (see the module docstring)."""
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


@functools.lru_cache(maxsize=256)
def make_layout(
    shapes: tuple[tuple[int, ...], ...],
    block_size: int,
    max_preconditioned_dim: int,
    merge_small_dims: bool,
    root: int | None,
) -> Layout:
    """The layout for leaves of ``shapes``; ``root`` overrides the per-kind ``p = 2 k``."""
    big = block_size if block_size is not None else max(max(s, default=1) for s in shapes)
    kind_index: dict[tuple[int, ...], int] = {}
    kind_counts: list[int] = []
    kind_shapes: list[tuple[int, ...]] = []
    leaf_blocks: list[tuple[tuple[int, ...], bool, list[Block], tuple[int, ...], bool]] = []
    diag_sizes: list[int] = []
    for shape in shapes:
        merged = merge_dims(tuple(shape), big, merge_small_dims)
        vector = len(merged) < 2
        blocks: list[Block] = []
        grid: tuple[int, ...] = ()
        uniform = False
        if vector:
            diag_sizes.append(math.prod(merged))
        else:
            diag_sizes.append(0)
            per_dim = [_chunks(d, big) for d in merged]
            grid = tuple(len(c) for c in per_dim)
            uniform = all(len({size for _, size in c}) == 1 for c in per_dim)
            for combo in itertools.product(*per_dim):
                bshape = tuple(size for _, size in combo)
                if bshape not in kind_index:
                    kind_index[bshape] = len(kind_shapes)
                    kind_shapes.append(bshape)
                    kind_counts.append(0)
                k = kind_index[bshape]
                blocks.append(Block(k, kind_counts[k], tuple(start for start, _ in combo)))
                kind_counts[k] += 1
        leaf_blocks.append((merged, vector, blocks, grid, uniform))

    # Groups: (dim, p) -> list of (kind, axis) in a fixed order.
    group_members: dict[tuple[int, int], list[tuple[int, int]]] = {}
    kind_ps: list[int] = []
    for k, bshape in enumerate(kind_shapes):
        axes = [i for i, d in enumerate(bshape) if d <= max_preconditioned_dim]
        p = (root if root is not None else 2 * len(axes)) if axes else 0
        kind_ps.append(p)
        for i in axes:
            group_members.setdefault((bshape[i], p), []).append((k, i))
    groups: list[Group] = []
    axis_groups = [[None] * len(s) for s in kind_shapes]
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
    matrix_size = offset
    kinds = tuple(
        Kind(s, kind_ps[k], tuple(axis_groups[k]), tuple(axis_offsets[k]), kind_counts[k])
        for k, s in enumerate(kind_shapes)
    )
    leaves = tuple(
        LeafPlan(tuple(shape), merged, vector, tuple(blocks), grid, uniform)
        for shape, (merged, vector, blocks, grid, uniform) in zip(shapes, leaf_blocks,
                                                                  strict=True))
    # Vector leaves' diagonal statistics follow the matrix groups, in leaf order.
    return Layout(leaves, kinds, tuple(groups), matrix_size, sum(diag_sizes))
