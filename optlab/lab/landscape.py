"""Loss landscapes: 1D and 2D slices of the loss around a solution (Li et al. 2018).

The loss L is evaluated on a grid of points ``w + a d1`` (1D) or ``w + a d1 + b d2`` (2D)
around trained weights w, along directions d1, d2 with the shape of the parameter tree.

**Random directions with filter normalization** (Li et al. 2018, sec. 4, as their reference
code ``net_plotter.py`` does it). Each direction is a zero-mean Gaussian draw, one entry per
parameter, then rescaled tensor by tensor:

* a tensor with ndim >= 2 is cut into its output *filters*; each filter d_i of the direction
  is rescaled to the norm of the matching filter w_i of the weights,
  ``d_i <- d_i * ||w_i|| / (||d_i|| + 1e-10)``. A filter is one output filter of a
  convolution (Flax kernel ``(kh, kw, in, out)``: the slice ``[..., i]``), one output neuron
  of a dense layer (Flax kernel ``(in, out)``: the column ``[:, i]``; Li et al.'s README: a
  filter "contains the weights that contribute to a single neuron") and one row of an
  embedding table (``nnx.Embed``'s ``embedding``, ``(num, features)``). PyTorch stores the
  output axis first, so the reference loops over dim 0; Flax stores it last, so here the
  filter axis is -1 except for embeddings (``filter_axis`` overrides it);
* a tensor with ndim <= 1 (biases, BatchNorm and LayerNorm scales and shifts) gets a **zero**
  direction with ``ignore="biasbn"`` (the recommended setting, the default here); with
  ``ignore=None`` the direction is set equal to the weight itself, as in the reference.

Filter normalization removes the scale invariance of ReLU/BatchNorm networks (multiplying a
filter by c and dividing the next layer by c changes nothing but would change an unnormalized
plot), so landscapes of different networks, e.g. trained by SGD and by SAM, can be compared
on the same axes. The ``loss-landscapes`` PyPI package deviates from this: uniform [0, 1]
directions instead of Gaussian, one Gram-Schmidt step, a global rescaling to
``model_norm * distance / steps`` after the filter normalization, 1-D tensors normalized
rather than zeroed, and a grid shifted by half its steps. None of that is done here.

**BatchNorm statistics.** Directions perturb the trainable parameters (``nnx.Param``) only;
the running statistics (``nnx.BatchStat``) stay those of the trained model (Li et al.'s
default ``dir_type='weights'``). The loss is evaluated by the model *as given*: in eval mode
(``model.eval()``, what Li et al.'s ``eval_loss`` does) BatchNorm normalizes with those
stored statistics, which belong to w and not to the perturbed point; in train mode it uses
each batch's own statistics, which follow the perturbation. The reference README warns that
this choice matters when two solutions share a plot: use the same mode for both.

**Trajectory directions** (Li et al. sec. 7, ``setup_PCA_directions``). Random directions in
a high-dimensional space are nearly orthogonal to the optimization path, so the path is
plotted in the plane of its two principal components: the rows ``w_i - w_final`` over the
checkpoints (entries of 1-D tensors zeroed with ``ignore="biasbn"``) go through PCA as
scikit-learn does it (rows centered, SVD); the directions are the top right singular vectors
(orthonormal), the explained-variance ratio is ``s_k^2 / sum_j s_j^2``, and each checkpoint is
projected as the least-squares coordinates of ``w_i - w_final`` (for orthonormal directions:
dot products, the reference's ``cos`` method).

**Evaluation.** The grid is cut into chunks of points; each chunk is one jitted call that
``jax.vmap``-s the loss over its points (a chunk holds as many points as the memory budget
allows: the per-point temporary memory is read from XLA's memory analysis of one compiled
evaluation). Data given as several batches is averaged with weights (default: equal).

References:
  - Li, Xu, Taylor, Studer, Goldstein, "Visualizing the Loss Landscape of Neural Nets",
    NeurIPS 2018 (code: github.com/tomgoldstein/loss-landscape, ``net_plotter.py``,
    ``projection.py``, ``plot_surface.py``).
  - Foret, Kleiner, Mobahi, Neyshabur, "Sharpness-Aware Minimization for Efficiently Improving
    Generalization", ICLR 2021 (flat versus sharp minima).

Example:
  >>> import jax, jax.numpy as jnp, optax
  >>> from flax import nnx
  >>> from optlab.lab import landscape
  >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  >>> x, y = jnp.ones((8, 3)), jnp.zeros(8, jnp.int32)
  >>> loss = lambda m, b: optax.softmax_cross_entropy_with_integer_labels(m(b[0]), b[1]).mean()
  >>> land = landscape.landscape_1d(model, loss, (x, y), key=jax.random.key(0), num=5)
  >>> land.losses.shape, float(land.coords[0][2])
  ((5,), 0.0)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from optlab._src.common import check_choice, check_int, check_number

Params = Any
Batch = Any
ParamsLossFn = Callable[[Params, Batch], jax.Array]
ModelLossFn = Callable[[nnx.Module, Batch], jax.Array]

__all__ = [
    "NORMS",
    "Landscape",
    "TrajectoryPCA",
    "filter_axis_flax",
    "functional_loss",
    "landscape_1d",
    "landscape_2d",
    "loss_surface",
    "normalize_direction",
    "project",
    "random_direction",
    "span_from_coords",
    "sublevel_area",
    "sublevel_width",
    "trajectory_pca",
]

NORMS = ("filter", "layer", "weight", "dfilter", "dlayer")
"""Direction normalizations of Li et al.'s ``normalize_direction``."""

