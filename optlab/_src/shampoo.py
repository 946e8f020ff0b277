r"""Shampoo as composable optax transforms: ``scale_by_shampoo`` and the ``shampoo`` optimizer.

A thin composition of the Kronecker-factor engine (:mod:`optlab._src.kronecker`); the math and
the options are documented on :func:`scale_by_shampoo` and :func:`shampoo`, where ``help()``
shows them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab import linalg
from optlab._src import kronecker as kron
from optlab._src.blocked import BlockPreconditioner, blocked_optimizer, engine_preconditioner
from optlab._src.common import (
    HEADROOM,
    at_least_float32,
    check_bool,
    check_choice,
    check_int,
    check_leaf_dtypes,
    check_learning_rate,
    check_number,
    runtime_digits,
)
from optlab._src.sharding import make_placement

GRAFTING = ("none", "sgd", "adagrad", "rmsprop", "adam")
ROOT_METHODS = linalg.INVERSE_ROOT_METHODS

_MATH = r"""
    For a matrix gradient ``G`` (m x n) Shampoo keeps a left and a right statistic and
    preconditions from both sides::

        L_t = beta2 L_{t-1} + w G_t G_t^T,   R_t = beta2 R_{t-1} + w G_t^T G_t,
        update_t = (L_t + r_L I)^{-1/4} G_t (R_t + r_R I)^{-1/4},

    with ``w = 1`` for ``beta2 = 1`` (AdaGrad-style sums: Gupta et al.'s original, and
    Kuznetsova's eq. 28-30) and ``w = 1 - beta2`` otherwise (moving averages, as in Merkulov's
    seminar). The ridge is relative: ``r = eps * lambda_max + eps_floor``. A tensor of order
    ``k`` keeps one statistic per axis ``a``, ``S_a = sum_t G_(a) G_(a)^T`` (mode-``a``
    unfolding), and is multiplied along each axis by ``(S_a + r I)^{-1/(2k)}``. Without
    accumulation (``beta2 = 0``) the matrix update is ``U V^T`` of ``G = U S V^T``: Muon's.

    What production Shampoo adds (Google's distributed_shampoo, Meta's Distributed Shampoo),
    here as one optax transform:

    * Blocking and merging: size-1 dims dropped, consecutive small dims merged
      (``[3, 3, 64, 128] -> [576, 128]``), dims larger than ``block_size`` split into blocks
      with statistics of their own; an axis larger than ``max_preconditioned_dim`` is not
      preconditioned, and the default exponent ``1/(2k)`` counts only preconditioned axes.
    * One batched root call per statistic size across the whole tree (DASH-style stacking).
    * Amortized roots: computed at ``start_preconditioning_step`` and every
      ``precondition_every`` steps after it; before the start the grafted update is used alone.
    * Grafting: the direction of each block from Shampoo, its norm from a simple optimizer on
      the same gradient, ``update = P * ||graft|| / ||P||`` per block.
    * Safe roots: roots start at ``I``; a new root whose residual estimate ``||X^p S - I||`` is
      above ``root_error_threshold`` or not finite is rejected, the previous one kept, and
      ``rejected_roots`` counted.
    * Vectors and scalars (biases, gains) use the diagonal rule, Shampoo for an order-1 tensor
      restricted to the diagonal: ``g * (v + r)^{-1/2}`` with ``v`` the diagonal statistic
      (AdaGrad's for ``beta2 = 1``, RMSProp's otherwise) and the same relative ridge.

    NaN/Inf (optlab's one policy, :func:`optlab.skip_nonfinite`): a step whose
    gradient is not finite, or could overflow the statistics or the grafting state (checked
    before the step: the new diagonals, bounded by the old ones and each block's sum of
    squares, must stay below a quarter of the largest float; a float32 gradient of 1e20
    overflows ``G G^T``), is skipped: zero update, state unchanged, ``skipped_steps`` of the
    ``SkipNonFiniteState`` at the top of the state counts it. An update that still comes out
    non-finite, or larger than a leaf's dtype can hold (float16's 65504), is zeroed and counted
    too (the state, finite, keeps that step); it is checked on the stacked blocks.
    Parameters must be real floating arrays; statistics run in float32 (float64 stays float64)
    and the update comes back in the gradient's dtype; zero-size leaves get a zero-size update.

    Under ``optax.inject_hyperparams`` the float options and ``precondition_every`` /
    ``start_preconditioning_step`` are injectable; ``block_size``, ``max_preconditioned_dim``
    and ``exponent`` fix the state's layout: they keep their defaults unless named in
    ``static_args`` (another value without it raises a ``ValueError`` saying so).

    References:
      - V. Gupta, T. Koren, Y. Singer, "Shampoo: Preconditioned Stochastic Tensor Optimization",
        ICML 2018.
      - R. Anil, V. Gupta, T. Koren, K. Regan, Y. Singer, "Scalable Second Order Optimization for
        Deep Learning", arXiv:2002.09018.
      - H.-J. M. Shi et al., "A Distributed Data-Parallel PyTorch Implementation of the
        Distributed Shampoo Optimizer for Training Neural Networks At-Scale", arXiv:2309.06497.
      - M. P. Kuznetsova, "An experimental study of modern curvature-aware optimization methods
        for training neural networks", graduation thesis, Lomonosov Moscow State University, 2023.
      - D. Merkulov, "Stories from training neural networks: SAM, Mode Connectivity, Grokking,
        Double Descent", seminar.
