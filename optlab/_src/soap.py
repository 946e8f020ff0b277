r"""SOAP as composable optax transforms: ``scale_by_soap`` and the ``soap`` optimizer.

Adam run in the eigenbasis of Shampoo's statistics, on the Kronecker-factor engine
(:mod:`optlab._src.kronecker`: the same layout, blocks and statistics as
:mod:`optlab._src.shampoo`, a different refresh); the math and the options are documented on
:func:`scale_by_soap` and :func:`soap`, where ``help()`` shows them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab._src import kronecker as kron
from optlab._src.blocked import BlockPreconditioner, blocked_optimizer, engine_preconditioner
from optlab._src.common import (
    HEADROOM,
    at_least_float32,
    check_bool,
    check_int,
    check_leaf_dtypes,
    check_learning_rate,
    check_number,
    runtime_digits,
)
from optlab._src.shampoo import _layout_option, _step_option
from optlab._src.sharding import make_placement

_MATH = r"""
    For a matrix gradient ``G`` (m x n) SOAP keeps Shampoo's two statistics and runs Adam in
    their eigenbases ``Q_L``, ``Q_R``::

        L_t = b_s L_{t-1} + (1 - b_s) G_t G_t^T,   R_t = b_s R_{t-1} + (1 - b_s) G_t^T G_t,
        G'_t = Q_L^T G_t Q_R                                      (into the eigenbasis)
        M_t = b1 M_{t-1} + (1 - b1) G'_t,   V_t = b2 V_{t-1} + (1 - b2) G'_t * G'_t,
        update_t = Q_L [ (M_t / (1 - b1^t)) / (sqrt(V_t / (1 - b2^t)) + eps) ] Q_R^T,

    ``b_s = shampoo_beta`` (default ``b2``). A tensor of order ``k`` keeps one statistic (and
    one basis) per axis and is rotated along each. The schedule is the reference's (Vyas et
    al.'s code):

    * The first step only initializes: it accumulates ``L_1``, ``R_1`` from the first gradient
      and sets each basis to the statistic's eigenvectors (a full ``eigh``, eigenvalues
      descending); its update is zero and Adam's moments stay zero. Adam's ``t`` counts the
      steps after it. Why not step at once in those bases: a gradient is diagonal in the
      eigenbases of its own ``G G^T`` and ``G^T G`` (``Q_L^T G Q_R = S``), and Adam's first
      step, ``sign(G')``, would turn the rounding noise of the zero entries into steps of
      size 1; the reference never uses a gradient in its own projection.
    * Each later step computes the update in the current bases, then accumulates the statistics
      with its gradient; every ``precondition_every`` such steps it refreshes the bases by one
      step of power iteration and a QR: the columns of ``Q`` are sorted by their estimated
      eigenvalues ``diag(Q^T L Q)`` (descending), ``V`` is permuted along that axis by the same
      sort (its entries belong to the columns), and ``Q <- qr(L Q_sorted).Q``.

    Momentum convention. The reference changed how it keeps ``M`` (its commit "momentum
    change", December 2024): before, an EMA of the raw gradients projected into the current
    basis every step; after, ``M`` kept in the eigenbasis and carried over when the basis
    changes. optlab keeps ``M`` in the eigenbasis and carries it over at a refresh with
    ``Q_new^T Q_old`` per axis (the reference projects it back and forth every step, which is
    the same map). The two conventions are equal in exact arithmetic (the bases are orthogonal,
    so per axis ``Q_new^T Q_old (Q_old^T M_raw) = Q_new^T M_raw``; tested against both), so
    the choice is about cost: carrying ``M`` over costs one small product per axis at a refresh,
    projecting the raw EMA costs one more rotation of every block at every step. ``V`` cannot be
    carried over (it is elementwise) and is only permuted, as in the reference.

    Adam's form is optax's (``optax.adam``: ``eps`` added to the bias-corrected ``sqrt(V)``);
    the reference folds the bias correction into the step size, which amounts to ``eps *
    sqrt(1 - b2^t)`` here: the two differ only where ``sqrt(V)`` is comparable to ``eps``. With
    no axis rotated (every axis above ``max_preconditioned_dim``, or all ignored) SOAP is
    ``optax.scale_by_adam`` applied to the gradients from the second step on.

    What else, as in production Shampoo (:func:`optlab.scale_by_shampoo`): blocking and merging
    (``block_size``, ``merge_small_dims``; the reference neither blocks nor merges by default),
    axes above ``max_preconditioned_dim`` not rotated, one batched ``eigh`` / ``qr`` call per
    statistic size across the tree. Vectors and scalars (biases, gains) get plain Adam unless
    ``precondition_1d`` (then a vector of ``d <= max_preconditioned_dim`` entries has a
    ``d x d`` statistic and is rotated too). ``ignored_basis_change_dims`` (Meta's Distributed
    Shampoo option of that name) leaves chosen axes unrotated: ``{2: [1]}`` rotates only the
    rows of matrices (a one-sided SOAP). With ``refresh_tolerance`` (Eschenhagen et al.'s
    adaptive refresh, Meta's ``QREigendecompositionConfig.tolerance``) a basis is kept without a
    QR when it still diagonalizes its statistic, ``||B - diag B||_F <= tol ||B||_F`` for ``B =
    Q^T L Q``; ``skipped_refreshes`` counts those. A new basis with a non-finite entry is
    rejected, the previous one kept (``V`` not permuted) and ``rejected_bases`` counted.

    Rank-deficient statistics (the first steps of a non-square matrix: ``G^T G`` of an ``m x n``
    gradient has rank ``<= m``) have no unique eigenbasis: ``eigh`` picks one from the rounding
    of the statistic, so two runs that sum in a different order (another sharding, jit against
    eager) can pick different ones and part by more than rounding. Each is a valid SOAP run;
    bitwise agreement across shardings needs full-rank statistics.

    NaN/Inf (optlab's one policy, :func:`optlab.skip_nonfinite`): a step whose
    gradient is not finite, or could overflow the statistics or moments (decided before the
    step, as Shampoo does: the new diagonals, bounded by the old ones and each block's sum of
    squares, must stay below a quarter of the largest float; a float32 gradient of 1e20
    overflows ``G G^T``), is skipped: zero update, state unchanged, ``skipped_steps`` of the
    ``SkipNonFiniteState`` at the top of the state counts it. An update that still comes out
    non-finite (``eps = 0`` where a rotated gradient is 0), or larger than a leaf's dtype can
    hold, is zeroed and counted too.
    Parameters must be real floating arrays; statistics and moments run in float32 (float64
    stays float64) and the update comes back in the gradient's dtype.

    Under ``optax.inject_hyperparams`` ``b1``, ``b2``, ``eps``, ``shampoo_beta``,
    ``refresh_tolerance`` (when not None) and ``precondition_every`` are injectable;
    ``block_size`` and ``max_preconditioned_dim`` fix the state's layout: they keep their
    defaults unless named in ``static_args``.

    References:
      - N. Vyas, D. Morwani, R. Zhao, M. Kwun, I. Shapira, D. Brandfonbrener, L. Janson,
      - S. Kakade, "SOAP: Improving and Stabilizing Shampoo using Adam", ICLR 2025
        (arXiv:2409.11321), and its reference implementation.
      - T. George, C. Laurent, X. Bouthillier, N. Ballas, P. Vincent, "Fast Approximate Natural
        Gradient Descent in a Kronecker-factored Eigenbasis", NeurIPS 2018.
      - R. Eschenhagen, A. Defazio, T.-H. Lee, R. E. Turner, H.-J. M. Shi, "Purifying Shampoo:
        Investigating Shampoo's Heuristics by Decomposing its Preconditioner", arXiv:2506.03595.
      - H.-J. M. Shi et al., "A Distributed Data-Parallel PyTorch Implementation of the
        Distributed Shampoo Optimizer for Training Neural Networks At-Scale", arXiv:2309.06497.
      - Eschenhagen, Cai, Lee, Shi, "Clarifying Shampoo", arXiv:2602.09314 (which ingredient
        of Shampoo matters; SOAP separates the basis from the step size).
"""


class SoapState(NamedTuple):
    """State of SOAP's preconditioning (``SkipNonFiniteState.inner`` of :func:`scale_by_soap`);
    every field is an array or a tree of arrays.

    Attributes:
      count: steps taken, the initializing first one included (skipped steps excluded).
      stats: all statistics in one flat buffer (layout: :mod:`optlab._src.kronecker`).
      bases: the eigenbases of the statistics, same layout without the vectors' part.
      mu: Adam's first moment in the rotated coordinates of each block, in the engine's layout
        (one element buffer: :func:`optlab._src.kronecker.pack_elements`).
      nu: Adam's second moment, likewise.
      rejected_bases: how many new bases were rejected (non-finite).
      skipped_refreshes: how many bases were kept by the ``refresh_tolerance`` criterion.
      digits: the int32 scalars 0 .. 15 (constant): the rows at which each leaf is cut out
        of the engine's block stacks are written with them, so that XLA compiles one kernel
        per block shape, not one per layer.
    """

    count: jax.Array
    stats: jax.Array
    bases: jax.Array
    mu: jax.Array
    nu: jax.Array
    rejected_bases: jax.Array
    skipped_refreshes: jax.Array
    digits: tuple[jax.Array, ...] = ()


def _ignored_axes(value: Any) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """``ignored_basis_change_dims`` as a hashable ``((order, (axis, ...)), ...)``."""
    if value is None:
        return ()
    message = (
        "ignored_basis_change_dims must be None or a mapping from a block order k >= 1 to "
        "axes in [0, k), e.g. {2: [1]}"
    )
    if not isinstance(value, Mapping):
        raise ValueError(f"{message}, got {value!r}")
    out = []
    for order, axes in value.items():
        if isinstance(order, bool) or not isinstance(order, int | np.integer) or order < 1:
            raise ValueError(f"{message}, got the order {order!r}")
        if isinstance(axes, str) or not hasattr(axes, "__iter__"):
            raise ValueError(f"{message}, got {axes!r} for order {order}")
        axes = tuple(axes)
        for a in axes:
            if isinstance(a, bool) or not isinstance(a, int | np.integer) or not 0 <= a < order:
                raise ValueError(f"{message}, got the axis {a!r} for order {order}")
        out.append((int(order), tuple(sorted({int(a) for a in axes}))))
    return tuple(sorted(out))


def _preconditioner(
    name: str,
    *,
    b1,
    b2,
    eps,
    shampoo_beta,
    precondition_every,
    block_size,
    max_preconditioned_dim,
    merge_small_dims,
    precondition_1d,
    ignored_basis_change_dims,
    refresh_tolerance,
    mesh=None,
    mesh_axis="data",
) -> BlockPreconditioner:
    """SOAP's preconditioning on the engine's blocks (:mod:`optlab._src.blocked` guards it and
    adds the optimizer's other terms)."""
    check_number("b1", b1, low=0.0, high=1.0, high_open=True)
    check_number("b2", b2, low=0.0, high=1.0, high_open=True)
    check_number("eps", eps, low=0.0)
    check_number("shampoo_beta", shampoo_beta, low=0.0, high=1.0, allow_none=True)
    every = _step_option("precondition_every", precondition_every, 1)
    block_size = _layout_option("block_size", block_size, 1024)
    check_int("block_size", block_size, 1, allow_none=True)
    max_preconditioned_dim = _layout_option("max_preconditioned_dim", max_preconditioned_dim, 8192)
    check_int("max_preconditioned_dim", max_preconditioned_dim, 1)
    check_bool("merge_small_dims", merge_small_dims)
    check_bool("precondition_1d", precondition_1d)
    ignored = _ignored_axes(ignored_basis_change_dims)
    check_number("refresh_tolerance", refresh_tolerance, low=0.0, high=1.0, allow_none=True)
    beta_s = b2 if shampoo_beta is None else shampoo_beta
    placement = make_placement(mesh, mesh_axis)

    def layout_of(tree) -> tuple[kron.Layout, list[jax.Array], Any]:
        leaves, treedef = jax.tree.flatten(tree)
        shapes = tuple(tuple(np.shape(x)) for x in leaves)
        # root=1: statistics are grouped by size only (SOAP takes no roots).
        base = kron.make_layout(shapes, block_size, max_preconditioned_dim, merge_small_dims, 1)
        layout = kron.adjust_layout(
            base,
            block_size=block_size,
            max_preconditioned_dim=max_preconditioned_dim,
            root=1,
            precondition_vectors=precondition_1d,
            ignored_axes=ignored,
        )
        return kron.shard_layout(layout, placement.shards), leaves, treedef

    def init_fn(params):
        check_leaf_dtypes(params, name)
        layout, leaves, _ = layout_of(params)
        dtype = at_least_float32(jnp.result_type(*leaves)) if leaves else jnp.float32
        return SoapState(
            count=jnp.zeros([], jnp.int32),
            stats=jnp.zeros(layout.stats_shape, dtype),
            bases=kron.identity_factors(layout, dtype),
            mu=kron.zero_elements(layout, dtype),
            nu=kron.zero_elements(layout, dtype),
            rejected_bases=jnp.zeros([], jnp.int32),
            skipped_refreshes=jnp.zeros([], jnp.int32),
            digits=runtime_digits(),
        )

    def direction_fn(grads: kron.Blocks, state: SoapState, layout: kron.Layout):
        dtype = state.stats.dtype
        # The moments stay in the blocks' layout: no per-leaf conversion each step.
        mu = kron.unpack_elements(state.mu, layout)
        nu = kron.unpack_elements(state.nu, layout)
        count = state.count

        # optax.scale_by_adam's arithmetic, on the coordinates in the current bases. The first
        # step keeps the moments and gives a zero direction: selects that fuse into the
        # elementwise work (a lax.cond would cut the fusion and copy the moments).
        first = count == 0
        g = kron.Blocks(
            kron.matrix_mode_products(grads.stacks, state.bases, layout, transpose=True),
            grads.vector,
        )
        mu = jax.tree.map(lambda m, x: jnp.where(first, m, (1 - b1) * x + b1 * m), mu, g)
        nu = jax.tree.map(
            lambda v, x: jnp.where(first, v, (1 - b2) * jnp.square(x) + b2 * v), nu, g
        )
        t = jnp.maximum(count, 1).astype(dtype)  # Adam's step: the first step not counted
        bc1 = 1 - jnp.asarray(b1, dtype) ** t
        bc2 = 1 - jnp.asarray(b2, dtype) ** t
        rotated = jax.tree.map(
            lambda m, v: jnp.where(first, 0, (m / bc1) / (jnp.sqrt(v / bc2) + eps)), mu, nu
        )
        direction = kron.Blocks(
            kron.matrix_mode_products(rotated.stacks, state.bases, layout), rotated.vector
        )
        # After the update: the current gradient never enters its own projection (reference).
        grams = kron.axis_grams(grads, layout)
        stats = kron.accumulate(state.stats, kron.Statistics(grams.groups, None), layout, beta_s)
        zero = jnp.zeros([], jnp.int32)
        bases, rejected, skipped = state.bases, zero, zero
        if layout.groups:

            def first_bases():
                new = kron.refresh_bases(
                    stats, state.bases, layout, method="eigh", placement=placement
                )
                return new.bases, mu, nu, new.rejected, zero

            def power_step():
                new = kron.refresh_bases(
                    stats,
                    state.bases,
                    layout,
                    method="qr",
                    tolerance=refresh_tolerance,
                    placement=placement,
                )
                change = kron.basis_changes(new.bases, state.bases, layout)
                new_mu = kron.Blocks(
                    kron.matrix_mode_products(mu.stacks, change, layout), mu.vector
                )
                new_nu = kron.Blocks(kron.permute_modes(nu.stacks, new.orders, layout), nu.vector)
                return new.bases, new_mu, new_nu, new.rejected, new.skipped

            def keep():
                return state.bases, mu, nu, zero, zero

            due = (count >= 1) & (count % every == 0)
            branch = jnp.where(count == 0, 0, jnp.where(due, 1, 2))
            bases, mu, nu, rejected, skipped = jax.lax.switch(
                branch, [first_bases, power_step, keep]
            )
        new_state = SoapState(
            count=optax.safe_increment(count),
            stats=stats,
            bases=bases,
            mu=kron.pack_elements(mu, layout, dtype),
            nu=kron.pack_elements(nu, layout, dtype),
            rejected_bases=state.rejected_bases + rejected,
            skipped_refreshes=state.skipped_refreshes + skipped,
            digits=state.digits,
        )
        return direction, new_state

    def step_is_safe(grads: kron.Blocks, state: SoapState, layout: kron.Layout) -> jax.Array:
        # The statistics as Shampoo's (kron.statistics_bound). A rotation keeps a block's
        # Frobenius norm, so every rotated entry squared is at most its block's sum of squares:
        # the second moment, an average of such squares, stays below the same bound; the first
        # is an average of entries. Bases are finite or rejected.
        dtype = state.stats.dtype
        squares = kron.largest_square_sum(grads)  # NaN or Inf for a bad gradient
        bound = jnp.maximum(kron.statistics_bound(state.stats, layout, beta_s, squares), squares)
        return bound <= HEADROOM * jnp.finfo(dtype).max

    return engine_preconditioner(init_fn, layout_of, direction_fn, step_is_safe)


def scale_by_soap(
    *,
    b1: float = 0.95,
    b2: float = 0.95,
    eps: float = 1e-8,
    shampoo_beta: float | None = None,
    precondition_every: int = 10,
    block_size: int | None = 1024,
    max_preconditioned_dim: int = 8192,
    merge_small_dims: bool = True,
    precondition_1d: bool = False,
    ignored_basis_change_dims: Mapping[int, Any] | None = None,
    refresh_tolerance: float | None = None,
    mesh: jax.sharding.Mesh | None = None,
    mesh_axis: str = "data",
) -> optax.GradientTransformationExtraArgs:
    r"""Scale updates by SOAP: Adam in the eigenbasis of Shampoo's statistics (Vyas et al.).
    {math}
    Args:
      b1: Adam's first-moment decay in ``[0, 1)`` (the reference's default 0.95).
      b2: Adam's second-moment decay in ``[0, 1)`` (0.95).
      eps: Adam's epsilon (``>= 0``), added to the bias-corrected ``sqrt(V)``.
      shampoo_beta: statistics decay in ``[0, 1]`` (``1``: sums); ``None`` uses ``b2`` (the
        reference's ``shampoo_beta=-1``).
      precondition_every: refresh the bases every this many steps after the first (``>= 1``;
        the reference's ``precondition_frequency``, 10).
      block_size: dims larger than this are split into blocks (``None``: no blocking).
      max_preconditioned_dim: a block axis larger than this is not rotated (``>= 1``).
      merge_small_dims: merge consecutive dims whose product is ``<= block_size``.
      precondition_1d: rotate vectors too (a ``d x d`` statistic each); otherwise plain Adam.
      ignored_basis_change_dims: ``{{order: [axis, ...]}}``: axes of blocks of that order that
        are not rotated (``None``: all rotated).
      refresh_tolerance: keep a basis at a refresh when ``||B - diag B||_F <= tol ||B||_F``,
        ``B = Q^T L Q`` (in ``[0, 1]``; ``None``: always refresh).
      mesh, mesh_axis: a ``jax.sharding.Mesh`` and one of its axis names: the statistics and
        bases are split over that axis' devices, each refreshing only its own bases (balance
        rule: every same-size stack is padded with zero statistics to a multiple of the axis
        size, device ``s`` owning its ``s``-th contiguous share); shard the state with
        :func:`optlab.state_sharding`. ``None``: one device's layout.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is
      ``SkipNonFiniteState(inner=SoapState(...), skipped_steps)``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> params = {{"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}}
      >>> tx = optax.chain(optlab.scale_by_soap(precondition_every=2), optax.scale(-1e-3))
      >>> state = tx.init(params)
      >>> for _ in range(3):
      ...     updates, state = tx.update(params, state)
      >>> int(state[0].inner.count), int(state[0].inner.rejected_bases)
      (3, 0)
    """
    pre = _preconditioner(
        "optlab.scale_by_soap",
        b1=b1,
        b2=b2,
        eps=eps,
        shampoo_beta=shampoo_beta,
        precondition_every=precondition_every,
        block_size=block_size,
        max_preconditioned_dim=max_preconditioned_dim,
        merge_small_dims=merge_small_dims,
        precondition_1d=precondition_1d,
        ignored_basis_change_dims=ignored_basis_change_dims,
        refresh_tolerance=refresh_tolerance,
        mesh=mesh,
        mesh_axis=mesh_axis,
    )
    return blocked_optimizer(pre)


def soap(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.95,
    b2: float = 0.95,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    *,
    weight_decay_mask: Any | Callable | None = None,
    shampoo_beta: float | None = None,
    precondition_every: int = 10,
    block_size: int | None = 1024,
    max_preconditioned_dim: int = 8192,
    merge_small_dims: bool = True,
    precondition_1d: bool = False,
    ignored_basis_change_dims: Mapping[int, Any] | None = None,
    refresh_tolerance: float | None = None,
    mesh: jax.sharding.Mesh | None = None,
    mesh_axis: str = "data",
) -> optax.GradientTransformationExtraArgs:
    r"""The SOAP optimizer: SOAP's preconditioned Adam, decoupled weight decay, step size.

    What ``skip_nonfinite(chain(<scale_by_soap's preconditioning>(b1, b2, eps, ...),
    add_decayed_weights(weight_decay, weight_decay_mask), scale_by_learning_rate(lr)))``
    computes, the weight decay and the learning rate applied to the engine's stacked blocks
    rather than leaf by leaf (which keeps the compile time of deep models down): AdamW
    with Adam's moments in the rotated basis. The decay is optax.adamw's, ``W <- W - lr (u + wd
    W)`` on the parameters before the step, every step (the reference decays the parameters
    after its step, a difference of ``lr^2 wd u``, and skips its initializing first step); one
    NaN/Inf guard covers the whole chain. Defaults are the reference's (its README: ``lr=3e-3,
    betas=(.95, .95), weight_decay=.01, precondition_frequency=10``).
    {math}
    Args:
      learning_rate: a float ``>= 0`` or an optax schedule.
      b1, b2, eps: Adam's, as in :func:`scale_by_soap`.
      weight_decay: decoupled weight decay coefficient ``>= 0``.
      weight_decay_mask: optax mask for the weight decay (e.g. to exclude biases).
      shampoo_beta, precondition_every, block_size, max_preconditioned_dim: as in
        :func:`scale_by_soap`.
      merge_small_dims, precondition_1d, ignored_basis_change_dims, refresh_tolerance: as in
        :func:`scale_by_soap`.
      mesh, mesh_axis: as in :func:`scale_by_soap` (sharded state).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is
      ``SkipNonFiniteState(inner=(SoapState, <learning rate state>), skipped_steps)``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> params = {{"w": jnp.ones((8, 4))}}
      >>> tx = optlab.soap(3e-3, precondition_every=5)
      >>> state = tx.init(params)
      >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> params = optax.apply_updates(params, updates)
    """
    check_learning_rate(learning_rate)
    check_number("weight_decay", weight_decay, low=0.0)
    pre = _preconditioner(
        "optlab.soap",
        b1=b1,
        b2=b2,
        eps=eps,
        shampoo_beta=shampoo_beta,
        precondition_every=precondition_every,
        block_size=block_size,
        max_preconditioned_dim=max_preconditioned_dim,
        merge_small_dims=merge_small_dims,
        precondition_1d=precondition_1d,
        ignored_basis_change_dims=ignored_basis_change_dims,
        refresh_tolerance=refresh_tolerance,
        mesh=mesh,
        mesh_axis=mesh_axis,
    )
    return blocked_optimizer(
        pre,
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        learning_rate=learning_rate,
    )


scale_by_soap.__doc__ = scale_by_soap.__doc__.format(math=_MATH)
soap.__doc__ = soap.__doc__.format(math=_MATH)

__all__ = ["SoapState", "scale_by_soap", "soap"]