_IGNORE = ("biasbn", None)
_EPS = 1e-10  # the reference's guard against a zero filter of the direction


class Landscape(NamedTuple):
    """Losses on a 1D or 2D grid.

    Attributes:
      coords: one array of coefficients per direction: ``(a,)`` or ``(a, b)``.
      losses: ``(len(a),)`` for 1D, ``(len(a), len(b))`` for 2D (``losses[i, j]`` is the loss
        at ``w + a[i] d1 + b[j] d2``).
      directions: the direction trees used (as given, or drawn and normalized).
    """

    coords: tuple[np.ndarray, ...]
    losses: np.ndarray
    directions: tuple[Params, ...]


class TrajectoryPCA(NamedTuple):
    """PCA of a training trajectory (rows ``w_i - w_final``).

    Attributes:
      directions: the ``n_components`` principal directions, unit-norm orthogonal trees.
      explained_variance: ``s_k^2 / (m - 1)`` over the ``m`` checkpoints (scikit-learn's).
      explained_variance_ratio: ``s_k^2 / sum_j s_j^2``.
      coords: ``(m, n_components)``, each checkpoint's ``w_i - w_final`` projected on them.
    """

    directions: tuple[Params, ...]
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    coords: np.ndarray


# -- directions --------------------------------------------------------------------------------


def _path_names(path: tuple[Any, ...]) -> list[str]:
    names = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                names.append(str(getattr(k, attr)))
                break
    return names


def filter_axis_flax(path: tuple[Any, ...], leaf: Any) -> int:
    """The output (filter) axis of a Flax parameter: 0 for embedding tables, else -1.

    Flax's dense kernels are ``(in, out)`` and its convolution kernels ``(kh, kw, in, out)``:
    the output neuron or filter is the last axis. ``nnx.Embed`` stores ``(num, features)``,
    one row per token, which PyTorch (and so the reference code's loop over dim 0) also
    treats as one filter.
    """
    del leaf
    return 0 if "embedding" in _path_names(path) else -1


def _normalize_leaf(d: jax.Array, w: jax.Array, norm: str, axis: int) -> jax.Array:
    if norm == "layer":
        return d * (jnp.linalg.norm(w) / jnp.linalg.norm(d))
    if norm == "dlayer":
        return d / jnp.linalg.norm(d)
    if norm == "weight":
        return d * w
    axis = axis % d.ndim
    others = tuple(i for i in range(d.ndim) if i != axis)
    d_norm = jnp.sqrt(jnp.sum(d * d, axis=others, keepdims=True))
    if norm == "dfilter":
        return d / (d_norm + _EPS)
    w_norm = jnp.sqrt(jnp.sum(w * w, axis=others, keepdims=True))
    return d * (w_norm / (d_norm + _EPS))


