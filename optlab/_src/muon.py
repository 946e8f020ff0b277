r"""Muon as composable optax transforms: ``orthogonalize_muon``, ``scale_by_muon``, ``muon``.

Muon (Jordan et al. 2024) keeps a momentum ``M`` of each hidden weight matrix and steps along
its orthogonal polar factor:

.. math::

    M_t = \beta M_{t-1} + G_t, \qquad
    N_t = G_t + \beta M_t \ \text{(Nesterov)} \quad\text{or}\quad N_t = M_t,

    N_t = U S V^\top \ \text{(thin SVD)}, \qquad
    W_{t+1} = W_t - \eta_t \,\bigl(s(\text{fan}_\text{in}, \text{fan}_\text{out})\, U V^\top
              + \lambda W_t\bigr).

``U V^T`` is the steepest-descent direction under the spectral norm (and Shampoo's update
without accumulation: ``(G G^T)^{-1/4} G (G^T G)^{-1/4} = U V^T``, Merkulov's seminar cited
below). It is computed
by :func:`optlab.linalg.orthogonalize` (Newton-Schulz, Polar Express, Gram Newton-Schulz or an
exact SVD). The momentum is the reference implementation's non-bias-corrected form (optax's
``contrib.muon`` bias-corrects it instead); the EMA form ``M = beta M + (1 - beta) G`` used by
the newer reference differs from this one by the constant factor ``1 - beta`` in both ``M`` and
``N``, which the orthogonalization removes, so both give the same update.

Shape scales ``s``:

* ``"spectral"``: ``sqrt(max(1, fan_out / fan_in))`` (Keller Jordan): the update has spectral
  norm ``sqrt(fan_out / fan_in)`` on wide-output layers, as spectral muP prescribes.
* ``"rms"``: ``0.2 * sqrt(max(fan_in, fan_out))`` (Liu et al. 2025, "Moonshot"): the update's
  RMS is 0.2 for every shape, about AdamW's, so Muon and AdamW can share one learning rate.

Which leaves are matrices. A 2-D leaf ``[fan_in, fan_out]`` (Flax's ``Linear`` kernel layout)
is the matrix. A leaf of rank >= 3 is by default a Flax convolution kernel
``[*spatial, in, out]``: reduce over ``spatial + in`` and output over ``out``, i.e. the matrix
``(prod(spatial) * in, out)`` (Keller Jordan's reference flattens PyTorch conv weights the same
way). One exception, for ``flax.nnx.MultiHeadAttention``: a rank-3 ``kernel`` leaf under a
``query`` / ``key`` / ``value`` module is ``[in, heads, head_dim]`` and is the matrix
``(in, heads * head_dim)``. Every other layout takes :class:`MuonDimensionNumbers`; axes that are
neither reduction nor output axes are batch axes, orthogonalized independently in one batched
call. Leaves of rank < 2 are rejected (``ValueError`` naming the leaf): route them elsewhere,
which :func:`muon` does by default (:func:`muon_labels`).

Speed. Leaves whose matrices have the same shape (after transposing tall ones) are stacked and
orthogonalized in one batched call per group: the same FLOPs, but one compiled loop instead of
one per leaf (several times faster to compile for a transformer, and fewer kernel launches on
accelerators). ``method="auto"`` (the default) runs Polar Express coefficients, which converge
to ``U V^T`` (max ``|sigma - 1|`` about 1e-2 or better where Newton-Schulz's leave 0.3), on the
small Gram matrix for large rectangular matrices (fewer FLOPs there than 5 plain Newton-Schulz
steps), see :func:`resolve_method`.

NaN/Inf and extreme values. :func:`muon`, :func:`scale_by_muon` and :func:`orthogonalize_muon`
follow optlab's one NaN/Inf policy (:func:`optlab.skip_nonfinite`): a step whose
gradient is not finite, or large enough that the momentum could overflow (``|G| > (1 - beta)
M / 4`` with ``M`` the largest float, decided before the step; ``G^2 > M / 4`` on AdamW's
leaves), is skipped (zero update, state unchanged,
``skipped_steps`` of the :class:`~optlab._src.common.SkipNonFiniteState` at the top of the state
counts it). The polar factor does not depend on the scale of its input, so finite gradients from
1e-30 to 1e30 all give unit singular values. Parameters must be real floating arrays (checked at
``init``); leaves with a zero-size axis get a zero-size update.

References:
  - K. Jordan, Y. Jin, V. Boza, J. You, F. Cesista, L. Newhouse, J. Bernstein, "Muon: An
    optimizer for hidden layers in neural networks", 2024,
    https://kellerjordan.github.io/posts/muon/
  - J. Liu et al., "Muon is Scalable for LLM Training", arXiv:2502.16982, 2025.
  - N. Amsel, D. Persson, C. Musco, R. M. Gower, "The Polar Express: Optimal Matrix Sign Methods
    and Their Application to the Muon Algorithm", arXiv:2505.16932, 2025.
  - D. Merkulov, "Stories from training neural networks: Sharpness-Aware Minimization, Mode
    Connectivity, Grokking, Double Descent", seminar, course "Convex optimization methods",
    week 14 ("Optimization for all!" lecture series): Shampoo without accumulation is Muon.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optlab._src.common import (
    HEADROOM,
    at_least_float32,
    check_bool,
    check_choice,
    check_dtype,
    check_int,
    check_leaf_dtypes,
    check_learning_rate,
    check_number,
    combine,
    max_abs_within,
    runtime_digits,
    runtime_slice,
    skip_nonfinite,
)
from optlab.linalg.orthogonalize import ORTHOGONALIZE_METHODS, orthogonalize

__all__ = [
    "MUON_EXCLUDED_NAMES",
    "MUON_METHODS",
    "MUON_SCALES",
    "MuonDimensionNumbers",
    "ScaleByMuonState",
    "auto_coefficients",
    "muon",
    "muon_labels",
    "orthogonalize_muon",
    "resolve_method",
    "scale_by_muon",
]

Params = Any
ScaleFn = Callable[[int, int], float]

#: Accepted ``method`` names: ``"auto"`` plus every :func:`optlab.linalg.orthogonalize` method.
MUON_METHODS = ("auto", *ORTHOGONALIZE_METHODS)
#: Accepted ``scale`` names (``None`` and callables are accepted too).
MUON_SCALES = ("spectral", "rms")
#: ``"auto"`` runs on the Gram matrix when ``max(m, n) / min(m, n)`` exceeds this ...
AUTO_GRAM_ASPECT_RATIO = 1.5
#: ... and ``min(m, n)`` is at least this.
AUTO_GRAM_MIN_SIDE = 128
#: Update RMS that the ``"rms"`` scale matches (AdamW's typical update RMS, Liu et al. 2025).
RMS_MATCH = 0.2

#: Path components (case-insensitive, Linen's ``_<n>`` suffix ignored) that :func:`muon_labels`
#: sends to AdamW: embeddings, output heads, and biases (``nnx.MultiHeadAttention`` has 2-D
#: ``[heads, head_dim]`` biases, which are not weight matrices).
MUON_EXCLUDED_NAMES = (
    "embed",
    "embedding",
    "embeddings",
    "embedder",
    "pos_embed",
    "pos_embedding",
    "position_embedding",
    "position_embeddings",
    "token_embed",
    "token_embedding",
    "tok_embeddings",
    "wte",
    "wpe",
    "unembed",
    "unembedding",
    "head",
    "lm_head",
    "logits",
    "output",
    "classifier",
    "bias",
)

_ATTENTION_PROJECTIONS = ("query", "key", "value")


class MuonDimensionNumbers(NamedTuple):
    """Which axes of a leaf form Muon's matrix: ``(prod(reduction), prod(output))``.

    Same meaning as ``optax.contrib.MuonDimensionNumbers`` (which optlab also accepts): for
    ``y = x W`` the reduction axes are contracted with the input and the output axes index
    ``y``. Axes in neither are batch axes: each slice along them is orthogonalized on its own.
    Negative axes count from the end.

    Example: stacked layers ``[layers, in, out]`` (``nnx.scan``) are
    ``MuonDimensionNumbers(reduction_axis=1, output_axis=2)``.
    """

    reduction_axis: int | Sequence[int] = 0
    output_axis: int | Sequence[int] = 1


class ScaleByMuonState(NamedTuple):
    """Muon's own state: the step count and the momentum (in ``mu_dtype``).

    :func:`scale_by_muon`'s state is ``SkipNonFiniteState(inner=ScaleByMuonState(...),
    skipped_steps)`` (optlab's NaN/Inf policy); :func:`muon` keeps it inside its partition.
    """

    count: jax.Array  # int32 scalar: update() calls so far
    mu: optax.Updates
    # The int32 scalars 0 .. 15: the rows at which each leaf's result is cut out of its
    # batched call are written with them, so that XLA compiles one such kernel per matrix
    # shape, not one per layer (common.runtime_digits says why).
    digits: tuple[jax.Array, ...] = ()


# -- validation (built on optlab._src.common) -----------------------------------------------------
def _check_method(method: Any) -> None:
    check_choice("method", method, MUON_METHODS)


def _check_steps(steps: Any) -> None:
    try:
        check_int("steps", steps, 1, allow_none=True)
    except ValueError as err:
        # The usual way to get here with a valid number: inject_hyperparams traced it.
        raise ValueError(
            f"{err} (the method's default when None); under "
            "optax.inject_hyperparams pass static_args=('steps',)"
        ) from None


def _check_coefficients(coefficients: Any, steps: int | None) -> None:
    accepted = (
        "coefficients must be None, 'newton_schulz', 'polar_express' or a non-empty "
        "sequence of finite (a, b, c) triples"
    )
    if coefficients is None:
        return
    if isinstance(coefficients, str):
        check_choice("coefficients", coefficients, ("newton_schulz", "polar_express"))
        return
    try:
        triples = [tuple(float(v) for v in c) for c in coefficients]
    except (TypeError, ValueError):
        triples = []
    if (
        not triples
        or any(len(t) != 3 for t in triples)
        or not all(math.isfinite(v) for t in triples for v in t)
    ):
        raise ValueError(f"{accepted}, got {coefficients!r}")
    if steps is not None and steps != len(triples):
        raise ValueError(f"steps={steps} does not match the {len(triples)} coefficient triples")


def _check_scale(scale: Any) -> None:
    if scale is None or callable(scale) or (isinstance(scale, str) and scale in MUON_SCALES):
        return
    raise ValueError(
        f"scale must be one of {MUON_SCALES}, None or a callable (fan_in, fan_out) -> float, "
        f"got {scale!r}"
    )


def _check_beta(name: str, value: Any) -> None:
    check_number(name, value, low=0.0, high=1.0, high_open=True)


def _check_orthogonalization(
    method: Any, steps: Any, coefficients: Any, compute_dtype: Any
) -> None:
    _check_method(method)
    _check_steps(steps)
    _check_coefficients(coefficients, steps)
    check_dtype("compute_dtype", compute_dtype)


# -- which axes form the matrix --------------------------------------------------------------------
def _is_dimension_numbers(x: Any) -> bool:
    """optlab's or optax's MuonDimensionNumbers (both are NamedTuples with these two fields)."""
    return isinstance(x, tuple) and hasattr(x, "reduction_axis") and hasattr(x, "output_axis")


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _path_names(path: Sequence[Any]) -> list[str]:
    return [_key_name(k) for k in path]


def _default_dimension_numbers(path: Sequence[Any], shape: tuple[int, ...]) -> MuonDimensionNumbers:
    ndim = len(shape)
    if ndim == 2:
        return MuonDimensionNumbers(0, 1)
    names = [n.lower() for n in _path_names(path)]
    if (
        ndim == 3
        and len(names) >= 2
        and "kernel" in names[-2:]
        and any(n in _ATTENTION_PROJECTIONS for n in names[-3:])
    ):
        # nnx.MultiHeadAttention's query/key/value kernels: [in, heads, head_dim].
        return MuonDimensionNumbers(0, (1, 2))
    # Flax convolution kernel [*spatial, in, out].
    return MuonDimensionNumbers(tuple(range(ndim - 1)), ndim - 1)


def _normalize_axes(axes: int | Sequence[int], ndim: int, what: str, where: str) -> tuple[int, ...]:
    axes = (axes,) if isinstance(axes, numbers.Integral) else tuple(axes)
    if not axes:
        raise ValueError(f"{where}: {what} is empty")
    out = []
    for a in axes:
        if not isinstance(a, numbers.Integral) or not -ndim <= a < ndim:
            raise ValueError(f"{where}: {what} {a!r} is out of range for rank {ndim}")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{where}: {what} {axes} repeats an axis")
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """How one leaf maps to a (batch of) matrices ``batch_shape + (fan_in, fan_out)``."""

    shape: tuple[int, ...]
    perm: tuple[int, ...]
    batch_shape: tuple[int, ...]
    fan_in: int
    fan_out: int

    def to_matrix(self, x: jax.Array) -> jax.Array:
        if self.perm != tuple(range(len(self.perm))):
            x = jnp.transpose(x, self.perm)
        return x.reshape(self.batch_shape + (self.fan_in, self.fan_out))

    def from_matrix(self, y: jax.Array) -> jax.Array:
        permuted_shape = tuple(self.shape[a] for a in self.perm)
        y = y.reshape(permuted_shape)
        if self.perm != tuple(range(len(self.perm))):
            y = jnp.transpose(y, tuple(sorted(range(len(self.perm)), key=self.perm.__getitem__)))
        return y


def _make_plan(path: Sequence[Any], shape: tuple[int, ...], spec: Any) -> _Plan:
    where = f"leaf {jax.tree_util.keystr(tuple(path)) or '<root>'} of shape {shape}"
    if len(shape) < 2:
        raise ValueError(
            f"Muon got {where} (rank {len(shape)} < 2): Muon orthogonalizes matrices and kernels "
            "of rank >= 2 only. Send such leaves to another optimizer: optlab.muon does it via "
            "its labels (see optlab.muon_labels), or use optax.partition around scale_by_muon."
        )
    if callable(spec) and not _is_dimension_numbers(spec):
        spec = spec(jax.ShapeDtypeStruct(shape, jnp.float32))
    if spec is None:
        spec = _default_dimension_numbers(path, shape)
    if not _is_dimension_numbers(spec):
        raise ValueError(
            f"dimension_numbers for {where} must be a MuonDimensionNumbers, None or "
            f"a callable returning one, got {spec!r}"
        )
    ndim = len(shape)
    red = _normalize_axes(spec.reduction_axis, ndim, "reduction_axis", where)
    out = _normalize_axes(spec.output_axis, ndim, "output_axis", where)
    if set(red) & set(out):
        raise ValueError(f"{where}: reduction axes {red} and output axes {out} overlap")
    batch = tuple(a for a in range(ndim) if a not in red and a not in out)
    return _Plan(
        shape=shape,
        perm=batch + red + out,
        batch_shape=tuple(shape[a] for a in batch),
        fan_in=math.prod(shape[a] for a in red),
        fan_out=math.prod(shape[a] for a in out),
    )


class _Box:
    """Keeps a spec (possibly a NamedTuple or None) a single pytree leaf."""

    __slots__ = ("spec",)

    def __init__(self, spec: Any) -> None:
        self.spec = spec


def _leaf_specs(dimension_numbers: Any, updates: Params, n_leaves: int) -> list[Any]:
    """One spec (MuonDimensionNumbers, per-leaf callable or None) per leaf of ``updates``."""
    dn = dimension_numbers
    if callable(dn) and not _is_dimension_numbers(dn):
        dn = dn(updates)  # optax's convention: a function of the whole tree
    if dn is None or _is_dimension_numbers(dn) or callable(dn):
        return [dn] * n_leaves

    def is_spec(x: Any) -> bool:
        return x is None or _is_dimension_numbers(x) or callable(x)

    boxed = jax.tree.map(_Box, dn, is_leaf=is_spec)
    try:
        broadcast = jax.tree.map(
            lambda box, sub: jax.tree.map(lambda _: box, sub),
            boxed,
            updates,
            is_leaf=lambda x: isinstance(x, _Box),
        )
    except (ValueError, TypeError) as err:
        raise ValueError(
            "dimension_numbers must be None, a MuonDimensionNumbers, a callable, or a pytree of "
            f"those that is a prefix of the updates' tree ({err})"
        ) from None
    specs = [b.spec for b in jax.tree.leaves(broadcast, is_leaf=lambda x: isinstance(x, _Box))]
    assert len(specs) == n_leaves
    return specs


def resolve_method(
    method: str, shape: Sequence[int], dtype: Any = jnp.float32, compute_dtype: Any = None
) -> str:
    """The :func:`optlab.linalg.orthogonalize` method Muon runs for a ``shape[-2:]`` matrix.

    ``"auto"`` always iterates with Polar Express coefficients (Amsel et al. 2025; see
    :func:`auto_coefficients`), which converge to 1 instead of leaving the singular values in
    Newton-Schulz's ``[0.68, 1.13]`` band, and picks where to run them:

    * ``"gram_newton_schulz"`` when the aspect ratio ``K / k`` (``k = min(m, n)``,
      ``K = max(m, n)``) exceeds 1.5, ``k >= 128``, and the iteration runs in float32 or wider:
      ``T`` steps cost ``4 k^2 K + (8 T - 6) k^3`` FLOPs on the ``k x k`` Gram matrix against
      ``T (4 k^2 K + 2 k^3)`` for the plain iteration, fewer once ``K > 1.5 k`` (1.9x fewer
      for ``K = 4 k`` and Polar Express's 7 steps at ``k = 512``);
    * ``"polar_express"`` (the plain iteration) otherwise. Below ``k = 128`` both take
      microseconds, and the plain iteration is the more accurate one: the Gram form squares
      the condition number, so its float32 round-off is larger (measured on an 8 x 16 matrix:
      a 1e-6 relative input change moves the output by 1e-5 against 4e-6 for the plain
      iteration). Gram Newton-Schulz always computes in at least float32, so with a bfloat16
      ``compute_dtype`` the plain iteration in bfloat16 is the faster choice on accelerators.

    Other names are returned unchanged.
    """
    _check_method(method)
    if method != "auto":
        return method
    m, n = int(shape[-2]), int(shape[-1])
    k, big = min(m, n), max(m, n)
    wide = k >= AUTO_GRAM_MIN_SIDE and big / k > AUTO_GRAM_ASPECT_RATIO
    iteration_dtype = at_least_float32(dtype) if compute_dtype is None else compute_dtype
    full = jnp.dtype(iteration_dtype).itemsize >= 4
    return "gram_newton_schulz" if wide and full else "polar_express"


def auto_coefficients(method: str, coefficients: Any = None) -> Any:
    """The ``coefficients`` Muon passes to the kernel: ``"polar_express"`` for ``"auto"``
    (unless given), else ``coefficients`` (``None``: the method's own)."""
    if coefficients is None and method == "auto":
        return "polar_express"
    return coefficients


def _shape_scale(scale: str | ScaleFn | None, fan_in: int, fan_out: int) -> float:
    if scale is None:
        return 1.0
    if scale == "spectral":
        return math.sqrt(max(1.0, fan_out / fan_in))
    if scale == "rms":
        return RMS_MATCH * math.sqrt(max(fan_in, fan_out))
    return float(scale(fan_in, fan_out))  # type: ignore[operator]


def _orthogonalize_tree(
    updates: Params,
    *,
    method: str,
    steps: int | None,
    coefficients: Any,
    dimension_numbers: Any,
    compute_dtype: Any,
    scale: str | ScaleFn | None,
    out_dtypes: Sequence[Any] | None = None,
    digits: Sequence[jax.Array] = (),
) -> Params:
    """Orthogonalize (and shape-scale) every leaf; same-shape matrices share one batched call.

    ``out_dtypes``: the dtype of each output leaf (default: the input leaf's). A leaf with a
    zero-size axis has nothing to orthogonalize and gets a zero-size output. ``digits``:
    ``ScaleByMuonState.digits`` (rows written with them, see common.runtime_digits) or empty
    (constant rows).
    """
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(updates)
    if not leaves_with_path:
        return updates
    if out_dtypes is None:
        out_dtypes = [jnp.result_type(x) for _, x in leaves_with_path]
    specs = _leaf_specs(dimension_numbers, updates, len(leaves_with_path))
    plans = [
        _make_plan(path, tuple(jnp.shape(x)), spec)
        for (path, x), spec in zip(leaves_with_path, specs, strict=True)
    ]

    # Group the leaves' matrices by (wide shape, dtype, method): one orthogonalize call each.
    groups: dict[tuple[Any, ...], list[int]] = {}
    mats: list[jax.Array | None] = []
    for i, ((_, x), plan) in enumerate(zip(leaves_with_path, plans, strict=True)):
        x = jnp.asarray(x)
        if x.size == 0:
            mats.append(None)
            continue
        mat = plan.to_matrix(x)
        if plan.fan_in > plan.fan_out:  # (X^T)'s polar factor is (X's)^T: group tall with wide
            mat = jnp.swapaxes(mat, -1, -2)
        k, big = mat.shape[-2], mat.shape[-1]
        mats.append(mat.reshape((-1, k, big)))
        leaf_method = resolve_method(method, (k, big), x.dtype, compute_dtype)
        groups.setdefault((k, big, jnp.dtype(x.dtype), leaf_method), []).append(i)
    leaf_coefficients = auto_coefficients(method, coefficients)

    outs: list[jax.Array | None] = [None] * len(mats)
    for (_, _, _, leaf_method), members in groups.items():
        group = [mats[i] for i in members]
        stacked = group[0] if len(group) == 1 else jnp.concatenate(group, axis=0)
        ortho = orthogonalize(
            stacked,
            method=leaf_method,
            steps=steps,
            coefficients=leaf_coefficients,
            compute_dtype=compute_dtype,
        )
        offset = 0
        for i, mat in zip(members, group, strict=True):
            n = mat.shape[0]
            if len(members) == 1:
                outs[i] = ortho
            else:
                outs[i] = runtime_slice(ortho, offset, n, digits)
            offset += n

    new_leaves = []
    for (_, x), plan, y, dtype in zip(leaves_with_path, plans, outs, out_dtypes, strict=True):
        if y is None:  # zero-size leaf
            new_leaves.append(jnp.zeros(jnp.shape(x), dtype))
            continue
        if plan.fan_in > plan.fan_out:
            y = jnp.swapaxes(y, -1, -2)
        y = plan.from_matrix(y.reshape(plan.batch_shape + (plan.fan_in, plan.fan_out)))
        factor = _shape_scale(scale, plan.fan_in, plan.fan_out)
        if factor != 1.0:
            y = y * jnp.asarray(factor, y.dtype)
        new_leaves.append(y.astype(dtype))
    return jax.tree.unflatten(treedef, new_leaves)


# -- transforms ------------------------------------------------------------------------------------
def _checked_init(init: Callable[[Params], Any], transform: str) -> Callable[[Params], Any]:
    """``init`` that first rejects non-floating parameter leaves (common.check_leaf_dtypes)."""

    def init_fn(params: Params) -> Any:
        check_leaf_dtypes(params, transform)
        return init(params)

    return init_fn


def _orthogonalize_muon_raw(
    method: str, steps: int | None, dimension_numbers: Any, compute_dtype: Any, coefficients: Any
) -> optax.GradientTransformation:
    def init_fn(params: Params) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates: optax.Updates, state: optax.EmptyState, params: Params = None):
        del params
        new = _orthogonalize_tree(
            updates,
            method=method,
            steps=steps,
            coefficients=coefficients,
            dimension_numbers=dimension_numbers,
            compute_dtype=compute_dtype,
            scale=None,
        )
        return new, state

    return optax.GradientTransformation(
        _checked_init(init_fn, "optlab.orthogonalize_muon"), update_fn
    )


def orthogonalize_muon(
    method: str = "auto",
    *,
    steps: int | None = None,
    dimension_numbers: Any = None,
    compute_dtype: Any = None,
    coefficients: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Replaces every matrix-like leaf of the updates by its orthogonal polar factor ``U V^T``.

    For each leaf the axes given by its dimension numbers are flattened into a matrix ``X`` of
    shape ``(fan_in, fan_out)`` (batch axes stay batch axes), ``X = U S V^T`` is replaced by (an
    approximation of) ``U V^T``, and the result is reshaped back. See the module docstring for
    the default layouts (2-D matrices, Flax conv kernels, ``nnx.MultiHeadAttention``
    projections).

    Follows optlab's NaN/Inf policy: a non-finite input or output skips the step (zero output,
    ``skipped_steps`` + 1 in its :class:`~optlab._src.common.SkipNonFiniteState`). Inside a
    chain of your own, the transforms after it still run on that zero update (a momentum after
    it decays); wrap the whole chain in ``optlab.skip_nonfinite`` to skip the entire
    step instead.

    Args:
      method: ``"auto"`` (default, see :func:`resolve_method`), ``"newton_schulz"``,
        ``"polar_express"``, ``"gram_newton_schulz"`` or ``"svd"`` (exact, slow: for tests).
      steps: iterations of the polynomial methods; ``None`` takes the method's default (5 for
        the Newton-Schulz variants; Polar Express picks its count from the matrix shape).
      dimension_numbers: how leaves map to matrices. ``None``: the default layouts. A
        :class:`MuonDimensionNumbers` (optlab's or ``optax.contrib``'s): for every leaf. A
        pytree (a prefix of the updates' tree) whose leaves are ``MuonDimensionNumbers``,
        ``None`` (the default layout for that subtree; note: optax uses ``None`` for "not a
        Muon parameter", optlab routes with labels instead) or per-leaf callables
        ``leaf -> MuonDimensionNumbers`` (called with a ``jax.ShapeDtypeStruct``). Or a callable
        ``updates -> any of the above`` (optax's convention).
      compute_dtype: dtype of the iteration. ``None``: the update's dtype promoted to at least
        float32 (right on CPU); ``jnp.bfloat16`` is the usual choice on GPUs and TPUs.
      coefficients: override the polynomial methods' per-step ``(a, b, c)``: ``"newton_schulz"``,
        ``"polar_express"`` or a sequence of triples (see :func:`optlab.linalg.orthogonalize`).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      ``SkipNonFiniteState(inner=optax.EmptyState(), skipped_steps)``. ``init`` raises
      ``ValueError`` naming a non-floating leaf; ``update`` raises ``ValueError`` naming the
      leaf when a leaf has rank < 2.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optax.chain(optlab.orthogonalize_muon(method="svd"), optax.scale(-0.1))
      >>> grads = {"w": jnp.array([[3.0, 0.0], [0.0, 0.5]])}  # U V^T = I
      >>> updates, _ = tx.update(grads, tx.init(grads))
      >>> bool(jnp.allclose(updates["w"], -0.1 * jnp.eye(2), atol=1e-6))
      True
    """
    _check_orthogonalization(method, steps, coefficients, compute_dtype)
    return skip_nonfinite(
        _orthogonalize_muon_raw(method, steps, dimension_numbers, compute_dtype, coefficients)
    )


def _scale_by_muon_raw(
    beta: Any,
    nesterov: bool,
    method: str,
    steps: int | None,
    scale: Any,
    mu_dtype: Any,
    compute_dtype: Any,
    dimension_numbers: Any,
    coefficients: Any,
) -> optax.GradientTransformation:
    """:func:`scale_by_muon` without the NaN/Inf guard (for :func:`muon`, which guards once)."""

    def init_fn(params: Params) -> ScaleByMuonState:
        mu = optax.tree.zeros_like(params, dtype=mu_dtype)
        return ScaleByMuonState(count=jnp.zeros([], jnp.int32), mu=mu, digits=runtime_digits())

    def update_fn(updates: optax.Updates, state: ScaleByMuonState, params: Params = None):
        del params
        momentum = optax.trace(decay=beta, nesterov=nesterov, accumulator_dtype=mu_dtype)
        direction, trace_state = momentum.update(updates, optax.TraceState(trace=state.mu))
        # The direction keeps the momentum's precision (e.g. a float32 mu_dtype with bfloat16
        # gradients) until the iteration; only the output comes back in the gradient's dtype.
        out_dtypes = [jnp.result_type(g) for g in jax.tree.leaves(updates)]
        new = _orthogonalize_tree(
            direction,
            method=method,
            steps=steps,
            coefficients=coefficients,
            dimension_numbers=dimension_numbers,
            compute_dtype=compute_dtype,
            scale=scale,
            out_dtypes=out_dtypes,
            digits=state.digits,
        )
        count = optax.safe_increment(state.count)
        return new, ScaleByMuonState(count=count, mu=trace_state.trace, digits=state.digits)

    return optax.GradientTransformation(_checked_init(init_fn, "optlab.scale_by_muon"), update_fn)


def _momentum_limit(beta: Any, mu_dtype: Any) -> Callable[[jax.Array], jax.Array]:
    """The largest ``|G|`` a Muon leaf admits: ``(1 - beta) M / 4`` (``M`` the momentum dtype's
    largest value). Admitting only such gradients keeps ``|M_t| <= beta M/2 + (1 - beta) M/4
    <= M/2`` true for ever from ``M_0 = 0``, and the Nesterov direction ``G + beta M_t`` below
    ``M``: the momentum cannot overflow, which is known before the step (no copy of the old
    state kept to undo it). float32: 4e36 at ``beta = 0.95``."""

    def limit(g: jax.Array) -> jax.Array:
        largest = float(jnp.finfo(g.dtype if mu_dtype is None else mu_dtype).max)
        # In the gradient's precision: float64's bound does not fit float32.
        return HEADROOM * (1 - jnp.asarray(beta, at_least_float32(g.dtype))) * largest

    return limit


def _adam_limit(mu_dtype: Any) -> Callable[[jax.Array], float]:
    """The largest ``|G|`` an AdamW leaf admits: ``G^2 <= M / 4`` for its second moment (an
    average of squares: it then stays below ``M``), ``|G| <= M_mu / 4`` for its first. float32:
    9.2e18 (a gradient whose square overflows is skipped, as it would poison ``v``)."""

    def limit(g: jax.Array) -> float:
        largest = float(jnp.finfo(g.dtype).max)
        mu_largest = largest if mu_dtype is None else float(jnp.finfo(mu_dtype).max)
        return min(HEADROOM * mu_largest, math.sqrt(HEADROOM * largest))

    return limit


def _alias_is_safe(beta: Any, mu_dtype: Any, param_labels: Any) -> Callable[..., jax.Array]:
    """``step_is_safe`` of :func:`muon`: each leaf's gradient within its optimizer's bound."""
    limits = {"muon": _momentum_limit(beta, mu_dtype), "adam": _adam_limit(mu_dtype)}

    def safe(grads: optax.Updates, state: optax.OptState) -> jax.Array:
        del state
        labels = param_labels(grads) if callable(param_labels) else param_labels
        leaves, treedef = jax.tree.flatten(grads)
        checks = [
            max_abs_within(g, limits[label])
            for g, label in zip(leaves, treedef.flatten_up_to(labels), strict=True)
        ]
        return combine(checks, jnp.all) if checks else jnp.asarray(True)

    return safe


def _update_bounded(scale: Any, coefficients: Any) -> bool:
    """Whether Muon's update is finite for every finite direction, so the guard need not check
    it: the polar factor (its iterations normalize first, over the whole float range) has unit
    singular values, and the built-in scales are finite. Custom coefficients (an iteration that
    may diverge) or a custom scale are checked after each step instead."""
    return coefficients is None and not callable(scale)


def _check_scale_by_muon(
    beta: Any,
    nesterov: Any,
    method: Any,
    steps: Any,
    scale: Any,
    mu_dtype: Any,
    compute_dtype: Any,
    coefficients: Any,
) -> None:
    _check_beta("beta", beta)
    check_bool("nesterov", nesterov)
    _check_orthogonalization(method, steps, coefficients, compute_dtype)
    _check_scale(scale)
    check_dtype("mu_dtype", mu_dtype)


def scale_by_muon(
    beta: float | jax.Array = 0.95,
    *,
    nesterov: bool = True,
    method: str = "auto",
    steps: int | None = None,
    scale: str | ScaleFn | None = "spectral",
    mu_dtype: Any = None,
    compute_dtype: Any = None,
    dimension_numbers: Any = None,
    coefficients: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Muon's direction: momentum, then orthogonalization, then a shape scale.

    With ``G`` the incoming update (the gradient) of a leaf:

    .. math::

        M_t = \beta M_{t-1} + G_t, \quad
        N_t = G_t + \beta M_t \text{ (nesterov) or } M_t, \quad
        \text{out}_t = s(\text{fan}_\text{in}, \text{fan}_\text{out})\; \text{polar}(N_t).

    The momentum is not bias-corrected (the reference form; ``optax.trace`` computes it).
    The output is a descent direction with unit singular values, not yet scaled by a learning
    rate or negated: chain it with ``optax.scale_by_learning_rate``. Every leaf that reaches it
    must be a matrix or kernel (rank >= 2); use :func:`muon` or ``optax.partition`` to send the
    other leaves elsewhere.

    Follows optlab's NaN/Inf policy: a step whose gradient, new momentum or output is not
    finite is skipped (zero output, momentum and count unchanged, ``skipped_steps`` + 1). The
    transforms after it in a chain of your own still see that zero update; wrap the whole chain
    in ``optlab.skip_nonfinite`` (as :func:`muon` does) to freeze them too.

    Args:
      beta: momentum decay in ``[0, 1)``; may be a jax scalar (``optax.inject_hyperparams``).
      nesterov: use the Nesterov form ``G + beta M`` (default) instead of ``M``.
      method, steps, dimension_numbers, compute_dtype, coefficients: as in
        :func:`orthogonalize_muon`.
      scale: ``"spectral"`` (``sqrt(max(1, fan_out / fan_in))``, default), ``"rms"``
        (``0.2 sqrt(max(fan_in, fan_out))``, update RMS 0.2 like AdamW's, to share AdamW's
        learning rate), ``None`` (no scale), or a callable ``(fan_in, fan_out) -> float``.
        For conv kernels ``fan_in = prod(spatial) * in`` and ``fan_out = out``.
      mu_dtype: dtype of the momentum (``None``: the parameters' dtype). The output has the
        gradient's dtype.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      ``SkipNonFiniteState(inner=ScaleByMuonState(count, mu), skipped_steps)``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> params = {"w": jnp.ones((4, 8)), "b": jnp.zeros(8)}
      >>> tx = optax.chain(
      ...     optax.partition({"muon": optlab.scale_by_muon(), "adam": optax.scale_by_adam()},
      ...                     optlab.muon_labels),
      ...     optax.scale_by_learning_rate(0.02))
      >>> loss = lambda p: jnp.sum((jnp.arange(4.0) @ p["w"] + p["b"] - 1.0) ** 2)
      >>> updates, state = tx.update(jax.grad(loss)(params), tx.init(params), params)
      >>> params = optax.apply_updates(params, updates)
    """
    _check_scale_by_muon(
        beta, nesterov, method, steps, scale, mu_dtype, compute_dtype, coefficients
    )
    return skip_nonfinite(
        _scale_by_muon_raw(
            beta,
            nesterov,
            method,
            steps,
            scale,
            mu_dtype,
            compute_dtype,
            dimension_numbers,
            coefficients,
        ),
        step_is_safe=lambda grads, state: max_abs_within(grads, _momentum_limit(beta, mu_dtype)),
        check_updates=not _update_bounded(scale, coefficients),
    )


# -- labels ----------------------------------------------------------------------------------------
_LINEN_SUFFIX = re.compile(r"_\d+$")


def _excluded(path: Sequence[Any], names: frozenset[str]) -> bool:
    for name in _path_names(path):
        low = name.lower()
        if low in names or _LINEN_SUFFIX.sub("", low) in names:
            return True
    return False


def muon_labels(params: Params, *, exclude: Iterable[str] = MUON_EXCLUDED_NAMES) -> Params:
    """Labels ``"muon"`` / ``"adam"`` for each leaf of ``params``, by shape and by path.

    A leaf goes to ``"adam"`` when its rank is < 2 (biases, norm scales, scalars) or when a
    component of its path, lower-cased and with Linen's ``_<n>`` suffix removed (``Embed_0``),
    equals one of ``exclude`` (default :data:`MUON_EXCLUDED_NAMES`: embeddings such as Flax's
    ``nnx.Embed`` ``embedding`` or a module named ``embed``, output heads such as ``head``,
    ``lm_head``, ``logits``, ``output``, ``classifier``, and ``bias``). Every other leaf (hidden
    weight matrices, conv kernels) goes to ``"muon"``. Works on dicts, ``nnx.State`` and any
    pytree; only shapes and key paths are read.

    The first conv layer of a ConvNet is also best left to AdamW (Jordan 2024); add its name:
    ``muon_labels(params, exclude=(*optlab.MUON_EXCLUDED_NAMES, "stem"))``.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> params = {"embed": {"embedding": jnp.zeros((100, 16))},
      ...           "hidden": {"kernel": jnp.zeros((16, 32)), "bias": jnp.zeros(32)},
      ...           "head": {"kernel": jnp.zeros((32, 100))}}
      >>> optlab.muon_labels(params)
      {'embed': {'embedding': 'adam'}, 'head': {'kernel': 'adam'}, 'hidden': {'bias': 'adam', 'kernel': 'muon'}}
    """  # noqa: E501
    if isinstance(exclude, str):
        exclude = (exclude,)
    names = frozenset(n.lower() for n in exclude)

    def label(path: Sequence[Any], x: Any) -> str:
        if jnp.ndim(x) < 2 or _excluded(path, names):
            return "adam"
        return "muon"

    return jax.tree_util.tree_map_with_path(label, params)


# -- the full optimizer ----------------------------------------------------------------------------
def muon(
    learning_rate: optax.ScalarOrSchedule,
    *,
    beta: float | jax.Array = 0.95,
    nesterov: bool = True,
    weight_decay: float | jax.Array = 0.0,
    method: str = "auto",
    steps: int | None = None,
    scale: str | ScaleFn | None = "spectral",
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    adam_b1: float | jax.Array = 0.9,
    adam_b2: float | jax.Array = 0.95,
    adam_eps: float | jax.Array = 1e-8,
    adam_weight_decay: float | jax.Array = 0.0,
    labels: Any = None,
    mu_dtype: Any = None,
    compute_dtype: Any = None,
    dimension_numbers: Any = None,
    coefficients: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Muon for hidden weight matrices and conv kernels, AdamW for everything else.

    Built from optax pieces under optlab's NaN/Inf policy::

        skip_nonfinite(                                      # optlab._src.common
            optax.partition({
                "muon": optax.chain(scale_by_muon(beta, nesterov, method, steps, scale, ...),
                                    optax.add_decayed_weights(weight_decay),
                                    optax.scale_by_learning_rate(learning_rate)),
                "adam": optax.adamw(adam_learning_rate, adam_b1, adam_b2, adam_eps,
                                    weight_decay=adam_weight_decay),
            }, labels))

    (with one guard around everything, not one per part), so a Muon leaf moves by
    ``W <- W - lr (s U V^T + weight_decay W)`` (decoupled weight decay, ``W (1 - lr wd)``), see
    :func:`scale_by_muon`.

    A step whose gradient holds a NaN or an Inf, or whose new state or update would not be
    finite (e.g. a finite gradient of ~1e20 whose square overflows AdamW's second moment), is
    skipped: the update is exactly zero, the whole inner state is left as it was (the bad
    gradient never enters a momentum), and ``state.skipped_steps`` counts it.

    Args:
      learning_rate: Muon's learning rate, a float ``>= 0`` or an optax schedule (typical: 0.02
        with ``scale="spectral"``; about AdamW's with ``scale="rms"``).
      beta: momentum in ``[0, 1)``.
      nesterov: Nesterov momentum for Muon (AdamW's moments are plain).
      weight_decay: decoupled weight decay of the Muon leaves (default 0, as the reference).
      method, steps, scale, mu_dtype, compute_dtype, dimension_numbers, coefficients: see
        :func:`scale_by_muon` and :func:`orthogonalize_muon`.
      adam_learning_rate: AdamW's learning rate (float or schedule). ``None`` (default): the
        same as ``learning_rate``, which is what the ``"rms"`` scale is designed for; with the
        ``"spectral"`` scale pass AdamW's own (e.g. 3e-4 to 3e-3).
      adam_b1, adam_b2, adam_eps: AdamW's moments (``b1, b2`` in ``[0, 1)``, ``eps >= 0``);
        ``b2 = 0.95`` as in Liu et al. (2025).
      adam_weight_decay: AdamW's decoupled weight decay (default 0: embeddings, heads, biases
        and norm scales are not decayed).
      labels: which leaves Muon takes: a pytree of ``"muon"`` / ``"adam"`` (a prefix of the
        params, with the same container types: for ``nnx.State`` params use a callable), a
        callable ``params -> labels``, or ``None`` for :func:`muon_labels` (rank < 2,
        embeddings, heads and biases to AdamW; ``functools.partial(muon_labels, exclude=())``
        keeps only the rank rule). A ``"muon"`` leaf of rank < 2 raises ``ValueError`` naming
        it.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`~optlab._src.common.SkipNonFiniteState` (``inner``: the partition's state).
      ``init`` raises ``ValueError`` naming a parameter leaf that is not real floating.

    Works under ``jax.jit`` and with ``optax.inject_hyperparams(optlab.muon)(learning_rate=...,
    beta=..., weight_decay=...)``. There, integer ``steps`` and any callable ``labels``,
    ``scale`` or ``dimension_numbers`` must be declared static (inject_hyperparams treats
    numbers as hyperparameters and callables as schedules), e.g.
    ``optax.inject_hyperparams(optlab.muon, static_args=("steps", "labels"))``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> params = {"hidden": {"kernel": jnp.ones((8, 16)) / 4, "bias": jnp.zeros(16)},
      ...           "head": {"kernel": jnp.ones((16, 1)) / 4}}
      >>> x = jnp.linspace(-1.0, 1.0, 32).reshape(4, 8)
      >>> def loss(p):
      ...     h = jnp.tanh(x @ p["hidden"]["kernel"] + p["hidden"]["bias"])
      ...     return jnp.mean((h @ p["head"]["kernel"] - 1.0) ** 2)
      >>> tx = optlab.muon(learning_rate=0.02, adam_learning_rate=1e-3)
      >>> state = tx.init(params)
      >>> for _ in range(3):
      ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> int(state.skipped_steps)
      0
    """
    check_learning_rate(learning_rate)
    if adam_learning_rate is not None:
        check_learning_rate(adam_learning_rate, "adam_learning_rate")
    check_number("weight_decay", weight_decay, low=0.0)
    _check_beta("adam_b1", adam_b1)
    _check_beta("adam_b2", adam_b2)
    check_number("adam_eps", adam_eps, low=0.0)
    check_number("adam_weight_decay", adam_weight_decay, low=0.0)
    _check_scale_by_muon(
        beta, nesterov, method, steps, scale, mu_dtype, compute_dtype, coefficients
    )
    if adam_learning_rate is None:
        adam_learning_rate = learning_rate
    param_labels = muon_labels if labels is None else labels

    tx = optax.partition(
        {
            "muon": optax.chain(
                _scale_by_muon_raw(
                    beta,
                    nesterov,
                    method,
                    steps,
                    scale,
                    mu_dtype,
                    compute_dtype,
                    dimension_numbers,
                    coefficients,
                ),
                optax.add_decayed_weights(weight_decay),
                optax.scale_by_learning_rate(learning_rate),
            ),
            "adam": optax.adamw(
                learning_rate=adam_learning_rate,
                b1=adam_b1,
                b2=adam_b2,
                eps=adam_eps,
                weight_decay=adam_weight_decay,
                mu_dtype=mu_dtype,
            ),
        },
        param_labels,
    )

    def update_fn(updates: optax.Updates, state: optax.OptState, params: Params = None):
        # AdamW with a wider mu_dtype (float32 moments of bfloat16 parameters) computes its
        # update in that dtype; the alias hands back updates in the gradient's dtype.
        new_updates, new_state = tx.update(updates, state, params)
        new_updates = jax.tree.map(lambda u, g: u.astype(jnp.result_type(g)), new_updates, updates)
        return new_updates, new_state

    return skip_nonfinite(
        optax.GradientTransformation(_checked_init(tx.init, "optlab.muon"), update_fn),
        step_is_safe=_alias_is_safe(beta, mu_dtype, param_labels),
        # AdamW's update m / (sqrt(v) + eps) is 0/0 where a gradient is zero if eps is 0.
        check_updates=not (
            _update_bounded(scale, coefficients)
            and isinstance(adam_eps, numbers.Real)
            and adam_eps > 0
        ),
    )
