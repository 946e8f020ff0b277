"""Mode connectivity: low-loss curves between two trained solutions (Garipov et al. 2018).

Two networks w1, w2 trained from different initializations are usually separated by a high
loss barrier on the straight line between them, yet they can be joined by a simple curve
along which training and test loss stay almost as low as at the ends. A curve phi(t),
t in [0, 1], has fixed endpoints phi(0) = w1, phi(1) = w2 and trainable *bends*
theta_1..theta_{n-2} (n = num_bends + 2 control points P_0 = w1, ..., P_{n-1} = w2):

* quadratic Bezier (one bend): ``phi(t) = (1-t)^2 w1 + 2t(1-t) theta + t^2 w2``; in general
  the Bernstein coefficients ``c_k(t) = binom(n-1, k) t^k (1-t)^(n-1-k)``;
* polygonal chain (one bend: two segments w1 -> theta for t <= 1/2, theta -> w2 after); in
  general the hat functions ``c_k(t) = max(0, 1 - |t (n-1) - k|)``.

``phi(t) = sum_k c_k(t) P_k``. With no bend (n = 2) both are the straight line
``(1-t) w1 + t w2``. As in the reference code (``curves.py``), the bends start on the segment
(``init_linear``: P_k = w1 + k/(n-1) (w2 - w1), for one bend the midpoint, where the Bezier
curve *is* the line), and training minimizes ``E_{t ~ U(0,1)} [L(phi(t))]`` by drawing one t
per minibatch, with the L2 penalty ``weight_decay/2 ||phi(t)||^2`` on the point of the curve
(not on the bends; the optimizer itself gets no weight decay). Only the bends are trained:
the endpoints are constants and stay bit-for-bit fixed.

BatchNorm. During curve training BatchNorm runs in train mode (each batch's own statistics).
The running statistics of the ends belong to w1 and w2 only, so before evaluating at any t
they are recomputed for phi(t) over the whole training set, as the reference's ``update_bn``
does: reset, one pass in train mode, and the cumulative average over batches of each batch's
mean and variance (weights = batch sizes; Flax's batch variance is the biased one). Skipping
this gives meaningless losses between the ends (tested). BatchNorm modules are found as
``nnx.BatchNorm`` instances; the model must read their mode from the module
(``model.train()`` / ``model.eval()``), as optlab's models do.

Evaluation (``eval_curve.py``): on ``t = linspace(0, 1, 61)``, train and test loss and
accuracy of phi(t); compare with the straight line (:func:`line`). The *barrier* of a path is
``max_t L(phi(t)) - (L(w1) + L(w2)) / 2``.

References:
  - Garipov, Izmailov, Podoprikhin, Vetrov, Wilson, "Loss Surfaces, Mode Connectivity, and Fast
    Ensembling of DNNs", NeurIPS 2018 (code: github.com/timgaripov/dnn-mode-connectivity,
    ``curves.py``, ``train.py``, ``eval_curve.py``).
  - Draxler, Veschgini, Salmhofer, Hamprecht, "Essentially No Barriers in Neural Network Energy
    Landscape", ICML 2018.

Example:
  >>> import jax, jax.numpy as jnp, optax
  >>> from flax import nnx
  >>> from optlab.lab import connect
  >>> a, b = nnx.Linear(2, 2, rngs=nnx.Rngs(0)), nnx.Linear(2, 2, rngs=nnx.Rngs(1))
  >>> curve = connect.init_curve(a, b, kind="bezier")
  >>> w = curve.params_at(0.0)
  >>> bool(jnp.all(w["kernel"][...] == a.kernel[...]))
  True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from optlab._src.common import check_choice, check_int, check_number

Params = Any
Batch = Any
#: ``(model, batch) -> (per-example loss (B,), per-example correctness (B,))``.
MetricsFn = Callable[[nnx.Module, Batch], tuple[jax.Array, jax.Array]]

__all__ = [
    "KINDS",
    "Curve",
    "CurveEval",
    "barrier",
    "batch_stats_at",
    "curve_coefficients",
    "curve_point",
    "evaluate_curve",
    "init_curve",
    "line",
    "train_curve",
]

KINDS = ("bezier", "polychain")
"""The curve families."""


def curve_coefficients(kind: str, t: Any, num_points: int) -> jax.Array:
    """The ``(num_points,)`` weights ``c_k(t)`` of the control points (module docstring)."""
    check_choice("kind", kind, KINDS)
    check_int("num_points", num_points, 2)
    t = jnp.asarray(t, jnp.result_type(t, jnp.float32))
    k = jnp.arange(num_points, dtype=t.dtype)
    deg = num_points - 1
    if kind == "bezier":
        binom = jnp.asarray([math.comb(deg, i) for i in range(num_points)], t.dtype)
        # t^0 and (1-t)^0 are 1 even at t = 0 or 1 (jnp.power(0., 0.) == 1).
        return binom * jnp.power(t, k) * jnp.power(1.0 - t, deg - k)
    return jnp.maximum(0.0, 1.0 - jnp.abs(t * deg - k))


def curve_point(kind: str, points: Params, t: Any) -> Params:
    """``phi(t) = sum_k c_k(t) P_k``; ``points`` has a leading axis over the control points."""
    leaves = jax.tree.leaves(points)
    if not leaves:
        return points
    n = jnp.shape(leaves[0])[0]
    c = curve_coefficients(kind, t, n)
    return jax.tree.map(lambda p: jnp.tensordot(c.astype(p.dtype), p, axes=1), points)


def _line_points(w1: Params, w2: Params, num_bends: int) -> Params:
    n = num_bends + 2

    def one(a, b):
        a, b = jnp.asarray(a), jnp.asarray(b)
        # Exact endpoints: the first and last rows are a and b themselves, not a + 1 * (b - a).
        mids = [a + (k / (n - 1)) * (b - a) for k in range(1, n - 1)]
        return jnp.stack([a, *mids, b])

    return jax.tree.map(one, w1, w2)


@dataclasses.dataclass(frozen=True)
class Curve:
    """A curve between two NNX models of the same architecture.

    Attributes:
      kind: ``"bezier"`` or ``"polychain"``.
      points: the control points, a tree like the ``nnx.Param`` state whose leaves have a
        leading axis of ``num_bends + 2``: ``points[0]`` = w1, ``points[-1]`` = w2.
      graphdef: the model's graph definition.
      batch_stats: the ``nnx.BatchStat`` state (of the first model; recomputed per t).
      rest: any other state (RNG counters, ...), of the first model.
    """

    kind: str
    points: Params
    graphdef: Any
    batch_stats: Any
    rest: Any

    @property
    def num_bends(self) -> int:
        return int(jnp.shape(jax.tree.leaves(self.points)[0])[0]) - 2

    def params_at(self, t: Any) -> Params:
        """The ``nnx.Param`` state of phi(t)."""
        return curve_point(self.kind, self.points, t)

    def model_at(self, t: Any, batch_stats: Any = None) -> nnx.Module:
        """The model at phi(t), with ``batch_stats`` (default: the stored ones; see
        :func:`batch_stats_at` for the right ones)."""
        stats = self.batch_stats if batch_stats is None else batch_stats
        return nnx.merge(self.graphdef, self.params_at(t), stats, self.rest, copy=True)

    def replace(self, **changes: Any) -> Curve:
        return dataclasses.replace(self, **changes)


def _split(model: nnx.Module) -> tuple[Any, Params, Any, Any]:
    return nnx.split(model, nnx.Param, nnx.BatchStat, ...)


def init_curve(
    model_a: nnx.Module, model_b: nnx.Module, *, kind: str = "bezier", num_bends: int = 1
) -> Curve:
    """A curve from ``model_a`` to ``model_b`` with its bends on the segment between them."""
    check_choice("kind", kind, KINDS)
    check_int("num_bends", num_bends, 0)
    graphdef, w1, stats, rest = _split(model_a)
    graphdef_b, w2, _, _ = _split(model_b)
    s1 = jax.tree.map(jnp.shape, w1)
    s2 = jax.tree.map(jnp.shape, w2)
    if jax.tree.structure(w1) != jax.tree.structure(w2) or s1 != s2:
        raise ValueError("model_a and model_b must have the same parameters (names and shapes)")
    return Curve(kind, _line_points(w1, w2, num_bends), graphdef, stats, rest)


def line(model_a: nnx.Module, model_b: nnx.Module) -> Curve:
    """The straight segment ``(1-t) w1 + t w2`` (a curve without bends)."""
    return init_curve(model_a, model_b, kind="polychain", num_bends=0)


def _with_mode(curve: Curve, *, train: bool, stats_pass: bool = False) -> Any:
    """The graph definition in train or eval mode; ``stats_pass``: BatchNorm with momentum 0,
    so one forward pass leaves exactly the batch's statistics in the running averages."""
    model = nnx.merge(
        curve.graphdef, curve.params_at(0.0), curve.batch_stats, curve.rest, copy=True
    )
    model.train() if train else model.eval()
    if stats_pass:
        for _, module in nnx.iter_modules(model):
            if isinstance(module, nnx.BatchNorm):
                module.momentum = 0.0
    return nnx.split(model, nnx.Param, nnx.BatchStat, ...)[0]