def normalize_direction(
    direction: Params,
    params: Params,
    *,
    norm: str = "filter",
    ignore: str | None = "biasbn",
    filter_axis: int | Callable[[tuple[Any, ...], Any], int] | None = None,
) -> Params:
    """Rescale ``direction`` to ``params`` as Li et al.'s ``normalize_directions_for_weights``.

    Leaves with ndim <= 1 become zero (``ignore="biasbn"``) or a copy of the weight
    (``ignore=None``). Other leaves, by ``norm``: ``"filter"``: each filter d_i times
    ``||w_i|| / (||d_i|| + 1e-10)``; ``"layer"``: the whole tensor times ``||w|| / ||d||``;
    ``"weight"``: elementwise ``d * w``; ``"dfilter"``, ``"dlayer"``: unit filters / tensor.

    Args:
      direction: a tree like ``params``.
      params: the weights w.
      norm: one of :data:`NORMS`.
      ignore: ``"biasbn"`` or ``None``.
      filter_axis: the filter axis of a leaf, an int for every leaf or a function
        ``(key path, leaf) -> int``; default :func:`filter_axis_flax` (Flax's layouts).

    Returns:
      The normalized direction, a tree like ``params`` in their dtypes.
    """
    check_choice("norm", norm, NORMS)
    check_choice("ignore", ignore, _IGNORE)
    axis_fn = _axis_fn(filter_axis)

    def one(path, d, w):
        d, w = jnp.asarray(d), jnp.asarray(w)
        if d.shape != w.shape:
            raise ValueError(
                f"normalize_direction: direction leaf {jax.tree_util.keystr(path)} has shape "
                f"{d.shape}, the weight {w.shape}"
            )
        if w.ndim <= 1:
            return jnp.zeros_like(w) if ignore == "biasbn" else w
        return _normalize_leaf(d.astype(w.dtype), w, norm, axis_fn(path, w)).astype(w.dtype)

    return jax.tree_util.tree_map_with_path(one, direction, params)


def _axis_fn(filter_axis: Any) -> Callable[[tuple[Any, ...], Any], int]:
    if filter_axis is None:
        return filter_axis_flax
    if callable(filter_axis):
        return filter_axis
    check_int("filter_axis", filter_axis, -(2**31))
    return lambda path, leaf: int(filter_axis)


def random_direction(
    params: Params,
    key: jax.Array,
    *,
    norm: str = "filter",
    ignore: str | None = "biasbn",
    filter_axis: int | Callable[[tuple[Any, ...], Any], int] | None = None,
) -> Params:
    """A Gaussian direction normalized by :func:`normalize_direction` (filter-wise default).

    Every leaf is drawn from N(0, 1) with its own key (``fold_in(key, leaf index)``), as the
    reference's ``torch.randn`` per tensor.
    """
    leaves, treedef = jax.tree.flatten(params)
    draws = [
        jax.random.normal(jax.random.fold_in(key, i), jnp.shape(w), jnp.result_type(w))
        for i, w in enumerate(leaves)
    ]
    direction = jax.tree.unflatten(treedef, draws)
    return normalize_direction(direction, params, norm=norm, ignore=ignore, filter_axis=filter_axis)


# -- evaluation --------------------------------------------------------------------------------


