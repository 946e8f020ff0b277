r"""K-FAC as composable optax transforms: ``scale_by_kfac`` and the ``kfac`` optimizer.

The curvature (per-layer factor contributions) comes from :func:`optlab.kfac_value_and_grad`
(:mod:`optlab._src.kfac_curvature`); this module keeps their moving averages inside the optax
state and preconditions with them, over the Kronecker-factor engine
(:mod:`optlab._src.kronecker`): all factors of one size across the model are one stack, and
their damped inverses are refreshed by batched Cholesky factorizations (one host LAPACK call
for all of them on CPU, one batched call per size elsewhere).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab._src import kronecker as kron
from optlab._src.blocked import BlockPreconditioner, blocked_optimizer
from optlab._src.common import (
    HEADROOM,
    at_least_float32,
    check_choice,
    check_int,
    check_leaf_dtypes,
    check_learning_rate,
    check_number,
    runtime_digits,
    runtime_row,
    runtime_slice,
    tree_all_finite,
)
from optlab._src.kfac_curvature import KFACFactors, find_layers
from optlab._src.sharding import make_placement
from optlab.linalg import _lapack
from optlab.linalg._ops import matmul

_MATH = r"""
    For a layer ``s = a W + b`` (``nnx.Linear``; ``nnx.Conv`` on im2col patches) K-FAC
    approximates the layer's block of the Fisher by ``A (x) G`` (Martens & Grosse 2015) with
    ``A = E[abar abar^T]`` (``abar = [a; 1]`` with a bias) and ``G = E[g g^T]``, ``g`` the
    gradient with respect to the pre-activations (definitions and the rules for convolutions,
    embeddings and weight sharing: :func:`optlab.kfac_value_and_grad`). With the bias as the
    last row of ``Wbar = [W; b]`` the update is::

        U = (A + pi sqrt(lambda) I)^{-1}  dWbar  (G + sqrt(lambda) / pi I)^{-1},
        pi = sqrt((tr A / dim A) / (tr G / dim G)),

    factored Tikhonov damping split by ``pi`` (Martens & Grosse 2015, sec. 6.3; ``pi = 1``
    when a trace is 0). An embedding's ``A`` is diagonal (token frequencies), its row ``v`` of
    the update ``dE_v G_d^{-1} / (a_v + pi sqrt(lambda))``.

    ``damping_mode="exact"`` damps the Kronecker product itself (Martens & Grosse's sec. 6.3
    alternative to the factored form): with ``A = Q_A diag(d_A) Q_A^T`` and
    ``G = Q_G diag(d_G) Q_G^T`` (eigenvalues clipped at 0)::

        U = (A (x) G + lambda I)^{-1} dWbar
          = Q_A [(Q_A^T dWbar Q_G) / (d_A d_G^T + lambda)] Q_G^T     (element-wise division),

    an ``eigh`` per factor at a refresh instead of a Cholesky and four products per step
    instead of two; ``lambda`` is applied at every step (a schedule acts at once), and an
    embedding gives ``(dE Q_G) / (a d_G^T + lambda) Q_G^T``. Until the first refresh the
    eigenvalues are 0 (the update ``dWbar / lambda``).

    ``A`` and ``G`` are exponential moving averages of each step's contributions with decay
    ``min(1 - 1/k, factor_decay)`` at step ``k`` (Martens & Grosse's rule: a plain mean over the
    first steps, so no bias correction is needed). The damped inverses are refreshed at
    ``start_preconditioning_step`` and every ``precondition_every`` steps after it, by one
    batched Cholesky factorization per factor size (host LAPACK in float64 on CPU); an inverse
    that is not finite (a factor that is not positive definite once damped) keeps the previous
    one and is counted in ``rejected_inverses``. Before the start the update is the gradient
    itself. ``damping`` may be a schedule ``count -> lambda``, read at each refresh (and at
    every step by the diagonal rule).

    Parameters in no registered layer (LayerNorm scales, free vectors, kernels of layers that
    are not ``nnx.Linear`` / ``nnx.Conv`` / ``nnx.Embed``) get the diagonal rule
    ``u = g / (v + lambda)`` with ``v`` the same moving average of ``g * g`` (the squared
    minibatch gradient: the diagonal analogue of ``G^{-1} g A^{-1}``, like kfac-jax's naive
    diagonal block).

    Which leaves form a layer. By default the parameter tree's names, as stock NNX layers name
    them: a leaf ``.../kernel`` (at least 2-D; ``[*in_axes, out]``, flattened to
    ``[prod(in_axes), out]``) with its sibling ``.../bias`` of shape ``[out]`` is the dense or
    conv layer ``"..."``; ``.../embedding`` (2-D) is an embedding. ``layers=`` replaces the rule
    (:func:`optlab.kfac_layers` builds the exact mapping from a model; pure-JAX models name
    their leaves there). ``update`` needs ``curvature=`` with one :class:`KFACFactors` per
    layer, keyed by layer name (``ValueError`` at trace time for a layer without one or with
    factors of the wrong size).

    KL clipping (``norm_constraint = C``, Ba et al. 2017, kfac-jax's ``norm_constraint``): the
    update is scaled by ``min(1, sqrt(C / (lr^2 |<U, g>|)))``, ``lr`` the learning rate
    (1 for :func:`scale_by_kfac`, which does not know it).

    NaN/Inf (optlab's one policy, :func:`optlab.skip_nonfinite`): a step whose gradient or
    curvature is not finite, or would take a factor entry past a quarter of the largest float
    (bounded before the step from the old factors' diagonals and the new contributions, so the
    factor buffers are updated in place), is skipped: zero update, state unchanged,
    ``skipped_steps`` counts it. An update that still comes out non-finite, or larger than a
    leaf's dtype can hold, is zeroed and counted, the (finite) factors keeping the step and the
    momentum its previous value. Factors run in float32 at least; the update comes back in the
    gradient's dtype. The gradients of the dense layers of one shape are preconditioned as one
    stack, and the optimizer's momentum, weight decay, learning rate and the guard's checks run
    on those stacks too (:mod:`optlab._src.blocked`): XLA compiles one set of kernels per layer
    shape, not per layer.

    References:
      - J. Martens, R. Grosse, "Optimizing Neural Networks with Kronecker-factored Approximate
        Curvature", ICML 2015.
      - R. Grosse, J. Martens, "A Kronecker-factored approximate Fisher matrix for convolution
        layers", ICML 2016.
      - J. Ba, R. Grosse, J. Martens, "Distributed Second-Order Optimization using
        Kronecker-Factored Approximations", ICLR 2017.
      - R. Eschenhagen et al., "Kronecker-Factored Approximate Curvature for Modern Neural
        Network Architectures", NeurIPS 2023.
      - M. P. Kuznetsova, "An experimental study of modern curvature-aware optimization methods
        for training neural networks", graduation thesis, Lomonosov Moscow State University, 2023
        (sec. 3.2, eq. 18-21).
"""

LAYER_KINDS = ("dense", "embed")
DAMPING_MODES = ("factored", "exact")


class KFACLayer(NamedTuple):
    """Which parameter leaves form one K-FAC layer (an entry of ``layers=``).

    Attributes:
      kernel: path of the kernel leaf, keys joined by ``"/"`` (``"layers/0/kernel"``); for
        ``kind="dense"`` shaped ``[*in_axes, out]``, for ``"embed"`` ``[num_embeddings, out]``.
      bias: path of the bias leaf (``[out]``), or None.
      kind: ``"dense"`` (dense and conv layers) or ``"embed"`` (diagonal input factor).
    """

    kernel: str
    bias: str | None = None
    kind: str = "dense"


class KFACState(NamedTuple):
    """State of K-FAC's preconditioning (``SkipNonFiniteState.inner`` of :func:`scale_by_kfac`).

    Attributes:
      count: steps taken (skipped steps excluded).
      factors: the moving averages: every ``A`` and ``G`` matrix stacked by size in one flat
        buffer, then the embeddings' diagonal ``A`` and the diagonal rule's ``v``.
      inverses: the damped inverses of the matrix factors (same layout), then of the
        embeddings' diagonal ``A``; with ``damping_mode="exact"`` the factors' eigenvectors
        (same layout), the embeddings' diagonal ``A`` as of the last refresh, then the
        factors' eigenvalues (clipped at 0; ``count * dim`` per group, in slot order).
      rejected_inverses: refreshed inverses that were not finite (the previous ones kept).
      curvature_updates: steps whose curvature was folded into the factors (not ``{}``).
      digits: the int32 scalars 0 .. 15 (constant): each layer's factors are cut out of the
        buffers at offsets written with them, so that XLA compiles one kernel per layer shape,
        not one per layer (``common.runtime_digits`` says why).
    """

    count: jax.Array
    factors: jax.Array
    inverses: jax.Array
    rejected_inverses: jax.Array
    curvature_updates: jax.Array
    digits: tuple[jax.Array, ...] = ()


# -- the static plan -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Layer:
    name: str
    kind: str
    kernel: int  # leaf index
    bias: int | None
    d_in: int  # kernel rows (without the bias)
    d_out: int
    a_slot: int  # dense: global matrix slot of A; embed: index of its diagonal
    g_slot: int


@dataclasses.dataclass(frozen=True)
class _Plan:
    layout: kron.Layout
    layers: tuple[_Layer, ...]
    slots: tuple[tuple[int, int], ...]  # global matrix slot -> (group, position)
    embed_sizes: tuple[int, ...]
    diag_leaves: tuple[int, ...]  # leaf indices under the diagonal rule

    @property
    def embed_size(self) -> int:
        return sum(self.embed_sizes)

    @property
    def inverses_size(self) -> int:
        return self.layout.matrix_size + self.embed_size


def _key_name(key: Any) -> Any:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return getattr(key, attr)
    return str(key)


def _leaf_path(path: tuple[Any, ...]) -> str:
    keys = [_key_name(k) for k in path]
    # nnx.Variable leaves flatten with a trailing ``.value``.
    if keys and isinstance(path[-1], jax.tree_util.GetAttrKey) and keys[-1] == "value":
        keys = keys[:-1]
    return "/".join(str(k) for k in keys)


def _default_layers(paths: tuple[str, ...], shapes: tuple[tuple[int, ...], ...]):
    index = {p: i for i, p in enumerate(paths)}
    out: dict[str, KFACLayer] = {}
    for p, shape in zip(paths, shapes):
        parent, _, last = p.rpartition("/")
        if last == "kernel" and len(shape) >= 2:
            bias = f"{parent}/bias" if parent else "bias"
            ok = bias in index and shapes[index[bias]] == (shape[-1],)
            out[parent] = KFACLayer(p, bias if ok else None, "dense")
        elif last == "embedding" and len(shape) == 2:
            out[parent] = KFACLayer(p, None, "embed")
    return out


@functools.lru_cache(maxsize=128)
def _make_plan(
    paths: tuple[str, ...],
    shapes: tuple[tuple[int, ...], ...],
    layers: tuple[tuple[str, KFACLayer], ...] | None,
    strict: bool,
) -> _Plan:
    index = {p: i for i, p in enumerate(paths)}
    spec = dict(layers) if layers is not None else _default_layers(paths, shapes)
    found: list[tuple[str, str, int, int | None]] = []
    used: set[int] = set()
    for name, layer in spec.items():
        if layer.kernel not in index or (layer.bias is not None and layer.bias not in index):
            if strict:
                missing = layer.kernel if layer.kernel not in index else layer.bias
                raise ValueError(
                    f"layers[{name!r}]: no parameter leaf {missing!r}; leaves: {list(paths)}"
                )
            continue
        k = index[layer.kernel]
        b = None if layer.bias is None else index[layer.bias]
        kshape = shapes[k]
        if len(kshape) < 2 or (layer.kind == "embed" and len(kshape) != 2):
            raise ValueError(f"layers[{name!r}]: kernel of shape {kshape} is not a matrix")
        if b is not None and shapes[b] != (kshape[-1],):
            raise ValueError(
                f"layers[{name!r}]: bias of shape {shapes[b]} does not match the kernel's "
                f"{kshape[-1]} outputs"
            )
        if k in used or (b is not None and b in used):
            raise ValueError(f"layers[{name!r}]: a leaf belongs to two layers")
        used.update({k} if b is None else {k, b})
        found.append((name, layer.kind, k, b))

    # Matrix slots in layer order; groups by size (one batched refresh per size).
    slot_dims: list[int] = []
    embed_sizes: list[int] = []
    raw: list[tuple[str, str, int, int | None, int, int, int, int]] = []
    for name, kind, k, b in found:
        kshape = shapes[k]
        d_in, d_out = math.prod(kshape[:-1]), kshape[-1]
        if kind == "embed":
            a_slot = len(embed_sizes)
            embed_sizes.append(d_in)
        else:
            a_slot = len(slot_dims)
            slot_dims.append(d_in + (b is not None))
        g_slot = len(slot_dims)
        slot_dims.append(d_out)
        raw.append((name, kind, k, b, d_in, d_out, a_slot, g_slot))
    groups: list[kron.Group] = []
    slots: list[tuple[int, int]] = [(0, 0)] * len(slot_dims)
    offset = 0
    for gi, dim in enumerate(sorted(set(slot_dims))):
        members = [s for s, d in enumerate(slot_dims) if d == dim]
        for pos, s in enumerate(members):
            slots[s] = (gi, pos)
        groups.append(kron.Group(dim, 1, len(members), offset))
        offset += len(members) * dim * dim
    diag_leaves = tuple(i for i in range(len(paths)) if i not in used and math.prod(shapes[i]) > 0)
    vector_sizes = (*embed_sizes, *(math.prod(shapes[i]) for i in diag_leaves))
    layout = kron.Layout((), (), tuple(groups), offset, tuple(vector_sizes))
    return _Plan(
        layout, tuple(_Layer(*r) for r in raw), tuple(slots), tuple(embed_sizes), diag_leaves
    )


def _plan_of(
    tree: Any, layers: tuple[tuple[str, KFACLayer], ...] | None, strict: bool, shards: int = 1
):
    with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = tuple(_leaf_path(p) for p, _ in with_path)
    shapes = tuple(tuple(np.shape(x)) for _, x in with_path)
    plan = _make_plan(paths, shapes, layers, strict)
    if shards > 1:  # the factors split over devices (kron.shard_layout; slots unchanged)
        plan = dataclasses.replace(plan, layout=kron.shard_layout(plan.layout, shards))
    return plan, [x for _, x in with_path], treedef


# -- buffers split over devices (mesh=): [shards, row], a row = its matrices, then a tail ------
def _matrix_part(buffer: jax.Array, layout: kron.Layout) -> jax.Array:
    """The matrices of the inverses buffer (what the engine's group views read)."""
    if layout.shards == 1:
        return buffer[: layout.matrix_size]
    return buffer[:, : layout.matrix_row]


def _tail(buffer: jax.Array, layout: kron.Layout, size: int) -> jax.Array:
    """The ``size`` entries after the matrices (the embeddings' inverses), flat."""
    if layout.shards == 1:
        return buffer[layout.matrix_size :]
    return buffer[:, layout.matrix_row :].ravel()[:size]


def _with_tail(matrices: jax.Array, tail: jax.Array, layout: kron.Layout) -> jax.Array:
    """Inverse of :func:`_matrix_part` and :func:`_tail`: the tail zero-padded over the rows."""
    if layout.shards == 1:
        return jnp.concatenate([matrices, tail])
    row = -(-tail.size // layout.shards)
    tail = jnp.pad(tail, (0, layout.shards * row - tail.size)).reshape(layout.shards, row)
    return jnp.concatenate([matrices, tail.astype(matrices.dtype)], axis=1)


def _sharded_inverses(
    factors: jax.Array,
    old: jax.Array,
    layout: kron.Layout,
    ridges: dict[int, jax.Array],
    placement: kron.Placement,
) -> tuple[jax.Array, jax.Array]:
    """The refresh of split factors: each device inverts its own share of every group (host
    LAPACK on CPU, as :func:`_refresh`'s one call; the Cholesky refresh elsewhere); padded
    factors (zero, their ridge 1) are never counted."""
    out, rejected = old, jnp.zeros([], jnp.int32)
    for group in layout.groups:
        ridge = jnp.pad(ridges[group.offset], (0, group.padding), constant_values=1)

        def kernel(stats: jax.Array, r: jax.Array, group: kron.Group = group) -> jax.Array:
            if _lapack.on_cpu():
                shape = jax.ShapeDtypeStruct(stats.shape, stats.dtype)
                return _lapack.host_call(_host_damped_inverses_all, (shape,), stats, r)[0]
            return _damped_inverses({group.offset: r})(stats, group)[0]

        new = placement.map(kernel, kron.group_stack(factors, group), ridge.astype(factors.dtype))
        ok = jnp.all(jnp.isfinite(new), axis=(1, 2))
        out = kron.write_group(
            out, jnp.where(ok[:, None, None], new, kron.group_stack(old, group)), group
        )
        real = np.arange(group.count) < group.count - group.padding
        rejected = rejected + jnp.sum(~ok & real).astype(jnp.int32)
    return out, rejected


def kfac_layers(model: Any) -> dict[str, KFACLayer]:
    """The exact ``layers=`` mapping for an NNX model: its ``nnx.Linear``, ``nnx.Conv`` and
    ``nnx.Embed`` layers by name (the module path, ``"layers/0"``), what
    :func:`optlab.kfac_value_and_grad` captures. Use it when the default name rule would take
    other leaves named ``kernel`` for layers (e.g. ``nnx.LinearGeneral``, ``nnx.Einsum``).

    Example:
      >>> import optlab
      >>> from flax import nnx
      >>> optlab.kfac_layers(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
      {'': KFACLayer(kernel='kernel', bias='bias', kind='dense')}
    """
    out = {}
    for name, (kind, module) in find_layers(model).items():
        prefix = f"{name}/" if name else ""
        if kind == "embed":
            out[name] = KFACLayer(f"{prefix}embedding", None, "embed")
        else:
            bias = f"{prefix}bias" if module.bias is not None else None
            out[name] = KFACLayer(f"{prefix}kernel", bias, "dense")
    return out


# -- validation ------------------------------------------------------------------------------------
def _python(value: Any) -> Any:
    if isinstance(value, jax.Array | np.ndarray) and not isinstance(value, jax.core.Tracer):
        return np.asarray(value).item() if np.ndim(value) == 0 else value
    return value


def _step_option(name: str, value: Any, minimum: int) -> Any:
    if not isinstance(value, jax.core.Tracer):
        check_int(name, _python(value), minimum)
    return value


def _check_layers(layers: Any) -> tuple[tuple[str, KFACLayer], ...] | None:
    if layers is None:
        return None
    if not isinstance(layers, Mapping):
        raise ValueError(
            f"layers must be None or a mapping name -> KFACLayer(kernel, bias, kind), got "
            f"{type(layers).__name__}"
        )
    out = []
    for name, layer in layers.items():
        try:
            layer = KFACLayer(*layer) if not isinstance(layer, KFACLayer) else layer
        except TypeError:
            layer = None
        ok = (
            layer is not None
            and isinstance(name, str)
            and isinstance(layer.kernel, str)
            and (layer.bias is None or isinstance(layer.bias, str))
            and layer.kind in LAYER_KINDS
        )
        if not ok:
            raise ValueError(
                f"layers[{name!r}] must be KFACLayer(kernel: str, bias: str | None, kind in "
                f"{LAYER_KINDS}), got {layers[name]!r}"
            )
        out.append((name, layer))
    return tuple(out)


def _check_damping(damping: Any) -> None:
    if callable(damping) and not isinstance(damping, jax.Array | np.ndarray):
        return
    try:
        check_number("damping", damping, low=0.0, low_open=True)
    except ValueError:
        raise ValueError(f"damping must be a float > 0 or a schedule, got {damping!r}") from None


# -- the transform ---------------------------------------------------------------------------------
@functools.cache
def _blas_controller() -> Any:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - optional: then the BLAS keeps its threads
        return None
    return ThreadpoolController()


def _single_threaded_blas() -> Any:
    """A context in which the host BLAS runs on one thread (nothing, without threadpoolctl).

    The callback runs while XLA's CPU threads hold the cores; a multithreaded BLAS spinning on
    top of them made a 401 x 401 ``potri`` take 0.3 to 1.5 s instead of 6 ms on a loaded 2-core
    machine, and factors of a few hundred rows gain nothing from BLAS threads. Only one host
    LAPACK call runs at a time in optlab (the ``host_call`` lock), so the temporary limit is
    seen by nobody else that uses it.
    """
    controller = _blas_controller()
    if controller is None:  # pragma: no cover
        return contextlib.nullcontext()
    return controller.limit(limits=1, user_api="blas")


def _host_damped_inverses_all(*args: np.ndarray) -> tuple[np.ndarray, ...]:
    """Host: :func:`_host_damped_inverses` of every group, ``args = (*stacks, *ridges)``."""
    n = len(args) // 2
    with _single_threaded_blas():
        return tuple(_host_damped_inverses(args[i], args[n + i]) for i in range(n))


def _host_damped_inverses(stats: np.ndarray, ridge: np.ndarray) -> np.ndarray:
    """Host: ``(S + r I)^{-1}`` by LAPACK ``potrf`` + ``potri`` in float64, matrix by matrix;
    NaN where ``S + r I`` is not finite or not positive definite."""
    from scipy.linalg import lapack

    out = np.full(stats.shape, np.nan, stats.dtype)
    eye = np.eye(stats.shape[-1])
    for i in range(stats.shape[0]):
        a = stats[i].astype(np.float64) + float(ridge[i]) * eye
        if not np.all(np.isfinite(a)):
            continue
        c, info = lapack.dpotrf(a, lower=1, clean=1)
        if info != 0:
            continue
        inv, info = lapack.dpotri(c, lower=1)
        if info != 0:
            continue
        out[i] = np.tril(inv) + np.tril(inv, -1).T
    return out


def _damped_inverses(ridges: dict[int, jax.Array]) -> kron.RefreshFn:
    """The engine's refresh off CPU: ``(S + r I)^{-1}`` with the per-matrix ridge ``r`` by
    ``jax.lax.linalg.cholesky`` and a triangular solve (the damped factor is positive definite;
    a Cholesky costs a third of an ``eigh`` and is all Tikhonov damping needs); accepted when
    finite. (On CPU :func:`_refresh` sends every group to host LAPACK in one call instead:
    jaxlib's batched CPU kernels can hang multi-device programs, see
    :mod:`optlab.linalg._lapack`.)"""

    def refresh_fn(stats: jax.Array, group: kron.Group) -> tuple[jax.Array, jax.Array]:
        ridge = ridges[group.offset].astype(stats.dtype)
        eye = jnp.eye(group.dim, dtype=stats.dtype)
        chol = jax.lax.linalg.cholesky(stats + ridge[:, None, None] * eye, symmetrize_input=True)
        inv_l = jax.lax.linalg.triangular_solve(
            chol, jnp.broadcast_to(eye, stats.shape), left_side=True, lower=True
        )
        inverse = matmul(jnp.swapaxes(inv_l, 1, 2), inv_l)  # (L L^T)^{-1} = L^{-T} L^{-1}
        return inverse, jnp.all(jnp.isfinite(inverse), axis=(1, 2))

    return refresh_fn


def _preconditioner(
    name: str,
    *,
    damping,
    factor_decay,
    precondition_every,
    start_preconditioning_step,
    norm_constraint,
    layers,
    damping_mode,
    learning_rate=None,
    mesh=None,
    mesh_axis="data",
) -> BlockPreconditioner:
    """K-FAC's preconditioning on the layers' stacked gradients (:func:`_to_blocks`;
    :mod:`optlab._src.blocked` guards it and adds the optimizer's other terms)."""
    _check_damping(damping)
    check_number("factor_decay", factor_decay, low=0.0, high=1.0)
    every = _step_option("precondition_every", precondition_every, 1)
    start = _step_option("start_preconditioning_step", start_preconditioning_step, 0)
    check_number("norm_constraint", norm_constraint, low=0.0, low_open=True, allow_none=True)
    layers = _check_layers(layers)
    check_choice("damping_mode", damping_mode, DAMPING_MODES)
    exact = damping_mode == "exact"
    placement = make_placement(mesh, mesh_axis)
    if exact and placement.shards > 1:
        raise ValueError(
            "mesh= splits K-FAC's factors for damping_mode='factored' only, got "
            "damping_mode='exact'"
        )

    def init_fn(params):
        check_leaf_dtypes(params, name)
        # Not strict: optax.tree.map_params calls init on a placeholder without leaves.
        plan, leaves, _ = _plan_of(
            params, layers, strict=bool(jax.tree.leaves(params)), shards=placement.shards
        )
        dtype = at_least_float32(jnp.result_type(*leaves)) if leaves else jnp.float32
        inverses = kron.identity_factors(plan.layout, dtype)
        return KFACState(
            count=jnp.zeros([], jnp.int32),
            factors=jnp.zeros(plan.layout.stats_shape, dtype),
            # Exact damping keeps the embeddings' A itself (0 before the first refresh).
            # (and its eigenvalues after the embeddings' part: no zero-size leaf, which orbax
            # cannot checkpoint).
            inverses=_with_tail(
                inverses,
                jnp.concatenate(
                    [
                        jnp.full((plan.embed_size,), 0 if exact else 1, dtype),
                        jnp.zeros((_eigenvalues_size(plan) if exact else 0,), dtype),
                    ]
                ),
                plan.layout,
            ),
            rejected_inverses=jnp.zeros([], jnp.int32),
            curvature_updates=jnp.zeros([], jnp.int32),
            digits=runtime_digits(),
        )

    def layout_of(tree):
        # Not strict without leaves: optax.tree.map_params initializes with a placeholder.
        strict = bool(jax.tree.leaves(tree))
        return _plan_of(tree, layers, strict=strict, shards=placement.shards)

    def direction_fn(grads: kron.Blocks, state: KFACState, plan: _Plan, extra: dict[str, Any]):
        layout = plan.layout
        dtype = state.factors.dtype
        curvature = _checked_curvature(extra.get("curvature"), plan)
        fresh = curvature is not None  # static: {} means no new curvature this step
        updates_done = state.curvature_updates + (1 if fresh else 0)
        factors = state.factors
        if fresh:
            # The k-th update of the factors (k = 1, 2, ...): decay min(1 - 1/k, factor_decay).
            k = updates_done.astype(dtype)
            decay = jnp.minimum(1.0 - 1.0 / k, jnp.asarray(factor_decay, dtype))
            contributions = _contributions(curvature, grads, plan, dtype)
            factors = kron.accumulate(state.factors, contributions, layout, decay)
        lam = jnp.asarray(damping(state.count) if callable(damping) else damping, dtype)

        def refresh():
            if exact:
                return _refresh_exact(factors, state.inverses, plan)
            return _refresh(factors, state.inverses, plan, lam, placement)

        # Nothing to invert before the first curvature: the inverses stay the identity.
        due = (state.count >= start) & ((state.count - start) % every == 0) & (updates_done > 0)
        inverses, rejected = jax.lax.cond(
            due, refresh, lambda: (state.inverses, jnp.zeros([], jnp.int32))
        )
        if exact:
            out = _precondition_exact(grads, factors, inverses, plan, lam, state.digits)
        else:
            out = _precondition(grads, factors, inverses, plan, lam, state.digits)
        if norm_constraint is not None:
            lr = 1.0 if learning_rate is None else learning_rate
            lr = lr(state.count) if callable(lr) else lr
            pairs = zip(jax.tree.leaves(out), jax.tree.leaves(grads), strict=True)
            inner = sum((jnp.vdot(u, g) for u, g in pairs), jnp.zeros([], dtype))
            bound = jnp.asarray(norm_constraint, dtype) / (jnp.square(lr) * jnp.abs(inner))
            # 0 / 0 (a zero gradient) is NaN: then nothing to clip.
            scale = jnp.where(jnp.isnan(bound), 1.0, jnp.minimum(1.0, jnp.sqrt(bound)))
            out = jax.tree.map(lambda u: u * scale.astype(dtype), out)
        # The gradient itself before the start: a select per stack.
        started = state.count >= start
        out = jax.tree.map(lambda u, g: jnp.where(started, u, g), out, grads)
        new_state = KFACState(
            count=optax.safe_increment(state.count),
            factors=factors,
            inverses=inverses,
            rejected_inverses=state.rejected_inverses + rejected,
            curvature_updates=updates_done,
            digits=state.digits,
        )
        return out, new_state

    def step_is_safe(grads: kron.Blocks, state: KFACState, plan: _Plan, extra: dict[str, Any]):
        # Decided before the step, so that XLA updates the factor and inverse buffers in place
        # (checking after would keep the old ones alive: a copy of both per step). The new
        # factors are decay * old + (1 - decay) * contribution with decay in [0, 1], all PSD
        # (diagonals bound the entries): the old largest diagonal plus the largest contribution
        # entry (a curvature entry, or g^2 for the diagonal rule's v) bounds every new entry.
        # Inverses are never non-finite (rejected at the refresh); the update is still checked.
        dtype = state.factors.dtype
        finite = tree_all_finite(grads)  # a few stacks
        curvature = _checked_curvature(extra.get("curvature"), plan)
        parts = [jnp.zeros([], dtype)]
        if curvature is not None:
            new = _contributions(curvature, grads, plan, dtype)
            parts += [jnp.max(jnp.abs(x)) for x in jax.tree.leaves(new)]  # NaN propagates
        elif grads.vector is not None and plan.diag_leaves:
            parts.append(jnp.max(jnp.square(grads.vector)))
        largest = functools.reduce(jnp.maximum, parts)
        bound = kron.statistics_bound(state.factors, plan.layout, 1.0, largest)
        return finite & (bound <= HEADROOM * jnp.finfo(dtype).max)

    return BlockPreconditioner(
        init=init_fn,
        layout_of=layout_of,
        to_blocks=_to_blocks,
        from_blocks=_from_blocks,
        direction=direction_fn,
        step_is_safe=step_is_safe,
        dtype=lambda state: state.factors.dtype,
        shards=lambda plan: plan.layout.shards,
    )


def _checked_curvature(curvature: Any, plan: _Plan) -> dict[str, KFACFactors] | None:
    """The curvature by layer name; None for ``{}`` ("no new curvature this step")."""
    if isinstance(curvature, Mapping) and not curvature:
        return None
    if not plan.layers:
        return {}
    if curvature is None:
        raise ValueError(
            "K-FAC's update needs curvature= (from optlab.kfac_value_and_grad): "
            f"one KFACFactors per layer {[layer.name for layer in plan.layers]}"
        )
    if not isinstance(curvature, Mapping):
        raise ValueError(f"curvature must be a dict name -> KFACFactors, got {type(curvature)}")
    out = {}
    for layer in plan.layers:
        if layer.name not in curvature:
            raise ValueError(
                f"curvature has no entry for layer {layer.name!r} (entries: {list(curvature)}); "
                "pass layers=optlab.kfac_layers(model) to precondition only the captured layers"
            )
        a, g = curvature[layer.name]
        a_shape = (
            (layer.d_in,) if layer.kind == "embed" else (layer.d_in + (layer.bias is not None),) * 2
        )
        if tuple(np.shape(a)) != a_shape or tuple(np.shape(g)) != (layer.d_out, layer.d_out):
            raise ValueError(
                f"curvature[{layer.name!r}] has factors of shapes {np.shape(a)} and "
                f"{np.shape(g)}, expected {a_shape} and {(layer.d_out, layer.d_out)}"
            )
        out[layer.name] = KFACFactors(a, g)
    return out


def _refresh(
    factors: jax.Array,
    old: jax.Array,
    plan: _Plan,
    lam: jax.Array,
    placement: kron.Placement | None = None,
) -> tuple[jax.Array, jax.Array]:
    """New damped inverses of every factor (pi-split Tikhonov damping)."""
    layout = plan.layout
    dtype = factors.dtype
    stacks = kron.group_stacks(factors, layout)
    # tr(F) / dim(F) of every matrix slot, in global slot order.
    per_group = [jnp.trace(s, axis1=1, axis2=2) / g.dim for s, g in zip(stacks, layout.groups)]
    starts = np.cumsum([0, *(g.count for g in layout.groups)])
    slot_scale = (
        jnp.concatenate(per_group)[np.asarray([starts[gi] + pos for gi, pos in plan.slots])]
        if plan.slots
        else jnp.zeros((0,), dtype)
    )
    diag = kron.diagonal_statistics(factors, layout)
    embed_diag, offsets = [], np.cumsum((0, *plan.embed_sizes))
    for i, size in enumerate(plan.embed_sizes):
        embed_diag.append(jax.lax.slice_in_dim(diag, int(offsets[i]), int(offsets[i]) + size))
    # pi of every layer at once (dense layers, then embeddings): per-layer scalar code would
    # be one distinct kernel per layer for XLA to compile.
    dense = [layer for layer in plan.layers if layer.kind != "embed"]
    embeds = [layer for layer in plan.layers if layer.kind == "embed"]
    a_slots = np.asarray([layer.a_slot for layer in dense], np.int32)
    g_slots = np.asarray([layer.g_slot for layer in (*dense, *embeds)], np.int32)
    embed_means = [jnp.mean(embed_diag[layer.a_slot]) for layer in embeds]
    sa = jnp.concatenate([slot_scale[a_slots], jnp.asarray(embed_means, dtype).reshape(-1)])
    sg = slot_scale[g_slots]
    ratio = sa / sg
    pi = jnp.where((sa > 0) & (sg > 0) & jnp.isfinite(ratio), jnp.sqrt(ratio), 1.0)
    root = jnp.sqrt(lam)
    ridge = jnp.zeros((len(plan.slots),), dtype)
    ridge = ridge.at[a_slots].set(pi[: len(dense)] * root).at[g_slots].set(root / pi)
    embed_ridges = [pi[len(dense) + i] * root for i in range(len(embeds))]
    ridges = {}
    for gi, group in enumerate(layout.groups):
        members = [s for s, (g, _) in enumerate(plan.slots) if g == gi]
        ridges[group.offset] = ridge[np.asarray(members, np.int32)]
    if layout.shards > 1:
        matrices, rejected = _sharded_inverses(
            factors, _matrix_part(old, layout), layout, ridges, placement or kron.Placement()
        )
    elif _lapack.on_cpu() and layout.groups:
        # One host call for every group (each call costs a round trip through the runtime),
        # then the engine's rule: a matrix whose inverse is not finite keeps its previous one.
        stacks = kron.group_stacks(factors, layout)
        candidates = _lapack.host_call(
            _host_damped_inverses_all,
            tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in stacks),
            *stacks,
            *(ridges[g.offset].astype(dtype) for g in layout.groups),
        )
        kept, rejected = [], jnp.zeros([], jnp.int32)
        for new, prev in zip(candidates, kron.group_stacks(old[: layout.matrix_size], layout)):
            ok = jnp.all(jnp.isfinite(new), axis=(1, 2))
            kept.append(jnp.where(ok[:, None, None], new, prev).ravel())
            rejected = rejected + jnp.sum(~ok).astype(jnp.int32)
        matrices = jnp.concatenate(kept)
    else:
        matrices, rejected = kron.refresh(
            factors, old[: layout.matrix_size], layout, _damped_inverses(ridges)
        )
    parts = []
    old_embed = _tail(old, layout, plan.embed_size)
    for i, (a, r) in enumerate(zip(embed_diag, embed_ridges)):
        inv = 1.0 / (jnp.maximum(a, 0.0) + r)
        prev = jax.lax.slice_in_dim(old_embed, int(offsets[i]), int(offsets[i + 1]))
        ok = jnp.all(jnp.isfinite(inv))
        parts.append(jnp.where(ok, inv, prev))
        rejected = rejected + jnp.where(ok, 0, 1).astype(jnp.int32)
    tail = jnp.concatenate(parts) if parts else jnp.zeros((0,), dtype)
    return _with_tail(matrices.astype(dtype), tail.astype(dtype), layout), rejected


def _eigenvalues_size(plan: _Plan) -> int:
    return sum(g.count * g.dim for g in plan.layout.groups)


def _slot_matrix(
    buffer: jax.Array, plan: _Plan, slot: int, digits: Sequence[jax.Array]
) -> jax.Array:
    """One matrix slot of a flat buffer, read at its row of its group's stack (no copy of the
    stack). A row, not an element offset: fewer digits, so fewer distinct kernels where two
    digits of an offset coincide (XLA then merges the repeated scalar operand)."""
    gi, pos = plan.slots[slot]
    group = plan.layout.groups[gi]
    return runtime_row(kron.group_stack(_matrix_part(buffer, plan.layout), group), pos, digits)


def _slot_eigenvalues(
    eigenvalues: jax.Array, plan: _Plan, slot: int, digits: Sequence[jax.Array]
) -> jax.Array:
    gi, pos = plan.slots[slot]
    groups = plan.layout.groups
    start = sum(g.count * g.dim for g in groups[:gi])
    stack = jax.lax.slice_in_dim(eigenvalues, start, start + groups[gi].size // groups[gi].dim)
    return runtime_row(stack.reshape(groups[gi].count, -1), pos, digits)


def _embed_vector(
    inverses: jax.Array, plan: _Plan, index: int, digits: Sequence[jax.Array]
) -> jax.Array:
    offsets = np.cumsum((0, *plan.embed_sizes))
    size = plan.embed_sizes[index]
    if plan.layout.shards > 1:
        tail = _tail(inverses, plan.layout, plan.embed_size)
        return runtime_slice(tail, int(offsets[index]), size, digits)
    return runtime_slice(inverses, plan.layout.matrix_size + int(offsets[index]), size, digits)


def _refresh_exact(factors: jax.Array, old: jax.Array, plan: _Plan) -> tuple[jax.Array, jax.Array]:
    """Exact damping's refresh: every matrix factor's eigendecomposition (one batched ``eigh``
    per size, host LAPACK on CPU), eigenvalues clipped at 0; a decomposition that is not finite
    keeps the previous one (counted). The embeddings' diagonal ``A`` is copied as it is now."""
    layout = plan.layout
    old_values = old[layout.matrix_size + plan.embed_size :]
    vectors, values, rejected = [], [], jnp.zeros([], jnp.int32)
    offset = 0
    for stack, prev in zip(
        kron.group_stacks(factors, layout), kron.group_stacks(old[: layout.matrix_size], layout)
    ):
        n, d = stack.shape[0], stack.shape[-1]
        w, v = _lapack.eigh(stack)
        prev_w = jax.lax.slice_in_dim(old_values, offset, offset + n * d).reshape(n, d)
        ok = jnp.all(jnp.isfinite(v), axis=(1, 2)) & jnp.all(jnp.isfinite(w), axis=1)
        vectors.append(jnp.where(ok[:, None, None], v, prev).ravel())
        values.append(jnp.where(ok[:, None], jnp.maximum(w, 0.0), prev_w).ravel())
        rejected = rejected + jnp.sum(~ok).astype(jnp.int32)
        offset += n * d
    diag = kron.diagonal_statistics(factors, layout)
    embed = jnp.maximum(jax.lax.slice_in_dim(diag, 0, plan.embed_size), 0.0)
    dtype = factors.dtype
    return jnp.concatenate([*vectors, embed, *values]).astype(dtype), rejected


# -- the layers' gradients stacked: one [n, d_in (+1), d_out] stack per dense shape --------------
def _dense_batches(plan: _Plan) -> list[list[_Layer]]:
    """Dense layers of one shape (and bias or not) whose factors share their groups: each list
    is one stack of :func:`_to_blocks`, preconditioned by one batched product (one set of
    kernels, however many layers)."""
    batches: dict[tuple[int, int, bool, int, int], list[_Layer]] = {}
    for layer in plan.layers:
        if layer.kind != "embed":
            groups = (plan.slots[layer.a_slot][0], plan.slots[layer.g_slot][0])
            key = (layer.d_in, layer.d_out, layer.bias is not None, *groups)
            batches.setdefault(key, []).append(layer)
    return list(batches.values())


def _embed_layers(plan: _Plan) -> list[_Layer]:
    return [layer for layer in plan.layers if layer.kind == "embed"]


def _to_blocks(leaves: list[jax.Array], plan: _Plan, dtype) -> kron.Blocks:
    """The gradient as K-FAC's blocks: per dense batch (:func:`_dense_batches`) the stack of
    ``dWbar`` (the kernel as ``[d_in, d_out]``, the bias as a last row), then each embedding's
    kernel, and the diagonal rule's leaves raveled into one vector."""
    grads = [jnp.asarray(g).astype(dtype) for g in leaves]
    stacks = []
    for batch in _dense_batches(plan):
        w = jnp.stack([grads[layer.kernel].reshape(layer.d_in, layer.d_out) for layer in batch])
        if batch[0].bias is not None:
            b = jnp.stack([grads[layer.bias] for layer in batch])
            w = jnp.concatenate([w, b[:, None, :]], axis=1)
        stacks.append(w)
    for layer in _embed_layers(plan):
        stacks.append(grads[layer.kernel].reshape(layer.d_in, layer.d_out))
    vectors = [grads[i].ravel() for i in plan.diag_leaves]
    return kron.Blocks(tuple(stacks), jnp.concatenate(vectors) if vectors else None)


def _from_blocks(
    blocks: kron.Blocks, plan: _Plan, like: list[jax.Array], digits: Sequence[jax.Array]
) -> list[jax.Array]:
    """Inverse of :func:`_to_blocks`, each leaf in the dtype of ``like``'s (zero-size leaves:
    zeros). Each layer's rows are read at a row written with ``digits`` (one kernel per shape,
    not per layer)."""
    out = [jnp.zeros(np.shape(x), jnp.result_type(x)) for x in like]
    batches = _dense_batches(plan)
    for stack, batch in zip(blocks.stacks, batches, strict=False):
        for i, layer in enumerate(batch):
            u = runtime_row(stack, i, digits)
            out[layer.kernel] = u[: layer.d_in].reshape(np.shape(like[layer.kernel]))
            if layer.bias is not None:
                out[layer.bias] = u[layer.d_in]
    for u, layer in zip(blocks.stacks[len(batches) :], _embed_layers(plan), strict=True):
        out[layer.kernel] = u.reshape(np.shape(like[layer.kernel]))
    start = 0
    for i in plan.diag_leaves:
        size = math.prod(np.shape(like[i]))
        out[i] = runtime_slice(blocks.vector, start, size, digits).reshape(np.shape(like[i]))
        start += size
    return [u.astype(jnp.result_type(x)) for u, x in zip(out, like, strict=True)]


def _contributions(
    curvature: dict[str, KFACFactors], grads: kron.Blocks, plan: _Plan, dtype
) -> kron.Statistics:
    """This step's factor contributions, stacked by group in slot order; the vector part: the
    embeddings' diagonal ``A``, then the diagonal rule's ``g^2``."""
    layout = plan.layout
    per_group: list[list[jax.Array | None]] = [
        [None] * (g.count - g.padding) for g in layout.groups
    ]
    embed_parts = []
    for layer in plan.layers:
        f = curvature[layer.name]
        if layer.kind == "embed":
            embed_parts.append(jnp.asarray(f.a, dtype))
        else:
            gi, pos = plan.slots[layer.a_slot]
            per_group[gi][pos] = jnp.asarray(f.a, dtype)
        gi, pos = plan.slots[layer.g_slot]
        per_group[gi][pos] = jnp.asarray(f.g, dtype)
    vector = embed_parts + ([jnp.square(grads.vector)] if plan.diag_leaves else [])
    return kron.Statistics(
        tuple(jnp.stack(parts) for parts in per_group),
        jnp.concatenate(vector) if vector else None,
    )


def _precondition_exact(
    grads: kron.Blocks,
    factors: jax.Array,
    vectors: jax.Array,
    plan: _Plan,
    lam: jax.Array,
    digits: Sequence[jax.Array],
) -> kron.Blocks:
    """``(A (x) G + lambda I)^{-1} vec(dWbar)`` in the factors' eigenbases:
    ``Q_A [(Q_A^T dWbar Q_G) / (d_A d_G^T + lambda)] Q_G^T``, layer by layer."""
    values = vectors[plan.layout.matrix_size + plan.embed_size :]
    batches = _dense_batches(plan)
    stacks = []
    for stack, batch in zip(grads.stacks, batches, strict=False):
        per_layer = []
        for i, layer in enumerate(batch):
            q_a = _slot_matrix(vectors, plan, layer.a_slot, digits)
            d_a = _slot_eigenvalues(values, plan, layer.a_slot, digits)
            q_g = _slot_matrix(vectors, plan, layer.g_slot, digits)
            d_g = _slot_eigenvalues(values, plan, layer.g_slot, digits)
            rotated = matmul(matmul(q_a.T, stack[i]), q_g) / (d_a[:, None] * d_g[None, :] + lam)
            per_layer.append(matmul(matmul(q_a, rotated), q_g.T))
        stacks.append(jnp.stack(per_layer))
    for w, layer in zip(grads.stacks[len(batches) :], _embed_layers(plan), strict=True):
        q_g = _slot_matrix(vectors, plan, layer.g_slot, digits)
        d_g = _slot_eigenvalues(values, plan, layer.g_slot, digits)
        d_a = _embed_vector(vectors, plan, layer.a_slot, digits)
        stacks.append(matmul(matmul(w, q_g) / (d_a[:, None] * d_g[None, :] + lam), q_g.T))
    return kron.Blocks(tuple(stacks), _diagonal_rule(grads.vector, factors, plan, lam))


def _slot_stack(buffer: jax.Array, plan: _Plan, slots: Sequence[int]) -> jax.Array:
    """``[n, d, d]``: the matrices of ``slots`` (one group): a slice of the group's stack when
    their rows follow each other (layers of one shape in a row), a gather otherwise."""
    group = plan.layout.groups[plan.slots[slots[0]][0]]
    stack = kron.group_stack(_matrix_part(buffer, plan.layout), group)
    rows = [plan.slots[s][1] for s in slots]
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return jax.lax.slice_in_dim(stack, rows[0], rows[0] + len(rows))
    return stack[np.asarray(rows)]


def _precondition(
    grads: kron.Blocks,
    factors: jax.Array,
    inverses: jax.Array,
    plan: _Plan,
    lam: jax.Array,
    digits: Sequence[jax.Array],
) -> kron.Blocks:
    """Factored damping: ``(A + r_A I)^{-1} dWbar (G + r_G I)^{-1}`` from the stored inverses,
    one batched product per dense stack."""
    batches = _dense_batches(plan)
    stacks = []
    for w, batch in zip(grads.stacks, batches, strict=False):
        a_inv = _slot_stack(inverses, plan, [layer.a_slot for layer in batch])
        g_inv = _slot_stack(inverses, plan, [layer.g_slot for layer in batch])
        stacks.append(matmul(matmul(a_inv, w), g_inv))
    for w, layer in zip(grads.stacks[len(batches) :], _embed_layers(plan), strict=True):
        g_inv = _slot_matrix(inverses, plan, layer.g_slot, digits)
        a_inv = _embed_vector(inverses, plan, layer.a_slot, digits)
        stacks.append(matmul(w * a_inv[:, None], g_inv))
    return kron.Blocks(tuple(stacks), _diagonal_rule(grads.vector, factors, plan, lam))


def _diagonal_rule(
    g: jax.Array | None, factors: jax.Array, plan: _Plan, lam: jax.Array
) -> jax.Array | None:
    """``g / (v + lambda)`` for the leaves in no layer (their concatenation)."""
    if g is None:
        return None
    v = kron.diagonal_statistics(factors, plan.layout)
    return g / (jax.lax.slice_in_dim(v, plan.embed_size, plan.embed_size + g.size) + lam)


def scale_by_kfac(
    *,
    damping: float | Callable[[jax.Array], jax.Array] = 1e-3,
    factor_decay: float = 0.95,
    precondition_every: int = 5,
    start_preconditioning_step: int = 0,
    norm_constraint: float | None = None,
    layers: Mapping[str, KFACLayer] | None = None,
    damping_mode: str = "factored",
    mesh: jax.sharding.Mesh | None = None,
    mesh_axis: str = "data",
) -> optax.GradientTransformationExtraArgs:
    r"""Scale updates by K-FAC's Kronecker-factored inverse Fisher (Martens & Grosse 2015).

    ``update(grads, state, params=None, *, curvature)``: ``curvature`` from
    :func:`optlab.kfac_value_and_grad` (or built with :func:`optlab.kfac_dense_factors` for a
    pure-JAX model), the same batch as ``grads``; ``curvature={{}}`` means no new curvature this
    step (the factors, and the diagonal rule's ``v``, are kept: curvature every ``k``-th step
    only, as kfac-jax's ``curvature_update_period``). The first inverses are computed at the
    first refresh after some curvature arrived; until then they are the identity.
    {math}
    Args:
      damping: Tikhonov damping ``lambda > 0``, or a schedule ``count -> lambda``.
      factor_decay: decay of the factors' moving averages, in ``[0, 1]`` (kfac-jax's
        ``curvature_ema``); ``1`` keeps a running mean of all steps.
      precondition_every: refresh the damped inverses every this many steps (``>= 1``;
        kfac-jax's ``inverse_update_period``).
      start_preconditioning_step: first step that preconditions (and refreshes, ``>= 0``);
        before it the update is the gradient.
      norm_constraint: KL-clipping bound ``C > 0`` (None: no clipping).
      layers: which leaves form a layer (:class:`KFACLayer` by name); default: the stock NNX
        names (see above). :func:`optlab.kfac_layers` gives the exact mapping of a model.
      damping_mode: ``"factored"`` (default: pi-split Tikhonov damping of each factor, one
        Cholesky per factor at a refresh) or ``"exact"`` (``(A (x) G + lambda I)^{{-1}}`` through
        the factors' eigendecompositions, see above).
      mesh, mesh_axis: a ``jax.sharding.Mesh`` and one of its axis names: the factors and
        their inverses are split over that axis' devices, each inverting only its own
        (``damping_mode="factored"``; balance rule: every same-size stack is padded with zero
        factors to a multiple of the axis size, device ``s`` owning its ``s``-th contiguous
        share); shard the state with :func:`optlab.state_sharding`. ``None``: one device's layout.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is
      ``SkipNonFiniteState(inner=KFACState(...), skipped_steps)``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> from flax import nnx
      >>> model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
      >>> params = nnx.state(model, nnx.Param)
      >>> tx = optax.chain(optlab.scale_by_kfac(damping=1e-2), optax.scale(-0.1))
      >>> state = tx.init(params)
      >>> vg = optlab.kfac_value_and_grad("softmax_cross_entropy", "empirical")
      >>> loss, grads, curvature = vg(model, jnp.ones((8, 4)), jnp.zeros(8, jnp.int32))
      >>> updates, state = tx.update(grads, state, params, curvature=curvature)
      >>> int(state[0].inner.count), int(state[0].skipped_steps)
      (1, 0)
    """
    pre = _preconditioner(
        "optlab.scale_by_kfac",
        damping=damping,
        factor_decay=factor_decay,
        precondition_every=precondition_every,
        start_preconditioning_step=start_preconditioning_step,
        norm_constraint=norm_constraint,
        layers=layers,
        damping_mode=damping_mode,
        mesh=mesh,
        mesh_axis=mesh_axis,
    )
    return blocked_optimizer(pre)


def kfac(
    learning_rate: optax.ScalarOrSchedule,
    *,
    damping: float | Callable[[jax.Array], jax.Array] = 1e-3,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    weight_decay_mask: Any | Callable | None = None,
    norm_constraint: float | None = None,
    factor_decay: float = 0.95,
    precondition_every: int = 5,
    start_preconditioning_step: int = 0,
    layers: Mapping[str, KFACLayer] | None = None,
    damping_mode: str = "factored",
    mesh: jax.sharding.Mesh | None = None,
    mesh_axis: str = "data",
) -> optax.GradientTransformationExtraArgs:
    r"""The K-FAC optimizer: preconditioning, KL clipping, momentum, decoupled weight decay.

    What ``skip_nonfinite(chain(<scale_by_kfac's preconditioning>(norm_constraint with the
    learning rate), trace(momentum), add_decayed_weights(weight_decay, weight_decay_mask),
    scale_by_learning_rate(learning_rate)))`` computes, on the layers' stacked gradients rather
    than leaf by leaf (fast to compile on deep models): heavy-ball momentum on the (clipped) natural
    gradient, as kfac-jax with fixed learning rate and momentum; one NaN/Inf guard covers the
    whole chain. ``update(grads, state, params, *, curvature)`` as for :func:`scale_by_kfac`.
    {math}
    Args:
      learning_rate: a float ``>= 0`` or an optax schedule.
      damping: Tikhonov damping ``lambda > 0`` or a schedule.
      momentum: heavy-ball momentum in ``[0, 1)``; 0 disables it.
      weight_decay: decoupled weight decay ``>= 0`` (``W <- W - lr * wd * W``).
      weight_decay_mask: optax mask for the weight decay.
      norm_constraint: KL-clipping bound ``C > 0`` (None: off).
      factor_decay, precondition_every, start_preconditioning_step, layers, damping_mode: as
        in :func:`scale_by_kfac`.
      mesh, mesh_axis: as in :func:`scale_by_kfac` (sharded state).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is
      ``SkipNonFiniteState(inner=(KFACState, [BlockMomentumState], <learning rate state>),
      skipped_steps)`` (the momentum's state when ``momentum > 0``: its trace in the layers'
      stacked layout).

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> from flax import nnx
      >>> model = nnx.Sequential(nnx.Linear(4, 8, rngs=nnx.Rngs(0)), nnx.relu,
      ...                        nnx.Linear(8, 3, rngs=nnx.Rngs(1)))
      >>> optimizer = nnx.Optimizer(model, optlab.kfac(0.1, damping=1e-2), wrt=nnx.Param)
      >>> vg = optlab.kfac_value_and_grad("softmax_cross_entropy", "true")
      >>> @nnx.jit
      ... def step(model, optimizer, x, y, key):
      ...     loss, grads, curvature = vg(model, x, y, key=key)
      ...     optimizer.update(model, grads, curvature=curvature)
      ...     return loss
      >>> x, y = jnp.ones((16, 4)), jnp.zeros(16, jnp.int32)
      >>> losses = [float(step(model, optimizer, x, y, jax.random.key(i))) for i in range(5)]
      >>> losses[-1] < losses[0]
      True
    """
    check_learning_rate(learning_rate)
    check_number("momentum", momentum, low=0.0, high=1.0, high_open=True)
    check_number("weight_decay", weight_decay, low=0.0)
    pre = _preconditioner(
        "optlab.kfac",
        damping=damping,
        factor_decay=factor_decay,
        precondition_every=precondition_every,
        start_preconditioning_step=start_preconditioning_step,
        norm_constraint=norm_constraint,
        layers=layers,
        damping_mode=damping_mode,
        learning_rate=learning_rate,
        mesh=mesh,
        mesh_axis=mesh_axis,
    )
    # Arrays (optax.inject_hyperparams) always keep their element: the state's structure must
    # not depend on a value that can change.
    use_momentum = isinstance(momentum, jax.Array) or momentum > 0
    return blocked_optimizer(
        pre,
        momentum=_momentum(momentum) if use_momentum else None,
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        learning_rate=learning_rate,
    )


def _momentum(decay: float | jax.Array) -> optax.GradientTransformation:
    """``optax.trace(decay)`` whose state never becomes non-finite.

    The guard of :func:`kfac` decides before the step from K-FAC's factors; the momentum of a
    finite update could still overflow (``|u| + decay |m|`` past the largest float). Then the
    entries that overflow keep their previous value and the update is NaN there, which the
    guard zeroes (the whole update) and counts as a skipped step; like K-FAC's factors, the
    other entries keep the step. Element-wise selects fused into the momentum's own
    arithmetic: no per-leaf reduction, no copy of a whole state.
    """
    trace = optax.trace(decay=decay)

    def update_fn(updates, state, params=None):
        new_updates, new_state = trace.update(updates, state, params)
        ok = jax.tree.map(jnp.isfinite, new_state.trace)
        new_updates = jax.tree.map(lambda u, f: jnp.where(f, u, jnp.nan), new_updates, ok)
        kept = jax.tree.map(jnp.where, ok, new_state.trace, state.trace)
        return new_updates, new_state._replace(trace=kept)

    return optax.GradientTransformation(trace.init, update_fn)


scale_by_kfac.__doc__ = scale_by_kfac.__doc__.format(math=_MATH)
kfac.__doc__ = kfac.__doc__.format(math=_MATH)

__all__ = [
    "DAMPING_MODES",
    "LAYER_KINDS",
    "KFACLayer",
    "KFACState",
    "kfac",
    "kfac_layers",
    "scale_by_kfac",
]