class CurveTraining(NamedTuple):
    """What :func:`train_curve` returns.

    Attributes:
      curve: the trained curve (same endpoints).
      losses: ``(steps,)`` training objective (loss + penalty) at each step's t.
      ts: ``(steps,)`` the t drawn at each step.
    """

    curve: Curve
    losses: np.ndarray
    ts: np.ndarray


def train_curve(
    curve: Curve,
    metrics_fn: MetricsFn,
    batches: Iterable[Batch],
    tx: optax.GradientTransformation,
    *,
    weight_decay: float = 5e-4,
    key: jax.Array | None = None,
    progress: Any = None,
) -> CurveTraining:
    """Train the bends of ``curve``: one ``t ~ U(0, 1)`` per batch, loss at phi(t).

    The objective of a step is ``mean(metrics_fn(model at phi(t), batch)[0]) +
    weight_decay / 2 * ||phi(t)||^2``; the model runs in train mode (BatchNorm on the
    batch's statistics) and its updated statistics are discarded.

    Args:
      curve: from :func:`init_curve` (with at least one bend).
      metrics_fn: ``(model, batch) -> (per-example loss, per-example correctness)``.
      batches: the training batches, one step each.
      tx: the optimizer of the bends, e.g. ``optax.sgd(0.05, momentum=0.9)``.
      weight_decay: L2 coefficient on the curve point, >= 0 (Garipov et al.: 3e-4 to 5e-4).
      key: PRNG key of the t draws (default ``jax.random.key(0)``).
      progress: a tqdm-like bar advanced once per step.
    """
    check_number("weight_decay", weight_decay, low=0.0)
    if curve.num_bends < 1:
        raise ValueError("train_curve: the curve has no bend to train (num_bends=0)")
    key = jax.random.key(0) if key is None else key
    graphdef = _with_mode(curve, train=True)
    first = jax.tree.map(lambda p: p[0], curve.points)
    last = jax.tree.map(lambda p: p[-1], curve.points)
    bends = jax.tree.map(lambda p: p[1:-1], curve.points)
    stats, rest = curve.batch_stats, curve.rest
    kind = curve.kind

    def assemble(b: Params) -> Params:
        return jax.tree.map(lambda s, m, e: jnp.concatenate([s[None], m, e[None]]), first, b, last)

    def objective(b, t, batch):
        w = curve_point(kind, assemble(b), t)
        model = nnx.merge(graphdef, w, stats, rest, copy=True)
        loss = jnp.mean(metrics_fn(model, batch)[0])
        l2 = sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(w))
        return loss + 0.5 * weight_decay * l2

    @jax.jit
    def step(b, opt_state, step_key, batch):
        t = jax.random.uniform(step_key)
        loss, grads = jax.value_and_grad(objective)(b, t, batch)
        updates, opt_state = tx.update(grads, opt_state, b)
        return optax.apply_updates(b, updates), opt_state, loss, t

    opt_state = tx.init(bends)
    losses, ts = [], []
    for i, batch in enumerate(batches):
        bends, opt_state, loss, t = step(bends, opt_state, jax.random.fold_in(key, i), batch)
        losses.append(float(loss))
        ts.append(float(t))
        if progress is not None:
            progress.update(1)
    return CurveTraining(curve.replace(points=assemble(bends)), np.asarray(losses), np.asarray(ts))


