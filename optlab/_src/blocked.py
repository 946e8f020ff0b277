r"""Shampoo, SOAP and K-FAC, guarded and run on stacked blocks.

Their preconditioners compute the direction on a few stacked arrays however many layers there
are: the Kronecker-factor engine's blocks (:mod:`optlab._src.kronecker`; Shampoo, SOAP) or
K-FAC's stacks of the layers of one shape. Their transforms (``scale_by_shampoo``,
``scale_by_soap``, ``scale_by_kfac``) and full optimizers (``shampoo``, ``soap``, ``kfac``)
keep everything after that in the same layout too: momentum, decoupled weight decay, the
learning rate and the NaN guard's check of the update run on the stacks, and only the final
update is cut into leaves. Per-leaf code is what makes XLA's compile time grow with depth: the
optax chain and the guard's per-leaf checks after the preconditioner made most of the kernels
XLA compiled for a 100-layer MLP's step (``benchmarks/RESULTS.md``, compile time).

The arithmetic is optax's: ``optax.ema`` (Shampoo's momentum; K-FAC's is ``optax.trace``
with an overflow guard), ``u + weight_decay * p``
(``optax.add_decayed_weights``) and ``optax.scale_by_learning_rate``, applied to the blocks.
The NaN/Inf policy is :func:`optlab.skip_nonfinite`'s with ``step_is_safe``: a step the
preconditioner's bound says could overflow its state is skipped (zero update, state unchanged,
``skipped_steps`` + 1); an update that still comes out non-finite, or beyond the largest value
of a leaf's dtype (it would overflow when cast), is zeroed and counted the same way, the finite
state keeping the step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab._src import kronecker as kron
from optlab._src.common import SkipNonFiniteState, max_abs_within


class BlockPreconditioner(NamedTuple):
    """A preconditioner on stacked blocks (Shampoo's and SOAP's engine layout, K-FAC's layers).

    Attributes:
      init: ``params -> state``; the state has the runtime ``digits``
        (``common.runtime_digits``).
      layout_of: ``tree -> (layout, leaves, treedef)``.
      to_blocks: ``(leaves, layout, dtype) -> blocks``, a tree of a few stacked arrays.
      from_blocks: ``(blocks, layout, leaves, digits) -> leaves`` (each in its leaf's dtype).
      direction: ``(grads, state, layout, extra) -> (direction, new_state)`` on the blocks;
        ``extra``: ``update``'s keyword arguments (K-FAC's ``curvature``).
      step_is_safe: ``(grads, state, layout, extra) -> bool``: True only if the step from them
        is sure to leave a finite state (False for a non-finite gradient).
      dtype: ``state -> dtype`` of the blocks.
      shards: ``layout -> int``, the devices the state is split over (element buffers are
        ``[shards, row]`` for more than one).
    """

    init: Callable[[Any], Any]
    layout_of: Callable[[Any], tuple[Any, list[jax.Array], Any]]
    to_blocks: Callable[[list[jax.Array], Any, Any], Any]
    from_blocks: Callable[[Any, Any, list[jax.Array], Any], list[jax.Array]]
    direction: Callable[[Any, Any, Any, dict[str, Any]], tuple[Any, Any]]
    step_is_safe: Callable[[Any, Any, Any, dict[str, Any]], jax.Array]
    dtype: Callable[[Any], Any]
    shards: Callable[[Any], int]


def engine_preconditioner(
    init: Callable[[Any], Any],
    layout_of: Callable[[Any], tuple[kron.Layout, list[jax.Array], Any]],
    direction: Callable[[kron.Blocks, Any, kron.Layout], tuple[kron.Blocks, Any]],
    step_is_safe: Callable[[kron.Blocks, Any, kron.Layout], jax.Array],
) -> BlockPreconditioner:
    """A :class:`BlockPreconditioner` in the Kronecker-factor engine's layout (Shampoo, SOAP):
    its state keeps the statistics buffer ``stats``."""
    return BlockPreconditioner(
        init=init,
        layout_of=layout_of,
        to_blocks=kron.to_blocks,
        from_blocks=kron.from_blocks,
        direction=lambda g, state, layout, extra: direction(g, state, layout),
        step_is_safe=lambda g, state, layout, extra: step_is_safe(g, state, layout),
        dtype=lambda state: state.stats.dtype,
        shards=lambda layout: layout.shards,
    )


class BlockMomentumState(NamedTuple):
    """The momentum of a full optimizer on stacked blocks (Shampoo's ``optax.ema``, K-FAC's
    ``optax.trace``), its average in the blocks' layout.

    Attributes:
      count: steps taken (``optax.ema``'s bias correction reads it).
      mu: the moving average (``ema``) or trace of the updates, one element buffer
        (:func:`optlab._src.kronecker.pack_tree`).
    """

    count: jax.Array
    mu: jax.Array


def _decayed_leaves(params: Any, mask: Any, treedef: Any) -> list[jax.Array]:
    """The parameters weight decay applies to, in ``treedef``'s leaf order (zeros elsewhere):
    ``mask`` as optax's (a tree of booleans, a prefix of the parameters', or a callable
    returning one)."""
    if mask is None:
        return treedef.flatten_up_to(params)
    mask_tree = mask(params) if callable(mask) else mask

    def keep(flag: Any, subtree: Any) -> Any:
        if isinstance(flag, bool | np.bool_):
            return subtree if flag else jax.tree.map(jnp.zeros_like, subtree)
        return jax.tree.map(lambda p: jnp.where(flag, p, jnp.zeros_like(p)), subtree)

    return treedef.flatten_up_to(jax.tree.map(keep, mask_tree, params))


def blocked_optimizer(
    pre: BlockPreconditioner,
    *,
    momentum: optax.GradientTransformation | None = None,
    weight_decay: float | jax.Array = 0.0,
    weight_decay_mask: Any | Callable | None = None,
    learning_rate: optax.ScalarOrSchedule | None = None,
) -> optax.GradientTransformationExtraArgs:
    """``pre`` under the NaN guard, with (``learning_rate`` given) momentum, weight decay and the
    learning rate applied on the blocks (module docstring).

    ``momentum``: ``optax.ema`` (Shampoo) or a transform with ``optax.trace``'s state (K-FAC),
    run on the blocks, its average kept as a :class:`BlockMomentumState`. State:
    ``SkipNonFiniteState(inner=<pre's state>)`` for the transform alone;
    ``SkipNonFiniteState(inner=(<pre's state>, [BlockMomentumState], <learning rate state>))``
    for the optimizer (weight decay has no state). A ``weight_decay`` array
    (``optax.inject_hyperparams``) always keeps its term: the state's structure must not depend
    on a value that can change.
    """
    full = learning_rate is not None
    momentum = momentum if full else None
    decays = full and (isinstance(weight_decay, jax.Array) or weight_decay != 0)
    scale = optax.scale_by_learning_rate(learning_rate) if full else None

    def block_shapes(params):
        layout, leaves, _ = pre.layout_of(params)
        # Shapes only (optax.tree.map_params initializes with a placeholder, not arrays).
        leaves = [jax.ShapeDtypeStruct(np.shape(x), jnp.float32) for x in leaves]
        shapes = jax.eval_shape(lambda x: pre.to_blocks(x, layout, jnp.float32), leaves)
        return layout, shapes

    def init_fn(params):
        pre_state = pre.init(params)
        if not full:
            return SkipNonFiniteState(pre_state, skipped_steps=jnp.zeros([], jnp.int32))
        parts = [pre_state]
        if momentum is not None:
            layout, shapes = block_shapes(params)
            size = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
            shape = kron.elements_shape(size, pre.shards(layout))
            parts.append(
                BlockMomentumState(jnp.zeros([], jnp.int32), jnp.zeros(shape, pre.dtype(pre_state)))
            )
        parts.append(scale.init(params))
        return SkipNonFiniteState(tuple(parts), skipped_steps=jnp.zeros([], jnp.int32))

    def with_momentum(direction, m: BlockMomentumState, layout, dtype):
        """optax's momentum on the blocks, from and back to its element buffer."""
        average = kron.unpack_tree(m.mu, direction)
        state = momentum.init(average)  # the structure; its arrays are replaced below
        if isinstance(state, optax.EmaState):
            state = state._replace(count=m.count, ema=average)
            direction, state = momentum.update(direction, state)
            average = state.ema
        else:
            state = state._replace(trace=average)
            direction, state = momentum.update(direction, state)
            average = state.trace
        mu = kron.pack_tree(average, pre.shards(layout), dtype)
        return direction, BlockMomentumState(optax.safe_increment(m.count), mu)

    def chain(direction, inner, layout, decayed, dtype):
        """Momentum, weight decay and the learning rate on the blocks (optax's arithmetic)."""
        parts, i = [], 1
        if momentum is not None:
            direction, m = with_momentum(direction, inner[i], layout, dtype)
            parts.append(m)
            i += 1
        if decayed is not None:
            direction = jax.tree.map(
                lambda u, p: u + jnp.asarray(weight_decay, u.dtype) * p, direction, decayed
            )
        direction, schedule = scale.update(direction, inner[i])
        parts.append(schedule)
        return direction, parts

    def update_fn(updates, state, params=None, **extra_args):
        inner = state.inner
        pre_state = inner[0] if full else inner
        layout, leaves, treedef = pre.layout_of(updates)
        dtype = pre.dtype(pre_state)
        grads = pre.to_blocks(leaves, layout, dtype)
        decayed = None
        if decays:
            if params is None:
                raise ValueError(
                    "weight_decay needs the parameters: call update(grads, state, params)"
                )
            decayed = pre.to_blocks(
                _decayed_leaves(params, weight_decay_mask, treedef), layout, dtype
            )

        def run():
            direction, new_pre = pre.direction(grads, pre_state, layout, extra_args)
            if not full:
                return direction, new_pre
            direction, parts = chain(direction, inner, layout, decayed, dtype)
            return direction, (new_pre, *parts)

        def skip():
            return jax.tree.map(jnp.zeros_like, grads), inner

        safe = pre.step_is_safe(grads, pre_state, layout, extra_args)
        direction, new_inner = jax.lax.cond(safe, run, skip)
        # The update must also survive the cast to each leaf's dtype (float16's 65504).
        limit = min(float(jnp.finfo(jnp.result_type(x)).max) for x in [dtype, *leaves])
        ok = safe & max_abs_within(direction, lambda _: limit)  # one reduction per stack
        direction = jax.tree.map(lambda x: jnp.where(ok, x, jnp.zeros_like(x)), direction)
        out = pre.from_blocks(direction, layout, leaves, pre_state.digits)
        skipped = state.skipped_steps + jnp.where(ok, 0, 1).astype(jnp.int32)
        return treedef.unflatten(out), SkipNonFiniteState(new_inner, skipped_steps=skipped)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


__all__ = [
    "BlockMomentumState",
    "BlockPreconditioner",
    "blocked_optimizer",
    "engine_preconditioner",
]
