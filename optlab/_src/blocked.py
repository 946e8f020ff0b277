r"""Shampoo's and SOAP's optimizers, guarded and run on the engine's stacked blocks.

A preconditioner of the Kronecker-factor engine (:mod:`optlab._src.kronecker`) computes its
direction on the blocks of the whole tree, a few stacks however many layers there are. Its
transforms (``scale_by_shampoo``, ``scale_by_soap``) and full optimizers (``shampoo``, ``soap``)
keep everything after that in the same layout too: momentum, decoupled weight decay, the
learning rate and the NaN guard's check of the update run on the stacks, and only the final
update is cut into leaves. Per-leaf code is what makes XLA's compile time grow with depth: the
optax chain and the guard's per-leaf checks after the preconditioner made half of a 100-layer
MLP's Shampoo step.

The arithmetic is optax's: ``optax.ema`` (momentum), ``u + weight_decay * p``
(``optax.add_decayed_weights``) and ``optax.scale_by_learning_rate``, applied to the blocks.
The NaN/Inf policy is :func:`optlab.skip_nonfinite`'s with ``step_is_safe``: a step the
preconditioner's bound says could overflow its state is skipped (zero update, state unchanged,
``skipped_steps`` + 1); an update that still comes out non-finite, or beyond the largest value
of a leaf's dtype (it would overflow when cast), is zeroed and counted the same way, the finite
state keeping the step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab._src import kronecker as kron
from optlab._src.common import SkipNonFiniteState


class BlockPreconditioner(NamedTuple):
    """A preconditioner on the engine's blocks (Shampoo's, SOAP's).

    Attributes:
      init: ``params -> state``; the state has the statistics buffer ``stats`` (its dtype is
        the blocks' dtype) and the runtime ``digits`` (``common.runtime_digits``).
      layout_of: ``tree -> (layout, leaves, treedef)``.
      direction: ``(grads, state, layout) -> (direction, new_state)`` on :class:`kron.Blocks`.
      step_is_safe: ``(grads, state, layout) -> bool``: True only if the step from them is sure
        to leave a finite state (False for a non-finite gradient).
    """

    init: Callable[[Any], Any]
    layout_of: Callable[[Any], tuple[kron.Layout, list[jax.Array], Any]]
    direction: Callable[[kron.Blocks, Any, kron.Layout], tuple[kron.Blocks, Any]]
    step_is_safe: Callable[[kron.Blocks, Any, kron.Layout], jax.Array]


class BlockMomentumState(NamedTuple):
    """The momentum of a full optimizer (``optax.ema``'s state, its average in the engine's
    layout).

    Attributes:
      count: steps averaged (for the bias correction).
      mu: the exponential moving average of the updates, one element buffer
        (:func:`optlab._src.kronecker.pack_elements`).
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


def _largest_abs(blocks: kron.Blocks, dtype) -> jax.Array:
    """``max |x|`` over the blocks (NaN if one is; 0 for none): one reduction per stack."""
    parts = [jnp.max(jnp.abs(s)) for s in blocks.stacks if s.size]
    if blocks.vector is not None and blocks.vector.size:
        parts.append(jnp.max(jnp.abs(blocks.vector)))
    if not parts:
        return jnp.zeros([], dtype)
    return jnp.max(jnp.stack([p.astype(dtype) for p in parts]))


def blocked_optimizer(
    pre: BlockPreconditioner,
    *,
    momentum: float | jax.Array | None = None,
    weight_decay: float | jax.Array = 0.0,
    weight_decay_mask: Any | Callable | None = None,
    learning_rate: optax.ScalarOrSchedule | None = None,
) -> optax.GradientTransformationExtraArgs:
    """``pre`` under the NaN guard, with (``learning_rate`` given) momentum, weight decay and the
    learning rate applied on the blocks (module docstring).

    State: ``SkipNonFiniteState(inner=<pre's state>)`` for the transform alone;
    ``SkipNonFiniteState(inner=(<pre's state>, [BlockMomentumState], <learning rate state>))``
    for the optimizer (momentum present when ``momentum`` is an array or positive; weight decay
    has no state). Arrays for ``momentum`` / ``weight_decay`` (``optax.inject_hyperparams``)
    always keep their terms: the state's structure must not depend on a value that can change.
    """
    full = learning_rate is not None
    ema = None
    if full and momentum is not None and (isinstance(momentum, jax.Array) or momentum > 0):
        ema = optax.ema(momentum, debias=True)
    decays = full and (isinstance(weight_decay, jax.Array) or weight_decay != 0)
    scale = optax.scale_by_learning_rate(learning_rate) if full else None

    def init_fn(params):
        pre_state = pre.init(params)
        if not full:
            return SkipNonFiniteState(pre_state, skipped_steps=jnp.zeros([], jnp.int32))
        parts = [pre_state]
        if ema is not None:
            layout, _, _ = pre.layout_of(params)
            average = ema.init(kron.zero_elements(layout, pre_state.stats.dtype))
            parts.append(BlockMomentumState(average.count, average.ema))
        parts.append(scale.init(params))
        return SkipNonFiniteState(tuple(parts), skipped_steps=jnp.zeros([], jnp.int32))

    def chain(direction, inner, layout, decayed, dtype):
        """Momentum, weight decay and the learning rate on the blocks (optax's arithmetic)."""
        parts, i = [], 1
        if ema is not None:
            m = inner[i]
            i += 1
            direction, average = ema.update(
                direction, optax.EmaState(m.count, kron.unpack_elements(m.mu, layout))
            )
            mu = kron.pack_elements(average.ema, layout, dtype)
            parts.append(BlockMomentumState(average.count, mu))
        if decayed is not None:
            direction = kron.map_blocks(
                lambda u, p: u + jnp.asarray(weight_decay, u.dtype) * p, direction, decayed
            )
        direction, schedule = scale.update(direction, inner[i])
        parts.append(schedule)
        return direction, parts

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args  # unknown ones are ignored, as optax's with_extra_args_support does
        inner = state.inner
        pre_state = inner[0] if full else inner
        layout, leaves, treedef = pre.layout_of(updates)
        dtype = pre_state.stats.dtype
        grads = kron.to_blocks(leaves, layout, dtype)
        decayed = None
        if decays:
            if params is None:
                raise ValueError(
                    "weight_decay needs the parameters: call update(grads, state, params)"
                )
            decayed = kron.to_blocks(
                _decayed_leaves(params, weight_decay_mask, treedef), layout, dtype
            )

        def run():
            direction, new_pre = pre.direction(grads, pre_state, layout)
            if not full:
                return direction, new_pre
            direction, parts = chain(direction, inner, layout, decayed, dtype)
            return direction, (new_pre, *parts)

        def skip():
            return kron.map_blocks(jnp.zeros_like, grads), inner

        safe = pre.step_is_safe(grads, pre_state, layout)
        direction, new_inner = jax.lax.cond(safe, run, skip)
        # The update must also survive the cast to each leaf's dtype (float16's 65504).
        limit = min(float(jnp.finfo(jnp.result_type(x)).max) for x in [dtype, *leaves])
        ok = safe & (_largest_abs(direction, dtype) <= jnp.asarray(limit, dtype))  # NaN: False
        direction = kron.map_blocks(lambda x: jnp.where(ok, x, jnp.zeros_like(x)), direction)
        out = kron.from_blocks(direction, layout, leaves, pre_state.digits)
        skipped = state.skipped_steps + jnp.where(ok, 0, 1).astype(jnp.int32)
        return treedef.unflatten(out), SkipNonFiniteState(new_inner, skipped_steps=skipped)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


__all__ = ["BlockMomentumState", "BlockPreconditioner", "blocked_optimizer"]