def functional_loss(model: nnx.Module, loss_fn: ModelLossFn) -> tuple[ParamsLossFn, Params]:
    """``(f, params)`` with ``f(params, batch) = loss_fn(model with params, batch)``.

    The model is split into its ``nnx.Param`` state and the rest (BatchNorm statistics, RNG
    counters, ...), which ``f`` keeps fixed; each call runs on a fresh copy, so nothing is
    mutated (BatchNorm in train mode updates only the copy's statistics). The model's mode
    (``model.eval()`` / ``model.train()``) is kept: see the module docstring.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def f(p: Params, batch: Batch) -> jax.Array:
        return loss_fn(nnx.merge(graphdef, p, rest, copy=True), batch)

    return f, params


def _as_batches(data: Any) -> list[Any]:
    if isinstance(data, list):
        if not data:
            raise ValueError("data must hold at least one batch, got an empty list")
        return data
    return [data]


def _batch_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(
            f"weights must be {n} finite numbers >= 0 (one per batch) with a positive sum, "
            f"got {weights!r}"
        )
    return w / w.sum()


def _stack(trees: Sequence[Params]) -> Params:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _auto_chunk(
    loss_fn: ParamsLossFn, params: Params, batch: Batch, budget: int, n_points: int
) -> int:
    """Points per vmapped call: the memory budget over one point's temporaries + params."""
    leaves = jax.tree.leaves(params)
    param_bytes = sum(int(np.prod(jnp.shape(x))) * jnp.result_type(x).itemsize for x in leaves)
    try:
        stats = jax.jit(loss_fn).lower(params, batch).compile().memory_analysis()
        temp = int(stats.temp_size_in_bytes) if stats is not None else 0
    except Exception:  # noqa: BLE001 - a backend without memory analysis: guess
        temp = 0
    per_point = max(1, temp + param_bytes)
    return max(1, min(n_points, 256, budget // per_point))


def loss_surface(
    loss_fn: ParamsLossFn,
    params: Params,
    directions: Sequence[Params],
    coords: Any,
    data: Any,
    *,
    weights: Sequence[float] | None = None,
    chunk_size: int | None = None,
    memory_budget: int = 1 << 28,
    progress: Any = None,
) -> np.ndarray:
    """``sum_b weights_b * loss_fn(params + sum_k coords[p, k] directions[k], batch_b)``.

    Args:
      loss_fn: ``(params, batch) -> scalar`` (see :func:`functional_loss` for NNX models).
      params: the center w.
      directions: k trees like ``params``.
      coords: ``(P, k)`` coefficients (a ``(P,)`` array for k = 1).
      data: one batch, or a Python list of batches.
      weights: one weight per batch (normalized to sum 1; default equal).
      chunk_size: points per vmapped call; default from ``memory_budget``.
      memory_budget: bytes of temporaries one call may use when ``chunk_size`` is None.
      progress: a tqdm-like bar advanced by the number of points of each chunk.

    Returns:
      ``(P,)`` float64 losses. The origin evaluates ``params`` exactly (``w + 0 d = w``).
    """
    directions = list(directions)
    if not directions:
        raise ValueError("directions must hold at least one tree")
    c = np.asarray(coords, np.float64)
    if c.ndim == 1:
        c = c[:, None]
    if c.ndim != 2 or c.shape[1] != len(directions) or c.shape[0] < 1:
        raise ValueError(f"coords must have shape (P, {len(directions)}), got {np.shape(coords)}")
    batches = _as_batches(data)
    bw = _batch_weights(weights, len(batches))
    n = c.shape[0]
    if chunk_size is None:
        check_int("memory_budget", memory_budget, 1)
        chunk_size = _auto_chunk(loss_fn, params, batches[0], memory_budget, n)
    check_int("chunk_size", chunk_size, 1)
    chunk = min(chunk_size, n)
    stacked = _stack(directions)
    dtype = jnp.result_type(*jax.tree.leaves(params))

    @jax.jit
    def run(params, stacked, cs, batch):
        def at(ci):
            def shift(w, d):
                return (w + jnp.tensordot(ci.astype(d.dtype), d, axes=1)).astype(w.dtype)

            return loss_fn(jax.tree.map(shift, params, stacked), batch)

        return jax.vmap(at)(cs)

    out = np.zeros(n, np.float64)
    # The last chunk is padded with copies of its first point: one shape, one compile.
    for start in range(0, n, chunk):
        cs = c[start : start + chunk]
        real = cs.shape[0]
        if real < chunk:
            cs = np.concatenate([cs, np.repeat(cs[:1], chunk - real, axis=0)])
        cs_j = jnp.asarray(cs, dtype)
        for w_b, batch in zip(bw, batches, strict=True):
            vals = np.asarray(run(params, stacked, cs_j, batch), np.float64)
            out[start : start + real] += w_b * vals[:real]
        if progress is not None:
            progress.update(real)
    return out


def _grid(span: tuple[float, float], num: int, name: str) -> np.ndarray:
    if len(span) != 2:
        raise ValueError(f"{name} must be a pair (low, high), got {span!r}")
    lo, hi = span
    check_number(f"{name}[0]", lo)
    check_number(f"{name}[1]", hi, low=lo, low_open=True)
    check_int(f"num ({name})", num, 2)
    return np.linspace(lo, hi, num)


def landscape_1d(
    model: nnx.Module,
    loss_fn: ModelLossFn,
    data: Any,
    *,
    direction: Params | None = None,
    key: jax.Array | None = None,
    span: tuple[float, float] = (-1.0, 1.0),
    num: int = 51,
    norm: str = "filter",
    ignore: str | None = "biasbn",
    weights: Sequence[float] | None = None,
    chunk_size: int | None = None,
    progress: Any = None,
) -> Landscape:
    """The loss along ``w + a d`` for ``a`` in ``linspace(*span, num)`` (Li et al.: -1:1:51).

    Args:
      model: the trained NNX model (its mode decides how BatchNorm evaluates).
      loss_fn: ``(model, batch) -> scalar``.
      data: one batch or a list of batches.
      direction: a tree like the model's ``nnx.Param`` state, used as given; default a
        :func:`random_direction` from ``key`` with ``norm`` and ``ignore``.
      key: PRNG key for the random direction (default ``jax.random.key(0)``).
      span, num: the grid.
      weights, chunk_size, progress: see :func:`loss_surface`.
    """
    f, params = functional_loss(model, loss_fn)
    a = _grid(span, num, "span")
    if direction is None:
        key = jax.random.key(0) if key is None else key
        direction = random_direction(params, key, norm=norm, ignore=ignore)
    losses = loss_surface(
        f, params, [direction], a, data, weights=weights, chunk_size=chunk_size, progress=progress
    )
    return Landscape((a,), losses, (direction,))


def landscape_2d(
    model: nnx.Module,
    loss_fn: ModelLossFn,
    data: Any,
    *,
    directions: tuple[Params, Params] | None = None,
    key: jax.Array | None = None,
    xspan: tuple[float, float] = (-1.0, 1.0),
    yspan: tuple[float, float] = (-1.0, 1.0),
    num: int | tuple[int, int] = 51,
    norm: str = "filter",
    ignore: str | None = "biasbn",
    weights: Sequence[float] | None = None,
    chunk_size: int | None = None,
    progress: Any = None,
) -> Landscape:
    """The loss on ``w + a d1 + b d2`` over the grid ``xspan x yspan`` (``num`` points each).

    ``directions`` (e.g. :func:`trajectory_pca`'s) are used as given; by default two
    :func:`random_direction` draws from ``fold_in(key, 0)`` and ``fold_in(key, 1)``.
    Returns ``losses[i, j]`` at ``(a[i], b[j])``; other arguments as :func:`landscape_1d`.
    """
    nx, ny = (num, num) if isinstance(num, int) else num
    f, params = functional_loss(model, loss_fn)
    a, b = _grid(xspan, nx, "xspan"), _grid(yspan, ny, "yspan")
    if directions is None:
        key = jax.random.key(0) if key is None else key
        directions = tuple(
            random_direction(params, jax.random.fold_in(key, i), norm=norm, ignore=ignore)
            for i in range(2)
        )
    if len(directions) != 2:
        raise ValueError(f"directions must be two trees, got {len(directions)}")
    aa, bb = np.meshgrid(a, b, indexing="ij")
    coords = np.stack([aa.ravel(), bb.ravel()], axis=1)
    losses = loss_surface(
        f,
        params,
        directions,
        coords,
        data,
        weights=weights,
        chunk_size=chunk_size,
        progress=progress,
    )
    return Landscape((a, b), losses.reshape(nx, ny), tuple(directions))


# -- trajectories ------------------------------------------------------------------------------


def _flat64(tree: Params) -> np.ndarray:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return np.zeros(0)
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in leaves])


