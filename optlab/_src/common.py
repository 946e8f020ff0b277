r"""What every optlab transform shares: hyperparameter validation, dtypes, the NaN/Inf policy.

Validation
    Every public factory checks its arguments here, at construction, and raises ``ValueError``
    naming the argument and the accepted range (never a ``TypeError`` from a comparison, never a
    trace from inside ``jit``). Values that are JAX arrays pass unchecked: under
    ``optax.inject_hyperparams`` they are traced, and they were checked as Python numbers when
    the user constructed the optimizer.

Dtypes
    Statistics, norms and matrix kernels run in at least float32 (:func:`at_least_float32`):
    bfloat16/float16 gradients neither lose precision nor overflow when squared and summed; the
    update comes back in the gradient's dtype. optlab's optimizers are defined for real
    floating parameters: a leaf of an integer, boolean or complex dtype is rejected at ``init``
    with an error naming the leaf and its dtype (:func:`check_leaf_dtypes`) rather than crashing
    inside ``jit`` or silently dropping an imaginary part; route such leaves elsewhere with
    ``optax.partition`` (e.g. to ``optax.set_to_zero()``).

The NaN/Inf policy (:func:`skip_nonfinite`)
    One rule for every optlab optimizer and alias: a step whose incoming gradient holds a NaN or
    an Inf, or whose result would put a non-finite value into the optimizer state or the update
    (a finite but huge gradient whose square overflows a statistic, a SAM gradient that is NaN at
    the perturbed point), is skipped: the update is exactly zero, the whole inner state is left
    as it was, and ``skipped_steps`` is incremented. Nothing non-finite ever enters the state, so
    the optimizer continues normally on the next good gradient. ``optax.apply_if_finite`` checks
    only the incoming gradient; overflowing statistics would get through it. Transforms that can
    bound their new state from the gradient beforehand (Shampoo, Muon) decide before the step
    (``step_is_safe``), which spares the copy of the old state that undoing a step needs.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "SkipNonFiniteState",
    "at_least_float32",
    "check_bool",
    "check_choice",
    "check_dtype",
    "check_int",
    "check_leaf_dtypes",
    "check_learning_rate",
    "check_number",
    "is_inexact",
    "max_abs_within",
    "skip_nonfinite",
    "tree_all_finite",
    "upcast",
]


# -- validation ------------------------------------------------------------------------------------
def _is_array(value: Any) -> bool:
    return isinstance(value, jax.Array | np.ndarray | np.generic)


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return "a finite real number"


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
    allow_inf: bool = False,
) -> None:
    """A real scalar in the given interval (``None`` only if ``allow_none``; NaN never).

    JAX and NumPy scalars are accepted; a traced value (``optax.inject_hyperparams`` under
    ``jit``) cannot be checked and passes.
    """
    accepted = _interval(low, high, low_open, high_open)
    if value is None:
        if allow_none:
            return
        raise ValueError(f"{name} must be {accepted}, got None")
    if isinstance(value, jax.core.Tracer):
        return
    if isinstance(value, bool) or not (isinstance(value, numbers.Real) or _is_array(value)):
        raise ValueError(f"{name} must be {accepted}, got {value!r}")
    arr = np.asarray(value)
    if arr.shape != () or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(f"{name} must be a real scalar {accepted}, got {value!r}")
    v = float(arr)
    bad = (
        math.isnan(v)
        or (math.isinf(v) and not allow_inf)
        or (low is not None and (v <= low if low_open else v < low))
        or (high is not None and (v >= high if high_open else v > high))
    )
    if bad:
        raise ValueError(f"{name} must be {accepted}, got {value!r}")


def check_int(name: str, value: Any, minimum: int, *, allow_none: bool = False) -> None:
    """A Python (or NumPy) integer ``>= minimum``; ``None`` only if ``allow_none``."""
    if value is None and allow_none:
        return
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < minimum:
        none = " or None" if allow_none else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{none}, got {value!r}")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if not isinstance(value, str | type(None)) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_learning_rate(value: Any, name: str = "learning_rate") -> None:
    """A finite number ``>= 0`` or an optax schedule (a callable ``count -> lr``).

    ``None`` is rejected: ``optax.scale_by_learning_rate(None)`` would silently be an identity
    (gradient ascent with unit steps once negated).
    """
    if callable(value) and not _is_array(value):
        return
    if value is None:
        raise ValueError(f"{name} is required: a float >= 0 or an optax schedule, got None")
    try:
        check_number(name, value, low=0.0)
    except ValueError:
        raise ValueError(
            f"{name} must be a float >= 0 or an optax schedule, got {value!r}"
        ) from None


def check_dtype(name: str, dtype: Any, *, allow_none: bool = True) -> None:
    """``None`` (if allowed) or a floating dtype."""
    if dtype is None and allow_none:
        return
    try:
        ok = dtype is not None and jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
    except TypeError:
        ok = False
    if not ok:
        none = "None or " if allow_none else ""
        raise ValueError(f"{name} must be {none}a floating dtype, got {dtype!r}")


# -- dtypes ----------------------------------------------------------------------------------------
def at_least_float32(dtype: Any) -> jnp.dtype:
    """The dtype statistics and kernels over ``dtype`` values run in: at least float32
    (float64 stays float64; bfloat16/float16 and integers become float32)."""
    return jnp.promote_types(dtype, jnp.float32)


def upcast(x: Any) -> jax.Array:
    """``x`` as a floating array of at least float32 precision."""
    x = jnp.asarray(x)
    return x.astype(at_least_float32(x.dtype))


def is_inexact(x: Any) -> bool:
    """Whether a leaf is a floating or complex array (only those can be non-finite)."""
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def check_leaf_dtypes(params: Any, transform: str) -> None:
    """Reject non-floating leaves at ``init`` with an error naming the leaf and its dtype.

    optlab's transforms are defined for real floating parameters: their statistics, norms and
    polar factors would silently drop or mangle an imaginary part, and integer leaves have no
    gradient to precondition (``jax.grad`` gives them ``float0``).
    """
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"{transform} supports real floating parameters only; the leaf "
                f"{jax.tree_util.keystr(path) or '(root)'} has dtype {dtype} (route it elsewhere "
                "with optax.partition, e.g. to optax.set_to_zero())"
            )


# -- the NaN/Inf policy ----------------------------------------------------------------------------
def tree_all_finite(tree: Any) -> jax.Array:
    """Whether every floating leaf of ``tree`` is finite (a scalar bool; True for no leaves).

    ``x * 0`` is 0 for finite ``x`` and NaN for NaN or Inf (IEEE arithmetic, which XLA does not
    fold away), so one sum of them is finite exactly when every entry is: one fused reduction
    per leaf feeding one scalar, about half the kernels of an ``all(isfinite)`` per leaf.
    """
    leaves = [x for x in jax.tree.leaves(tree) if is_inexact(x)]
    if not leaves:
        return jnp.asarray(True)
    return jnp.isfinite(combine([jnp.sum(x * 0).astype(jnp.float32) for x in leaves]))


def combine(scalars: list[jax.Array], op: Callable[[jax.Array], jax.Array] = jnp.sum) -> jax.Array:
    """``op`` (``jnp.sum``, ``jnp.max``, ``jnp.all``) of per-leaf scalars, as one reduction of
    their stack behind an ``optimization_barrier``; NaN propagates. No scalars: 0.

    Without the barrier XLA turns the scalars' combination (a Python sum, a stack, even one
    reduction over a concatenation of the leaves) into a chain of scalar ops and fuses that
    chain, duplicated, into every per-leaf consumer of the result (``x * scale``, a
    ``where(ok, new, old)`` per leaf): the compiled program grows quadratically with the number
    of leaves (SAM's step on a 25-layer MLP: 80k HLO instructions, K-FAC's on a 100-layer MLP
    271k).
    """
    if not scalars:
        return jnp.zeros((), jnp.float32)
    return op(jax.lax.optimization_barrier(jnp.stack(scalars)))


#: Base of :func:`runtime_digits`.
DIGIT_BASE = 16


def runtime_digits() -> tuple[jax.Array, ...]:
    """The int32 scalars ``0, 1, ..., DIGIT_BASE - 1``, kept in a transform's state so that
    :func:`runtime_offset` can write row numbers with them.

    Why: XLA compiles one kernel per distinct fusion and reuses it for identical ones. Cutting
    each layer's piece out of a stacked (batched) result at a constant row makes one distinct
    kernel per layer (about 15 ms of CPU compile time each, measured with
    ``benchmarks/compile_time.py``); at a row computed from input scalars it is the same
    kernel for every layer of one shape. The state's arrays are inputs of the user's jitted
    step, so digits read from it are such scalars, and compile time grows with the number of
    distinct shapes instead of layers. A fixed count of digits keeps the state's structure
    independent of the parameters (``optax.tree_map_params`` initializes with a placeholder).
    """
    return tuple(jnp.asarray(d, jnp.int32) for d in range(DIGIT_BASE))


def digit_width(largest: int) -> int:
    """How many :data:`DIGIT_BASE` digits write every integer in ``[0, largest]``."""
    width = 1
    while DIGIT_BASE**width <= largest:
        width += 1
    return width


def runtime_offset(value: int, digits: Sequence[jax.Array], width: int) -> jax.Array | int:
    """``value`` as ``sum_j digits[d_j] * DIGIT_BASE**j`` over ``width`` digits (equal to it
    when ``digits`` is :func:`runtime_digits` from the state), or ``value`` itself when
    ``digits`` is empty (no state: a constant). Use one ``width`` for every piece of one kind
    (rows of one stack, offsets into one vector): their kernels are then identical; fewer
    digits trace faster and coincide less often (a repeated digit makes a distinct kernel)."""
    if not digits:
        return value
    # Horner's rule on lax primitives (a third of the tracing time of jnp's operators).
    total = digits[(value // DIGIT_BASE ** (width - 1)) % DIGIT_BASE]
    base = np.int32(DIGIT_BASE)
    for j in reversed(range(width - 1)):
        total = jax.lax.add(jax.lax.mul(total, base), digits[(value // DIGIT_BASE**j) % DIGIT_BASE])
    return total


def runtime_slice(x: jax.Array, start: int, size: int, digits: Sequence[jax.Array]) -> jax.Array:
    """``x[start : start + size]`` (axis 0) at an offset written with ``digits`` in as many
    digits as ``x``'s length needs (:func:`runtime_offset`): every cut of one array shares a
    kernel; a constant slice when ``digits`` is empty."""
    offset = runtime_offset(start, digits, digit_width(x.shape[0]))
    return jax.lax.dynamic_slice_in_dim(x, offset, size)


def runtime_row(x: jax.Array, row: int, digits: Sequence[jax.Array]) -> jax.Array:
    """``x[row]`` at a row written with ``digits``, as :func:`runtime_slice`."""
    offset = runtime_offset(row, digits, digit_width(x.shape[0]))
    return jax.lax.dynamic_index_in_dim(x, offset, 0, keepdims=False)


class SkipNonFiniteState(NamedTuple):
    """State of an optlab optimizer under the NaN/Inf policy (:func:`skip_nonfinite`).

    Attributes:
      inner: the wrapped transform's state (never holds a non-finite value).
      skipped_steps: int32 count of the steps skipped for a non-finite gradient, state or update.
    """

    inner: optax.OptState
    skipped_steps: jax.Array


#: Headroom the gradient checks of :func:`skip_nonfinite`'s ``step_is_safe`` keep below the
#: largest finite value: with a new statistic bounded by a quarter of it, the few roundings of an
#: update (``decay * old + weight * new``) cannot reach it.
HEADROOM = 0.25


def max_abs_within(tree: Any, limit: Callable[[jax.Array], Any]) -> jax.Array:
    """Whether every floating leaf ``x`` has ``max|x| <= limit(x)`` (False for a NaN or Inf).

    One reduction per leaf, as :func:`tree_all_finite`; ``limit`` receives the leaf and may
    return a traced value (a hyperparameter under ``optax.inject_hyperparams``). Compared in
    the leaf's precision, float32 at least, with the limit capped at that dtype's largest
    value: a limit beyond it (float64's, or one that rounds to Inf) still rejects an Inf.
    """

    def within(x: jax.Array) -> jax.Array:
        dtype = at_least_float32(x.dtype)
        bound = jnp.minimum(jnp.asarray(limit(x), dtype), jnp.finfo(dtype).max)
        return jnp.max(jnp.abs(x)).astype(dtype) <= bound

    checks = [within(x) for x in jax.tree.leaves(tree) if is_inexact(x) and x.size]
    return combine(checks, jnp.all) if checks else jnp.asarray(True)


def skip_nonfinite(
    inner: optax.GradientTransformation,
    *,
    state_is_finite: Callable[[optax.OptState], jax.Array] | None = None,
    step_is_safe: Callable[[optax.Updates, optax.OptState], jax.Array] | None = None,
    check_updates: bool = True,
    branchless: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """``inner`` under optlab's NaN/Inf policy (module docstring): a bad step changes nothing.

    By default the inner update runs (under ``lax.cond``) only when the incoming gradient is
    finite, and its result is kept only if the new inner state and the update are finite too.
    Otherwise the update is zero, the inner state is unchanged and ``skipped_steps`` grows by
    one. Extra keyword arguments of ``update`` (e.g. SAM's ``grad_fn``) are passed on to
    ``inner``, unknown ones are ignored as optax's ``with_extra_args_support`` does.

    Checking after the step means holding the old state until the new one is known: one more
    pass over the whole state per step (~10% of a Shampoo or Muon step on CPU). A transform that
    can tell from the gradient (and its state) beforehand that its new state will be finite
    passes ``step_is_safe`` instead: the step then runs only when it returns True, XLA updates
    the state in place, and only the update is checked afterwards. An update that still comes
    out non-finite is zeroed and counted as skipped, the (finite) state keeping the step. Where
    the bound makes the update finite too, ``check_updates=False`` drops that last check (a
    reduction per leaf: ~10% of the compile time of a transformer's Muon step).

    Args:
      inner: any optax transform.
      state_is_finite: a cheaper check of the new inner state than reading every element, for
        transforms that know where a non-finite value would show first; default: every
        floating leaf.
      step_is_safe: ``(gradient, inner_state) -> bool``, True only if ``inner``'s update from
        them is sure to leave a finite state (False for a non-finite gradient); see above.
        A ``step_is_safe`` that takes ``**kwargs`` also receives ``update``'s extra keyword
        arguments (K-FAC bounds its new factors from ``curvature=``). Exclusive with
        ``state_is_finite``.
      check_updates: with ``step_is_safe``, whether the update is still checked (default);
        ``False`` only where ``step_is_safe`` also guarantees a finite update.
      branchless: check after the step as by default, but run the step unconditionally and
        select its result leaf by leaf instead of under ``lax.cond``: for transforms with a
        small state whose step computes a lot (SAM's second gradient ran at half speed inside
        the conditional on CPU: 60 vs 31 ms per LeNet-5 step). Exclusive with ``step_is_safe``.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from optlab import skip_nonfinite
      >>> tx = skip_nonfinite(optax.adam(0.1))
      >>> state = tx.init(jnp.zeros(2))
      >>> updates, state = tx.update(jnp.array([1.0, jnp.nan]), state)
      >>> updates.tolist(), int(state.skipped_steps)
      ([0.0, 0.0], 1)
    """
    if state_is_finite is not None and step_is_safe is not None:
        raise ValueError("skip_nonfinite: give state_is_finite or step_is_safe, not both")
    if not check_updates and step_is_safe is None:
        raise ValueError("skip_nonfinite: check_updates=False needs step_is_safe")
    if branchless and step_is_safe is not None:
        raise ValueError("skip_nonfinite: give branchless or step_is_safe, not both")
    inner = optax.with_extra_args_support(inner)
    check_state = tree_all_finite if state_is_finite is None else state_is_finite
    safe_reads_extra_args = step_is_safe is not None and _takes_var_keyword(step_is_safe)

    def init_fn(params):
        return SkipNonFiniteState(inner.init(params), skipped_steps=jnp.zeros([], jnp.int32))

    def inner_update(updates, state, params, extra_args):
        new_updates, new_inner = inner.update(updates, state.inner, params, **extra_args)
        # Updates keep the gradient's dtypes (the optax convention apply_if_finite relies on
        # too); the skip branch can then be built without tracing inner twice.
        new_updates = jax.tree.map(lambda n, u: n.astype(jnp.result_type(u)), new_updates, updates)
        return new_updates, new_inner

    def skip(updates, state):
        return optax.tree.zeros_like(updates), state.inner, jnp.asarray(False)

    def checked_after(updates, state, params, extra_args):
        def run():
            new_updates, new_inner = inner_update(updates, state, params, extra_args)
            ok = jnp.logical_and(check_state(new_inner), tree_all_finite(new_updates))
            return new_updates, new_inner, ok

        new_updates, new_inner, ok = jax.lax.cond(
            tree_all_finite(updates), run, lambda: skip(updates, state)
        )
        # Both branches of this cond have the result computed already; a second cond (not a
        # select per leaf) keeps XLA from emitting one select kernel per state leaf.
        new_updates, new_inner = jax.lax.cond(
            ok,
            lambda: (new_updates, new_inner),
            lambda: (jax.tree.map(jnp.zeros_like, new_updates), state.inner),
        )
        return new_updates, new_inner, ok

    def checked_before(updates, state, params, extra_args):
        def run():
            new_updates, new_inner = inner_update(updates, state, params, extra_args)
            ok = tree_all_finite(new_updates) if check_updates else jnp.asarray(True)
            return new_updates, new_inner, ok

        extra = extra_args if safe_reads_extra_args else {}
        new_updates, new_inner, ok = jax.lax.cond(
            step_is_safe(updates, state.inner, **extra), run, lambda: skip(updates, state)
        )
        if check_updates:  # only the update can still be bad (the state is finite)
            new_updates = jax.lax.cond(
                ok, lambda: new_updates, lambda: jax.tree.map(jnp.zeros_like, new_updates)
            )
        return new_updates, new_inner, ok

    def checked_by_select(updates, state, params, extra_args):
        # A bad gradient only makes the (discarded) step compute with NaN.
        new_updates, new_inner = inner_update(updates, state, params, extra_args)
        ok = tree_all_finite(updates) & check_state(new_inner) & tree_all_finite(new_updates)
        new_updates = jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), new_updates)
        new_inner = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_inner, state.inner)
        return new_updates, new_inner, ok

    if step_is_safe is not None:
        step = checked_before
    else:
        step = checked_by_select if branchless else checked_after

    def update_fn(updates, state, params=None, **extra_args):
        new_updates, new_inner, ok = step(updates, state, params, extra_args)
        skipped = state.skipped_steps + jnp.where(ok, 0, 1).astype(jnp.int32)
        return new_updates, SkipNonFiniteState(inner=new_inner, skipped_steps=skipped)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _takes_var_keyword(fn: Callable[..., Any]) -> bool:
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()
    )