def _batch_size(batch: Batch) -> int:
    return int(jnp.shape(jax.tree.leaves(batch)[0])[0])


def _stats_fn(curve: Curve, metrics_fn: MetricsFn) -> Callable[..., Any]:
    graphdef = _with_mode(curve, train=True, stats_pass=True)
    kind = curve.kind

    @jax.jit
    def stats_of(points, t, stats, rest, batch):
        model = nnx.merge(graphdef, curve_point(kind, points, t), stats, rest, copy=True)
        metrics_fn(model, batch)  # the forward pass; momentum 0 leaves the batch's statistics
        return nnx.state(model, nnx.BatchStat)

    return stats_of


def batch_stats_at(
    curve: Curve,
    metrics_fn: MetricsFn,
    t: float,
    batches: Sequence[Batch],
    *,
    _fn: Callable[..., Any] | None = None,
) -> Any:
    """The BatchNorm statistics of phi(t) recomputed over ``batches`` (the reference's
    ``update_bn``): the batch-size-weighted average of every batch's mean and variance,
    from one train-mode pass of ``metrics_fn`` per batch.

    A model without BatchNorm gets its (empty) state back. A batch's size is the leading
    dimension of its first leaf.
    """
    if not jax.tree.leaves(curve.batch_stats):
        return curve.batch_stats
    fn = _stats_fn(curve, metrics_fn) if _fn is None else _fn
    t_arr = jnp.asarray(t, jnp.float32)
    total, acc = 0, None
    for batch in batches:
        n = _batch_size(batch)
        s = fn(curve.points, t_arr, curve.batch_stats, curve.rest, batch)
        scaled = jax.tree.map(lambda x, n=n: n * x, s)
        acc = scaled if acc is None else jax.tree.map(jnp.add, acc, scaled)
        total += n
    if acc is None:
        raise ValueError("batch_stats_at: batches is empty")
    return jax.tree.map(lambda a: a / total, acc)


