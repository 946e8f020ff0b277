"""Small private helpers over parameter pytrees (global reductions, dtype handling).

Everything here is pure, jit-friendly and generic: no transform-specific logic. Reductions run
in at least float32 (float64 stays float64) so that bfloat16/float16 gradients neither lose
precision nor overflow when squared and summed.

Global reductions reduce each leaf to a scalar and combine the scalars with ``combine`` (from
:mod:`optlab._src.common`: one reduction of their stack behind an ``optimization_barrier``,
which keeps the compiled program linear in the number of leaves).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from optlab._src.common import at_least_float32 as compute_dtype
from optlab._src.common import combine, upcast

PyTree = Any

__all__ = ["combine", "compute_dtype", "global_max_abs", "global_norm", "upcast"]


def _leaves(tree: PyTree) -> list[jax.Array]:
    return [upcast(leaf) for leaf in jax.tree.leaves(tree)]


def _result_dtype(leaves: list[jax.Array]) -> jnp.dtype:
    return jnp.result_type(jnp.float32, *leaves) if leaves else jnp.dtype(jnp.float32)


def global_max_abs(tree: PyTree) -> jax.Array:
    """max_i |x_i| over every entry of every leaf (0 for an empty tree; NaN propagates)."""
    leaves = _leaves(tree)
    zero = jnp.zeros((), _result_dtype(leaves))
    return combine([zero, *(jnp.max(jnp.abs(x), initial=0.0) for x in leaves)], jnp.max)


def global_norm(tree: PyTree, ord: float = 2) -> jax.Array:
    """The vector p-norm ``(sum_i |x_i|^ord)^(1/ord)`` of the whole tree, flattened.

    ``ord`` must be a concrete number >= 1 or ``inf``. ``ord=2`` and ``ord=inf`` take direct
    paths (no powers); other orders rescale by the max entry first so that ``|x|^ord`` cannot
    overflow or underflow to zero.
    """
    leaves = _leaves(tree)
    if ord == jnp.inf:
        return global_max_abs(tree)
    zero = jnp.zeros((), _result_dtype(leaves))
    if ord == 2:
        return jnp.sqrt(combine([zero, *(jnp.sum(jnp.square(x)) for x in leaves)]))
    if ord == 1:
        return combine([zero, *(jnp.sum(jnp.abs(x)) for x in leaves)])
    m = global_max_abs(tree)
    safe_m = jnp.where(m > 0, m, 1.0)
    total = combine([zero, *(jnp.sum((jnp.abs(x) / safe_m) ** ord) for x in leaves)])
    return m * total ** (1.0 / ord)


def add(params: PyTree, delta: PyTree) -> PyTree:
    """``params + delta`` leaf by leaf, keeping each parameter's dtype."""
    return jax.tree.map(lambda w, d: (w + d).astype(jnp.asarray(w).dtype), params, delta)