def _unflatten_like(vec: np.ndarray, like: Params) -> Params:
    leaves, treedef = jax.tree.flatten(like)
    out, i = [], 0
    for x in leaves:
        size = int(np.prod(jnp.shape(x)))
        out.append(jnp.asarray(vec[i : i + size].reshape(jnp.shape(x)), jnp.result_type(x)))
        i += size
    return jax.tree.unflatten(treedef, out)


def _ignore_mask(like: Params, ignore: str | None) -> np.ndarray:
    parts = [
        np.full(int(np.prod(jnp.shape(x))), not (ignore == "biasbn" and jnp.ndim(x) <= 1))
        for x in jax.tree.leaves(like)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, bool)


def project(diffs: Sequence[Params], directions: Sequence[Params]) -> np.ndarray:
    """Least-squares coordinates ``(m, k)`` of each ``diffs[i]`` in span(``directions``).

    Float64 on the host. For orthonormal directions these are the dot products (the
    reference's ``cos`` projection); for any independent directions, ``lstsq``.
    """
    d = np.stack([_flat64(t) for t in directions], axis=1)  # (n, k)
    x = np.stack([_flat64(t) for t in diffs], axis=1)  # (n, m)
    coef, *_ = np.linalg.lstsq(d, x, rcond=None)
    return coef.T