class CurveEval(NamedTuple):
    """Metrics along a curve, one entry per t (numpy float64 arrays)."""

    ts: np.ndarray
    train_loss: np.ndarray
    train_acc: np.ndarray
    test_loss: np.ndarray
    test_acc: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        d = {k: v.tolist() for k, v in self._asdict().items()}
        d["train_barrier"] = barrier(self.train_loss)
        d["test_barrier"] = barrier(self.test_loss)
        return d


def evaluate_curve(
    curve: Curve,
    metrics_fn: MetricsFn,
    train_batches: Sequence[Batch],
    test_batches: Sequence[Batch],
    *,
    num_points: int = 61,
    ts: Sequence[float] | None = None,
    recompute_bn: bool = True,
    progress: Any = None,
) -> CurveEval:
    """Train and test loss and accuracy at each ``t`` (default ``linspace(0, 1, 61)``).

    At every t the BatchNorm statistics are first recomputed over ``train_batches``
    (:func:`batch_stats_at`) unless ``recompute_bn=False`` (then the stored ones are used:
    only for demonstrating why not to); the metrics are then taken in eval mode and
    averaged over the examples.
    """
    if ts is None:
        check_int("num_points", num_points, 2)
        ts = np.linspace(0.0, 1.0, num_points)
    ts_arr = np.asarray(ts, np.float64)
    graphdef = _with_mode(curve, train=False)
    kind = curve.kind
    stats_fn = (
        _stats_fn(curve, metrics_fn)
        if recompute_bn and jax.tree.leaves(curve.batch_stats)
        else None
    )

    @jax.jit
    def sums(points, t, stats, rest, batch):
        model = nnx.merge(graphdef, curve_point(kind, points, t), stats, rest, copy=True)
        loss, correct = metrics_fn(model, batch)
        return jnp.sum(loss), jnp.sum(correct), loss.shape[0]

    def mean_metrics(t: float, stats: Any, batches: Sequence[Batch]) -> tuple[float, float]:
        ls = cs = 0.0
        n = 0
        t_arr = jnp.asarray(t, jnp.float32)
        for batch in batches:
            lsum, csum, b = sums(curve.points, t_arr, stats, curve.rest, batch)
            ls, cs, n = ls + float(lsum), cs + float(csum), n + int(b)
        return ls / n, cs / n

    rows = []
    for t in ts_arr:
        stats = curve.batch_stats
        if stats_fn is not None:
            stats = batch_stats_at(curve, metrics_fn, float(t), train_batches, _fn=stats_fn)
        rows.append((*mean_metrics(t, stats, train_batches), *mean_metrics(t, stats, test_batches)))
        if progress is not None:
            progress.update(1)
    cols = np.asarray(rows, np.float64).T
    return CurveEval(ts_arr, cols[0], cols[1], cols[2], cols[3])


def barrier(losses: Sequence[float]) -> float:
    """``max(losses) - (losses[0] + losses[-1]) / 2`` along a path (first/last: the ends)."""
    v = np.asarray(losses, np.float64)
    return float(np.max(v) - 0.5 * (v[0] + v[-1]))