"""


class ShampooState(NamedTuple):
    """State of Shampoo's preconditioning (``SkipNonFiniteState.inner`` of
    :func:`scale_by_shampoo`); every field is an array or an optax state.

    Attributes:
      count: steps taken (skipped steps excluded).
      stats: all statistics in one flat buffer (layout: :mod:`optlab._src.kronecker`).
      roots: the current inverse roots of the matrix statistics, same layout without diagonals.
      graft: the grafting optimizer's state, its second moments in the engine's layout (one
        element buffer: :func:`optlab._src.kronecker.pack_elements`), in the statistics' dtype.
      rejected_roots: how many roots were rejected (non-finite or residual too large).
      digits: the int32 scalars 0 .. 15 (constant): the rows at which each leaf is cut out
        of the engine's block stacks are written with them, so that XLA compiles one kernel
        per block shape, not one per layer.
    """

    count: jax.Array
    stats: jax.Array
    roots: jax.Array
    graft: optax.OptState
    rejected_roots: jax.Array
    digits: tuple[jax.Array, ...] = ()


def _graft_transform(name: str, beta2, eps) -> optax.GradientTransformation:
    if name in ("none", "sgd"):
        return optax.identity()
    if name == "adagrad":
        return optax.scale_by_rss(initial_accumulator_value=0.0, eps=eps)
    if name == "rmsprop":
        return optax.scale_by_rms(decay=beta2, eps=eps, eps_in_sqrt=False)
    return optax.scale_by_rms(decay=beta2, eps=eps, eps_in_sqrt=False, bias_correction=True)


def _second_moments(graft_state: optax.OptState) -> Any:
    """The second moments of a :func:`_graft_transform` state (None for the identity's)."""
    if isinstance(graft_state, optax.ScaleByRssState):
        return graft_state.sum_of_squares
    return getattr(graft_state, "nu", None)


def _with_second_moments(graft_state: optax.OptState, moments: Any) -> optax.OptState:
    """``graft_state`` with its second moments replaced by ``moments``."""
    if isinstance(graft_state, optax.ScaleByRssState):
        return graft_state._replace(sum_of_squares=moments)
    return graft_state._replace(nu=moments)


def _root_from_exponent(exponent: float | None) -> int | None:
    """``p`` of ``exponent = 1/p`` (None: the default ``2k`` per block)."""
    check_number("exponent", exponent, low=0.0, low_open=True, allow_none=True)
    if exponent is None:
        return None
    p = round(1.0 / float(exponent))
    if p < 1 or abs(1.0 / p - exponent) > 1e-9 * exponent:
        raise ValueError(f"exponent must be 1/p for an integer p >= 1, got {exponent!r}")
    return p


def _python(value: Any) -> Any:
    """A concrete 0-d array (``optax.inject_hyperparams`` makes them) as a Python number."""
    if isinstance(value, jax.Array | np.ndarray) and not isinstance(value, jax.core.Tracer):
        return np.asarray(value).item() if np.ndim(value) == 0 else value
    return value


def _layout_option(name: str, value: Any, default: Any) -> Any:
    """A layout option (it fixes the state's shapes, so it cannot be traced).

    ``optax.inject_hyperparams`` passes numeric options as arrays, traced inside ``update``: a
    traced value is taken to be the default, which ``init`` checked it was (concretely).
    """
    if isinstance(value, jax.core.Tracer):
        return default
    if isinstance(value, jax.Array | np.ndarray):
        if _python(value) != default:
            raise ValueError(
                f"{name} fixes the optimizer state's layout and cannot be an array "
                f"hyperparameter; with optax.inject_hyperparams pass "
                f"static_args=({name!r},), got {value!r}"
            )
        return default
    return value


def _step_option(name: str, value: Any, minimum: int, allow_none: bool = False) -> Any:
    """A step count: a Python int, or an (injected) integer array, possibly traced."""
    if not isinstance(value, jax.core.Tracer):
        check_int(name, _python(value), minimum, allow_none=allow_none)
    return value


def _shampoo_root_method(root_method: str) -> str:
    """Shampoo's ``"auto"``: the fastest float32 method of the backend (see ``root_method``)."""
    method = linalg.resolve_method(root_method)
    # inverse_root's CPU "auto" picks float32 or float64 per matrix; Shampoo wants float32.
    return "eigh" if method == "auto" else method


def _preconditioner(
    name: str,
    *,
    beta2,
    eps,
    exponent,
    block_size,
    max_preconditioned_dim,
    merge_small_dims,
    precondition_every,
    start_preconditioning_step,
    grafting,
    graft_beta2,
    graft_eps,
    root_method,
    root_error_threshold,
    eps_floor,
    mesh=None,
    mesh_axis="data",
) -> BlockPreconditioner:
    """Shampoo's preconditioning on the engine's blocks (:mod:`optlab._src.blocked` guards it
    and adds the optimizer's other terms)."""
    check_number("beta2", beta2, low=0.0, high=1.0)
    check_number("eps", eps, low=0.0)
    root = _root_from_exponent(_layout_option("exponent", exponent, None))
    block_size = _layout_option("block_size", block_size, 1024)
    check_int("block_size", block_size, 1, allow_none=True)
    max_preconditioned_dim = _layout_option("max_preconditioned_dim", max_preconditioned_dim, 8192)
    check_int("max_preconditioned_dim", max_preconditioned_dim, 1)
    check_bool("merge_small_dims", merge_small_dims)
    every = _step_option("precondition_every", precondition_every, 1)
    start = _step_option("start_preconditioning_step", start_preconditioning_step, 0, True)
    start = every if start is None else start
    check_choice("grafting", grafting, GRAFTING)
    check_number("graft_beta2", graft_beta2, low=0.0, high=1.0, high_open=True)
    check_number("graft_eps", graft_eps, low=0.0)
    check_choice("root_method", root_method, ROOT_METHODS)
    check_number(
        "root_error_threshold", root_error_threshold, low=0.0, low_open=True, allow_inf=True
    )
    check_number("eps_floor", eps_floor, low=0.0)
    placement = make_placement(mesh, mesh_axis)
    graft_tx = _graft_transform(grafting, graft_beta2, graft_eps)
    refresh_fn = kron.inverse_roots(
        eps=eps,
        eps_floor=eps_floor,
        threshold=root_error_threshold,
        method=_shampoo_root_method(root_method),
    )
    diagonal_p = root if root is not None else 2

    def layout_of(tree) -> tuple[kron.Layout, list[jax.Array], Any]:
        leaves, treedef = jax.tree.flatten(tree)
        shapes = tuple(tuple(np.shape(x)) for x in leaves)
        layout = kron.make_layout(
            shapes, block_size, max_preconditioned_dim, merge_small_dims, root
        )
        return kron.shard_layout(layout, placement.shards), leaves, treedef

    def init_fn(params):
        check_leaf_dtypes(params, name)
        layout, leaves, _ = layout_of(params)
        dtype = at_least_float32(jnp.result_type(*leaves)) if leaves else jnp.float32
        return ShampooState(
            count=jnp.zeros([], jnp.int32),
            stats=jnp.zeros(layout.stats_shape, dtype),
            roots=kron.identity_factors(layout, dtype),
            graft=graft_tx.init(kron.zero_elements(layout, dtype)),
            rejected_roots=jnp.zeros([], jnp.int32),
            digits=runtime_digits(),
        )

    def direction_fn(grads: kron.Blocks, state: ShampooState, layout: kron.Layout):
        dtype = state.stats.dtype
        # The grafting optimizer (optax's) runs on the blocks, its moments kept in the same
        # layout: no per-leaf conversion of the moments or of its update. "none" and "sgd"
        # graft the gradient itself.
        graft_blocks, graft_state = grads, state.graft
        if grafting not in ("none", "sgd"):
            moments = kron.unpack_elements(_second_moments(state.graft), layout)
            graft_blocks, graft_state = graft_tx.update(
                grads, _with_second_moments(state.graft, moments)
            )
            graft_state = _with_second_moments(
                graft_state, kron.pack_elements(_second_moments(graft_state), layout, dtype)
            )
        stats = kron.accumulate(state.stats, kron.axis_grams(grads, layout), layout, beta2)
        due = (state.count >= start) & ((state.count - start) % every == 0)
        roots, rejected = jax.lax.cond(
            due,
            lambda: kron.refresh(stats, state.roots, layout, refresh_fn, placement),
            lambda: (state.roots, jnp.zeros([], jnp.int32)),
        )
        direction = kron.Blocks(
            # Roots are symmetric: the transposed product is the same and needs no transpose.
            kron.mode_products(grads.stacks, roots, layout, transpose=True),
            kron.diagonal_root(
                grads.vector,
                kron.diagonal_statistics(stats, layout),
                layout,
                eps=eps,
                eps_floor=eps_floor,
                p=diagonal_p,
            ),
        )
        if grafting != "none":
            direction = kron.graft(direction, graft_blocks, layout)
        # The grafted update alone before the start: chosen on the few stacks, not per leaf.
        direction = jax.lax.cond(state.count >= start, lambda: direction, lambda: graft_blocks)
        new_state = ShampooState(
            count=optax.safe_increment(state.count),
            stats=stats,
            roots=roots,
            graft=graft_state,
            rejected_roots=state.rejected_roots + rejected,
            digits=state.digits,
        )
        return direction, new_state

    def step_is_safe(grads: kron.Blocks, state: ShampooState, layout: kron.Layout) -> jax.Array:
        # The new statistics are bounded from the old diagonals and the gradient (see
        # kron.statistics_bound); the graft's second moments by the same sums of squares (an
        # average of squares) or, for AdaGrad's sums, by the old sums plus them.
        dtype = state.stats.dtype
        squares = kron.largest_square_sum(grads)  # NaN or Inf for a bad gradient
        bound = kron.statistics_bound(state.stats, layout, beta2, squares)
        sums = _second_moments(state.graft)
        if grafting == "adagrad" and sums.size:
            bound = jnp.maximum(bound, jnp.max(sums) + squares)
        return bound <= HEADROOM * jnp.finfo(dtype).max

    return engine_preconditioner(init_fn, layout_of, direction_fn, step_is_safe)


def scale_by_shampoo(
    *,
    beta2: float = 0.999,
    eps: float = 1e-6,
    exponent: float | None = None,
    block_size: int | None = 1024,
    max_preconditioned_dim: int = 8192,
    merge_small_dims: bool = True,
    precondition_every: int = 10,
    start_preconditioning_step: int | None = None,
    grafting: str = "adam",
    graft_beta2: float = 0.999,
    graft_eps: float = 1e-8,
    root_method: str = "auto",
    root_error_threshold: float = 4.0,
    eps_floor: float = 1e-30,
    mesh: jax.sharding.Mesh | None = None,
    mesh_axis: str = "data",
) -> optax.GradientTransformationExtraArgs:
    r"""Scale updates by Shampoo's Kronecker-factored preconditioner (Gupta et al. 2018).
    {math}
    Args:
      beta2: statistics decay in ``[0, 1]``; ``1.0`` accumulates sums (AdaGrad-style,
        Kuznetsova's thesis).
      eps: ridge relative to each statistic's largest eigenvalue (``>= 0``).
      exponent: per-axis exponent override, ``1/p`` for an integer ``p`` (``1/2`` gives
        Shampoo^{{1/2}}); default ``1 / (2 k)`` for ``k`` preconditioned axes.
      block_size: dims larger than this are split into blocks (``None``: no blocking).
      max_preconditioned_dim: a block axis larger than this is not preconditioned (``>= 1``).
      merge_small_dims: merge consecutive dims whose product is ``<= block_size``.
      precondition_every: recompute roots every this many steps (``>= 1``).
      start_preconditioning_step: first step that uses Shampoo (and computes roots); before it
        the grafted update is used alone. Default: ``precondition_every``.
      grafting: ``"none"``, ``"sgd"`` (the gradient's norm), ``"adagrad"``, ``"rmsprop"`` or
        ``"adam"`` (bias-corrected RMSProp: Adam's second moment only, momentum being applied
        after Shampoo).
      graft_beta2: second-moment decay of the grafting optimizer, in ``[0, 1)``.
      graft_eps: epsilon of the grafting optimizer (``>= 0``).
      root_method: ``"auto"``, ``"eigh"``, ``"eigh64"`` or ``"newton"``, passed to
        :func:`optlab.linalg.inverse_root`, except that Shampoo's ``"auto"`` is float32
        ``"eigh"`` on CPU and ``"newton"`` on accelerators: statistics matrices are nearly always
        ill conditioned (rank-deficient plus a ``1e-6`` ridge), where ``inverse_root``'s own
        ``"auto"`` would pay ~1.6x the eigh time for float64 accuracy that a preconditioner
        does not need (the residual check still rejects a root that is actually wrong).
      root_error_threshold: a new root whose residual estimate ``||X^p S - I||``
        (:func:`optlab.linalg.residual`) is above this is rejected (``> 0``). Correct float32
        roots of rank-deficient statistics regularized with ``eps = 1e-6`` show residuals up to
        about 1, because their smallest eigenvalues are resolved only to float32 round-off; the
        default 4.0 rejects roots that are badly wrong (a failed eigh, a diverged iteration),
        and non-finite ones always.
      eps_floor: absolute ridge floor (``>= 0``; keeps an all-zero statistic invertible).
      mesh, mesh_axis: a ``jax.sharding.Mesh`` and one of its axis names: the statistics and
        roots are split over that axis' devices, each refreshing only its own roots (balance
        rule: every same-size stack is padded with zero statistics to a multiple of the axis
        size, device ``s`` owning its ``s``-th contiguous share); shard the state with
        :func:`optlab.state_sharding`. ``None``: one device's layout.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is
      ``SkipNonFiniteState(inner=ShampooState(...), skipped_steps)``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> params = {{"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}}
      >>> tx = optax.chain(optlab.scale_by_shampoo(precondition_every=1), optax.scale(-0.1))
      >>> state = tx.init(params)
      >>> updates, state = tx.update(params, state)
      >>> int(state[0].inner.count), int(state[0].skipped_steps)
      (1, 0)
    """
    pre = _preconditioner(
        "optlab.scale_by_shampoo",
        beta2=beta2,
        eps=eps,
        exponent=exponent,
        block_size=block_size,
        max_preconditioned_dim=max_preconditioned_dim,
        merge_small_dims=merge_small_dims,
        precondition_every=precondition_every,
        start_preconditioning_step=start_preconditioning_step,
        grafting=grafting,
        graft_beta2=graft_beta2,
        graft_eps=graft_eps,
        root_method=root_method,
        root_error_threshold=root_error_threshold,
        eps_floor=eps_floor,
        mesh=mesh,
        mesh_axis=mesh_axis,
    )
    return blocked_optimizer(pre)


def shampoo(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    *,
    weight_decay_mask: Any | Callable | None = None,
    exponent: float | None = None,
    block_size: int | None = 1024,
    max_preconditioned_dim: int = 8192,
    merge_small_dims: bool = True,
    precondition_every: int = 10,
    start_preconditioning_step: int | None = None,
    grafting: str = "adam",
    graft_beta2: float = 0.999,
    graft_eps: float = 1e-8,
    root_method: str = "auto",
    root_error_threshold: float = 4.0,
    eps_floor: float = 1e-30,
    mesh: jax.sharding.Mesh | None = None,
    mesh_axis: str = "data",
) -> optax.GradientTransformationExtraArgs:
    r"""The Shampoo optimizer: preconditioning, momentum, decoupled weight decay, step size.

    What ``skip_nonfinite(chain(<scale_by_shampoo's preconditioning>(beta2=b2, eps=eps, ...),
    ema(b1, debias=True), add_decayed_weights(weight_decay, weight_decay_mask),
    scale_by_learning_rate(learning_rate)))`` computes, with the momentum, the weight decay and
    the learning rate applied to the engine's stacked blocks (its momentum kept in their layout)
    rather than leaf by leaf, which keeps the compile time of deep models down: momentum is an
    exponential moving average of the (grafted) Shampoo updates, as in Distributed Shampoo, so
    that with Adam grafting the step size matches Adam's; one NaN/Inf guard covers the whole
    step (a skipped step leaves the momentum and the schedule untouched too).
    {math}
    Args:
      learning_rate: a float ``>= 0`` or an optax schedule.
      b1: momentum (EMA) decay in ``[0, 1)``; 0 disables momentum.
      b2: statistics decay in ``[0, 1]`` (``beta2`` of :func:`scale_by_shampoo`).
      eps: relative ridge of the statistics (``>= 0``).
      weight_decay: decoupled weight decay coefficient ``>= 0`` (``W <- W - lr * wd * W``).
      weight_decay_mask: optax mask for the weight decay (e.g. to exclude biases).
      exponent, block_size, max_preconditioned_dim, merge_small_dims: as in
        :func:`scale_by_shampoo`.
      precondition_every, start_preconditioning_step, grafting, graft_beta2: as in
        :func:`scale_by_shampoo`.
      graft_eps, root_method, root_error_threshold, eps_floor: as in :func:`scale_by_shampoo`.
      mesh, mesh_axis: as in :func:`scale_by_shampoo` (sharded state).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is
      ``SkipNonFiniteState(inner=(ShampooState, [BlockMomentumState], <learning rate state>),
      skipped_steps)`` (the momentum's state when ``b1 > 0``).

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> params = {{"w": jnp.ones((8, 4))}}
      >>> tx = optlab.shampoo(1e-2, precondition_every=5)
      >>> state = tx.init(params)
      >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> params = optax.apply_updates(params, updates)
    """
    check_learning_rate(learning_rate)
    check_number("b1", b1, low=0.0, high=1.0, high_open=True)
    check_number("b2", b2, low=0.0, high=1.0)
    check_number("weight_decay", weight_decay, low=0.0)
    pre = _preconditioner(
        "optlab.shampoo",
        beta2=b2,
        eps=eps,
        exponent=exponent,
        block_size=block_size,
        max_preconditioned_dim=max_preconditioned_dim,
        merge_small_dims=merge_small_dims,
        precondition_every=precondition_every,
        start_preconditioning_step=start_preconditioning_step,
        grafting=grafting,
        graft_beta2=graft_beta2,
        graft_eps=graft_eps,
        root_method=root_method,
        root_error_threshold=root_error_threshold,
        eps_floor=eps_floor,
        mesh=mesh,
        mesh_axis=mesh_axis,
    )
    return blocked_optimizer(
        pre,
        # Arrays (optax.inject_hyperparams) always keep their term: the state's structure must
        # not depend on a value that can change.
        momentum=optax.ema(b1, debias=True) if isinstance(b1, jax.Array) or b1 > 0 else None,
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        learning_rate=learning_rate,
    )


scale_by_shampoo.__doc__ = scale_by_shampoo.__doc__.format(math=_MATH)
shampoo.__doc__ = shampoo.__doc__.format(math=_MATH)

__all__ = ["GRAFTING", "ShampooState", "scale_by_shampoo", "shampoo"]