def trajectory_pca(
    checkpoints: Sequence[Params],
    final: Params,
    *,
    n_components: int = 2,
    ignore: str | None = "biasbn",
) -> TrajectoryPCA:
    """PCA directions of a training trajectory and its projection (Li et al. sec. 7).

    Rows ``w_i - w_final`` (float64; entries of ndim <= 1 leaves zeroed with
    ``ignore="biasbn"``) are centered and decomposed by SVD, as scikit-learn's PCA: the
    directions are the top right singular vectors, ``explained_variance_ratio_k =
    s_k^2 / sum_j s_j^2`` and ``explained_variance_k = s_k^2 / (m - 1)``. The coordinates are
    :func:`project` of the (uncentered) rows, so ``final`` sits at the origin.

    Args:
      checkpoints: m >= 2 trees like ``final`` (the path; ``final`` itself may be included).
      final: the weights at the end of training (the landscape's center).
      n_components: number of directions, 1 <= n_components <= min(m, n).
      ignore: ``"biasbn"`` or ``None``.
    """
    check_choice("ignore", ignore, _IGNORE)
    m = len(checkpoints)
    if m < 2:
        raise ValueError(f"trajectory_pca: checkpoints must hold at least 2 trees, got {m}")
    w_final = _flat64(final)
    check_int("n_components", n_components, 1)
    if n_components > min(m, w_final.size):
        raise ValueError(
            f"n_components must be in [1, min(checkpoints = {m}, parameters = "
            f"{w_final.size})], got {n_components}"
        )
    mask = _ignore_mask(final, ignore)
    rows = np.stack([(_flat64(c) - w_final) * mask for c in checkpoints])
    centered = rows - rows.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(centered, full_matrices=False)
    vt = vt * mask  # ignored entries: exactly zero (their columns are, up to rounding, already)
    total = float(np.sum(s**2))
    ratio = s[:n_components] ** 2 / total if total > 0 else np.zeros(n_components)
    variance = s[:n_components] ** 2 / (m - 1)
    directions = tuple(_unflatten_like(vt[k], final) for k in range(n_components))
    coords = rows @ vt[:n_components].T  # orthonormal rows: the least-squares coordinates
    return TrajectoryPCA(directions, variance, ratio, coords)


# -- summaries ---------------------------------------------------------------------------------


def sublevel_width(coords: np.ndarray, losses: np.ndarray, *, rise: float) -> float:
    """Width of the interval around the grid's center where the 1D loss stays within ``rise``
    of the center's loss, ``{a : L(a) <= L(a_0) + rise}`` (connected to a_0).

    The crossings are interpolated linearly between grid points; an interval that reaches the
    grid's end is cut there (the width is then a lower bound). ``a_0`` is the grid point
    nearest 0.
    """
    a = np.asarray(coords, np.float64)
    v = np.asarray(losses, np.float64)
    check_number("rise", rise, low=0.0, low_open=True)
    i0 = int(np.argmin(np.abs(a)))
    level = v[i0] + rise

    def edge(step: int) -> float:
        i = i0
        while 0 <= i + step < len(a) and v[i + step] <= level:
            i += step
        j = i + step
        if not 0 <= j < len(a):
            return float(a[i])
        frac = (level - v[i]) / (v[j] - v[i]) if v[j] != v[i] else 0.0
        return float(a[i] + frac * (a[j] - a[i]))

    return edge(1) - edge(-1)


def sublevel_area(
    coords: tuple[np.ndarray, np.ndarray], losses: np.ndarray, *, rise: float
) -> float:
    """Area of the 2D grid cells whose loss is within ``rise`` of the center's loss,
    ``{(a, b) : L <= L(center) + rise}`` counted on the grid (cell area ``da * db``)."""
    a, b = (np.asarray(x, np.float64) for x in coords)
    v = np.asarray(losses, np.float64)
    check_number("rise", rise, low=0.0, low_open=True)
    i0, j0 = int(np.argmin(np.abs(a))), int(np.argmin(np.abs(b)))
    da = (a[-1] - a[0]) / (len(a) - 1)
    db = (b[-1] - b[0]) / (len(b) - 1)
    return float(np.sum(v <= v[i0, j0] + rise) * da * db)


def span_from_coords(values: np.ndarray, margin: float = 0.2) -> tuple[float, float]:
    """A grid span covering ``values`` and 0, widened by ``margin`` of its length per side."""
    lo, hi = min(0.0, float(np.min(values))), max(0.0, float(np.max(values)))
    pad = margin * (hi - lo) if hi > lo else 1.0
    return lo - pad, hi + pad
